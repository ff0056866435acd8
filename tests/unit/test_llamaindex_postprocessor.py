"""ZCompressNodePostprocessor on real LlamaIndex nodes, over the tiny model."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.schema import (  # noqa: E402
    Node,
    NodeRelationship,
    NodeWithScore,
    RelatedNodeInfo,
    TextNode,
)

from zcompress_integrations import ZCode  # noqa: E402
from zcompress_integrations.errors import ConfigError, LatentUnavailableError  # noqa: E402
from zcompress_integrations.llama_index import ZCompressNodePostprocessor  # noqa: E402
from zcompress_integrations.llama_index._common import STATS_KEYS  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Compression turns long text into a few tokens.",
    "LangChain and LlamaIndex retrieve documents; the model answers questions about them.",
    "Wikipedia paragraphs, news articles and agent memories are all plain English prose. 0123456789",
]


def _nodes() -> list[NodeWithScore]:
    out = []
    for i, text in enumerate(TEXTS):
        node = TextNode(
            text=text,
            id_=f"n{i}",
            metadata={"source": f"doc{i}.txt", "page": i},
            excluded_llm_metadata_keys=["page"],
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i}")},
        )
        out.append(NodeWithScore(node=node, score=1.0 - i / 10))
    return out


@pytest.fixture
def post(tiny_compressor):
    return ZCompressNodePostprocessor(compressor=tiny_compressor)


def test_one_compressed_node_per_node_with_provenance(post, tiny_compressor):
    nodes = _nodes()
    out = post.postprocess_nodes(nodes, query_str="who jumps?")
    assert [n.node.node_id for n in out] == ["n0", "n1", "n2"]
    assert [n.score for n in out] == [n.score for n in nodes]
    decoded = tiny_compressor.decompress_batch([n.node.metadata["zcompress_code"] for n in out])
    assert decoded == TEXTS
    for before, after in zip(nodes, out, strict=True):
        meta = after.node.metadata
        assert (
            meta["source"] == before.node.metadata["source"] and meta["page"] == before.node.metadata["page"]
        )
        assert after.node.relationships == before.node.relationships
        assert set(STATS_KEYS) <= set(meta)
        code = ZCode.from_string(meta["zcompress_code"])
        assert meta["zcompress_codec"] == "exact"
        assert (
            meta["zcompress_text_tokens"] == code.text_tokens and meta["zcompress_z_tokens"] == code.z_tokens
        )
        assert meta["zcompress_fingerprint"] == tiny_compressor.fingerprint.hex()
        # exact codes are not LLM-readable: the text stays, the code rides along, out of embed/LLM strings
        assert after.node.text == before.node.text
        assert "zcompress" not in after.node.get_content(metadata_mode="llm")
        assert "zcompress" not in after.node.get_content(metadata_mode="embed")
        assert "page" in after.node.excluded_llm_metadata_keys
        # the retrieved (stored) node is not modified
        assert not any(k.startswith("zcompress_") for k in before.node.metadata)


def test_content_form_code_puts_the_code_string(tiny_compressor):
    post = ZCompressNodePostprocessor(compressor=tiny_compressor, content_form="code")
    out = post.postprocess_nodes(_nodes())
    assert all(
        n.node.text.startswith("zc1:") and n.node.text == n.node.metadata["zcompress_code"] for n in out
    )
    assert tiny_compressor.decompress_batch([n.node.text for n in out]) == TEXTS


def test_latent_mode_gives_z_prompts(tiny_latent_compressor):
    post = ZCompressNodePostprocessor(compressor=tiny_latent_compressor, mode="latent", ratio=4.0)
    out = post.postprocess_nodes(_nodes())
    assert out and all(n.node.text.startswith("zc1:") for n in out)  # what ZCompressLLM reads as Z


def test_latent_mode_without_adapters_is_a_clear_error(tiny_compressor):
    post = ZCompressNodePostprocessor(compressor=tiny_compressor, mode="latent", ratio=4.0)
    with pytest.raises(LatentUnavailableError):
        post.postprocess_nodes(_nodes())


def test_empty_short_and_non_text_nodes_pass_through(tiny_compressor):
    post = ZCompressNodePostprocessor(compressor=tiny_compressor, min_chars=40)
    weird = TextNode.model_construct(
        text=123,
        id_="weird",
        metadata={},
        excluded_embed_metadata_keys=[],
        excluded_llm_metadata_keys=[],
        relationships={},
    )
    nodes = [
        NodeWithScore(node=TextNode(text="", id_="empty"), score=0.1),
        NodeWithScore(node=TextNode(text="short", id_="short"), score=0.2),
        NodeWithScore(node=Node(id_="multimodal"), score=0.3),
        NodeWithScore(node=weird, score=0.4),
        _nodes()[0],
    ]
    out = post.postprocess_nodes(nodes)
    assert [n.node.node_id for n in out] == ["empty", "short", "multimodal", "weird", "n0"]
    assert all(out[i] is nodes[i] for i in range(4))
    assert "zcompress_code" in out[4].node.metadata
    assert post.postprocess_nodes([]) == []


def test_node_longer_than_the_model_context(post, tiny_compressor):
    text = " ".join(TEXTS) * 25  # over the tiny model's 1024 positions
    assert tiny_compressor.count_tokens(text) > 1024
    out = post.postprocess_nodes([NodeWithScore(node=TextNode(text=text, id_="long"), score=None)])
    assert tiny_compressor.decompress(out[0].node.metadata["zcompress_code"]) == text


def test_stored_codes_reused_and_bad_ones_recompressed(post, tiny_compressor, caplog):
    first = post.postprocess_nodes(_nodes())
    good = first[0].node.metadata["zcompress_code"]
    # a valid stored code is reused as is
    nodes = _nodes()
    nodes[0].node.metadata["zcompress_code"] = good
    # a corrupted one, a foreign one (other model's fingerprint) and a stale one (another node's code)
    nodes[1].node.metadata["zcompress_code"] = good[:-6] + "AAAAAA"
    foreign = ZCode.from_string(first[2].node.metadata["zcompress_code"])
    foreign = dataclasses.replace(foreign, fingerprint=b"\x00\x01\x02\x03")
    nodes[2].node.metadata["zcompress_code"] = foreign.to_string()
    extra = NodeWithScore(
        node=TextNode(text=TEXTS[1] + " More.", id_="stale", metadata={"zcompress_code": good})
    )
    out = post.postprocess_nodes([*nodes, extra])
    assert len(out) == 4
    assert out[0].node.metadata["zcompress_code"] == good
    decoded = tiny_compressor.decompress_batch([n.node.metadata["zcompress_code"] for n in out])
    assert decoded == [n.node.text for n in out]
    assert "ignoring the stored Z code" in caplog.text


async def test_async_matches_sync_and_does_not_block(post):
    sync = post.postprocess_nodes(_nodes())
    out = await post.apostprocess_nodes(_nodes(), query_str="q")
    assert [n.node.metadata["zcompress_code"] for n in out] == [
        n.node.metadata["zcompress_code"] for n in sync
    ]


def test_options_are_checked(tiny_compressor):
    with pytest.raises(ConfigError, match="ratio"):
        ZCompressNodePostprocessor(compressor=tiny_compressor, ratio=4.0)
    with pytest.raises(ValueError, match="content_form"):
        ZCompressNodePostprocessor(compressor=tiny_compressor, content_form="prompt")  # gone: nothing read it
    with pytest.raises(ValueError, match="batch_size"):
        ZCompressNodePostprocessor(compressor=tiny_compressor, batch_size=0)


def test_serialisable_and_picklable(post, tiny_compressor):
    import pickle

    data = post.to_dict()
    assert data["class_name"] == ZCompressNodePostprocessor.class_name() == "ZCompressNodePostprocessor"
    assert data["model_name_or_path"] == tiny_compressor.settings["name_or_path"] and data["window"] == 64
    clone = pickle.loads(pickle.dumps(post))
    assert clone.to_dict() == data
    rebuilt = ZCompressNodePostprocessor.from_dict(data)
    assert rebuilt.compressor.settings == tiny_compressor.settings


def test_import_is_light():
    code = (
        "import sys, zcompress_integrations, zcompress_integrations.llama_index as z; "
        "assert 'llama_index' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
