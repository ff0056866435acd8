"""`ZCode`: the one artefact every codec produces.

A ZCode holds the Z-token ids (each an integer below the Z vocabulary size ``k``), the codec that made them, the
number of text tokens they stand for, an optional residual (bytes that make a lossy code exact), the fingerprint
of the backbone (+ adapters) that made it, and a checksum of the original text. It has three forms:

* binary (``to_bytes`` / ``from_bytes``): compact; Z ids are bit-packed at ``ceil(log2 k)`` bits each, the
  container ends with a CRC-32 so that damage is detected before any decoding starts;
  layout: ``ZC``, version, flags, varints (k, text tokens, text chars, Z count, segment count), segments, params
  (count; each a name, as a one-byte index for the codecs' known names, and a varint value), residual length,
  packed Z ids, residual, fingerprint (4), checksum (4), CRC-32 (4);
* JSON (``to_json`` / ``from_json``): readable, for logs and metadata stores;
* text (``to_string`` / ``from_string``): ``"zc1:" + base64url(binary)``, safe in any string-valued metadata; this
  is also the form a latent code takes in a prompt: ``ZCompressor.generate`` (and so ``ChatZCompress`` and
  ``ZCompressLLM``) finds ``zc1:`` strings in its context and feeds their Z-tokens to the reader.

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

from zcompress_integrations.errors import CorruptCodeError

__all__ = ["ZCode", "FORMAT_VERSION", "text_checksum"]

FORMAT_VERSION = 1
_MAGIC = b"ZC"
_STRING_PREFIX = "zc1:"
_FLAG_LATENT = 1
_FLAG_BYTES = 2
CodecKind = Literal["exact", "latent"]
# Parameter names stored as a one-byte index instead of their spelling (a zero name length, then the index).
# Append only: the index of a name is part of the binary format.
_KNOWN_PARAMS = ("window", "lanes", "lane0", "threads", "freq_bits", "start")


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

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CorruptCodeError(
                f"Z code is truncated: needed {n} more bytes at offset {self.pos}, have {len(self.data) - self.pos}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise CorruptCodeError("Z code has a malformed integer field")


def _bits_per_id(k: int) -> int:
    return max(1, math.ceil(math.log2(k)))


def _pack_ids(ids: tuple[int, ...], width: int) -> bytes:
    acc = 0
    for z in ids:
        acc = (acc << width) | z
    n_bits = width * len(ids)
    pad = (-n_bits) % 8
    return (acc << pad).to_bytes((n_bits + pad) // 8, "big") if ids else b""


def _unpack_ids(data: bytes, count: int, width: int) -> tuple[int, ...]:
    n_bits = width * count
    acc = int.from_bytes(data, "big") >> ((-n_bits) % 8)
    mask = (1 << width) - 1
    return tuple((acc >> (width * (count - 1 - i))) & mask for i in range(count))


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

    # ---- binary form -------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Compact binary form; see the module docstring for the layout."""
        out = bytearray(_MAGIC)
        out.append(self.version)
        out.append((_FLAG_LATENT if self.codec == "latent" else 0) | (_FLAG_BYTES if self.is_bytes else 0))
        for value in (self.k, self.text_tokens, self.text_chars, len(self.z_ids), len(self.segments)):
            _put_varint(out, value)
        for seg in self.segments:
            _put_varint(out, seg)
        _put_varint(out, len(self.params))
        for key, value in self.params.items():
            if key in _KNOWN_PARAMS:
                _put_varint(out, 0)
                _put_varint(out, _KNOWN_PARAMS.index(key))
            else:
                raw = key.encode("ascii")
                _put_varint(out, len(raw))
                out += raw
            _put_varint(out, value)
        _put_varint(out, len(self.residual))
        out += _pack_ids(self.z_ids, _bits_per_id(self.k))
        out += self.residual
        out += self.fingerprint + self.checksum
        out += zlib.crc32(out).to_bytes(4, "big")
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> ZCode:
        """Parse :meth:`to_bytes` output. Raises :class:`CorruptCodeError` on damaged, truncated or foreign bytes."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CorruptCodeError(f"a Z code is bytes; got {type(data).__name__}")
        data = bytes(data)
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
        reader = _Reader(body)
        reader.pos = 4
        k, text_tokens, text_chars, n_z, n_seg = (reader.varint() for _ in range(5))
        segments = tuple(reader.varint() for _ in range(n_seg))
        params: dict[str, int] = {}
        for _ in range(reader.varint()):
            size = reader.varint()
            if size == 0:
                index = reader.varint()
                if index >= len(_KNOWN_PARAMS):
                    raise CorruptCodeError(f"Z code names an unknown parameter #{index}")
                name = _KNOWN_PARAMS[index]
            else:
                try:
                    name = reader.take(size).decode("ascii")
                except UnicodeDecodeError as exc:
                    raise CorruptCodeError("Z code has a malformed parameter name") from exc
            params[name] = reader.varint()
        n_residual = reader.varint()
        if k < 2:
            raise CorruptCodeError(f"Z code declares an impossible vocabulary size k={k}")
        width = _bits_per_id(k)
        z_ids = _unpack_ids(reader.take((width * n_z + 7) // 8), n_z, width)
        residual = reader.take(n_residual)
        fingerprint, checksum = reader.take(4), reader.take(4)
        if reader.pos != len(body):
            raise CorruptCodeError(f"Z code has {len(body) - reader.pos} unexpected trailing bytes")
        try:
            return cls(
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
            )
        except ValueError as exc:
            raise CorruptCodeError(f"Z code fields are inconsistent: {exc}") from exc

    # ---- string and JSON forms ---------------------------------------------------------------------------
    def to_string(self) -> str:
        """ASCII form for string-valued metadata: ``zc1:`` + URL-safe base64 of :meth:`to_bytes`."""
        return _STRING_PREFIX + base64.urlsafe_b64encode(self.to_bytes()).decode("ascii")

    @classmethod
    def from_string(cls, text: str) -> ZCode:
        """Parse :meth:`to_string` output."""
        if not isinstance(text, str) or not text.startswith(_STRING_PREFIX):
            raise CorruptCodeError(f"not a Z code string: it must start with {_STRING_PREFIX!r}")
        try:
            raw = base64.urlsafe_b64decode(text[len(_STRING_PREFIX) :].encode("ascii"))
        except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
            raise CorruptCodeError(f"Z code string is not valid base64: {exc}") from exc
        return cls.from_bytes(raw)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field plus the derived figures (ratio, bits, bits_per_char)."""
        return {
            "version": self.version,
            "codec": self.codec,
            "k": self.k,
            "z_ids": list(self.z_ids),
            "text_tokens": self.text_tokens,
            "text_chars": self.text_chars,
            "is_bytes": self.is_bytes,
            "segments": list(self.segments),
            "params": dict(self.params),
            "residual": base64.b64encode(self.residual).decode("ascii"),
            "fingerprint": self.fingerprint.hex(),
            "checksum": self.checksum.hex(),
            "ratio": self.ratio,
            "bits": self.bits,
            "bits_per_char": self.bits_per_char,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZCode:
        try:
            version = int(data["version"])
            if version != FORMAT_VERSION:
                raise CorruptCodeError(f"Z code format version {version} is not supported")
            return cls(
                z_ids=tuple(data["z_ids"]),
                codec=data["codec"],
                k=int(data["k"]),
                text_tokens=int(data["text_tokens"]),
                text_chars=int(data["text_chars"]),
                checksum=bytes.fromhex(data["checksum"]),
                fingerprint=bytes.fromhex(data["fingerprint"]),
                is_bytes=bool(data.get("is_bytes", False)),
                residual=base64.b64decode(data.get("residual", "")),
                segments=tuple(data.get("segments", ())),
                params=dict(data.get("params", {})),
                version=version,
            )
        except CorruptCodeError:
            raise
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise CorruptCodeError(f"not a valid Z code JSON object: {exc!r}") from exc

    @classmethod
    def from_json(cls, text: str) -> ZCode:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorruptCodeError(f"Z code JSON does not parse: {exc}") from exc
        if not isinstance(data, dict):
            raise CorruptCodeError("Z code JSON must be an object")
        return cls.from_dict(data)

    @classmethod
    def load(cls, value: ZCode | bytes | str | dict[str, Any]) -> ZCode:
        """Accept any of the forms: a ZCode, its bytes, its ``zc1:`` string, its JSON string or dict."""
        if isinstance(value, ZCode):
            return value
        if isinstance(value, bytes | bytearray | memoryview):
            return cls.from_bytes(bytes(value))
        if isinstance(value, dict):
            return cls.from_dict(value)
        if isinstance(value, str):
            stripped = value.lstrip()
            return cls.from_json(value) if stripped.startswith("{") else cls.from_string(value)
        raise CorruptCodeError(f"cannot read a Z code from {type(value).__name__}")

    def __repr__(self) -> str:
        return (
            f"ZCode(codec={self.codec!r}, z_tokens={self.z_tokens}, text_tokens={self.text_tokens}, "
            f"ratio={self.ratio:.2f}, bits_per_char={self.bits_per_char:.3f})"
        )
