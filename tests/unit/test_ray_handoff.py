"""The ingestion adapters hand a batch to Ray Data (``ray_workers=N``): the LlamaIndex transform and the LangChain
document transformer on a local Ray cluster with the tiny model get codes of the same backbone that decode to
every document, once, in order (not byte-equal to the in-process codes: an exact code records the batch layout it
was made in, and Ray batches the texts its own way); settings the actors cannot reproduce are refused. Skipped
without Ray."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from zcompress_integrations.errors import ConfigError

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression turns long text into a few tokens.",
    "café au lait, 0123456789",
    "Wikipedia is a free online encyclopedia written by volunteers.",
    "A fifth document, so that two parts hold them.",
]


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"dtype": "bfloat16"}, "dtype"),
        ({"quantization": "4bit"}, "quantization"),
        ({"model_kwargs": {"revision": "x"}}, "model_kwargs"),
        ({"device": "cuda"}, "ray_num_gpus_per_worker"),
        ({"device": "mps"}, "CPU or CUDA"),
        ({"model_name_or_path": "in-memory"}, "in-memory"),
    ],
)
def test_settings_the_actors_cannot_reproduce_are_refused(settings: dict[str, Any], match: str) -> None:
    from zcompress_integrations.corpus.handoff import check_settings

    with pytest.raises(ConfigError, match=match):
        check_settings({"model_name_or_path": None, "device": "auto", **settings}, num_gpus_per_worker=0)
    check_settings({"model_name_or_path": "m", "device": "cuda"}, num_gpus_per_worker=1)  # allowed


@pytest.fixture(scope="module")
def local_ray() -> Any:
    ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_llama_index_transform_on_ray_matches_in_process(local_ray: Any, tiny_model_dir: Path) -> None:
    from llama_index.core.schema import TextNode

    from zcompress_integrations.llama_index import ZCompressTransform

    settings = dict(model_name_or_path=str(tiny_model_dir), adapters=None, window=64, batch_size=2)
    local = ZCompressTransform(**settings)([TextNode(text=t) for t in TEXTS])
    nodes = [TextNode(text=t) for t in TEXTS] + [TextNode(text="")]
    on_ray = ZCompressTransform(**settings, ray_workers=1, ray_num_cpus_per_worker=0.5)(nodes)
    assert "zcompress_code" not in on_ray[5].metadata  # empty: no code, as in process
    zc = ZCompressTransform(**settings).compressor
    assert [zc.decompress(n.metadata["zcompress_code"]) for n in on_ray[:5]] == TEXTS
    for key in ("zcompress_codec", "zcompress_fingerprint", "zcompress_text_tokens"):
        assert [n.metadata[key] for n in on_ray[:5]] == [n.metadata[key] for n in local]


async def test_langchain_transformer_on_ray_matches_in_process(
    local_ray: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from langchain_core.documents import Document

    from zcompress_integrations.langchain import ZCompressDocumentTransformer

    settings = dict(model_name_or_path=str(tiny_model_dir), adapters=None, window=64, batch_size=2)
    docs = [Document(page_content=t, id=f"d{i}") for i, t in enumerate(TEXTS)]
    local = ZCompressDocumentTransformer(**settings).transform_documents(docs)
    work = tmp_path / "run"
    ray_kw = dict(ray_workers=1, ray_num_cpus_per_worker=0.5, ray_workdir=str(work))
    on_ray = await ZCompressDocumentTransformer(**settings, **ray_kw).atransform_documents(docs)
    assert [d.id for d in on_ray] == [d.id for d in docs]
    zc = ZCompressDocumentTransformer(**settings).zcompressor
    assert [zc.decompress(d.metadata["zcompress_code"]) for d in on_ray] == TEXTS
    assert {d.metadata["zcompress_fingerprint"] for d in on_ray} == {
        d.metadata["zcompress_fingerprint"] for d in local
    }
    # the kept run resumes: calling again compresses nothing and returns the same codes
    again = ZCompressDocumentTransformer(**settings, **ray_kw).transform_documents(docs)
    assert [d.metadata["zcompress_code"] for d in again] == [d.metadata["zcompress_code"] for d in on_ray]
    from zcompress_integrations.corpus.parts import SUMMARY_NAME

    last_run = json.loads((work / "codes" / SUMMARY_NAME).read_text())["last_run"]
    assert last_run["docs_compressed"] == 0 and last_run["docs_skipped"] == len(TEXTS)
    with pytest.raises(ConfigError, match="other texts"):
        ZCompressDocumentTransformer(**settings, **ray_kw).transform_documents(docs[:2])
