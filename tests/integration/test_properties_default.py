"""A sampled subset of the property tests on the real default model (SmolLM2-135M and its shipped adapters, infer
included): the exact codec and latent ``exact=True`` give the input back byte for byte; lossy latent decompression,
``generate``, ``continue_z``, ``ChatZCompress`` and ``ZCompressLLM`` return text or raise a documented
``ZCompressError``. A handful of hypothesis examples per property (derandomized), short generations; marked slow
(6 minutes on the shared 2-core machine, most of it the exact codec)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcompress_integrations import ConfigError, CorruptCodeError, UnsupportedTextError, ZCode

pytestmark = pytest.mark.slow

SAMPLED = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
HOSTILE = [
    "\u202e",
    "\u200b\u200d\ufeff",
    "\x00",
    "\r\n",
    "e\u0301\u0308",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "\U0001f1fa\U0001f1f8",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "<|im_start|>",
    "<|endoftext|>",
    "\u2063CTX0\u2063",
    "  ",
    "The Eiffel Tower is in Paris. ",
]
texts = st.one_of(
    st.lists(st.sampled_from(HOSTILE) | st.text(max_size=5), max_size=12).map("".join),
    st.text(st.characters(exclude_categories=()), max_size=30),  # lone surrogates included
    st.builds(lambda u, n: u * n, st.text(min_size=1, max_size=2), st.integers(60, 150)),  # a long "word"
)
items = st.one_of(texts, st.binary(max_size=60))


def _surrogate(text: Any) -> bool:
    return isinstance(text, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@SAMPLED
@given(item=items)
def test_exact_and_latent_exact_round_trip_on_the_default_model(default_compressor: Any, item: Any) -> None:
    zc = default_compressor
    if _surrogate(item):
        with pytest.raises(UnsupportedTextError):
            zc.compress(item)
        return
    for code in (zc.compress(item), zc.compress(item, mode="latent", ratio=4.0, exact=True)):
        back = zc.decompress(ZCode.from_string(code.to_string()))
        assert back == item and type(back) is type(item)
    lossy = zc.decompress(zc.compress(item, mode="latent"))
    assert type(lossy) is type(item)


@SAMPLED
@given(prompt=texts, context=st.lists(items, max_size=2), latent=st.booleans())
def test_generate_and_continue_z_return_text_on_the_default_model(
    default_compressor: Any, prompt: str, context: list[Any], latent: bool
) -> None:
    zc = default_compressor
    if any(_surrogate(x) for x in [prompt, *context]):
        with pytest.raises(UnsupportedTextError):
            zc.generate(prompt, context=[zc.compress(x, mode="latent") if latent else x for x in context])
        return
    ctx = [zc.compress(x, mode="latent") if latent else x for x in context]
    result = zc.generate(prompt, context=ctx, max_new_tokens=4)
    assert isinstance(result.text, str) and result.completion_tokens <= 4
    if latent and ctx and ctx[0].z_tokens:
        cont = zc.continue_z(ctx[0])
        assert isinstance(zc.decompress(cont), str)


@SAMPLED
@given(text=texts)
def test_chat_models_answer_or_raise_a_documented_error_on_the_default_model(
    default_compressor: Any, text: str
) -> None:
    from langchain_core.messages import HumanMessage

    from zcompress_integrations.langchain import ChatZCompress
    from zcompress_integrations.llama_index import ZCompressLLM

    zc = default_compressor
    code = zc.compress(
        "The Eiffel Tower is a wrought-iron lattice tower in Paris.", mode="latent"
    ).to_string()
    calls = [
        lambda: ChatZCompress(compressor=zc, max_tokens=4).invoke([HumanMessage(f"{code}\n{text}")]).content,
        lambda: ZCompressLLM(compressor=zc, num_output=4).complete(f"{code}\n{text}").text,
    ]
    for call in calls:
        try:
            assert isinstance(call(), str)
        except UnsupportedTextError:
            assert _surrogate(text)
        except CorruptCodeError:
            assert "zc1:" in text
        except ConfigError as exc:
            assert "context" in str(exc)
