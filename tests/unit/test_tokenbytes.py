"""TokenBytes maps any bytes to token ids and back exactly, whatever the tokenizer does with the text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zcompress_integrations.core.tokenbytes import TokenBytes
from zcompress_integrations.errors import UnsupportedTextError

TRICKY = [
    b"",
    b"plain text",
    b"  leading and trailing  ",
    b"tabs\tand\r\nCRLF\rCR\n\n\n",
    b"\x00NUL\x00",
    b"<s>looks special</s> <|endoftext|>",
    "emoji \U0001f600 and ZWJ \U0001f468\u200d\U0001f469\u200d\U0001f467".encode(),
    "combining e\u0301 vs \u00e9, RTL \u05e9\u05dc\u05d5\u05dd".encode(),
    b"\xff\xfe invalid UTF-8 \xc3\x28 \xed\xa0\x80 surrogate bytes",
    b"\xe2\x82",  # truncated multi-byte sequence at the end
    bytes(range(256)),
]


@pytest.fixture(scope="module")
def token_bytes(tiny_model_dir: Path) -> TokenBytes:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return TokenBytes(tok, len(tok))


@pytest.mark.parametrize("data", TRICKY, ids=range(len(TRICKY)))
def test_round_trip_is_exact(token_bytes: TokenBytes, data: bytes) -> None:
    ids = token_bytes.encode(data)
    assert token_bytes.decode(ids) == data
    assert all(token_bytes.codable[i] for i in ids)


def test_every_single_byte(token_bytes: TokenBytes) -> None:
    for b in range(256):
        assert token_bytes.decode(token_bytes.encode(bytes([b]))) == bytes([b])


def test_special_tokens_never_stand_for_text(token_bytes: TokenBytes) -> None:
    tok: Any = token_bytes.tokenizer
    for special in tok.all_special_ids:
        assert token_bytes.table[special] is None and not token_bytes.codable[special]
    ids = token_bytes.encode(b"<s></s>")
    assert not set(ids) & set(tok.all_special_ids)
    with pytest.raises(UnsupportedTextError):
        token_bytes.decode([tok.all_special_ids[0]])


def test_text_is_tokenised_not_spelled_byte_by_byte(token_bytes: TokenBytes) -> None:
    data = b"The quick brown fox jumps over the lazy dog."
    assert len(token_bytes.encode(data)) < len(data) / 2


def test_virtual_ids_for_bytes_the_vocabulary_lacks(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = len(tok)
    # pretend the vocabulary ends before some single-byte tokens: their bytes get virtual ids
    small = TokenBytes(tok, 100)
    assert small.missing_bytes
    data = bytes(range(256))
    ids = small.encode(data)
    assert small.decode(ids) == data
    assert any(i >= 100 for i in ids) and max(ids) < 100 + 256
    assert small.n_symbols == 100 + 256 and vocab > 100
