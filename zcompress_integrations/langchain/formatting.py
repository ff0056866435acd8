"""Turn retrieved documents into text a ``ChatZCompress`` prompt carries, and find codes in messages again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zcompress_integrations._integration_common import CODE_PATTERN, META_CODE, find_codes

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from langchain_core.runnables import Runnable

    from zcompress_integrations.langchain.document_compressor import ZCompressDocumentCompressor

__all__ = ["format_docs_for_zcompress", "zcompress_formatter", "ZCODE_PATTERN", "find_codes"]

ZCODE_PATTERN = CODE_PATTERN
"""A Z code in string form (``ZCode.to_string()``) inside free text (the pattern both frameworks use)."""


def format_docs_for_zcompress(docs: Sequence[Document], separator: str = "\n\n") -> str:
    """Join documents for a prompt: a document with a code contributes its ``zc1:`` string, others their text.

    This is the drop-in replacement for the usual ``"\\n\\n".join(d.page_content for d in docs)`` step of a RAG
    chain feeding :class:`ChatZCompress`, which finds the codes in the message and feeds them as context.
    """
    parts = []
    for doc in docs:
        code = doc.metadata.get(META_CODE)
        parts.append(code if isinstance(code, str) and ZCODE_PATTERN.fullmatch(code) else doc.page_content)
    return separator.join(parts)


def zcompress_formatter(compressor: ZCompressDocumentCompressor | None = None, **options: Any) -> Runnable:
    """A Runnable ``list[Document] -> str`` that compresses documents lacking a code, then formats them.

    ``retriever | format_docs`` becomes ``retriever | zcompress_formatter(compressor)``: the one changed line.
    Without ``compressor``, one is built from ``options`` (the :class:`ZCompressDocumentCompressor` fields).
    """
    from langchain_core.runnables import RunnableLambda

    from zcompress_integrations.langchain.document_compressor import ZCompressDocumentCompressor

    comp = compressor if compressor is not None else ZCompressDocumentCompressor(**options)

    def _format(docs: Sequence[Document]) -> str:
        return format_docs_for_zcompress(comp.compress_documents(docs, ""))

    async def _aformat(docs: Sequence[Document]) -> str:
        return format_docs_for_zcompress(await comp.acompress_documents(docs, ""))

    return RunnableLambda(_format, afunc=_aformat, name="zcompress_formatter")
