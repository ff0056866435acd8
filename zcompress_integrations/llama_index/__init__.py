"""LlamaIndex integration: Z-token node postprocessor, ingestion transform, Z-aware LLM and memory block.

Needs the ``llamaindex`` extra (``pip install "zcompress-integrations[llamaindex]"``). Importing this package is
cheap; each class (and llama_index itself) loads on first attribute access.

    from zcompress_integrations.llama_index import ZCompressNodePostprocessor, ZCompressLLM
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "ZCompressNodePostprocessor",
    "ZCompressTransform",
    "ZCompressLLM",
    "ZCompressMemoryBlock",
]

_WHERE = {
    "ZCompressNodePostprocessor": "postprocessor",
    "ZCompressTransform": "transform",
    "ZCompressLLM": "llm",
    "ZCompressMemoryBlock": "memory",
}

if TYPE_CHECKING:
    from zcompress_integrations.llama_index.llm import ZCompressLLM
    from zcompress_integrations.llama_index.memory import ZCompressMemoryBlock
    from zcompress_integrations.llama_index.postprocessor import ZCompressNodePostprocessor
    from zcompress_integrations.llama_index.transform import ZCompressTransform


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        try:
            module = importlib.import_module(f"{__name__}.{_WHERE[name]}")
        except ImportError as exc:  # llama_index missing
            if "llama_index" not in str(exc):
                raise
            raise ImportError(
                f"{name} needs llama-index-core: pip install 'zcompress-integrations[llamaindex]'"
            ) from exc
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
