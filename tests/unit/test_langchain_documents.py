"""ZCompressDocumentCompressor / ZCompressDocumentTransformer with real LangChain objects on the tiny model."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import subprocess
import sys

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_text_splitters import CharacterTextSplitter

from zcompress_integrations import CorruptCodeError, ModelMismatchError, UnsupportedTextError, ZCode
from zcompress_integrations.errors import LatentUnavailableError
from zcompress_integrations.langchain import (
    ZCompressDocumentCompressor,
    ZCompressDocumentTransformer,
    format_docs_for_zcompress,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression turns long text into a few tokens.",
    "LangChain and LlamaIndex retrieve documents; the model answers questions about them.",
    "Wikipedia paragraphs, news articles and agent memories are all plain English prose.",
    "0123456789 " * 3,
]
META_KEYS = {
    "zcompress_code",
    "zcompress_codec",
    "zcompress_ratio",
    "zcompress_text_tokens",
    "zcompress_z_tokens",
    "zcompress_fingerprint",
}


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return [Document(t, id=f"d{i}", metadata={"source": f"s{i}", "n": i}) for i, t in enumerate(TEXTS)]


@pytest.fixture(scope="module")
def compressor(tiny_compressor) -> ZCompressDocumentCompressor:
    return ZCompressDocumentCompressor(compressor=tiny_compressor)


@pytest.fixture(scope="module")
def store(docs) -> InMemoryVectorStore:
    vs = InMemoryVectorStore(DeterministicFakeEmbedding(size=32))
    vs.add_documents(docs)
    return vs


def test_importing_the_package_does_not_import_langchain_or_torch() -> None:
    code = (
        "import sys, zcompress_integrations, zcompress_integrations.langchain;"
        "bad=[m for m in ('torch','transformers','langchain_core','langchain_classic') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_one_output_per_input_in_order_with_ids_metadata_and_exact_codes(
    compressor, docs, tiny_compressor
) -> None:
    out = compressor.compress_documents(docs, "unused query")
    assert len(out) == len(docs)
    for doc, got in zip(docs, out, strict=True):
        assert got.id == doc.id
        assert {k: got.metadata[k] for k in doc.metadata} == doc.metadata
        assert META_KEYS <= set(got.metadata)
        assert (
            got.page_content == doc.page_content
        )  # exact codes keep the text (the LLM cannot read the bits)
        code = ZCode.from_string(got.metadata["zcompress_code"])
        assert code.codec == "exact" == got.metadata["zcompress_codec"]
        assert got.metadata["zcompress_z_tokens"] == code.z_tokens
        assert got.metadata["zcompress_fingerprint"] == tiny_compressor.fingerprint.hex()
        assert tiny_compressor.decompress(code) == doc.page_content
    assert docs[0].metadata == {"source": "s0", "n": 0}  # inputs untouched


def test_empty_input_and_short_documents(tiny_compressor, docs) -> None:
    comp = ZCompressDocumentCompressor(compressor=tiny_compressor, min_chars=50)
    assert comp.compress_documents([], "q") == []
    out = comp.compress_documents([Document(""), *docs[:2], Document("x" * 60)], "q")
    assert [d.metadata.get("zcompress_skipped") for d in out] == [
        "empty",
        "shorter than min_chars=50",
        "shorter than min_chars=50",
        None,
    ]
    assert "zcompress_code" not in out[0].metadata and out[0].page_content == ""
    assert "zcompress_code" in out[3].metadata


def test_bad_input_is_named_before_any_work(compressor) -> None:
    bad = Document.model_construct(page_content=b"bytes", metadata={}, id="b")
    with pytest.raises(UnsupportedTextError, match=r"documents\[1\].*id='b'.*bytes"):
        compressor.compress_documents([Document("ok"), bad], "q")
    with pytest.raises(UnsupportedTextError, match="Document"):
        compressor.compress_documents(["plain string"], "q")  # type: ignore[list-item]


def test_document_longer_than_the_model_context_is_windowed(compressor, tiny_compressor) -> None:
    long_text = " ".join(TEXTS) * 22  # tiny model context is 1024 positions
    assert tiny_compressor.count_tokens(long_text) > 1024
    (out,) = compressor.compress_documents([Document(long_text)], "q")
    assert tiny_compressor.decompress(out.metadata["zcompress_code"]) == long_text


def test_codes_made_at_indexing_time_are_reused_and_bad_ones_replaced(
    compressor, tiny_compressor, docs
) -> None:
    indexed = compressor.compress_documents(docs[:3], "q")
    again = compressor.compress_documents(indexed, "q")
    assert [d.metadata["zcompress_code"] for d in again] == [d.metadata["zcompress_code"] for d in indexed]
    assert all("zcompress_replaced_code" not in d.metadata for d in again)

    good = indexed[0].metadata["zcompress_code"]
    corrupt = good[:-12] + "AAAAAAAAAAAA"
    foreign = dataclasses.replace(ZCode.from_string(good), fingerprint=b"\x00\x01\x02\x03").to_string()
    stale = indexed[1].metadata["zcompress_code"]  # a real code, but of another text
    cases = [
        Document(docs[0].page_content, metadata={"zcompress_code": "zc1:not-base64!"}),
        Document(docs[0].page_content, metadata={"zcompress_code": corrupt}),
        Document(docs[0].page_content, metadata={"zcompress_code": foreign}),
        Document(docs[0].page_content, metadata={"zcompress_code": stale}),
    ]
    out = compressor.compress_documents(cases, "q")
    assert len(out) == len(cases)
    for d in out:
        assert d.metadata["zcompress_replaced_code"]
        assert tiny_compressor.decompress(d.metadata["zcompress_code"]) == docs[0].page_content


def test_a_bad_code_without_its_text_is_a_clear_error(tiny_compressor, docs) -> None:
    dropped = ZCompressDocumentTransformer(compressor=tiny_compressor, keep_text=False).transform_documents(
        docs[:1]
    )
    assert dropped[0].page_content.startswith("zc1:")
    comp = ZCompressDocumentCompressor(compressor=tiny_compressor)
    (reused,) = comp.compress_documents(dropped, "q")  # a valid code with no text: passed through as is
    assert reused.metadata["zcompress_code"] == dropped[0].metadata["zcompress_code"]
    broken = Document("zc1:AAAA", id="x")
    with pytest.raises(CorruptCodeError, match=r"documents\[0\].*id='x'.*not kept"):
        comp.compress_documents([broken], "q")
    code = ZCode.from_string(dropped[0].page_content)
    other = dataclasses.replace(code, fingerprint=b"\x00\x01\x02\x03").to_string()
    with pytest.raises(ModelMismatchError, match="not kept"):
        comp.compress_documents([Document(other, metadata={"zcompress_code": other})], "q")


def test_transformer_keeps_or_drops_text(tiny_compressor, docs) -> None:
    docs = docs[:3]
    kept = ZCompressDocumentTransformer(compressor=tiny_compressor).transform_documents(docs)
    assert [d.page_content for d in kept] == TEXTS[:3] and all(META_KEYS <= set(d.metadata) for d in kept)
    dropped = ZCompressDocumentTransformer(compressor=tiny_compressor, keep_text=False).transform_documents(
        docs
    )
    assert [d.id for d in dropped] == [d.id for d in docs]
    assert tiny_compressor.decompress_batch([d.page_content for d in dropped]) == TEXTS[:3]
    assert (
        asyncio.run(ZCompressDocumentTransformer(compressor=tiny_compressor).atransform_documents(docs))
        == kept
    )


def test_contextual_compression_retriever_over_a_real_vector_store(
    compressor, store, tiny_compressor
) -> None:
    base = store.as_retriever(search_kwargs={"k": 3})
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    plain = base.invoke("fox")
    got = retriever.invoke("fox")
    assert [d.id for d in got] == [d.id for d in plain]
    assert all(tiny_compressor.decompress(d.metadata["zcompress_code"]) == d.page_content for d in got)
    assert [d.id for d in asyncio.run(retriever.ainvoke("fox"))] == [d.id for d in plain]


def test_pipeline_with_a_splitter_then_zcompress(compressor, store, tiny_compressor) -> None:
    splitter = CharacterTextSplitter(separator=" ", chunk_size=30, chunk_overlap=0)
    pipeline = DocumentCompressorPipeline(transformers=[splitter, compressor])
    retriever = ContextualCompressionRetriever(
        base_compressor=pipeline, base_retriever=store.as_retriever(search_kwargs={"k": 2})
    )
    got = retriever.invoke("compression")
    assert len(got) > 2 and all("zcompress_code" in d.metadata for d in got)
    assert all(tiny_compressor.decompress(d.metadata["zcompress_code"]) == d.page_content for d in got)
    joined = format_docs_for_zcompress(got)
    assert joined.count("zc1:") == len(got)


def test_eight_concurrent_async_calls_match_serial_calls(compressor, docs) -> None:
    batches = [[docs[i % len(docs)]] for i in range(8)]
    serial = [compressor.compress_documents(b, "q") for b in batches]

    async def run_all():
        return await asyncio.gather(*(compressor.acompress_documents(b, "q") for b in batches))

    assert asyncio.run(run_all()) == serial


def test_async_does_not_block_the_event_loop(compressor, docs, loop_watch) -> None:
    out = asyncio.run(loop_watch.run(compressor.acompress_documents(docs[:2], "q")))
    assert len(out) == 2
    loop_watch.check()


def test_pickles_and_rebuilds_from_fields(tiny_model_dir, docs) -> None:
    comp = ZCompressDocumentCompressor(model_name_or_path=str(tiny_model_dir), adapters=None, window=64)
    first = comp.compress_documents(docs[:2], "q")
    clone = pickle.loads(pickle.dumps(comp))
    assert clone.model_dump() == comp.model_dump()
    assert clone.compress_documents(docs[:2], "q") == first


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        ZCompressDocumentCompressor(mode="lossy")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ZCompressDocumentCompressor(batch_size=0)
    with pytest.raises(ValueError):
        ZCompressDocumentCompressor(compressor="not a compressor")
    with pytest.raises(ValueError, match="ratio must be > 0"):
        ZCompressDocumentCompressor(ratio=-1.0)


def test_latent_mode_without_adapters_is_a_clear_error(tiny_compressor, docs) -> None:
    comp = ZCompressDocumentCompressor(compressor=tiny_compressor, mode="latent", ratio=4.0)
    with pytest.raises(LatentUnavailableError):
        comp.compress_documents(docs[:2], "q")


def test_latent_mode_is_passed_through(tiny_latent_compressor, docs) -> None:
    comp = ZCompressDocumentCompressor(compressor=tiny_latent_compressor, mode="latent", ratio=4.0)
    out = comp.compress_documents(docs[:2], "q")
    assert len(out) == 2
    assert all(d.metadata["zcompress_codec"] == "latent" and d.page_content.startswith("zc1:") for d in out)
