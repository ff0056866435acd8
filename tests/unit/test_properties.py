"""Property tests (hypothesis, bounded) of the exact entry points on the tiny model.

Contract, for every input the strategies below can draw:

* ``ZCompressor.compress`` / ``decompress`` (exact mode) return the input byte for byte, with its type (``str`` or
  ``bytes``): arbitrary Unicode without lone surrogates, hostile mixes (RTL overrides, zero-width characters, NUL,
  CRLF, combining marks, emoji ZWJ sequences, special-token look-alikes), arbitrary bytes (mostly not UTF-8), empty
  and whitespace-only texts, very long single "words" and the naughty-strings list in ``shared/data/naughty``.
* A ``str`` with a lone surrogate raises :class:`UnsupportedTextError`; garbage handed to ``decompress`` raises a
  :class:`ZCompressError` subclass, never another exception.
* The LangChain document compressor/transformer and the LlamaIndex postprocessor/transform, in exact mode, give
  codes that decode back to the input, and raise only :class:`ZCompressError` subclasses on bad input.

Examples are bounded (``max_examples`` per test, ``deadline=None``, derandomized so CI runs the same cases); the
counts actually run are printed with ``-s`` and recorded in ``docs/reliability.md``.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcompress_integrations import CorruptCodeError, UnsupportedTextError, ZCode, ZCompressError

NAUGHTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "naughty" / "blns.base64.json"

RUNS: Counter[str] = Counter()  # examples run per test, printed at the end of the module


def bounded(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Any:
    yield
    print("\n[properties] examples run: " + ", ".join(f"{k}={v}" for k, v in sorted(RUNS.items())))


# ---- strategies ------------------------------------------------------------------------------------------------
NO_SURROGATES = st.characters(blacklist_categories=("Cs",))
HOSTILE = [
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u202d\u2066\u2069",  # LTR override, isolates
    "\u200b",  # ZERO WIDTH SPACE
    "\u200d",  # ZERO WIDTH JOINER
    "\u200c\u2060\ufeff",  # ZWNJ, word joiner, BOM
    "\x00",
    "\r\n",
    "\r",
    "\n\n\n",
    "\t",
    "e\u0301",  # e + combining acute
    "\u0301\u0308\u0327",  # combining marks with no base
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f",  # zalgo
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",  # family: ZWJ sequence
    "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag
    "\U0001f44d\U0001f3fd",  # skin tone modifier
    "\U0001f1fa\U0001f1f8",  # regional indicators
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",  # Arabic
    "\u05e2\u05d1\u05e8\u05d9\u05ea",  # Hebrew
    "\u2028\u2029\x85",  # line/paragraph separators, NEL
    "\ufffd\uffff\U0010ffff",  # replacement char, noncharacters
    "\x1b[31m\x07\x08",  # ANSI escape, BEL, BS
    "<s>",
    "</s>",
    "<|endoftext|>",
    "zc1:",
    "{",
    "  ",
    "\u3000",
    "\u00a0",
]
hostile_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE), st.text(NO_SURROGATES, max_size=4)), max_size=16
).map("".join)
any_text = st.text(NO_SURROGATES, max_size=60)
whitespace = st.text(
    st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u2028\u3000"), max_size=40
)
long_word = st.builds(
    lambda unit, n: unit * n,
    st.text(NO_SURROGATES, min_size=1, max_size=2),
    st.integers(min_value=150, max_value=500),
)
with_surrogate = st.builds(
    lambda a, s, b: a + s + b,
    any_text,
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    any_text,
)


def _round_trip(zc: Any, item: str | bytes) -> None:
    code = zc.compress(item)
    for form in (code.to_bytes(), code.to_json()):  # every form parses back to the same code
        assert ZCode.load(form) == code
    out = zc.decompress(code.to_string())  # and the string form, as stored in metadata, decodes to the input
    assert type(out) is type(item) and out == item, (item, out)


# ---- the facade: exact round trips --------------------------------------------------------------------------------
@bounded(40)
@given(text=any_text)
def test_any_unicode_text_round_trips(tiny_compressor: Any, text: str) -> None:
    RUNS["compress/decompress str"] += 1
    _round_trip(tiny_compressor, text)


@bounded(30)
@given(text=hostile_text)
def test_hostile_unicode_round_trips(tiny_compressor: Any, text: str) -> None:
    RUNS["compress/decompress hostile str"] += 1
    _round_trip(tiny_compressor, text)


@bounded(40)
@given(data=st.binary(max_size=80))
def test_any_bytes_round_trip(tiny_compressor: Any, data: bytes) -> None:
    RUNS["compress/decompress bytes"] += 1
    _round_trip(tiny_compressor, data)


@bounded(20)
@given(text=whitespace)
def test_empty_and_whitespace_only_round_trip(tiny_compressor: Any, text: str) -> None:
    RUNS["compress/decompress whitespace"] += 1
    _round_trip(tiny_compressor, text)
    _round_trip(tiny_compressor, text.encode("utf-8"))


@bounded(5)
@given(word=long_word)
def test_very_long_single_words_round_trip(tiny_compressor: Any, word: str) -> None:
    RUNS["compress/decompress long word"] += 1
    _round_trip(tiny_compressor, word)


@bounded(10)
@given(texts=st.lists(st.one_of(hostile_text, st.binary(max_size=30)), max_size=6))
def test_batches_round_trip_in_order(tiny_compressor: Any, texts: list[str | bytes]) -> None:
    RUNS["compress_batch/decompress_batch"] += 1
    codes = tiny_compressor.compress_batch(texts, batch_size=3)
    assert tiny_compressor.decompress_batch([c.to_string() for c in codes], batch_size=2) == texts


def _naughty() -> list[bytes]:
    if not NAUGHTY.exists():
        pytest.skip(f"naughty strings not found at {NAUGHTY}")
    return [base64.b64decode(s) for s in json.loads(NAUGHTY.read_text())]


def test_naughty_strings_round_trip_as_text_and_as_bytes(tiny_compressor: Any) -> None:
    """Each string as ``str`` when it is UTF-8 (as ``bytes`` are the same bytes through the codec), else as
    ``bytes``."""
    items: list[str | bytes] = []
    for raw in _naughty():
        try:
            items.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            items.append(raw)
    codes = tiny_compressor.compress_batch(items)
    assert tiny_compressor.decompress_batch(codes) == items
    RUNS["naughty strings (str)"] += sum(isinstance(x, str) for x in items)
    RUNS["naughty strings (bytes)"] += sum(isinstance(x, bytes) for x in items)


# ---- the facade: what must raise -------------------------------------------------------------------------------
@bounded(20)
@given(text=with_surrogate)
def test_lone_surrogates_raise_unsupported_text(tiny_compressor: Any, text: str) -> None:
    RUNS["lone surrogate str"] += 1
    with pytest.raises(UnsupportedTextError, match="surrogate"):
        tiny_compressor.compress(text)
    with pytest.raises(UnsupportedTextError):
        tiny_compressor.compress_batch(["fine", text])
    with pytest.raises(UnsupportedTextError):
        tiny_compressor.count_tokens(text)
    # the documented way out: the bytes, with the surrogates passed through, round-trip exactly
    data = text.encode("utf-8", "surrogatepass")
    assert tiny_compressor.decompress(tiny_compressor.compress(data)) == data


@pytest.mark.parametrize("value", [None, 42, 4.2, ["a"], {"text": "a"}, object(), ("a",)])
def test_non_text_inputs_raise_unsupported_text(tiny_compressor: Any, value: Any) -> None:
    with pytest.raises(UnsupportedTextError):
        tiny_compressor.compress(value)


junk = st.one_of(
    st.binary(max_size=120),
    st.binary(max_size=120).map(lambda b: b"ZC\x01" + b),
    st.text(max_size=120),
    st.text(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="), max_size=120
    ).map(lambda s: "zc1:" + s),
    st.dictionaries(
        st.text(max_size=12), st.one_of(st.integers(), st.text(max_size=8), st.none()), max_size=8
    ),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=5),
)


@bounded(60)
@given(value=junk)
def test_decompressing_junk_raises_a_zcompress_error(tiny_compressor: Any, value: Any) -> None:
    RUNS["decompress junk"] += 1
    with pytest.raises(ZCompressError):
        tiny_compressor.decompress(value)


@pytest.fixture(scope="module")
def a_code(tiny_compressor: Any) -> tuple[str, ZCode]:
    text = "Compression turns long text into a few tokens."
    return text, tiny_compressor.compress(text)


@bounded(60)
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4))
def test_edited_code_bytes_raise_or_decode_the_original(
    tiny_compressor: Any, a_code: Any, edits: Any
) -> None:
    RUNS["decompress edited code"] += 1
    text, code = a_code
    raw = bytearray(code.to_bytes())
    for pos, delta in edits:
        raw[pos % len(raw)] ^= delta
    try:
        out = tiny_compressor.decompress(bytes(raw))
    except ZCompressError:
        return
    assert out == text  # edits that cancel out


# ---- LangChain -------------------------------------------------------------------------------------------------
def _lc_doc(text: str, **metadata: Any) -> Any:
    documents = pytest.importorskip("langchain_core.documents")
    return documents.Document(page_content=text, metadata=metadata)


@bounded(10)
@given(texts=st.lists(st.one_of(hostile_text, whitespace), min_size=1, max_size=4))
def test_langchain_transformer_and_compressor_codes_decode_to_the_input(
    tiny_compressor: Any, texts: list[str]
):
    from zcompress_integrations.langchain import ZCompressDocumentCompressor, ZCompressDocumentTransformer

    RUNS["langchain transformer+compressor"] += 1
    docs = [_lc_doc(t) for t in texts]
    transformer = ZCompressDocumentTransformer(compressor=tiny_compressor, keep_text=False)
    compressor = ZCompressDocumentCompressor(compressor=tiny_compressor)
    if any(t.startswith("zc1:") for t in texts):  # documented: such a page is read as a code; it is not one
        with pytest.raises(CorruptCodeError):
            transformer.transform_documents(docs)
        return
    for out in (transformer.transform_documents(docs), compressor.compress_documents(docs, "query")):
        assert len(out) == len(texts)
        for text, doc in zip(texts, out, strict=True):
            if not text:
                assert doc.page_content == "" and doc.metadata["zcompress_skipped"] == "empty"
                continue
            assert tiny_compressor.decompress(doc.metadata["zcompress_code"]) == text
            if doc.page_content != text:
                assert tiny_compressor.decompress(doc.page_content) == text


@bounded(15)
@given(text=hostile_text.filter(lambda t: t and not t.startswith("zc1:")), stored=junk)
def test_langchain_junk_stored_codes_are_replaced_not_crashed_on(
    tiny_compressor: Any, text: str, stored: Any
):
    from zcompress_integrations.langchain import ZCompressDocumentCompressor

    RUNS["langchain junk stored code"] += 1
    compressor = ZCompressDocumentCompressor(compressor=tiny_compressor)
    (out,) = compressor.compress_documents([_lc_doc(text, zcompress_code=stored)], "query")
    assert tiny_compressor.decompress(out.metadata["zcompress_code"]) == text
    assert out.page_content == text


@bounded(15)
@given(text=with_surrogate)
def test_langchain_surrogate_text_raises_unsupported_text(tiny_compressor: Any, text: str) -> None:
    from zcompress_integrations.langchain import ZCompressDocumentCompressor, ZCompressDocumentTransformer

    RUNS["langchain surrogate text"] += 1
    if text.startswith("zc1:"):
        return
    for adapter in (
        ZCompressDocumentTransformer(compressor=tiny_compressor),
        ZCompressDocumentCompressor(compressor=tiny_compressor),
    ):
        with pytest.raises(UnsupportedTextError):
            if hasattr(adapter, "transform_documents"):
                adapter.transform_documents([_lc_doc(text)])
            else:
                adapter.compress_documents([_lc_doc(text)], "q")


def test_langchain_surrogate_text_with_a_stored_code_raises_unsupported_text(tiny_compressor: Any) -> None:
    from zcompress_integrations.langchain import ZCompressDocumentCompressor

    stored = tiny_compressor.compress("some text").to_string()
    compressor = ZCompressDocumentCompressor(compressor=tiny_compressor)
    with pytest.raises(UnsupportedTextError):
        compressor.compress_documents([_lc_doc("bad \ud800 text", zcompress_code=stored)], "q")


# ---- LlamaIndex ------------------------------------------------------------------------------------------------
def _nodes(texts: list[str], stored: Any = None) -> list[Any]:
    schema = pytest.importorskip("llama_index.core.schema")
    out = []
    for i, text in enumerate(texts):
        metadata = {} if stored is None else {"zcompress_code": stored}
        out.append(
            schema.NodeWithScore(node=schema.TextNode(text=text, id_=f"n{i}", metadata=metadata), score=1.0)
        )
    return out


@bounded(10)
@given(texts=st.lists(st.one_of(hostile_text, whitespace), min_size=1, max_size=4))
def test_llamaindex_postprocessor_and_transform_codes_decode_to_the_input(
    tiny_compressor: Any, texts: list[str]
):
    li = pytest.importorskip("zcompress_integrations.llama_index")

    RUNS["llamaindex postprocessor+transform"] += 1
    post = li.ZCompressNodePostprocessor(compressor=tiny_compressor)
    transform = li.ZCompressTransform(compressor=tiny_compressor)
    processed = [n.node for n in post.postprocess_nodes(_nodes(texts), query_str="q")]
    transformed = transform([n.node for n in _nodes(texts)])
    for out in (processed, transformed):
        assert len(out) == len(texts)
        for text, node in zip(texts, out, strict=True):
            assert node.get_content() == text  # exact codes leave the text in place
            if not text.strip():
                assert "zcompress_code" not in node.metadata  # nothing to compress: passed through
            else:
                assert tiny_compressor.decompress(node.metadata["zcompress_code"]) == text


@bounded(15)
@given(text=hostile_text.filter(lambda t: t.strip()), stored=junk.filter(lambda v: v is not None))
def test_llamaindex_junk_stored_codes_are_replaced_not_crashed_on(
    tiny_compressor: Any, text: str, stored: Any
):
    li = pytest.importorskip("zcompress_integrations.llama_index")

    RUNS["llamaindex junk stored code"] += 1
    post = li.ZCompressNodePostprocessor(compressor=tiny_compressor)
    (out,) = post.postprocess_nodes(_nodes([text], stored), query_str="q")
    assert tiny_compressor.decompress(out.node.metadata["zcompress_code"]) == text
    (node,) = li.ZCompressTransform(compressor=tiny_compressor)([n.node for n in _nodes([text], stored)])
    assert tiny_compressor.decompress(node.metadata["zcompress_code"]) == text


@bounded(15)
@given(text=with_surrogate.filter(lambda t: t.strip()))
def test_llamaindex_surrogate_text_raises_unsupported_text(tiny_compressor: Any, text: str) -> None:
    li = pytest.importorskip("zcompress_integrations.llama_index")

    RUNS["llamaindex surrogate text"] += 1
    with pytest.raises(UnsupportedTextError):
        li.ZCompressNodePostprocessor(compressor=tiny_compressor).postprocess_nodes(
            _nodes([text]), query_str="q"
        )
    with pytest.raises(UnsupportedTextError):
        li.ZCompressTransform(compressor=tiny_compressor)([n.node for n in _nodes([text])])


def test_llamaindex_surrogate_text_with_a_stored_code_raises_unsupported_text(tiny_compressor: Any) -> None:
    li = pytest.importorskip("zcompress_integrations.llama_index")

    stored = tiny_compressor.compress("some text").to_string()
    with pytest.raises(UnsupportedTextError):
        li.ZCompressTransform(compressor=tiny_compressor)(
            [n.node for n in _nodes(["bad \ud800 text"], stored)]
        )
