"""``ZCompressDocumentTransformer``: compress documents once, at indexing time (a LangChain document transformer)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.documents import BaseDocumentTransformer, Document

from zcompress_integrations._integration_common import RayHandoff
from zcompress_integrations.langchain._common import ZCompressOptions
from zcompress_integrations.langchain._documents import acompress_documents, compress_documents

if TYPE_CHECKING:
    from zcompress_integrations.core.zcode import ZCode

__all__ = ["ZCompressDocumentTransformer"]


class ZCompressDocumentTransformer(ZCompressOptions, RayHandoff, BaseDocumentTransformer):
    """Compress documents without a query, typically before they are stored, so retrieval costs no compression.

    Each output keeps the input's ``id`` and metadata and stores the code in ``metadata["zcompress_code"]`` (plus
    the same ``zcompress_*`` figures as :class:`ZCompressDocumentCompressor`). With ``keep_text=True`` (default)
    ``page_content`` is unchanged, which is what a vector store needs to embed the text. With ``keep_text=False``
    the text is dropped and ``page_content`` becomes the code itself: the ``zc1:`` string for exact codes (decoded
    exactly by ``ZCompressor.decompress``; read as Z-tokens by ``ChatZCompress`` when latent).

    With ``ray_workers=N`` each call's documents are compressed on Ray Data by ``N`` actors (this machine's local
    cluster, or ``ray_address``) instead of in this process, with the same codes (``docs/corpus.md``).

    Instantiate:
        .. code-block:: python

            from zcompress_integrations.langchain import ZCompressDocumentTransformer

            transformer = ZCompressDocumentTransformer(mode="exact", keep_text=True)

    Invoke:
        .. code-block:: python

            docs = transformer.transform_documents(splitter.split_documents(raw_docs))
            vector_store.add_documents(docs)  # codes travel in metadata

    Async:
        .. code-block:: python

            docs = await transformer.atransform_documents(docs)
    """

    @classmethod
    def class_name(cls) -> str:
        return "ZCompressDocumentTransformer"

    def _content(self, code: ZCode, text: str | None) -> str:
        if self.keep_text and text is not None:
            return text
        return code.to_string()

    def transform_documents(self, documents: Sequence[Document], **kwargs: Any) -> Sequence[Document]:
        """Compress ``documents``; extra keyword arguments are accepted and ignored."""
        return compress_documents(self, documents, self._content, store_text=False, compress=self._on_ray())

    async def atransform_documents(self, documents: Sequence[Document], **kwargs: Any) -> Sequence[Document]:
        """:meth:`transform_documents` as one request on the compressor's batching scheduler (same codes); with
        ``ray_workers``, the Ray run in a worker thread."""
        if self.ray_workers:
            return await asyncio.to_thread(self.transform_documents, documents)
        return await acompress_documents(self, documents, self._content, store_text=False)

    def _on_ray(self) -> Callable[[list[str]], list[ZCode]] | None:
        if not self.ray_workers:
            return None
        return lambda texts: self.ray_compress(
            self.zcompressor, texts, self.mode, self.ratio, self.batch_size
        )
