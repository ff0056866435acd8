"""LangChain adapters over :class:`~zcompress_integrations.ZCompressor` (install the ``langchain`` extra).

Importing this package is cheap; each adapter (and LangChain itself) is imported on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zcompress_integrations.langchain.chat_model import ChatZCompress
    from zcompress_integrations.langchain.document_compressor import ZCompressDocumentCompressor
    from zcompress_integrations.langchain.document_transformer import ZCompressDocumentTransformer
    from zcompress_integrations.langchain.formatting import format_docs_for_zcompress, zcompress_formatter
    from zcompress_integrations.langchain.memory import (
        ZCompressChatMessageHistory,
        ZCompressSummarizer,
        expand_codes,
        recover_messages,
        zcompress_token_counter,
    )
    from zcompress_integrations.langchain.middleware import ZCompressDecodeMiddleware

__all__ = [
    "ChatZCompress",
    "ZCompressDocumentCompressor",
    "ZCompressDocumentTransformer",
    "ZCompressChatMessageHistory",
    "ZCompressSummarizer",
    "ZCompressDecodeMiddleware",
    "expand_codes",
    "format_docs_for_zcompress",
    "zcompress_formatter",
    "recover_messages",
    "zcompress_token_counter",
]

_WHERE = {
    "ChatZCompress": "chat_model",
    "ZCompressDocumentCompressor": "document_compressor",
    "ZCompressDocumentTransformer": "document_transformer",
    "ZCompressChatMessageHistory": "memory",
    "ZCompressSummarizer": "memory",
    "ZCompressDecodeMiddleware": "middleware",
    "expand_codes": "memory",
    "recover_messages": "memory",
    "zcompress_token_counter": "memory",
    "format_docs_for_zcompress": "formatting",
    "zcompress_formatter": "formatting",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'zcompress_integrations.langchain' has no attribute {name!r}")
    try:
        mod = importlib.import_module(f"zcompress_integrations.langchain.{module}")
    except ImportError as exc:
        if "langchain" in str(exc):
            raise ImportError(
                f"{name} needs LangChain: pip install 'zcompress-integrations[langchain]' ({exc})"
            ) from exc
        raise
    return getattr(mod, name)
