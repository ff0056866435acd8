"""Latent code kinds: one protocol (:class:`CodeKind`), one module per kind.

The token-group code (``token_groups``) is the shipped default; the learned code (``learned``), in which the
backbone writes its own Z-tokens from a finite vocabulary, is the second kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zcompress_integrations.core.codes.base import CodeKind, ZLayout

if TYPE_CHECKING:
    from zcompress_integrations.core.latent import LatentConfig

__all__ = ["CodeKind", "ZLayout", "CODE_KINDS", "build_code", "code_class"]

CODE_KINDS = ("token_groups", "learned")


def code_class(name: str) -> Any:
    """The class of the code kind ``name`` (one of :data:`CODE_KINDS`)."""
    if name == "learned":
        from zcompress_integrations.core.codes.learned import LearnedCode

        return LearnedCode
    from zcompress_integrations.core.codes.token_groups import TokenGroupCode

    return TokenGroupCode


def build_code(config: LatentConfig, embedding: Any, state: dict[str, Any] | None = None) -> CodeKind:
    """The code kind ``config.code`` over a backbone's input embedding layer, with saved ``state`` when loading."""
    return code_class(config.code).from_config(config, embedding, state)
