"""``ZCompressDocumentTransformer``: compress documents once, at indexing time (a LangChain document transformer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.documents import BaseDocumentTransformer, Document

from zcompress_integrations.langchain._common import ZCompressOptions
from zcompress_integrations.langchain._documents import acompress_documents, compress_documents

if TYPE_CHECKING:
    from zcompress_integrations.core.zcode import ZCode

__all__ = ["ZCompressDocumentTransformer"]


class ZCompressDocumentTransformer(ZCompressOptions, BaseDocumentTransformer):
    """Compress documents without a query, typically before they are stored, so retrieval costs no compression.

    Each output keeps the input's ``id`` and metadata and stores the code in ``metadata["zcompress_code"]`` (plus
    the same ``zcompress_*`` figures as :class:`ZCompressDocumentCompressor`). With ``keep_text=True`` (default)
    ``page_content`` is unchanged, which is what a vector store needs to embed the text. With ``keep_text=False``
    the text is dropped and ``page_content`` becomes the code itself: the ``zc1:`` string for exact codes (decoded
    exactly by ``ZCompressor.decompress``; read as Z-tokens by ``ChatZCompress`` when latent).

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
        return compress_documents(self, documents, self._content, store_text=False)

    async def atransform_documents(self, documents: Sequence[Document], **kwargs: Any) -> Sequence[Document]:
        """:meth:`transform_documents` as one request on the compressor's batching scheduler (same codes)."""
        return await acompress_documents(self, documents, self._content, store_text=False)
