"""zcompress: an off-the-shelf LLM as a token compressor and decompressor.

Importing this package is fast: torch, transformers, LangChain and LlamaIndex load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zcompress_integrations.core.zcode import ZCode
from zcompress_integrations.errors import (
    BackboneLoadError,
    ChecksumMismatchError,
    ConfigError,
    CorruptCodeError,
    LatentUnavailableError,
    ModelMismatchError,
    SchedulerBusyError,
    UnsupportedTextError,
    ZCompressError,
)

__version__ = "0.1.0"
__all__ = [
    "ZCompressor",
    "ZCode",
    "ZCompressError",
    "ConfigError",
    "BackboneLoadError",
    "CorruptCodeError",
    "ModelMismatchError",
    "ChecksumMismatchError",
    "UnsupportedTextError",
    "LatentUnavailableError",
    "SchedulerBusyError",
    "__version__",
]

if TYPE_CHECKING:
    from zcompress_integrations.core.compressor import ZCompressor


def __getattr__(name: str) -> Any:
    # ZCompressor's module is light, but keep the door open for lazy loading of heavier pieces.
    if name == "ZCompressor":
        from zcompress_integrations.core.compressor import ZCompressor

        return ZCompressor
    raise AttributeError(f"module 'zcompress_integrations' has no attribute {name!r}")
