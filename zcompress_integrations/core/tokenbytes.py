"""Exact text <-> token mapping, for any bytes.

``tokenizer.decode(tokenizer.encode(text)) == text`` does not hold for every tokenizer and every string (clean-up
of spaces, normalisation, invalid UTF-8, text that looks like a special token). The codecs therefore never decode
with the tokenizer: each token id maps to the exact bytes it stands for (byte-level BPE: through the GPT-2
byte<->unicode table; SentencePiece: ``▁`` and ``<0xNN>`` byte-fallback tokens), and a piece of text whose tokens do
not reproduce its bytes is coded as single-byte tokens instead. Special tokens never stand for text.

Some vocabularies lack tokens for a few byte values (SmolLM2 has none for 21 of them, e.g. ``\x04`` and the bytes
that never occur in UTF-8). Those bytes get *virtual* ids ``vocab_size + byte``: the codec gives them a fixed
tiny probability and feeds the model a stand-in token after one, so no input is ever lost.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from zcompress_integrations.errors import UnsupportedTextError

__all__ = ["TokenBytes"]

_HEX_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _gpt2_unicode_to_byte() -> dict[str, int]:
    # The GPT-2 table: printable bytes map to themselves, the rest to code points from 256 up.
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    chars = keep[:]
    extra = 0
    for byte in range(256):
        if byte not in keep:
            keep.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


class TokenBytes:
    """Token id <-> bytes table for a tokenizer, restricted to the first ``vocab_size`` ids.

    Attributes:
        table: bytes of each id, ``None`` for ids that never stand for text (special/added tokens).
        byte_ids: for each of the 256 byte values, the id of its single-byte token.
    """

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= {i for i in getattr(tokenizer, "added_tokens_decoder", {}) or {} if i < vocab_size}
        u2b = _gpt2_unicode_to_byte()
        byte_level = sum(1 for t in tokens if t is not None and len(t) == 1 and t in u2b) >= 200
        table: list[bytes | None] = []
        for i, tok in enumerate(tokens):
            if tok is None or i in special:
                table.append(None)
            elif byte_level:
                try:
                    table.append(bytes(u2b[c] for c in tok))
                except KeyError:
                    table.append(None)
            else:
                match = _HEX_BYTE.match(tok)
                table.append(
                    bytes([int(match.group(1), 16)]) if match else tok.replace("▁", " ").encode("utf-8")
                )
        byte_ids: list[int | None] = [None] * 256
        for i, raw in enumerate(table):
            if raw is not None and len(raw) == 1 and byte_ids[raw[0]] is None:
                byte_ids[raw[0]] = i
        self.missing_bytes = [b for b in range(256) if byte_ids[b] is None]
        for b in range(256):  # virtual ids for bytes the vocabulary cannot spell
            table.append(bytes([b]) if byte_ids[b] is None else None)
            if byte_ids[b] is None:
                byte_ids[b] = vocab_size + b
        self.table = table
        self.byte_ids: list[int] = [int(b) for b in byte_ids]  # type: ignore[arg-type]
        self.codable = [raw is not None for raw in table]
        self.n_symbols = len(table)  # vocab_size + 256

    def decode(self, ids: list[int]) -> bytes:
        table = self.table
        try:
            return b"".join(table[i] for i in ids)  # type: ignore[misc]
        except TypeError as exc:
            raise UnsupportedTextError("token ids include a special token, which stands for no text") from exc

    def _encode_run(self, run: str) -> list[int]:
        enc = self.tokenizer(run, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        ids = [int(i) for i in enc]
        raw = run.encode("utf-8")
        if (
            all(0 <= i < self.vocab_size and self.table[i] is not None for i in ids)
            and self.decode(ids) == raw
        ):
            return ids
        return [self.byte_ids[b] for b in raw]

    def encode(self, data: bytes) -> list[int]:
        """Token ids whose bytes are exactly ``data`` (valid UTF-8 runs tokenised, other bytes as byte tokens)."""
        ids: list[int] = []
        pos = 0
        while pos < len(data):
            try:
                run = data[pos:].decode("utf-8")
                end = len(data)
            except UnicodeDecodeError as exc:
                end = pos + exc.start
                run = data[pos:end].decode("utf-8")
            if run:
                ids.extend(self._encode_run(run))
            if end < len(data):
                ids.append(self.byte_ids[data[end]])  # one undecodable byte
                end += 1
            pos = end
        return ids
