"""Pieces every LangChain adapter shares: the options model, the per-process compressor cache, metadata keys.

Nothing here imports torch; LangChain's own modules are imported by the adapter files that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from zcompress_integrations._integration_common import (
    META_CODE,
    META_CODEC,
    META_FINGERPRINT,
    META_PREFIX,
    META_RATIO,
    META_TEXT_TOKENS,
    META_Z_TOKENS,
    ZCompressSettings,
    shared_compressor,
)
from zcompress_integrations.errors import ConfigError, CorruptCodeError, ModelMismatchError

if TYPE_CHECKING:
    from zcompress_integrations.core.compressor import ZCompressor
    from zcompress_integrations.core.zcode import ZCode

__all__ = [
    "META_PREFIX",
    "META_CODE",
    "META_CODEC",
    "META_RATIO",
    "META_TEXT_TOKENS",
    "META_Z_TOKENS",
    "META_FINGERPRINT",
    "META_SKIPPED",
    "META_TEXT",
    "ZCompressOptions",
    "shared_compressor",
]

META_SKIPPED = "zcompress_skipped"  # why a document was left as text (e.g. "empty", "shorter than min_chars")
META_TEXT = (
    "zcompress_text"  # the original text, when the page content was replaced and keep_text asks for it
)
META_REPLACED = "zcompress_replaced_code"  # why a code found in metadata was not reused


class ZCompressBackend(ZCompressSettings):
    """Which model to use: the settings fields (loaded lazily, once per process) or a ready :class:`ZCompressor`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), populate_by_name=True)

    compressor: Any = Field(default=None, exclude=True, repr=False)
    """An existing ``ZCompressor`` to use instead of building one from the settings fields."""

    _zc: Any = PrivateAttr(default=None)

    @field_validator("compressor")
    @classmethod
    def _check_compressor(cls, value: Any) -> Any:
        from zcompress_integrations.core.compressor import ZCompressor

        if value is not None and not isinstance(value, ZCompressor):
            raise ConfigError(f"compressor must be a ZCompressor or None; got {type(value).__name__}")
        return value

    @property
    def zcompressor(self) -> ZCompressor:
        """The compressor (built from the fields on first use, then shared with same-settings adapters)."""
        if self.compressor is not None:
            return self.compressor
        if self._zc is None:
            self._zc = shared_compressor(self.compressor_settings())
        return self._zc

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        # the lazily built compressor is rebuilt from the fields in the receiving process
        private = dict(state.get("__pydantic_private__") or {})
        private["_zc"] = None
        state["__pydantic_private__"] = private
        return state


class ZCompressOptions(ZCompressBackend):
    """How documents are compressed (shared by the document compressor and the transformer)."""

    mode: Literal["exact", "latent"] = "exact"
    """``"exact"``: lossless entropy codec (Z-tokens are opaque bits; the LLM reads the text). ``"latent"``: learned
    Z-tokens the Z-aware model reads directly (needs trained adapters)."""
    ratio: float | None = None
    """Target text-tokens per Z-token for ``mode="latent"``; must stay ``None`` for ``"exact"``."""
    min_chars: int = Field(default=0, ge=0)
    """Documents with fewer characters are left as text (and marked with ``zcompress_skipped``); empty documents
    are always left as text."""
    batch_size: int = Field(default=32, ge=1)
    """Texts coded side by side in one ``compress_batch`` group."""
    keep_text: bool = True
    """Keep the original text as ``page_content``. When ``False``, the page content becomes the code: the Z-token
    prompt form for latent codes, the ``zc1:`` string for exact codes."""

    @field_validator("ratio")
    @classmethod
    def _check_ratio(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ConfigError(f"ratio must be > 0 or None; got {value}")
        return value


def parse_code(value: Any) -> ZCode:
    """A ZCode from metadata (string, bytes, dict or ZCode); raises :class:`CorruptCodeError` with the cause."""
    from zcompress_integrations.core.zcode import ZCode

    try:
        return ZCode.load(value)
    except CorruptCodeError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptCodeError(f"not a valid Z code ({type(value).__name__}): {exc}") from exc


def check_fingerprint(code: ZCode, zc: ZCompressor) -> None:
    """Exact codes decode only on the backbone that made them."""
    if code.codec == "exact" and code.fingerprint != zc.fingerprint:
        raise ModelMismatchError(
            f"the Z code was made by backbone {code.fingerprint.hex()}, but this compressor's backbone is "
            f"{zc.fingerprint.hex()} ({zc.model_name})"
        )
