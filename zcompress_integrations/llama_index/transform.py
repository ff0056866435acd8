"""`ZCompressTransform`: compress nodes at ingestion and keep the code in their metadata."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field
from llama_index.core.schema import BaseNode, TransformComponent

from zcompress_integrations._integration_common import RayHandoff
from zcompress_integrations.errors import ConfigError
from zcompress_integrations.llama_index._common import (
    CompressorSettings,
    add_code_metadata,
    node_text,
    stored_code,
)

__all__ = ["ZCompressTransform"]

logger = logging.getLogger(__name__)


class ZCompressTransform(CompressorSettings, RayHandoff, TransformComponent):
    """An ``IngestionPipeline`` step that compresses each node's text and stores the code in its metadata.

    The node's text is left as it is (embedding models and splitters after this step still read text); the
    ``zcompress_*`` keys (code string, codec, ratio, token counts, fingerprint) are added to the metadata and
    excluded from the embedding and LLM metadata strings. :class:`ZCompressNodePostprocessor` reuses these codes
    at query time instead of compressing again.

    Every setting is a plain JSON field, so ``IngestionPipeline``'s cache key (built from ``to_dict()``) is stable:
    running the pipeline again on the same documents is a cache hit. The component pickles as its settings, so
    ``pipeline.run(num_workers=N)`` rebuilds it in each worker process from ``model_name_or_path`` (an in-memory
    model is pickled whole instead). ``acall`` queues on the compressor's batching scheduler and never blocks the event loop.

    Nodes without text, empty nodes and nodes shorter than ``min_chars`` pass through without a code; a node whose
    metadata already holds a valid code for its text keeps it.

    With ``ray_workers=N`` each call's nodes are compressed on Ray Data by ``N`` actors (this machine's local
    cluster, or ``ray_address``) instead of in this process, with the same codes (``docs/corpus.md``).

    Setup:
        ``pip install "zcompress-integrations[llamaindex]"``

    Instantiate:
        .. code-block:: python

            from llama_index.core.ingestion import IngestionPipeline
            from llama_index.core.node_parser import SentenceSplitter
            from zcompress_integrations.llama_index import ZCompressTransform

            pipeline = IngestionPipeline(transformations=[SentenceSplitter(), ZCompressTransform(min_chars=100)])

    Invoke:
        .. code-block:: python

            nodes = pipeline.run(documents=docs)            # or num_workers=4
            nodes[0].metadata["zcompress_code"]             # "zc1:..."

    Async:
        .. code-block:: python

            nodes = await pipeline.arun(documents=docs)
    """

    mode: Literal["exact", "latent"] = Field(
        default="exact", description="Codec: 'exact' (lossless) or 'latent'."
    )
    ratio: float | None = Field(default=None, gt=1.0, description="Target ratio for mode='latent'.")
    min_chars: int = Field(default=0, ge=0, description="Nodes with fewer characters get no code.")
    batch_size: int = Field(default=32, ge=1, description="Texts compressed side by side per batch.")
    show_progress_bar: bool = Field(default=False, description="Show a progress bar over batches.")

    def _check_options(self) -> None:
        if self.mode == "exact" and self.ratio is not None:
            raise ConfigError(
                "ratio applies to mode='latent'; the exact codec's ratio is set by the text itself"
            )

    @classmethod
    def class_name(cls) -> str:
        return "ZCompressTransform"

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        todo = self._todo(nodes)
        if todo:
            codes = self._compress([t for _, t in todo])
            for (node, _), code in zip(todo, codes, strict=True):
                add_code_metadata(node, code)
        return nodes

    def _compress(self, texts: list[str]) -> list[Any]:
        ratio = self.ratio if self.mode == "latent" else None
        if self.ray_workers:
            return self.ray_compress(self.compressor, texts, self.mode, ratio, self.batch_size)
        return self.compressor.compress_batch(
            texts,
            mode=self.mode,
            ratio=ratio,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress_bar,
        )

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """:meth:`__call__` as one request on the compressor's batching scheduler (same codes)."""
        todo = await asyncio.to_thread(self._todo, nodes)  # the fingerprint check may load the model
        if not todo:
            return nodes
        texts = [t for _, t in todo]
        if self.ray_workers:  # the Ray run blocks: keep it off the event loop
            codes = await asyncio.to_thread(self._compress, texts)
        else:
            codes = await self.compressor.acompress_batch(
                texts,
                mode=self.mode,
                ratio=self.ratio if self.mode == "latent" else None,
                batch_size=self.batch_size,
            )
        for (node, _), code in zip(todo, codes, strict=True):
            add_code_metadata(node, code)
        return nodes

    def _todo(self, nodes: Sequence[BaseNode]) -> list[tuple[BaseNode, str]]:
        """(node, text) of the nodes that need a code (none stored, or a stale one)."""
        texts = [self._text_of(node) for node in nodes]
        if not any(t is not None for t in texts):
            return []
        fingerprint = self.compressor.fingerprint if self.mode == "exact" else None
        return [
            (node, text)
            for node, text in zip(nodes, texts, strict=True)
            if text is not None and stored_code(node, text, mode=self.mode, fingerprint=fingerprint) is None
        ]

    def _text_of(self, node: BaseNode) -> str | None:
        return node_text(node, self.min_chars)
