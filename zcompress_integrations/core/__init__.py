"""Framework-free core: backbone, codecs, ZCode, training. Nothing here imports LangChain or LlamaIndex."""

from zcompress_integrations.core.zcode import ZCode

__all__ = ["ZCode"]
