"""`ZCode`: the one artefact every codec produces.

A ZCode holds the Z-token ids (each an integer below the Z vocabulary size ``k``), the codec that made them, the
number of text tokens they stand for, an optional residual (bytes that make a lossy code exact), the fingerprint
of the backbone (+ adapters) that made it, and a checksum of the original text. It has three forms:

* binary (``to_bytes`` / ``from_bytes``): compact; Z ids are bit-packed at ``ceil(log2 k)`` bits each, the
  container ends with a CRC-32 so that damage is detected before any decoding starts;
  layout: ``ZC``, version, flags, varints (k, text tokens, text chars, Z count, segment count), segments, each
  segment's text tokens (only with flag 4: codes whose Z ids do not say where a segment ends), params (flag 8:
  a mask of the known names present, a mask of those not at their default, their values, then any other names
  spelled out; before flag 8: a count, then each name as a one-byte index or spelled out, and its value),
  residual length, packed Z ids, residual, fingerprint (4), checksum (4), CRC-32 (4);
* JSON (``to_json`` / ``from_json``): readable, for logs and metadata stores;
* text (``to_string`` / ``from_string``): ``"zc1:" + base64url(binary)``, safe in any string-valued metadata; this
  is also the form a latent code takes in a prompt: ``ZCompressor.generate`` (and so ``ChatZCompress`` and
  ``ZCompressLLM``) finds ``zc1:`` strings in its context and feeds their Z-tokens to the reader.

Hostile input. Every parser (``from_bytes``, ``from_string``, ``from_json``, ``from_dict``, ``load``) treats its
input as untrusted: whatever is wrong with it (damage, truncation, a forged header, a wrong type) raises
:class:`CorruptCodeError` before any decoding starts, and nothing is allocated or looped over beyond what the
input's own length justifies. Sizes a payload cannot bound by itself (an exact code's text length: the arithmetic
decoder reads zeros past the end of the stream, so a very predictable text codes to very few bits) are bounded by
:class:`CodeLimits`, whose defaults (``DEFAULT_LIMITS``) are far above anything the codecs make; pass your own
``limits=`` to any parser to tighten or widen them. The binary and string forms end with a CRC-32 over every byte;
the JSON form carries the same CRC-32 (``"crc32"``) over the binary form of its fields, so a damaged field of any
form is caught at parse time. The string form must be canonical base64 (no stray characters, padding or bits;
whitespace around the whole string is ignored).

This module is pure Python (no torch), so codes can be stored, sent and inspected without loading a model.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

from zcompress_integrations.errors import ConfigError, CorruptCodeError

__all__ = [
    "ZCode",
    "CodeLimits",
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "MAX_TEXT_TOKENS",
    "MAX_TEXT_CHARS",
    "MAX_Z_IDS",
    "MAX_K",
    "MAX_SEGMENTS",
    "MAX_SEGMENT_LEN",
    "MAX_PARAMS",
    "MAX_PARAM_NAME",
    "MAX_PARAM_VALUE",
    "MAX_RESIDUAL_BYTES",
    "MAX_THREADS",
    "MAX_LANES",
    "MAX_WINDOW",
    "MAX_TOKEN_ID",
    "MAX_PATH",
    "FREQ_BITS_RANGE",
    "text_checksum",
]

FORMAT_VERSION = 1
_MAGIC = b"ZC"
_STRING_PREFIX = "zc1:"
_FLAG_LATENT = 1
_FLAG_BYTES = 2
_FLAG_SEGMENT_TOKENS = 4  # each segment's text-token count follows the segments
# the parameter block starts with two bit masks over the known names (see _write_params)
_FLAG_PARAM_MASKS = 8
CodecKind = Literal["exact", "latent"]
# Parameter names stored by their index instead of their spelling: a bit of the masks since flag 8, a zero name
# length then a one-byte index before. Append only: the index of a name is part of the binary format.
_KNOWN_PARAMS = (
    *("window", "lanes", "lane0", "threads", "freq_bits", "start", "path"),
    # the latent codes' names, appended later: before, a latent code spelled them out (~25 bytes); those still parse
    *("segment_len", "ratio_x100", "generated"),
)
# The value a known parameter takes when a masked parameter block (flag 8) lists it without a value: the codecs'
# usual settings (one lane, one thread, the default window, path 2, SmolLM2's start token, 64-token segments).
# Part of the binary format: never change a value here; a new default needs a new name.
_PARAM_DEFAULTS = {
    "window": 256,
    "lanes": 1,
    "lane0": 0,
    "threads": 1,
    "freq_bits": 24,
    "start": 1,
    "path": 2,
    "segment_len": 64,
}
_MAX_VARINT_BYTES = 10  # 70 bits: any larger field is malformed
_ASCII_WHITESPACE = " \t\n\r\x0b\x0c"

# ---- limits a parsed code must respect -----------------------------------------------------------------------
MAX_TEXT_TOKENS = 2**26
"""Most text tokens a parsed code may claim (67M tokens, about 250 MB of English): the exact decoder runs one model
step per text token, and its payload cannot bound that count (see the module docstring)."""
MAX_TEXT_CHARS = 2**28
"""Most characters (bytes, for a ``bytes`` original) a parsed code may claim."""
MAX_Z_IDS = 2**26
"""Most Z ids in a parsed code (the binary form also needs ``ceil(log2 k)`` bits of payload for each)."""
MAX_K = 2**64
"""Largest Z vocabulary a parsed code may declare (the exact codec uses 4096; the latent token-group code counts
every group of up to ``max_group`` tokens, about 2^62 for SmolLM2's vocabulary and groups of 4). Z ids are packed
at ``ceil(log2 k)`` bits, so the payload bounds their number whatever ``k`` is."""
MAX_SEGMENTS = 2**22
"""Most segments (latent windows) in a parsed code; a latent segment holds at least its share of Z ids."""
MAX_SEGMENT_LEN = 2**16
"""Largest ``segment_len`` parameter (text tokens per latent segment; the latent decoder runs up to
``segment_len + 1`` steps per segment)."""
MAX_PARAMS = 64
"""Most named parameters in a parsed code (the codecs store at most nine)."""
MAX_PARAM_NAME = 64
"""Longest parameter name, in ASCII characters."""
MAX_PARAM_VALUE = 2**31 - 1
"""Largest value of any parameter (the codecs' largest is a token id)."""
MAX_RESIDUAL_BYTES = 2**28
"""Longest residual (the latent codec's exact-mode bytes)."""
MAX_THREADS = 1024
"""Largest thread count a code may ask the decoder to run with (it must decode with the encoder's count)."""
MAX_LANES = 64
"""Largest lane count of the step-wise coders (``entropy.MAX_LANES``)."""
MAX_WINDOW = 2**20
"""Largest exact-codec window, in tokens."""
FREQ_BITS_RANGE = (16, 24)
"""Allowed frequency-table precision: at most ``arithmetic.MAX_TOTAL_BITS``; at least 16 bits, so the table can
give every symbol of a 49k-token vocabulary (plus 256 byte ids) a non-zero share."""
MAX_TOKEN_ID = 2**24
"""Largest token id a parameter may name (``start``)."""
MAX_PATH = 255
"""Largest exact-codec step path a code may name (``path``; the codec says which it decodes)."""
_UTF8_MAX_BYTES_PER_CHAR = 4


@dataclass(frozen=True)
class CodeLimits:
    """Bounds every parser checks before a code is decoded (see the module docstring; defaults: the ``MAX_*``
    constants of this module). A code beyond them raises :class:`CorruptCodeError`: raise a limit only for codes
    from a source you trust.

    Attributes:
        max_text_tokens: most text tokens a code may claim.
        max_text_chars: most characters (bytes, for ``bytes``) a code may claim.
        max_z_ids: most Z ids.
        max_k: largest Z vocabulary.
        max_segments: most segments.
        max_segment_len: largest ``segment_len`` parameter.
        max_params: most named parameters.
        max_param_value: largest parameter value.
        max_residual_bytes: longest residual.
        max_threads: largest ``threads`` parameter.
        max_window: largest ``window`` parameter.
    """

    max_text_tokens: int = MAX_TEXT_TOKENS
    max_text_chars: int = MAX_TEXT_CHARS
    max_z_ids: int = MAX_Z_IDS
    max_k: int = MAX_K
    max_segments: int = MAX_SEGMENTS
    max_segment_len: int = MAX_SEGMENT_LEN
    max_params: int = MAX_PARAMS
    max_param_value: int = MAX_PARAM_VALUE
    max_residual_bytes: int = MAX_RESIDUAL_BYTES
    max_threads: int = MAX_THREADS
    max_window: int = MAX_WINDOW

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if type(value) is not int or value < 1:
                raise ConfigError(f"CodeLimits.{name} must be a positive int; got {value!r}")


DEFAULT_LIMITS = CodeLimits()


def text_checksum(data: bytes) -> bytes:
    """4-byte digest of the original text's bytes, checked after decoding."""
    return hashlib.blake2b(data, digest_size=4).digest()


# ---- varints and bit packing -------------------------------------------------------------------------------
def _put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError(f"varint must be >= 0, got {value}")
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise CorruptCodeError(
                f"Z code is truncated: needed {n} more bytes at offset {self.pos}, have {self.remaining}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def varint(self) -> int:
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i:  # an over-long encoding: one code, one byte string
                    raise CorruptCodeError("Z code has a malformed integer field (over-long encoding)")
                return value
        raise CorruptCodeError("Z code has a malformed integer field (longer than 10 bytes)")

    def count(self, what: str, limit: int, min_bytes_each: int = 1) -> int:
        """A varint that counts the items that follow, each taking at least ``min_bytes_each`` bytes: checked
        against ``limit`` and against the bytes left, before any item is read."""
        n = self.varint()
        if n > limit:
            raise CorruptCodeError(f"Z code declares {n} {what}; at most {limit} are allowed")
        if n * min_bytes_each > self.remaining:
            raise CorruptCodeError(
                f"Z code declares {n} {what}, but only {self.remaining} bytes follow: it is truncated or forged"
            )
        return n


def _bits_per_id(k: int) -> int:
    """``ceil(log2 k)``, exactly (a float log2 rounds down for k just above a large power of two)."""
    return max(1, (k - 1).bit_length())


def _pack_ids(ids: tuple[int, ...], width: int) -> bytes:
    """Big-endian bit packing, ``width`` bits per id, zero-padded to whole bytes (linear time)."""
    out = bytearray()
    acc = n_acc = 0
    for z in ids:
        acc = (acc << width) | z
        n_acc += width
        while n_acc >= 8:
            n_acc -= 8
            out.append((acc >> n_acc) & 0xFF)
        acc &= (1 << n_acc) - 1
    if n_acc:
        out.append((acc << (8 - n_acc)) & 0xFF)
    return bytes(out)


def _unpack_ids(data: bytes, count: int, width: int) -> tuple[int, ...]:
    """Inverse of :func:`_pack_ids` (linear time); ``data`` holds exactly ``ceil(width * count / 8)`` bytes."""
    ids = []
    mask = (1 << width) - 1
    acc = n_acc = 0
    it = iter(data)
    for _ in range(count):
        while n_acc < width:
            acc = (acc << 8) | next(it)
            n_acc += 8
        n_acc -= width
        ids.append((acc >> n_acc) & mask)
        acc &= (1 << n_acc) - 1
    if acc:
        raise CorruptCodeError("Z code has non-zero padding bits after its last Z id")
    return tuple(ids)


def _at_most(what: str, value: int, limit: int) -> None:
    if value > limit:
        raise CorruptCodeError(
            f"Z code declares {value} {what}; at most {limit} are allowed (see CodeLimits)"
        )


def _param_ranges(params: dict[str, int], lim: CodeLimits) -> dict[str, tuple[int, int]]:
    """Allowed ``[low, high]`` of each parameter the decoders read (``lane0`` depends on ``lanes``)."""
    return {
        "window": (2, lim.max_window),
        "lanes": (1, MAX_LANES),
        "lane0": (0, params.get("lanes", MAX_LANES) - 1),
        "threads": (1, lim.max_threads),
        "freq_bits": FREQ_BITS_RANGE,
        "start": (0, MAX_TOKEN_ID - 1),
        "segment_len": (1, lim.max_segment_len),
        "path": (1, MAX_PATH),
    }


# ---- binary form readers (ZCode.from_bytes) -------------------------------------------------------------------
def _check_envelope(data: bytes) -> tuple[bytes, int, int]:
    """Marker, length, CRC-32, version and flags of a binary code: (the bytes before the CRC, version, flags)."""
    if len(data) < 4 or data[:2] != _MAGIC:
        raise CorruptCodeError("not a Z code: the data does not start with the 'ZC' marker")
    if len(data) < 4 + 12:
        raise CorruptCodeError(f"Z code is truncated: {len(data)} bytes is shorter than any valid code")
    body, crc = data[:-4], int.from_bytes(data[-4:], "big")
    if zlib.crc32(body) != crc:
        raise CorruptCodeError(
            "Z code is corrupted (CRC-32 mismatch): it was damaged or truncated in storage or transit"
        )
    version = data[2]
    if version != FORMAT_VERSION:
        raise CorruptCodeError(
            f"Z code format version {version} is not supported by this zcompress (reads version "
            f"{FORMAT_VERSION}); upgrade zcompress-integrations"
        )
    flags = data[3]
    if flags & ~(_FLAG_LATENT | _FLAG_BYTES | _FLAG_SEGMENT_TOKENS | _FLAG_PARAM_MASKS):
        raise CorruptCodeError(f"Z code has unknown flags {flags:#04x}")
    return body, version, flags


def _read_sizes(reader: _Reader, lim: CodeLimits) -> tuple[int, int, int, int]:
    """The header varints k, text tokens, text characters and Z id count, each checked against ``lim`` (and the
    Z id count against the bytes left)."""
    k = reader.varint()
    if not 2 <= k <= lim.max_k:
        raise CorruptCodeError(
            f"Z code declares an impossible vocabulary size k={k} (allowed: 2 to {lim.max_k})"
        )
    text_tokens, text_chars = reader.varint(), reader.varint()
    _at_most("text tokens", text_tokens, lim.max_text_tokens)
    _at_most("text characters", text_chars, lim.max_text_chars)
    width = _bits_per_id(k)
    n_z = reader.count("Z ids", lim.max_z_ids, 0)
    if (width * n_z + 7) // 8 > reader.remaining:
        raise CorruptCodeError(
            f"Z code declares {n_z} Z ids of {width} bits, but only {reader.remaining} bytes follow"
        )
    return k, text_tokens, text_chars, n_z


def _read_param_name(reader: _Reader) -> str:
    """A parameter name: a zero length then the index of a known name, or a length then ASCII bytes."""
    size = reader.varint()
    if size == 0:
        index = reader.varint()
        if index >= len(_KNOWN_PARAMS):
            raise CorruptCodeError(f"Z code names an unknown parameter #{index}")
        return _KNOWN_PARAMS[index]
    return _spelled_name(reader, size)


def _spelled_name(reader: _Reader, size: int) -> str:
    """A parameter name of ``size`` ASCII bytes (its length already read)."""
    if size > MAX_PARAM_NAME:
        raise CorruptCodeError(f"Z code has a parameter name of {size} bytes (at most {MAX_PARAM_NAME})")
    raw = reader.take(size)
    if not raw.isascii():
        raise CorruptCodeError("Z code has a malformed parameter name (not ASCII)")
    return raw.decode("ascii")


def _read_params(reader: _Reader, lim: CodeLimits) -> dict[str, int]:
    """The parameter count, then each name and value (a name given twice is an error)."""
    params: dict[str, int] = {}
    for _ in range(reader.count("parameters", lim.max_params, 3)):
        name = _read_param_name(reader)
        if name in params:
            raise CorruptCodeError(f"Z code names parameter {name!r} twice")
        params[name] = reader.varint()
    return params


def _write_params(out: bytearray, params: dict[str, int]) -> None:
    """The masked parameter block (flag 8): a varint mask of the known names present (bit i: ``_KNOWN_PARAMS[i]``),
    a varint mask of those whose value follows (the others are at ``_PARAM_DEFAULTS``), their values in index
    order, then the count of other names and each as a length, ASCII bytes and a value. A code at the usual
    settings spends 3 bytes here, where the indexed form (a zero, an index and a value a name) took 23."""
    present = stored = 0
    values = []
    for index, name in enumerate(_KNOWN_PARAMS):
        if name in params:
            present |= 1 << index
            if params[name] != _PARAM_DEFAULTS.get(name):
                stored |= 1 << index
                values.append(params[name])
    _put_varint(out, present)
    _put_varint(out, stored)
    for value in values:
        _put_varint(out, value)
    others = {name: value for name, value in params.items() if name not in _KNOWN_PARAMS}
    _put_varint(out, len(others))
    for name, value in others.items():
        raw = name.encode("ascii")
        _put_varint(out, len(raw))
        out += raw
        _put_varint(out, value)


def _read_masked_params(reader: _Reader, lim: CodeLimits) -> dict[str, int]:
    """Inverse of :func:`_write_params`: the known names from the masks, then the names spelled out."""
    params = _read_known_params(reader)
    for _ in range(reader.count("parameters", max(0, lim.max_params - len(params)), 3)):
        size = reader.varint()
        if size == 0:  # the indexed form's marker: a known name belongs in the masks
            raise CorruptCodeError("Z code has an empty parameter name")
        name = _spelled_name(reader, size)
        if name in _KNOWN_PARAMS:
            raise CorruptCodeError(f"Z code spells out the known parameter {name!r} (it belongs in the mask)")
        if name in params:
            raise CorruptCodeError(f"Z code names parameter {name!r} twice")
        params[name] = reader.varint()
    return params


def _read_known_params(reader: _Reader) -> dict[str, int]:
    """The two masks and the values that follow them; a bit past the known names, a value for a name not present,
    a value spelled out at its default, or one left out of a name without a default is an error."""
    present, stored = reader.varint(), reader.varint()
    if present >> len(_KNOWN_PARAMS):
        raise CorruptCodeError(f"Z code names an unknown parameter #{present.bit_length() - 1}")
    if stored & ~present:
        raise CorruptCodeError("Z code gives a value for a parameter it does not name")
    params: dict[str, int] = {}
    for index, name in enumerate(_KNOWN_PARAMS):
        if not present >> index & 1:
            continue
        if stored >> index & 1:
            params[name] = reader.varint()
            if params[name] == _PARAM_DEFAULTS.get(name):  # one code, one byte string
                raise CorruptCodeError(f"Z code spells out parameter {name!r} at its default")
        elif name in _PARAM_DEFAULTS:
            params[name] = _PARAM_DEFAULTS[name]
        else:
            raise CorruptCodeError(f"Z code leaves out the value of parameter {name!r}, which has no default")
    return params


def _read_payload(reader: _Reader, lim: CodeLimits, n_z: int, width: int) -> tuple[tuple[int, ...], bytes]:
    """The residual length, the packed Z ids and the residual, which must end the reader's bytes exactly."""
    n_residual = reader.varint()
    _at_most("residual bytes", n_residual, lim.max_residual_bytes)
    z_ids = _unpack_ids(reader.take((width * n_z + 7) // 8), n_z, width)
    residual = reader.take(n_residual)
    if reader.remaining:
        raise CorruptCodeError(f"Z code has {reader.remaining} unexpected trailing bytes")
    return z_ids, residual


@dataclass(frozen=True)
class ZCode:
    """A compressed text.

    Attributes:
        z_ids: the Z-token ids, each in ``[0, k)``.
        codec: ``"exact"`` (entropy codec) or ``"latent"`` (the learned Z-token codec).
        k: size of the Z vocabulary (the exact codec packs ``log2(k)`` code bits into each Z-token).
        text_tokens: number of backbone tokens of the original text.
        text_chars: number of characters (or bytes, when ``is_bytes``) of the original.
        checksum: 4-byte digest of the original bytes (see :func:`text_checksum`).
        fingerprint: 4-byte fingerprint of the backbone (+ adapters) that made the code.
        is_bytes: the original was ``bytes`` rather than ``str``.
        residual: extra bytes that make a lossy code exact (latent codec, ``exact=True``); empty otherwise.
        segments: Z-tokens per window (latent) or text tokens per window (exact), in order.
        segment_tokens: text tokens per segment (latent codes whose Z ids do not say where a segment ends: the
            reader writes exactly this many); empty when not stored.
        params: small integer settings the decoder needs to take the encoder's exact path (window size,
            lanes, thread count, frequency precision...).
        version: format version.
    """

    z_ids: tuple[int, ...]
    codec: CodecKind
    k: int
    text_tokens: int
    text_chars: int
    checksum: bytes
    fingerprint: bytes
    is_bytes: bool = False
    residual: bytes = b""
    segments: tuple[int, ...] = ()
    params: dict[str, int] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    segment_tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.codec not in ("exact", "latent"):
            raise ValueError(f"codec must be 'exact' or 'latent', got {self.codec!r}")
        if self.k < 2:
            raise ValueError(f"k must be >= 2, got {self.k}")
        bad = [z for z in self.z_ids if not 0 <= z < self.k]
        if bad:
            raise ValueError(f"z_ids must lie in [0, {self.k}); got {bad[:5]}")
        if len(self.checksum) != 4 or len(self.fingerprint) != 4:
            raise ValueError("checksum and fingerprint must be 4 bytes each")
        object.__setattr__(self, "z_ids", tuple(int(z) for z in self.z_ids))
        object.__setattr__(self, "segments", tuple(int(s) for s in self.segments))
        object.__setattr__(self, "segment_tokens", tuple(int(s) for s in self.segment_tokens))
        if any(not str(k) or not str(k).isascii() for k in self.params):
            raise ValueError(f"params names must be non-empty ASCII; got {sorted(self.params)}")
        object.__setattr__(self, "params", {str(k): int(v) for k, v in sorted(self.params.items())})

    # ---- derived figures ---------------------------------------------------------------------------------
    @property
    def z_tokens(self) -> int:
        """Number of Z-tokens (what a prompt pays)."""
        return len(self.z_ids)

    @property
    def ratio(self) -> float:
        """Compression ratio in tokens: text tokens per Z-token (``inf`` for an empty code of non-empty text)."""
        if not self.z_ids:
            return math.inf if self.text_tokens else 1.0
        return self.text_tokens / len(self.z_ids)

    @property
    def bits(self) -> float:
        """Information the code carries: Z-tokens x log2(k), plus the residual's bits."""
        return len(self.z_ids) * math.log2(self.k) + 8 * len(self.residual)

    @property
    def bits_per_char(self) -> float:
        """``bits`` per character of the original (per byte when the original was bytes)."""
        return self.bits / self.text_chars if self.text_chars else 0.0

    # ---- limits ------------------------------------------------------------------------------------------
    def check_limits(self, limits: CodeLimits | None = None) -> None:
        """Raise :class:`CorruptCodeError` unless every size and parameter of this code is within ``limits``
        (default :data:`DEFAULT_LIMITS`) and consistent with the rest of the code. Every parser calls this; call
        it yourself on a ``ZCode`` built from untrusted fields."""
        lim = limits or DEFAULT_LIMITS
        if self.version != FORMAT_VERSION:
            raise CorruptCodeError(
                f"Z code format version {self.version} is not supported (reads {FORMAT_VERSION})"
            )
        self._check_sizes(lim)
        self._check_params(lim)
        if self.codec == "exact":
            self._check_exact_shape()
            if self.segment_tokens:
                raise CorruptCodeError("an exact Z code has no per-segment text-token counts")
        else:
            self._check_latent_shape(lim)

    def _check_sizes(self, lim: CodeLimits) -> None:
        """Every count of the code within its limit, and every segment size within the larger count limit."""
        sizes = (
            ("the Z vocabulary size k", self.k, lim.max_k),
            ("text tokens", self.text_tokens, lim.max_text_tokens),
            ("text characters", self.text_chars, lim.max_text_chars),
            ("Z ids", len(self.z_ids), lim.max_z_ids),
            ("segments", len(self.segments), lim.max_segments),
            ("residual bytes", len(self.residual), lim.max_residual_bytes),
            ("parameters", len(self.params), lim.max_params),
        )
        for what, value, limit in sizes:
            _at_most(what, value, limit)
        most_per_segment = max(lim.max_text_tokens, lim.max_z_ids)
        if any(not 0 <= s <= most_per_segment for s in self.segments):
            raise CorruptCodeError(
                f"Z code has a segment size outside [0, {most_per_segment}]: {min(self.segments)}..{max(self.segments)}"
            )

    def _check_params(self, lim: CodeLimits) -> None:
        """Every parameter name and value within the general limits, then each known parameter in its range."""
        for name, value in self.params.items():
            if len(name) > MAX_PARAM_NAME:
                raise CorruptCodeError(
                    f"Z code has a parameter name of {len(name)} characters (at most {MAX_PARAM_NAME})"
                )
            if not 0 <= value <= lim.max_param_value:
                raise CorruptCodeError(
                    f"Z code parameter {name}={value} is outside [0, {lim.max_param_value}]"
                )
        p = self.params
        for name, (low, high) in _param_ranges(p, lim).items():
            if name in p and not low <= p[name] <= high:
                raise CorruptCodeError(f"Z code parameter {name}={p[name]} is outside [{low}, {high}]")

    def _check_exact_shape(self) -> None:
        # every token stands for at least one byte, and a character is at most 4 UTF-8 bytes
        most = self.text_chars * (1 if self.is_bytes else _UTF8_MAX_BYTES_PER_CHAR)
        if self.text_tokens > most or (self.text_tokens == 0) != (self.text_chars == 0):
            raise CorruptCodeError(
                f"exact Z code claims {self.text_tokens} text tokens for {self.text_chars} "
                f"{'bytes' if self.is_bytes else 'characters'}: impossible"
            )

    def _check_latent_shape(self, lim: CodeLimits) -> None:
        # latent: segments hold the Z ids between them, and a segment at most segment_len text tokens
        if sum(self.segments) != len(self.z_ids):
            raise CorruptCodeError(
                f"latent Z code's segments hold {sum(self.segments)} Z ids, but it has {len(self.z_ids)}"
            )
        seg_len = self.params.get("segment_len", lim.max_segment_len)
        if self.text_tokens > len(self.segments) * seg_len:
            raise CorruptCodeError(
                f"latent Z code claims {self.text_tokens} text tokens in {len(self.segments)} segments of at "
                f"most {seg_len}: impossible"
            )
        if self.segment_tokens and (
            len(self.segment_tokens) != len(self.segments)
            or sum(self.segment_tokens) != self.text_tokens
            or any(not 0 <= t <= seg_len for t in self.segment_tokens)
        ):
            raise CorruptCodeError(
                f"latent Z code's per-segment text tokens ({len(self.segment_tokens)} counts, sum "
                f"{sum(self.segment_tokens)}) do not fit its {len(self.segments)} segments of at most {seg_len} "
                f"and {self.text_tokens} text tokens"
            )

    # ---- binary form -------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Compact binary form; see the module docstring for the layout."""
        out = bytearray(_MAGIC)
        out.append(self.version)
        out.append(
            (_FLAG_LATENT if self.codec == "latent" else 0)
            | (_FLAG_BYTES if self.is_bytes else 0)
            | (_FLAG_SEGMENT_TOKENS if self.segment_tokens else 0)
            | _FLAG_PARAM_MASKS
        )
        for value in (self.k, self.text_tokens, self.text_chars, len(self.z_ids), len(self.segments)):
            _put_varint(out, value)
        for seg in self.segments:
            _put_varint(out, seg)
        for tokens in self.segment_tokens:
            _put_varint(out, tokens)
        _write_params(out, self.params)
        _put_varint(out, len(self.residual))
        out += _pack_ids(self.z_ids, _bits_per_id(self.k))
        out += self.residual
        out += self.fingerprint + self.checksum
        out += zlib.crc32(out).to_bytes(4, "big")
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: CodeLimits | None = None) -> ZCode:
        """Parse :meth:`to_bytes` output. Raises :class:`CorruptCodeError` on damaged, truncated, forged or foreign
        bytes, and on codes beyond ``limits`` (default :data:`DEFAULT_LIMITS`)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CorruptCodeError(f"a Z code is bytes; got {type(data).__name__}")
        lim = limits or DEFAULT_LIMITS
        data = bytes(data)
        body, version, flags = _check_envelope(data)
        reader = _Reader(body[:-8])  # fingerprint and checksum are the last 8 bytes of the body
        reader.pos = 4
        # Every size is checked against the limits and against the bytes left before anything is allocated.
        k, text_tokens, text_chars, n_z = _read_sizes(reader, lim)
        n_seg = reader.count("segments", lim.max_segments, 2 if flags & _FLAG_SEGMENT_TOKENS else 1)
        segments = tuple(reader.varint() for _ in range(n_seg))
        if flags & _FLAG_SEGMENT_TOKENS and not n_seg:
            raise CorruptCodeError("Z code flags per-segment text tokens but has no segments")
        segment_tokens = tuple(reader.varint() for _ in range(n_seg if flags & _FLAG_SEGMENT_TOKENS else 0))
        params = _read_masked_params(reader, lim) if flags & _FLAG_PARAM_MASKS else _read_params(reader, lim)
        z_ids, residual = _read_payload(reader, lim, n_z, _bits_per_id(k))
        fingerprint, checksum = body[-8:-4], body[-4:]
        try:
            code = cls(
                z_ids=z_ids,
                codec="latent" if flags & _FLAG_LATENT else "exact",
                k=k,
                text_tokens=text_tokens,
                text_chars=text_chars,
                checksum=checksum,
                fingerprint=fingerprint,
                is_bytes=bool(flags & _FLAG_BYTES),
                residual=residual,
                segments=segments,
                params=params,
                version=version,
                segment_tokens=segment_tokens,
            )
        except ValueError as exc:
            raise CorruptCodeError(f"Z code fields are inconsistent: {exc}") from exc
        code.check_limits(lim)
        return code

    # ---- string and JSON forms ---------------------------------------------------------------------------
    def to_string(self) -> str:
        """ASCII form for string-valued metadata: ``zc1:`` + URL-safe base64 of :meth:`to_bytes`."""
        return _STRING_PREFIX + base64.urlsafe_b64encode(self.to_bytes()).decode("ascii")

    @classmethod
    def from_string(cls, text: str, *, limits: CodeLimits | None = None) -> ZCode:
        """Parse :meth:`to_string` output: ``zc1:`` then canonical URL-safe base64 (padded, no other characters),
        so that any damaged character is caught even where base64 itself would ignore it. ASCII whitespace around
        the string is ignored."""
        if not isinstance(text, str):
            raise CorruptCodeError(f"a Z code string is a str; got {type(text).__name__}")
        text = text.strip(_ASCII_WHITESPACE)  # a trailing newline from a file, indentation in a log
        if not text.startswith(_STRING_PREFIX):
            raise CorruptCodeError(f"not a Z code string: it must start with {_STRING_PREFIX!r}")
        payload = text[len(_STRING_PREFIX) :]
        if not payload.isascii():
            raise CorruptCodeError("Z code string is not valid base64: it holds non-ASCII characters")
        try:
            raw = base64.b64decode(payload, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CorruptCodeError(f"Z code string is not valid base64: {exc}") from exc
        if base64.urlsafe_b64encode(raw).decode("ascii") != payload:
            raise CorruptCodeError("Z code string is not canonical URL-safe base64: it was altered")
        return cls.from_bytes(raw, limits=limits)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field plus the derived figures (ratio, bits, bits_per_char) and ``crc32``,
        the hex CRC-32 that ends :meth:`to_bytes` (checked by :meth:`from_dict` when present)."""
        return {
            "version": self.version,
            "codec": self.codec,
            "k": self.k,
            "z_ids": list(self.z_ids),
            "text_tokens": self.text_tokens,
            "text_chars": self.text_chars,
            "is_bytes": self.is_bytes,
            "segments": list(self.segments),
            "segment_tokens": list(self.segment_tokens),
            "params": dict(self.params),
            "residual": base64.b64encode(self.residual).decode("ascii"),
            "fingerprint": self.fingerprint.hex(),
            "checksum": self.checksum.hex(),
            "crc32": self.to_bytes()[-4:].hex(),
            "ratio": self.ratio,
            "bits": self.bits,
            "bits_per_char": self.bits_per_char,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, limits: CodeLimits | None = None) -> ZCode:
        """Parse :meth:`to_dict` output. Field types are checked strictly (an integer field takes an ``int``, or a
        ``float`` with an integral value; no strings, no booleans); the derived figures are ignored; ``crc32``, when
        present, must match the fields (codes written before it existed have none)."""
        if not isinstance(data, dict):
            raise CorruptCodeError(f"a Z code dict must be a dict; got {type(data).__name__}")
        lim = limits or DEFAULT_LIMITS
        version, k, codec, is_bytes, params = _read_dict_header(data, lim)
        try:
            code = cls(
                z_ids=_int_list(data, "z_ids", lim.max_z_ids),
                codec=codec,
                k=k,
                text_tokens=_int_field(data, "text_tokens"),
                text_chars=_int_field(data, "text_chars"),
                checksum=_hex_field(data, "checksum"),
                fingerprint=_hex_field(data, "fingerprint"),
                is_bytes=is_bytes,
                residual=_base64_field(data, "residual"),
                segments=_int_list(data, "segments", lim.max_segments, required=False),
                params={str(name): _int_field(params, name, "params.") for name in params},
                version=version,
                segment_tokens=_int_list(data, "segment_tokens", lim.max_segments, required=False),
            )
        except ValueError as exc:  # the constructor's own checks (z ids out of range, bad names...)
            if isinstance(exc, CorruptCodeError):
                raise
            raise CorruptCodeError(f"not a valid Z code JSON object: {exc}") from exc
        code.check_limits(lim)
        _check_dict_crc(data, code)
        return code

    @classmethod
    def from_json(cls, text: str | bytes, *, limits: CodeLimits | None = None) -> ZCode:
        """Parse :meth:`to_json` output (see :meth:`from_dict`)."""
        if not isinstance(text, str | bytes | bytearray):
            raise CorruptCodeError(f"Z code JSON must be a str; got {type(text).__name__}")
        try:
            data = json.loads(text)
        # ValueError: JSONDecodeError, bad UTF-8, integers over the int-digits limit; RecursionError: deep nesting
        except (ValueError, RecursionError) as exc:
            raise CorruptCodeError(f"Z code JSON does not parse: {str(exc)[:200]}") from exc
        if not isinstance(data, dict):
            raise CorruptCodeError("Z code JSON must be an object")
        return cls.from_dict(data, limits=limits)

    @classmethod
    def load(cls, value: ZCode | bytes | str | dict[str, Any], *, limits: CodeLimits | None = None) -> ZCode:
        """Accept any of the forms: a ZCode, its bytes, its ``zc1:`` string, its JSON string or dict.

        Bytes, strings and dicts are untrusted input (see the module docstring); a ``ZCode`` object is returned
        as it is (call :meth:`check_limits` on one built from untrusted fields)."""
        if isinstance(value, ZCode):
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return cls.from_bytes(bytes(value), limits=limits)
        if isinstance(value, dict):
            return cls.from_dict(value, limits=limits)
        if isinstance(value, str):
            stripped = value.lstrip()
            if stripped.startswith("{"):
                return cls.from_json(value, limits=limits)
            return cls.from_string(value, limits=limits)
        raise CorruptCodeError(f"cannot read a Z code from {type(value).__name__}")

    def __repr__(self) -> str:
        return (
            f"ZCode(codec={self.codec!r}, z_tokens={self.z_tokens}, text_tokens={self.text_tokens}, "
            f"ratio={self.ratio:.2f}, bits_per_char={self.bits_per_char:.3f})"
        )


# ---- strict JSON field readers --------------------------------------------------------------------------------
_REQUIRED_KEYS = ("version", "codec", "k", "z_ids", "text_tokens", "text_chars", "checksum", "fingerprint")


def _read_dict_header(
    data: dict[str, Any], lim: CodeLimits
) -> tuple[int, int, CodecKind, bool, dict[str, Any]]:
    """The required keys, then the fields every other field depends on: (version, k, codec, is_bytes, params)."""
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise CorruptCodeError(f"not a valid Z code JSON object: missing keys {missing}")
    version = _int_field(data, "version")
    if version != FORMAT_VERSION:
        raise CorruptCodeError(f"Z code format version {version} is not supported (reads {FORMAT_VERSION})")
    k = _int_field(data, "k")
    if not 2 <= k <= lim.max_k:
        raise CorruptCodeError(
            f"Z code declares an impossible vocabulary size k={k} (allowed: 2 to {lim.max_k})"
        )
    codec = data["codec"]
    if codec not in ("exact", "latent"):
        raise CorruptCodeError(f"Z code field 'codec' must be 'exact' or 'latent'; got {codec!r}")
    is_bytes = data.get("is_bytes", False)
    if type(is_bytes) is not bool:
        raise CorruptCodeError(f"Z code field 'is_bytes' must be true or false; got {is_bytes!r}")
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise CorruptCodeError(f"Z code field 'params' must be an object; got {type(params).__name__}")
    return version, k, codec, is_bytes, params


def _check_dict_crc(data: dict[str, Any], code: ZCode) -> None:
    """``data["crc32"]``, when present, must be the CRC-32 of ``code``'s binary form."""
    if "crc32" in data:
        expected = code.to_bytes()[-4:].hex()
        if data["crc32"] != expected:
            raise CorruptCodeError(
                "Z code JSON is corrupted (its crc32 does not match its fields): it was altered in storage or "
                "transit"
            )


def _as_int(value: Any, where: str) -> int:
    if type(value) is int:
        if value < 0:
            raise CorruptCodeError(f"Z code field {where!r} must be >= 0; got {value}")
        return value
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    raise CorruptCodeError(f"Z code field {where!r} must be a non-negative integer; got {value!r:.80}")


def _int_field(data: dict[str, Any], key: str, prefix: str = "") -> int:
    return _as_int(data[key], prefix + str(key))


def _int_list(data: dict[str, Any], key: str, limit: int, required: bool = True) -> tuple[int, ...]:
    value = data[key] if required else data.get(key, [])
    if not isinstance(value, list | tuple):
        raise CorruptCodeError(f"Z code field {key!r} must be a list of integers; got {type(value).__name__}")
    if len(value) > limit:
        raise CorruptCodeError(f"Z code field {key!r} has {len(value)} items; at most {limit} are allowed")
    return tuple(_as_int(v, key) for v in value)


def _hex_field(data: dict[str, Any], key: str) -> bytes:
    value = data[key]
    if not isinstance(value, str) or len(value) != 8:
        raise CorruptCodeError(f"Z code field {key!r} must be 8 hex digits; got {value!r:.80}")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise CorruptCodeError(f"Z code field {key!r} must be 8 hex digits; got {value!r}") from exc


def _base64_field(data: dict[str, Any], key: str) -> bytes:
    value = data.get(key, "")
    if not isinstance(value, str) or not value.isascii():
        raise CorruptCodeError(f"Z code field {key!r} must be a base64 string; got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CorruptCodeError(f"Z code field {key!r} is not valid base64: {exc}") from exc
    if base64.b64encode(raw).decode("ascii") != value:
        raise CorruptCodeError(f"Z code field {key!r} is not canonical base64: it was altered")
    return raw
