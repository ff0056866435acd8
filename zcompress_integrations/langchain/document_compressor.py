"""``ZCompressDocumentCompressor``: compress retrieved documents into Z codes (a LangChain document compressor)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import Field

from zcompress_integrations.langchain._common import ZCompressOptions
from zcompress_integrations.langchain._documents import acompress_documents, compress_documents

if TYPE_CHECKING:
    from langchain_core.callbacks import Callbacks

    from zcompress_integrations.core.zcode import ZCode

__all__ = ["ZCompressDocumentCompressor"]


def _query_time_content(code: ZCode, text: str | None) -> str:
    # Exact codes are arithmetic-coded bits that no LLM can read, so the page keeps the text; a latent code's zc1:
    # string is what ChatZCompress reads as Z-tokens, so the page becomes that.
    if code.codec == "latent":
        return code.to_string()
    return text if text is not None else code.to_string()


class ZCompressDocumentCompressor(ZCompressOptions, BaseDocumentCompressor):
    """Compress retrieved documents into Z codes, one output per input, in order.

    The query is not used: a Z code depends on the document only, so codes made at indexing time (see
    :class:`ZCompressDocumentTransformer`) are reused here at no cost. Each output keeps the input's ``id`` and
    metadata and adds ``zcompress_code`` (``ZCode.to_string()``), ``zcompress_codec``, ``zcompress_ratio``,
    ``zcompress_text_tokens``, ``zcompress_z_tokens`` and ``zcompress_fingerprint``.

    ``page_content``: for latent codes, the Z-token prompt form (``"<z_12><z_7>..."``), which the Z-aware model
    reads; for exact codes, the original text, because exact codes are opaque bits no LLM can read
    (:class:`ChatZCompress` reads ``zcompress_code`` through :func:`format_docs_for_zcompress` either way).
    Documents shorter than ``min_chars`` (and empty ones) stay text, marked ``zcompress_skipped``.

    Setup:
        ``pip install "zcompress-integrations[langchain]"``

    Instantiate:
        .. code-block:: python

            from zcompress_integrations.langchain import ZCompressDocumentCompressor

            compressor = ZCompressDocumentCompressor(mode="exact")  # embedded SmolLM2-135M
            # or reuse a loaded model: ZCompressDocumentCompressor(compressor=zc)

    Invoke:
        .. code-block:: python

            from langchain_classic.retrievers import ContextualCompressionRetriever

            retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
            docs = retriever.invoke("what is compression?")
            docs[0].metadata["zcompress_code"]  # 'zc1:...'

    Async:
        .. code-block:: python

            docs = await compressor.acompress_documents(docs, query)  # on the compressor's batching scheduler
    """

    keep_text: bool = False
    """Also store the original text under ``zcompress_text`` when ``page_content`` no longer holds it (latent)."""
    min_chars: int = Field(default=0, ge=0)
    """Documents with fewer characters are left as text, marked ``zcompress_skipped``; empty ones always are."""

    @classmethod
    def class_name(cls) -> str:
        return "ZCompressDocumentCompressor"

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Compress ``documents`` (``query`` is not used; see the class docstring)."""
        return compress_documents(self, documents, _query_time_content, store_text=self.keep_text)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """:meth:`compress_documents` as one request on the compressor's batching scheduler (same codes)."""
        return await acompress_documents(self, documents, _query_time_content, store_text=self.keep_text)
