"""`ZCompressNodePostprocessor`: retrieved nodes become Z-compressed nodes, one for one."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from llama_index.core.bridge.pydantic import Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle

from zcompress_integrations.core.zcode import ZCode
from zcompress_integrations.errors import ConfigError
from zcompress_integrations.llama_index._common import (
    CompressorSettings,
    add_code_metadata,
    node_text,
    stored_code,
)

__all__ = ["ZCompressNodePostprocessor"]

logger = logging.getLogger(__name__)


class ZCompressNodePostprocessor(CompressorSettings, BaseNodePostprocessor):
    """Compress each retrieved node into Z-tokens, keeping its id, score, metadata and relationships.

    Nodes are never glued together, so citations and provenance survive. Each compressed node is a *copy* (the
    index's stored nodes are not touched) whose metadata gains ``zcompress_code`` (the ``zc1:`` code string),
    ``zcompress_codec``, ``zcompress_ratio``, ``zcompress_text_tokens``, ``zcompress_z_tokens`` and
    ``zcompress_fingerprint``; those keys are excluded from the embedding and LLM metadata strings.

    What the node's *content* becomes (``content_form``):

    * ``"auto"`` (default): latent codes -> ``"code"``; exact codes -> ``"text"``. Exact codes are arithmetic-coded
      bits, not something any LLM can read, so by default the text stays readable for every LLM and the code rides
      along in metadata (for storage, transport, or a Z-aware reader).
    * ``"code"``: the ``zc1:`` code string. :class:`~zcompress_integrations.llama_index.ZCompressLLM` finds these in
      its prompt and reads them as compressed context (decoding exact ones exactly); other LLMs cannot.
    * ``"text"``: the original text.

    Nodes shorter than ``min_chars``, empty nodes and nodes without text (images, non-text content) pass through
    unchanged. A code already in the node's metadata (e.g. from :class:`ZCompressTransform`) is reused when it is
    valid, made by this model, in this mode and still matches the text; a damaged or foreign one is ignored with a
    warning and the text is compressed again: no node is ever dropped.

    Setup:
        ``pip install "zcompress-integrations[llamaindex]"``

    Instantiate:
        .. code-block:: python

            from zcompress_integrations.llama_index import ZCompressNodePostprocessor

            post = ZCompressNodePostprocessor(mode="exact", content_form="code", min_chars=200)

    Invoke:
        .. code-block:: python

            engine = index.as_query_engine(node_postprocessors=[post])
            nodes = post.postprocess_nodes(retrieved, query_str="...")

    Async:
        .. code-block:: python

            nodes = await post.apostprocess_nodes(retrieved, query_str="...")  # runs in a worker thread
    """

    mode: Literal["exact", "latent"] = Field(
        default="exact", description="Codec: 'exact' (lossless) or 'latent'."
    )
    ratio: float | None = Field(default=None, gt=1.0, description="Target ratio for mode='latent'.")
    min_chars: int = Field(default=0, ge=0, description="Nodes with fewer characters pass through unchanged.")
    batch_size: int = Field(default=32, ge=1, description="Texts compressed side by side per batch.")
    content_form: Literal["auto", "text", "code"] = Field(
        default="auto", description="What the node's content becomes; see the class docstring."
    )

    def _check_options(self) -> None:
        if self.mode == "exact" and self.ratio is not None:
            raise ConfigError(
                "ratio applies to mode='latent'; the exact codec's ratio is set by the text itself"
            )

    @classmethod
    def class_name(cls) -> str:
        return "ZCompressNodePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        codes, todo = self._plan(nodes)
        if todo:
            made = self.compressor.compress_batch(
                [t for _, t in todo],
                mode=self.mode,
                ratio=self.ratio if self.mode == "latent" else None,
                batch_size=self.batch_size,
            )
            codes.update({i: code for (i, _), code in zip(todo, made, strict=True)})
        return self._replaced(nodes, codes)

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """:meth:`_postprocess_nodes` as one request on the compressor's batching scheduler (same codes)."""
        codes, todo = await asyncio.to_thread(self._plan, nodes)  # the fingerprint check may load the model
        if todo:
            made = await self.compressor.acompress_batch(
                [t for _, t in todo],
                mode=self.mode,
                ratio=self.ratio if self.mode == "latent" else None,
                batch_size=self.batch_size,
            )
            codes.update({i: code for (i, _), code in zip(todo, made, strict=True)})
        return self._replaced(nodes, codes)

    def _plan(self, nodes: list[NodeWithScore]) -> tuple[dict[int, ZCode], list[tuple[int, str]]]:
        """(stored codes to reuse by position, (position, text) of the nodes to compress)."""
        todo: list[tuple[int, str]] = []  # (position, text)
        codes: dict[int, ZCode] = {}
        # exact codes carry the backbone's fingerprint; latent ones the adapters' too (checked when decoded)
        check = self.mode == "exact" and any(self._text_of(n) is not None for n in nodes)
        fingerprint = self.compressor.fingerprint if check else None
        for i, item in enumerate(nodes):
            text = self._text_of(item)
            if text is None:
                continue
            code = stored_code(item.node, text, mode=self.mode, fingerprint=fingerprint)
            if code is not None:
                codes[i] = code
            else:
                todo.append((i, text))
        return codes, todo

    def _replaced(self, nodes: list[NodeWithScore], codes: dict[int, ZCode]) -> list[NodeWithScore]:
        out = list(nodes)
        for i, code in codes.items():
            out[i] = NodeWithScore(node=self._compressed_copy(nodes[i].node, code), score=nodes[i].score)
        return out

    # ---- helpers -------------------------------------------------------------------------------------------
    def _text_of(self, item: NodeWithScore) -> str | None:
        return node_text(item.node, self.min_chars)

    def _compressed_copy(self, node: BaseNode, code: ZCode) -> BaseNode:
        form = self.content_form
        if form == "auto":
            form = "code" if code.codec == "latent" else "text"
        new = (
            node.model_copy()
        )  # shallow: same id, relationships, embedding; own metadata and key lists below
        new.metadata = dict(node.metadata)
        new.excluded_embed_metadata_keys = list(node.excluded_embed_metadata_keys)
        new.excluded_llm_metadata_keys = list(node.excluded_llm_metadata_keys)
        add_code_metadata(new, code)
        if form == "code":
            new.set_content(code.to_string())
        return new
