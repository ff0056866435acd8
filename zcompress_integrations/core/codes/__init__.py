"""Latent code kinds: one protocol (:class:`CodeKind`), one module per kind.

The token-group code (``token_groups``) is the shipped default. A learned code would be a second module here
and one more entry in :data:`CODE_KINDS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zcompress_integrations.core.codes.base import CodeKind, ZLayout

if TYPE_CHECKING:
    from zcompress_integrations.core.latent import LatentConfig

__all__ = ["CodeKind", "ZLayout", "CODE_KINDS", "build_code"]

CODE_KINDS = ("token_groups",)


def build_code(config: LatentConfig, embedding: Any, state: dict[str, Any] | None = None) -> CodeKind:
    """The code kind ``config.code`` over a backbone's input embedding layer, with saved ``state`` when loading."""
    from zcompress_integrations.core.codes.token_groups import TokenGroupCode

    kinds = {"token_groups": TokenGroupCode}
    code_cls = kinds[config.code]
    return code_cls.from_config(config, embedding, state)
