"""Integer arithmetic coder (Witten, Neal & Cleary, 1987) over cumulative frequency tables.

The coder keeps an interval ``[low, high]`` of 32-bit integers. Coding a symbol with cumulative range
``[cum_lo, cum_hi)`` out of ``total`` narrows the interval to that fraction of itself; whenever the interval lies
wholly in the lower or upper half, the leading bit is settled, emitted, and the interval doubled. When it straddles
the middle within the two inner quarters, the decision is deferred (``pending`` bits) and the interval doubled
around the centre. After normalisation the interval spans more than a quarter (2^30), so any ``total`` up to 2^24
keeps every symbol's share non-empty.

The decoder mirrors the encoder exactly and reads zeros past the end of the stream, which is what lets the
encoder drop trailing zero bits. Pure Python integers: per-symbol cost is a few microseconds, negligible next to
a model forward pass.
"""

from __future__ import annotations

__all__ = ["ArithmeticEncoder", "ArithmeticDecoder", "bits_to_ids", "ids_to_bits", "MAX_TOTAL_BITS"]

_PRECISION = 32
_FULL = (1 << _PRECISION) - 1
_HALF = 1 << (_PRECISION - 1)
_QUARTER = 1 << (_PRECISION - 2)
_THREE_QUARTERS = _HALF + _QUARTER
MAX_TOTAL_BITS = 24


class ArithmeticEncoder:
    def __init__(self) -> None:
        self.low = 0
        self.high = _FULL
        self.pending = 0
        self.bits: list[int] = []

    def _emit(self, bit: int) -> None:
        self.bits.append(bit)
        if self.pending:
            self.bits.extend([1 - bit] * self.pending)
            self.pending = 0

    def encode(self, cum_lo: int, cum_hi: int, total: int) -> None:
        if not 0 <= cum_lo < cum_hi <= total or total > (1 << MAX_TOTAL_BITS):
            raise ValueError(f"bad symbol range [{cum_lo}, {cum_hi}) of {total}")
        span = self.high - self.low + 1
        self.high = self.low + span * cum_hi // total - 1
        self.low = self.low + span * cum_lo // total
        while True:
            if self.high < _HALF:
                self._emit(0)
            elif self.low >= _HALF:
                self._emit(1)
                self.low -= _HALF
                self.high -= _HALF
            elif self.low >= _QUARTER and self.high < _THREE_QUARTERS:
                self.pending += 1
                self.low -= _QUARTER
                self.high -= _QUARTER
            else:
                break
            self.low <<= 1
            self.high = (self.high << 1) | 1

    def finish(self) -> list[int]:
        """Flush and return the bits, with trailing zeros dropped (the decoder reads zeros past the end)."""
        self.pending += 1
        self._emit(0 if self.low < _QUARTER else 1)
        bits = self.bits
        while bits and bits[-1] == 0:
            bits.pop()
        return bits


class ArithmeticDecoder:
    def __init__(self, bits: list[int]) -> None:
        self.bits = bits
        self.pos = 0
        self.low = 0
        self.high = _FULL
        self.value = 0
        for _ in range(_PRECISION):
            self.value = (self.value << 1) | self._next_bit()

    def _next_bit(self) -> int:
        bit = self.bits[self.pos] if self.pos < len(self.bits) else 0
        self.pos += 1
        return bit

    def target(self, total: int) -> int:
        """The cumulative count the next symbol's range must contain."""
        span = self.high - self.low + 1
        return ((self.value - self.low + 1) * total - 1) // span

    def consume(self, cum_lo: int, cum_hi: int, total: int) -> None:
        """Narrow the interval to the decoded symbol's range (the same arithmetic as the encoder)."""
        span = self.high - self.low + 1
        self.high = self.low + span * cum_hi // total - 1
        self.low = self.low + span * cum_lo // total
        while True:
            if self.high < _HALF:
                pass
            elif self.low >= _HALF:
                self.low -= _HALF
                self.high -= _HALF
                self.value -= _HALF
            elif self.low >= _QUARTER and self.high < _THREE_QUARTERS:
                self.low -= _QUARTER
                self.high -= _QUARTER
                self.value -= _QUARTER
            else:
                break
            self.low <<= 1
            self.high = (self.high << 1) | 1
            self.value = (self.value << 1) | self._next_bit()


def bits_to_ids(bits: list[int], width: int) -> list[int]:
    """Cut a bit list into ``width``-bit integers, zero-padding the last one."""
    ids = []
    for start in range(0, len(bits), width):
        chunk = bits[start : start + width]
        value = 0
        for bit in chunk:
            value = (value << 1) | bit
        ids.append(value << (width - len(chunk)))
    return ids


def ids_to_bits(ids: list[int] | tuple[int, ...], width: int) -> list[int]:
    bits: list[int] = []
    for value in ids:
        bits.extend((value >> (width - 1 - i)) & 1 for i in range(width))
    return bits
