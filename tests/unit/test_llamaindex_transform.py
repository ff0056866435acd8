"""ZCompressTransform in a real IngestionPipeline: cache hits, num_workers=2, async."""

from __future__ import annotations

import pickle

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document  # noqa: E402
from llama_index.core.ingestion import IngestionCache, IngestionPipeline  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402

from zcompress_integrations.errors import ConfigError  # noqa: E402
from zcompress_integrations.llama_index import ZCompressTransform  # noqa: E402
from zcompress_integrations.llama_index._common import STATS_KEYS  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "LangChain and LlamaIndex retrieve documents.",
    "Agent memories are plain English prose.",
    "0123456789",
]


def _docs() -> list[Document]:
    return [Document(text=t, id_=f"d{i}", metadata={"i": i}) for i, t in enumerate(TEXTS)]


@pytest.fixture
def counted(tiny_compressor, monkeypatch):
    """Count compress_batch calls on the shared tiny compressor."""
    calls = []
    real = tiny_compressor.compress_batch

    def compress_batch(texts, **kwargs):
        calls.append(len(texts))
        return real(texts, **kwargs)

    monkeypatch.setattr(tiny_compressor, "compress_batch", compress_batch)
    return calls


def _check(nodes, compressor) -> None:
    assert [n.get_content() for n in nodes] == TEXTS  # text untouched
    for n in nodes:
        assert set(STATS_KEYS) <= set(n.metadata)
        assert set(STATS_KEYS) <= set(n.excluded_embed_metadata_keys) & set(n.excluded_llm_metadata_keys)
    assert compressor.decompress_batch([n.metadata["zcompress_code"] for n in nodes]) == TEXTS


def test_pipeline_with_cache_second_run_is_a_hit(tiny_compressor, counted):
    cache = IngestionCache()
    transform = ZCompressTransform(compressor=tiny_compressor, min_chars=5)
    first = IngestionPipeline(transformations=[transform], cache=cache).run(documents=_docs())
    _check(first, tiny_compressor)
    assert counted == [4]  # one batch for all documents
    again = IngestionPipeline(
        transformations=[ZCompressTransform(compressor=tiny_compressor, min_chars=5)], cache=cache
    )
    second = again.run(documents=_docs())
    assert counted == [4]  # cache hit: nothing compressed
    assert [n.metadata["zcompress_code"] for n in second] == [n.metadata["zcompress_code"] for n in first]
    # a different setting is a different cache key
    from llama_index.core.ingestion.pipeline import get_transformation_hash

    other = ZCompressTransform(compressor=tiny_compressor, min_chars=6)
    assert get_transformation_hash(_docs(), other) != get_transformation_hash(_docs(), transform)
    assert get_transformation_hash(_docs(), transform) == get_transformation_hash(
        _docs(), again.transformations[0]
    )


def test_pipeline_num_workers_2_from_a_model_path(tiny_model_dir, tiny_compressor):
    transform = ZCompressTransform(model_name_or_path=str(tiny_model_dir), adapters=None, window=64)
    clone = pickle.loads(pickle.dumps(transform))
    assert clone.to_dict() == transform.to_dict()
    nodes = IngestionPipeline(transformations=[transform]).run(documents=_docs(), num_workers=2)
    _check(nodes, tiny_compressor)  # codes made in the workers decode here: same model, same fingerprint


async def test_acall_does_not_block_the_event_loop(tiny_compressor, loop_watch):
    transform = ZCompressTransform(compressor=tiny_compressor)
    nodes = await loop_watch.run(IngestionPipeline(transformations=[transform]).arun(documents=_docs()))
    _check(nodes, tiny_compressor)
    loop_watch.check()


def test_bad_nodes_pass_through_and_stored_codes_are_kept(tiny_compressor, counted):
    transform = ZCompressTransform(compressor=tiny_compressor)
    nodes = transform([TextNode(text="", id_="empty"), *_docs()])
    assert len(nodes) == 5 and "zcompress_code" not in nodes[0].metadata
    codes = [n.metadata["zcompress_code"] for n in nodes[1:]]
    # a rerun keeps valid codes; a corrupted one is replaced, never left behind or crashing
    nodes[1].metadata["zcompress_code"] = "zc1:not-a-code"
    again = transform(nodes)
    assert counted == [4, 1]
    assert [n.metadata["zcompress_code"] for n in again[2:]] == codes[1:]
    assert tiny_compressor.decompress_batch([again[1].metadata["zcompress_code"]]) == [TEXTS[0]]


def test_settings_are_plain_fields(tiny_compressor):
    transform = ZCompressTransform(compressor=tiny_compressor, batch_size=8)
    data = transform.to_dict()
    assert data["class_name"] == "ZCompressTransform"
    assert {k: data[k] for k in ("window", "adapters", "mode", "batch_size")} == {
        "window": 64,
        "adapters": None,
        "mode": "exact",
        "batch_size": 8,
    }
    assert ZCompressTransform.from_dict(data).to_dict() == data
    with pytest.raises(ConfigError, match="ratio"):
        ZCompressTransform(compressor=tiny_compressor, ratio=3.0)
