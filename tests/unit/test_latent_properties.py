"""Property tests of the latent and generation paths on the tiny model: exact paths return the input byte for
byte; lossy paths return text (or raise a documented ``ZCompressError``), never another exception."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcompress_integrations import UnsupportedTextError, ZCode, ZCompressError
from zcompress_integrations.core.generation import GenerationResult

NAUGHTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "naughty" / "blns.base64.json"
SPECIAL = [
    "\u202e",
    "\u200b",
    "\u200d",
    "\x00",
    "\r\n",
    "\u0301",
    "\U0001f469\u200d\U0001f4bb",
    "\ufeff",
    " ",
    "\t",
]
texts = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(SPECIAL) | st.text(max_size=6), max_size=20).map("".join),
    st.text(alphabet="ab", min_size=100, max_size=300).map(
        lambda w: w.replace(" ", "")
    ),  # one very long "word"
)
items = st.one_of(texts, st.binary(max_size=80))
CASES = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _encodable(item: str | bytes) -> bool:
    if isinstance(item, bytes):
        return True
    try:
        item.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@CASES
@given(item=items, ratio=st.sampled_from([1.0, 2.0, 3.5, 4.0]))
def test_latent_exact_returns_the_input_byte_for_byte(
    tiny_latent_compressor: Any, item: str | bytes, ratio: float
) -> None:
    zc = tiny_latent_compressor
    if not _encodable(item):
        with pytest.raises(UnsupportedTextError):
            zc.compress(item, mode="latent", ratio=ratio, exact=True)
        return
    code = zc.compress(item, mode="latent", ratio=ratio, exact=True)
    assert ZCode.from_json(code.to_json()) == code == ZCode.from_string(code.to_string())
    back = zc.decompress(code.to_bytes())
    assert back == item and type(back) is type(item)


@CASES
@given(item=items)
def test_lossy_latent_returns_text_of_the_input_type(tiny_latent_compressor: Any, item: str | bytes) -> None:
    zc = tiny_latent_compressor
    if not _encodable(item):
        return
    code = zc.compress(item, mode="latent", ratio=2.0)
    assert code.text_tokens == zc.count_tokens(item) and code.z_tokens <= max(code.text_tokens, 0)
    back = zc.decompress(code)
    assert type(back) is type(item)


@CASES
@given(prompt=texts, context=st.lists(items, max_size=3))
def test_generate_from_any_context_returns_text_or_a_documented_error(
    tiny_latent_compressor: Any, prompt: str, context: list[str | bytes]
) -> None:
    zc = tiny_latent_compressor
    mixed: list[Any] = []
    for i, item in enumerate(context):
        if not _encodable(item):
            continue
        mixed.append(zc.compress(item, mode="latent") if i % 2 else item)
    try:
        result = zc.generate(prompt, context=mixed, max_new_tokens=2)
    except ZCompressError:
        return  # e.g. a prompt with a lone surrogate: documented, specific
    assert isinstance(result, GenerationResult) and isinstance(result.text, str)
    assert result.prompt_tokens <= result.uncompressed_prompt_tokens


DAMAGED_TEXT = "The quick brown fox jumps over the lazy dog. " * 2


@pytest.fixture(scope="module")
def latent_exact_bytes(tiny_latent_compressor: Any) -> bytes:
    return tiny_latent_compressor.compress(DAMAGED_TEXT, mode="latent", exact=True).to_bytes()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_a_damaged_latent_code_is_refused_never_misread(
    tiny_latent_compressor: Any, latent_exact_bytes: bytes, position: int, bit: int
) -> None:
    data = bytearray(latent_exact_bytes)
    data[position % len(data)] ^= 1 << bit
    try:
        back = tiny_latent_compressor.decompress(bytes(data))
    except ZCompressError:
        return
    assert back == DAMAGED_TEXT  # only a flip the checksum proves harmless may decode


def test_naughty_strings_round_trip_through_latent_exact(tiny_latent_compressor: Any) -> None:
    if not NAUGHTY.is_file():
        pytest.skip(f"the naughty-strings list is not beside the repository ({NAUGHTY})")
    strings = [
        base64.b64decode(s).decode("utf-8", "surrogateescape") for s in json.loads(NAUGHTY.read_text())
    ]
    zc = tiny_latent_compressor
    ok = [s for s in strings if _encodable(s)]
    codes = zc.compress_batch(ok, mode="latent", exact=True)
    assert zc.decompress_batch(codes) == ok
    for s in set(strings) - set(ok):
        with pytest.raises(UnsupportedTextError):
            zc.compress(s, mode="latent", exact=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": "a lone \ud800 surrogate"},
        {"prompt": [{"role": "user", "content": "\udfff"}]},
        {"context": ["fine", "bad \udc80 text"]},
        {"context": ["doc"], "titles": ["\ud800"]},
        {"system": "\ud800"},
    ],
)
def test_generate_refuses_lone_surrogates_anywhere_in_the_prompt(tiny_compressor: Any, kwargs: dict) -> None:
    """Was: ``TypeError`` from the tokenizer (found by the integration property tests)."""
    prompt = kwargs.pop("prompt", "q")
    with pytest.raises(UnsupportedTextError, match="surrogate"):
        tiny_compressor.generate(prompt, max_new_tokens=1, **kwargs)
    with pytest.raises(UnsupportedTextError, match="surrogate"):
        tiny_compressor.generate_batch(
            [prompt],
            contexts=[kwargs.get("context", [])],
            titles=[kwargs.get("titles")],
            system=kwargs.get("system"),
            max_new_tokens=1,
        )


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": 1e-45},  # was: RuntimeError from torch.multinomial (NaN probabilities)
        {"temperature": 5e-324},
        {"temperature": 1e300},
        {"stop": [5]},  # was: TypeError
    ],
)
def test_generate_settings_out_of_range_are_refused(tiny_compressor: Any, bad: dict) -> None:
    with pytest.raises(ZCompressError):
        tiny_compressor.generate("q", max_new_tokens=1, **bad)


BARE_STRINGS = [{"stop": "a string"}, {"context": "one text, not a list"}]


@pytest.mark.parametrize("bad", BARE_STRINGS)
def test_generation_refuses_a_bare_string_as_stop_or_context(tiny_compressor: Any, bad: dict) -> None:
    """``generation.generate`` refuses them (was: ``stop="ab"`` meant stops "a" and "b", a text context one
    document per letter)."""
    from zcompress_integrations.core.generation import generate

    with pytest.raises(ZCompressError):
        generate(tiny_compressor, "q", max_new_tokens=1, **bad)


@pytest.mark.parametrize("bad", BARE_STRINGS)
def test_the_facade_refuses_a_bare_string_as_stop_or_context(tiny_compressor: Any, bad: dict) -> None:
    with pytest.raises(ZCompressError):
        tiny_compressor.generate("q", max_new_tokens=1, **bad)


def test_an_empty_latent_code_in_the_context_is_read_as_nothing(tiny_latent_compressor: Any) -> None:
    """Was: ``IndexError`` from the token-group embeddings (an empty id list made a float index tensor); found by
    ``test_generate_from_any_context_returns_text_or_a_documented_error``."""
    zc = tiny_latent_compressor
    empty = zc.compress("", mode="latent")
    assert empty.z_tokens == 0
    alone = zc.generate("q", max_new_tokens=2)
    with_empty = zc.generate("q", context=[empty], max_new_tokens=2)
    assert (
        isinstance(with_empty.text, str) and with_empty.prompt_tokens > alone.prompt_tokens
    )  # "Document 1:"
    assert zc.generate_batch(["q"], contexts=[[empty, "x"]], max_new_tokens=2)[0].text is not None


def test_a_placeholder_in_the_user_text_does_not_displace_the_context(tiny_compressor: Any) -> None:
    """The prompt's context placeholder typed by the user (here in the system turn, before the documents) once
    received the document in its place, the real placeholder left as text."""
    from zcompress_integrations.core.generation import build_prompt

    turns = [{"role": "system", "content": "\u2063CTX0\u2063"}, {"role": "user", "content": "q"}]
    pieces, _, _, _ = build_prompt(tiny_compressor, turns, ["DOCUMENT"], system=None)
    tokenizer = tiny_compressor.backbone.tokenizer
    doc = tokenizer("DOCUMENT", add_special_tokens=False)["input_ids"]
    assert pieces[1] == doc  # the document sits where the template put the documents block
    before = tokenizer.decode(pieces[0])
    assert before.index("\u2063CTX0\u2063") < before.index("Document 1")  # the user's text kept as text
