"""Exceptions raised by zcompress. All derive from :class:`ZCompressError`."""

from __future__ import annotations

__all__ = [
    "ZCompressError",
    "CorruptCodeError",
    "ModelMismatchError",
    "ChecksumMismatchError",
    "UnsupportedTextError",
    "LatentUnavailableError",
    "BackboneLoadError",
    "ConfigError",
    "SchedulerBusyError",
]


class ZCompressError(Exception):
    """Base class of every error zcompress raises on purpose."""


class ConfigError(ZCompressError, ValueError):
    """A setting or argument has a value that is not allowed."""


class CorruptCodeError(ZCompressError, ValueError):
    """The bytes, string or JSON given as a Z code are truncated, damaged, forged or not a Z code at all.

    Raised at parse time, before any decoding, also for a code that declares sizes beyond
    :class:`~zcompress_integrations.core.zcode.CodeLimits` (a header claiming 2^40 tokens), and by the decoders when
    a code's content cannot be what its container says.
    """


class ModelMismatchError(ZCompressError):
    """The code was made by a different backbone or adapter set than the one asked to decode it."""


class ChecksumMismatchError(ZCompressError):
    """Decoding finished but the result does not match the checksum of the original text.

    Raised instead of returning wrong text: the code was decoded on hardware or software that computes the
    model's probabilities differently from the machine that encoded it, or the code is damaged.
    """


class UnsupportedTextError(ZCompressError, ValueError):
    """The input cannot be coded: it is not a ``str``/``bytes``, or it is a ``str`` holding a character UTF-8 cannot
    encode (a lone surrogate such as ``"\\ud800"``; code its bytes instead: ``text.encode("utf-8", "surrogatepass")``).
    """


class LatentUnavailableError(ZCompressError):
    """The latent codec was asked for, but no trained adapters are loaded."""


class BackboneLoadError(ZCompressError):
    """The backbone model could not be loaded (missing package, unsupported option, offline without weights)."""


class SchedulerBusyError(ZCompressError):
    """A compressor's request queue stayed full for longer than ``SchedulerConfig.queue_timeout_s``."""
