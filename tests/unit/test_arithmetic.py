"""The integer arithmetic coder round-trips random symbol streams under random (and extreme) distributions."""

from __future__ import annotations

import random

import pytest

from zcompress_integrations.core.arithmetic import (
    MAX_TOTAL_BITS,
    ArithmeticDecoder,
    ArithmeticEncoder,
    bits_to_ids,
    ids_to_bits,
)


def _cum(freqs: list[int]) -> list[int]:
    out, total = [], 0
    for f in freqs:
        total += f
        out.append(total)
    return out


def _round_trip(tables: list[list[int]], symbols: list[int]) -> list[int]:
    enc = ArithmeticEncoder()
    for cum, sym in zip(tables, symbols, strict=True):
        enc.encode(cum[sym - 1] if sym else 0, cum[sym], cum[-1])
    bits = enc.finish()
    dec = ArithmeticDecoder(bits)
    out = []
    for cum in tables:
        target = dec.target(cum[-1])
        sym = next(i for i, c in enumerate(cum) if c > target)
        dec.consume(cum[sym - 1] if sym else 0, cum[sym], cum[-1])
        out.append(sym)
    return out


@pytest.mark.parametrize("seed", range(20))
def test_random_distributions_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    tables, symbols = [], []
    for _ in range(rng.randint(0, 300)):
        n = rng.choice([2, 3, 10, 100, 1000])
        shape = rng.choice(["uniform", "peaked", "zipf"])
        if shape == "uniform":
            freqs = [rng.randint(1, 1000) for _ in range(n)]
        elif shape == "peaked":
            freqs = [1] * n
            freqs[rng.randrange(n)] = (1 << MAX_TOTAL_BITS) - n
        else:
            freqs = [max(1, int(1e6 / (i + 1) ** 1.5)) for i in range(n)]
        # zero-frequency symbols (non-codable tokens) are allowed but never coded
        for i in rng.sample(range(n), k=n // 10):
            if sum(freqs) - freqs[i] > 0:
                freqs[i] = 0
        cum = _cum(freqs)
        codable = [i for i, f in enumerate(freqs) if f]
        # mostly likely symbols, sometimes the rarest one
        sym = rng.choice(codable) if rng.random() < 0.3 else max(codable, key=lambda i: freqs[i])
        tables.append(cum)
        symbols.append(sym)
    assert _round_trip(tables, symbols) == symbols


def test_extreme_tables_at_full_precision() -> None:
    total = 1 << MAX_TOTAL_BITS
    rare = [1, total - 1]  # probability 2^-24 and 1 - 2^-24
    tables = [_cum(rare)] * 200
    symbols = [0] * 100 + [1] * 100
    assert _round_trip(tables, symbols) == symbols


def test_code_length_close_to_information_content() -> None:
    import math

    rng = random.Random(7)
    freqs = [rng.randint(1, 50) for _ in range(64)]
    cum = _cum(freqs)
    symbols = rng.choices(range(64), weights=freqs, k=2000)
    enc = ArithmeticEncoder()
    for s in symbols:
        enc.encode(cum[s - 1] if s else 0, cum[s], cum[-1])
    bits = enc.finish()
    info = -sum(math.log2(freqs[s] / cum[-1]) for s in symbols)
    assert info - 1 <= len(bits) <= info + 2  # tolerance: the flush costs at most 2 bits


def test_rejects_bad_ranges() -> None:
    enc = ArithmeticEncoder()
    for lo, hi, total in [(3, 3, 10), (5, 4, 10), (0, 11, 10), (0, 1, (1 << MAX_TOTAL_BITS) + 1)]:
        with pytest.raises(ValueError):
            enc.encode(lo, hi, total)


@pytest.mark.parametrize("width", [1, 8, 12, 16])
def test_bits_ids_round_trip(width: int) -> None:
    rng = random.Random(width)
    bits = [rng.randint(0, 1) for _ in range(101)]
    ids = bits_to_ids(bits, width)
    assert all(0 <= z < 1 << width for z in ids)
    back = ids_to_bits(ids, width)
    assert back[: len(bits)] == bits and not any(back[len(bits) :])
