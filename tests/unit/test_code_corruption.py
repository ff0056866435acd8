"""Every corruption of a Z code, in each of its three forms, is caught: never a wrong code, never a wrong text.

Two levels, as in ``docs/reliability.md``:

* **Parse level** (no model, exhaustive): every single-bit flip and every truncation of the binary form, every bit
  flip of the payload of the ``zc1:`` string form and every character substitution, deletion and insertion in it,
  every bit flip of the JSON text and field-level mutations of the JSON dict (wrong types, negative and huge
  numbers, missing keys), and forged headers (sizes up to 2^40, long varints) raise :class:`CorruptCodeError`.
  The binary and string forms end with a CRC-32 over every byte, so every damage is caught there. The JSON form
  carries the same CRC-32 (``crc32``) over its fields; a flip that lands in a key or value the parser ignores
  (the derived figures, the ``crc32`` key name) leaves the very same code, which the tests accept and count.
* **Decode level** (tiny model, sampled): codes whose container is intact but whose content is not (a JSON code
  written before ``crc32`` existed, or a forged container with a fresh CRC) are decoded by the real codecs, which
  must raise a :class:`ZCompressError` subclass or return the original exactly.

Counts are printed with ``-s`` (the figures in ``docs/reliability.md``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zcompress_integrations import ChecksumMismatchError, CorruptCodeError, ZCode, ZCompressError
from zcompress_integrations.core.zcode import DEFAULT_LIMITS, CodeLimits, _put_varint

EXACT_PARAMS = {"window": 256, "lanes": 32, "lane0": 5, "threads": 1, "freq_bits": 24, "start": 0}


def _code(**overrides: Any) -> ZCode:
    fields: dict[str, Any] = {
        "z_ids": (0, 4095, 17, 2048, 1, 777, 3000),
        "codec": "exact",
        "k": 4096,
        "text_tokens": 17,
        "text_chars": 80,
        "checksum": b"\x01\x02\x03\x04",
        "fingerprint": b"\xaa\xbb\xcc\xdd",
        "params": EXACT_PARAMS,
    }
    fields.update(overrides)
    return ZCode(**fields)


# Parse-level codes: the shapes the codecs make (exact text/bytes, lossy latent, latent with a residual, empty).
CODES = {
    "exact": _code(),
    "exact_bytes": _code(is_bytes=True, text_chars=40),
    "exact_empty": _code(z_ids=(), text_tokens=0, text_chars=0),
    "latent": _code(
        codec="latent",
        k=4096,
        z_ids=(1, 4095, 3, 900, 17),
        segments=(3, 2),
        text_tokens=50,
        params={"segment_len": 32, "ratio_x100": 400},
    ),
    "latent_lengths": _code(
        codec="latent",
        k=4096 * 4096,
        z_ids=(1, 4096 * 4096 - 1, 3, 900, 17),
        segments=(3, 2),
        segment_tokens=(30, 20),
        text_tokens=50,
        params={"segment_len": 32, "ratio_x100": 400},
    ),
    "latent_residual": _code(
        codec="latent",
        k=4096,
        z_ids=(1, 4095, 3, 900, 17),
        segments=(3, 2),
        text_tokens=50,
        residual=b"\x00\xffresidual\x13",
        params={"segment_len": 32, "ratio_x100": 400, "lanes": 2, "lane0": 1, "threads": 1, "freq_bits": 24},
    ),
}
NAMES = sorted(CODES)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _b64(raw: bytes) -> str:
    return "zc1:" + base64.urlsafe_b64encode(raw).decode("ascii")


def _accept_same_or_corrupt(code: ZCode, parse: Any, value: Any) -> str:
    """``parse(value)`` must raise CorruptCodeError or give back ``code`` itself: 'raised' or 'same'."""
    try:
        got = parse(value)
    except CorruptCodeError:
        return "raised"
    assert got == code, f"a damaged code parsed as a different code: {value!r:.200}"
    return "same"


# ---- binary form ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_single_bit_flip_of_the_bytes_form_raises(name: str) -> None:
    raw = CODES[name].to_bytes()
    for bit in range(8 * len(raw)):
        damaged = _flip(raw, bit)
        with pytest.raises(CorruptCodeError):
            ZCode.from_bytes(damaged)
        with pytest.raises(CorruptCodeError):
            ZCode.load(damaged)
    print(f"\n[bytes] {name}: {8 * len(raw)} single-bit flips raised")


@pytest.mark.parametrize("name", NAMES)
def test_every_truncation_and_extension_of_the_bytes_form_raises(name: str) -> None:
    raw = CODES[name].to_bytes()
    cases = [raw[:end] for end in range(len(raw))] + [raw[start:] for start in range(1, len(raw))]
    cases += [raw + b"\x00", raw + raw, raw[:-4] + b"\x00" + raw[-4:]]
    for damaged in cases:
        with pytest.raises(CorruptCodeError):
            ZCode.from_bytes(damaged)
    print(f"\n[bytes] {name}: {len(cases)} truncations/extensions raised")


# ---- string form ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_bit_flip_of_the_string_payload_raises(name: str) -> None:
    raw = CODES[name].to_bytes()
    for bit in range(8 * len(raw)):
        with pytest.raises(CorruptCodeError):
            ZCode.from_string(_b64(_flip(raw, bit)))
        with pytest.raises(CorruptCodeError):
            ZCode.load(_b64(_flip(raw, bit)))
    for end in range(len(raw)):
        with pytest.raises(CorruptCodeError):
            ZCode.from_string(_b64(raw[:end]))


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_STRAY = (
    "=+/ \n\t.!\x00é\u200b"  # padding, the other base64 alphabet, whitespace, punctuation, NUL, non-ASCII
)


@pytest.mark.parametrize("name", NAMES)
def test_every_character_corruption_of_the_string_form_raises(name: str) -> None:
    """Substitutions, deletions, truncations, insertions: all raise, except whitespace added around the string
    (ignored by design: a trailing newline from a file), which must give back the same code."""
    code = CODES[name]
    text = code.to_string()
    counts = {"raised": 0, "same": 0}

    def check(value: str) -> None:
        outcome = _accept_same_or_corrupt(code, ZCode.load, value)
        counts[outcome] += 1
        if outcome == "same":
            assert value.strip(" \t\n\r\x0b\x0c") == text, repr(value)

    for pos in range(len(text)):
        for ch in _ALPHABET + _STRAY:
            if ch != text[pos]:
                check(text[:pos] + ch + text[pos + 1 :])  # substitution
        check(text[:pos] + text[pos + 1 :])  # deletion
        check(text[:pos])  # truncation
        for ch in "A=\n ":
            check(text[:pos] + ch + text[pos:])  # insertion
    for variant in (
        text.upper(),
        text.lower(),
        text + "=",
        text + "A",
        text.replace("zc1:", "ZC1:"),
        text + "\n",
    ):
        if variant != text:
            check(variant)
    assert counts["same"] <= 5  # whitespace before the string (2 insertions) or after it
    print(f"\n[string] {name}: {sum(counts.values())} character corruptions: {counts}")


# ---- JSON form -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_bit_flip_of_the_json_text_raises_or_leaves_the_same_code(name: str) -> None:
    code = CODES[name]
    raw = code.to_json().encode("ascii")
    counts = {"raised": 0, "same": 0}
    for bit in range(8 * len(raw)):
        damaged = _flip(raw, bit).decode("latin-1")
        counts[_accept_same_or_corrupt(code, ZCode.load, damaged)] += 1
    # the only flips that leave a code are those in what the parser ignores: the derived figures, the crc32 key
    assert counts["same"] < counts["raised"] / 4
    print(f"\n[json] {name}: {8 * len(raw)} bit flips: {counts}")


_OPTIONAL_DEFAULTS: dict[str, Any] = {
    "is_bytes": False,
    "residual": "",
    "segments": [],
    "segment_tokens": [],
    "params": {},
}


def _mutations(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Field-level damage: each field replaced by a wrong type, a negative, a huge number; each key removed."""
    bad_values: list[Any] = [
        None, True, False, "7", "", 1.5, -1, -(2**40), 2**40, 2**70, 10**30, 1e300, float("nan"), float("inf"),
        [], [1], {}, {"a": 1}, "zz", "00", "0" * 9,
    ]  # fmt: skip
    out: list[tuple[str, dict[str, Any]]] = []
    for key in data:
        for value in bad_values:
            if value != data[key] or type(value) is not type(data[key]):
                out.append((f"{key}={value!r:.20}", {**data, key: value}))
        out.append((f"-{key}", {k: v for k, v in data.items() if k != key}))
    for key, value in data["params"].items():
        for bad in (-1, 2**40, 1.5, "1", None, True):
            out.append((f"params.{key}={bad!r}", {**data, "params": {**data["params"], key: bad}}))
        out.append((f"params.{key}+1", {**data, "params": {**data["params"], key: value + 1}}))
    for i in range(len(data["z_ids"])):
        for bad in (-1, 4096, 2**40, 1.5, "1", None, data["z_ids"][i] ^ 1):
            z = list(data["z_ids"])
            z[i] = bad
            out.append((f"z_ids[{i}]={bad!r}", {**data, "z_ids": z}))
    for key in ("text_tokens", "text_chars", "k"):
        out.append((f"{key}+1", {**data, key: data[key] + 1}))
    out.append(("params.extra", {**data, "params": {**data["params"], "extra": 1}}))
    out.append(("segments+[1]", {**data, "segments": [*data["segments"], 1]}))
    if data["segment_tokens"]:
        first, *rest = data["segment_tokens"]
        out.append(("segment_tokens[0]+1", {**data, "segment_tokens": [first + 1, *rest]}))
        out.append(("segment_tokens[:-1]", {**data, "segment_tokens": data["segment_tokens"][:-1]}))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_field_mutations_of_the_json_form_raise(name: str) -> None:
    code = CODES[name]
    data = json.loads(code.to_json())
    counts = {"raised": 0, "same": 0}
    for label, mutated in _mutations(data):
        outcome = _accept_same_or_corrupt(code, ZCode.from_dict, mutated)
        counts[outcome] += 1
        if outcome == "same":  # only what the parser ignores, or an optional key removed at its default value
            key = label.lstrip("-").split("=")[0]
            defaulted = label.startswith("-") and data.get(key) == _OPTIONAL_DEFAULTS.get(key, object())
            assert key in {"crc32", "ratio", "bits", "bits_per_char"} or defaulted, label
        outcome_json = _accept_same_or_corrupt(code, ZCode.load, json.dumps(mutated))
        assert outcome_json == outcome, label
    print(f"\n[json] {name}: {sum(counts.values())} field mutations: {counts}")


@pytest.mark.parametrize(
    "text",
    [
        "{" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '{"k": 1' + "0" * 5000 + "}",
        '{"k": 1e999999}',
        '{"version": NaN}',
        '{"version": 1, "z_ids": [' + ",".join(["1"] * 1000) + "]",
        "{\x00}",
        "{'version': 1}",
    ],
)
def test_hostile_json_text_raises(text: str) -> None:
    with pytest.raises(CorruptCodeError):
        ZCode.from_json(text)
    with pytest.raises(CorruptCodeError):
        ZCode.load(text)


@pytest.mark.parametrize("value", [b"\xff\xfe{", 42, None, ["{}"], 3.5, object()])
def test_non_json_values_raise(value: Any) -> None:
    with pytest.raises(CorruptCodeError):
        ZCode.from_json(value)


def test_json_without_crc32_is_still_read() -> None:
    """Codes stored before the JSON form had ``crc32`` load (their fields are then checked one by one only)."""
    for code in CODES.values():
        data = code.to_dict()
        del data["crc32"]
        assert ZCode.from_dict(data) == code


# ---- forged headers: fail fast, allocate nothing ----------------------------------------------------------------
def _forge(
    *,
    k: int = 4096,
    text_tokens: int = 10,
    text_chars: int = 10,
    n_z: int = 0,
    segments: tuple[int, ...] = (),
    n_seg: int | None = None,
    params: list[tuple[bytes | int, int]] = (),  # type: ignore[assignment]
    n_params: int | None = None,
    n_residual: int = 0,
    payload: bytes = b"",
    flags: int = 0,
    raw_header: bytes | None = None,
) -> bytes:
    """A binary code with arbitrary header fields and a valid CRC-32 (what an attacker can make)."""
    out = bytearray(b"ZC\x01" + bytes([flags]))
    if raw_header is not None:
        out += raw_header
    else:
        for value in (k, text_tokens, text_chars, n_z, len(segments) if n_seg is None else n_seg):
            _put_varint(out, value)
        for seg in segments:
            _put_varint(out, seg)
        _put_varint(out, len(params) if n_params is None else n_params)
        for name, value in params:
            if isinstance(name, int):
                out += b"\x00"
                _put_varint(out, name)
            else:
                _put_varint(out, len(name))
                out += name
            _put_varint(out, value)
        _put_varint(out, n_residual)
    out += payload + b"\xaa\xbb\xcc\xdd\x01\x02\x03\x04"
    out += zlib.crc32(out).to_bytes(4, "big")
    return bytes(out)


def _varints(*values: int) -> bytes:
    out = bytearray()
    for value in values:
        _put_varint(out, value)
    return bytes(out)


FORGED = {
    "text_tokens=2^40": _forge(text_tokens=2**40, text_chars=2**40),
    "text_chars=2^40": _forge(text_chars=2**40),
    "text_tokens>limit": _forge(text_tokens=DEFAULT_LIMITS.max_text_tokens + 1, text_chars=2**27),
    "tokens>4*chars": _forge(text_tokens=41, text_chars=10),
    "tokens without chars": _forge(text_tokens=5, text_chars=0),
    "chars without tokens": _forge(text_tokens=0, text_chars=5),
    "z_ids=2^40": _forge(n_z=2**40),
    "z_ids beyond payload": _forge(n_z=100, payload=b"\x00" * 10),
    "k=2^64+1": _forge(k=2**64 + 1),
    "k=2^70-ish": _forge(raw_header=b"\xff" * 9 + b"\x7f" + b"\x00" * 6),
    "k=1": _forge(k=1),
    "varint of 11 bytes": _forge(raw_header=b"\x80" * 10 + b"\x01" + b"\x00" * 6),
    "varint of 10k bytes": _forge(raw_header=b"\xff" * 10_000),
    "segments=2^40": _forge(n_seg=2**40),
    "segments beyond payload": _forge(n_seg=1000, payload=b"\x00" * 10),
    "params=2^40": _forge(n_params=2**40),
    "params beyond payload": _forge(n_params=1000),
    "param value=2^60": _forge(params=[(0, 2**60)]),
    "param name of 2^40 bytes": _forge(raw_header=_varints(4096, 10, 10, 0, 0, 1, 2**40) + b"x" * 8),
    "param name of 100 bytes": _forge(params=[(b"x" * 100, 1)]),
    "param name not ASCII": _forge(params=[("é".encode(), 1)]),
    "param index unknown": _forge(params=[(99, 1)]),
    "param twice": _forge(params=[(0, 64), (0, 64)]),
    "threads=2^30": _forge(params=[(3, 2**30)]),
    "threads=0": _forge(params=[(3, 0)]),
    "lanes=1000": _forge(params=[(1, 1000)]),
    "lane0>=lanes": _forge(params=[(1, 4), (2, 4)]),
    "window=1": _forge(params=[(0, 1)]),
    "window=2^30": _forge(params=[(0, 2**30)]),
    "freq_bits=9": _forge(params=[(4, 9)]),
    "freq_bits=40": _forge(params=[(4, 40)]),
    "start=2^30": _forge(params=[(5, 2**30)]),
    "segment_len=2^30": _forge(flags=1, params=[(b"segment_len", 2**30)]),
    "residual=2^40": _forge(n_residual=2**40),
    "residual beyond payload": _forge(n_residual=100, payload=b"\x00" * 10),
    "unknown flag": _forge(flags=8),
    "segment-token flag, no segments": _forge(flags=4),
    "latent segments != z ids": _forge(flags=1, k=16, n_z=2, segments=(1,), payload=b"\x12"),
    "latent tokens > segments*len": _forge(
        flags=1, k=16, n_z=1, segments=(1,), text_tokens=40, params=[(b"segment_len", 32)], payload=b"\x10"
    ),
    "padding bits set": _forge(k=16, n_z=1, payload=b"\x1f"),
    "trailing bytes": _forge(payload=b"\x00"),
}


@pytest.mark.parametrize("name", sorted(FORGED))
def test_forged_headers_fail_fast_in_every_form(name: str) -> None:
    raw = FORGED[name]
    tracemalloc.start()
    try:
        for form in (raw, _b64(raw)):
            with pytest.raises(CorruptCodeError):
                ZCode.load(form)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(raw) + 2**20, f"parsing a {len(raw)}-byte forged code allocated {peak} bytes"


def test_a_well_formed_forge_parses_so_the_cases_above_test_one_field_each() -> None:
    code = ZCode.from_bytes(_forge(params=[(0, 64), (1, 4), (2, 3)]))
    assert code.text_tokens == 10 and code.params == {"window": 64, "lanes": 4, "lane0": 3}
    latent = ZCode.from_bytes(
        _forge(
            flags=1,
            k=16,
            n_z=1,
            segments=(1,),
            text_tokens=32,
            params=[(b"segment_len", 32)],
            payload=b"\x10",
        )
    )
    assert latent.codec == "latent" and latent.z_ids == (1,)


JSON_FORGED = {
    "text_tokens=2^40": {"text_tokens": 2**40, "text_chars": 2**40},
    "k=2^65": {"k": 2**65},
    "params of 2^60": {"params": {"window": 2**60}},
    "100 params": {"params": {f"p{i}": 1 for i in range(100)}},
    "param name of 1000 chars": {"params": {"x" * 1000: 1}},
    "threads=2^20": {"params": {**EXACT_PARAMS, "threads": 2**20}},
    "segments of 2^40": {"segments": [2**40]},
    "negative segment": {"segments": [-1]},
}


@pytest.mark.parametrize("name", sorted(JSON_FORGED))
def test_forged_json_fields_fail_fast(name: str) -> None:
    data = {**CODES["exact"].to_dict(), **JSON_FORGED[name]}
    del data["crc32"]  # a forger leaves it out
    with pytest.raises(CorruptCodeError):
        ZCode.from_dict(data)
    with pytest.raises(CorruptCodeError):
        ZCode.load(json.dumps(data))


def test_limits_are_settings() -> None:
    big = _code(text_tokens=1000, text_chars=1000)
    tight = CodeLimits(max_text_tokens=999)
    for form in (big.to_bytes(), big.to_string(), big.to_json(), big.to_dict()):
        assert ZCode.load(form) == big
        with pytest.raises(CorruptCodeError, match="999"):
            ZCode.load(form, limits=tight)
    with pytest.raises(CorruptCodeError):
        big.check_limits(tight)
    huge = _code(text_tokens=2**27, text_chars=2**27)  # beyond the default limit, allowed by a wider one
    with pytest.raises(CorruptCodeError):
        ZCode.from_bytes(huge.to_bytes())
    assert ZCode.from_bytes(huge.to_bytes(), limits=CodeLimits(max_text_tokens=2**28)) == huge
    with pytest.raises(ValueError):
        CodeLimits(max_text_tokens=0)


# ---- decode level: the real codecs on intact containers with damaged content ------------------------------------
TEXT = "The quick brown fox jumps over the lazy dog. 0123456789"
BYTES = b"\xff\xfe not UTF-8 \x80\x00 at all"


def _decode_outcome(zc: Any, code: Any, original: str | bytes) -> str:
    """'raised' (a ZCompressError subclass) or 'same' (the original, byte for byte); anything else fails."""
    try:
        out = zc.decompress(code)
    except (CorruptCodeError, ChecksumMismatchError):
        return "raised"
    except ZCompressError:
        return "raised"
    assert type(out) is type(original) and out == original, f"wrong text {out!r:.100} from {code!r}"
    return "same"


@pytest.fixture(scope="module")
def exact_code(tiny_compressor: Any) -> ZCode:
    return tiny_compressor.compress(TEXT)


def test_every_z_id_bit_flip_of_a_legacy_json_exact_code_is_caught_when_decoded(tiny_compressor, exact_code):
    """A JSON code without ``crc32`` (written before it existed) has no container check over its Z ids: the text
    checksum must catch the damage, or the flip lands in the padding bits of the last Z id (same text)."""
    assert _decode_outcome(tiny_compressor, exact_code, TEXT) == "same"
    counts = {"raised": 0, "same": 0}
    width = exact_code.k.bit_length() - 1
    for i in range(len(exact_code.z_ids)):
        for bit in range(width):
            data = exact_code.to_dict()
            del data["crc32"]
            data["z_ids"][i] ^= 1 << bit
            counts[_decode_outcome(tiny_compressor, data, TEXT)] += 1
    assert counts["same"] <= width  # only the last Z id's low (padding) bits may be ignored
    print(f"\n[decode] exact: {sum(counts.values())} Z-id bit flips: {counts}")


def _forged_variants(code: ZCode) -> dict[str, ZCode]:
    """The code with one field changed and a fresh, valid container (as an attacker or a buggy store makes)."""
    r = dataclasses.replace
    p = code.params
    out = {
        "text_tokens+1": r(code, text_tokens=code.text_tokens + 1),
        "text_tokens-1": r(code, text_tokens=code.text_tokens - 1),
        "checksum": r(code, checksum=b"\x00\x00\x00\x00"),
        "fingerprint": r(code, fingerprint=b"\x00\x00\x00\x00"),
        "k/2": r(code, k=code.k // 2, z_ids=tuple(z % (code.k // 2) for z in code.z_ids)),
        "k*2": r(code, k=code.k * 2),
        "codec": r(code, codec="latent", segments=(len(code.z_ids),), params={**p, "segment_len": 64}),
        "no params": r(code, params={}),
        "z_ids dropped": r(code, z_ids=code.z_ids[:-1]),
        "z_ids zero": r(code, z_ids=(0,) * len(code.z_ids)),
        "z_ids max": r(code, z_ids=(code.k - 1,) * len(code.z_ids)),
    }
    for name, values in {
        "window": (2, 3, 63, 1 << 20),
        "lanes": (p["lanes"] + 1, 64),
        "threads": (2,),
        "freq_bits": (16, 23),
        "start": (0,),
    }.items():
        for value in values:
            out[f"{name}={value}"] = r(code, params={**p, name: value})
    return out


def test_forged_exact_containers_raise_or_decode_the_original(tiny_compressor, exact_code) -> None:
    counts = {"raised": 0, "same": 0}
    for forged in _forged_variants(exact_code).values():
        for form in (forged.to_bytes(), forged.to_string(), forged.to_json()):
            counts[_decode_outcome(tiny_compressor, form, TEXT)] += 1
    print(f"\n[decode] exact: {sum(counts.values())} forged containers: {counts}")


def test_forged_start_token_beyond_the_vocabulary_raises_a_zcompress_error(
    tiny_compressor, exact_code
) -> None:
    forged = dataclasses.replace(exact_code, params={**exact_code.params, "start": 600})
    _decode_outcome(tiny_compressor, forged.to_bytes(), TEXT)


def test_forged_is_bytes_flag_on_non_utf8_bytes_raises_a_zcompress_error(tiny_compressor) -> None:
    code = tiny_compressor.compress(BYTES)
    assert tiny_compressor.decompress(code) == BYTES
    _decode_outcome(tiny_compressor, dataclasses.replace(code, is_bytes=False), BYTES)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the text checksum covers the bytes, not the is_bytes flag: a forged container (valid CRC) whose flag "
    "is set on a str code decodes to the right content as bytes (core/entropy.py / core/compressor.py)",
)
def test_forged_is_bytes_flag_on_text_raises(tiny_compressor, exact_code) -> None:
    _decode_outcome(tiny_compressor, dataclasses.replace(exact_code, is_bytes=True).to_bytes(), TEXT)


@pytest.fixture(scope="module")
def latent_codes(tiny_latent_compressor: Any) -> dict[str, ZCode]:
    zc = tiny_latent_compressor
    return {
        "lossy": zc.compress(TEXT * 2, mode="latent", ratio=4.0),
        "exact": zc.compress(TEXT * 2, mode="latent", ratio=4.0, exact=True),
    }


def test_real_latent_codes_pass_the_parse_checks_in_every_form(latent_codes) -> None:
    for code in latent_codes.values():
        for form in (code.to_bytes(), code.to_string(), code.to_json(), code.to_dict()):
            assert ZCode.load(form) == code
        raw = code.to_bytes()
        for bit in range(8 * len(raw)):
            with pytest.raises(CorruptCodeError):
                ZCode.from_bytes(_flip(raw, bit))
        for end in range(len(raw)):
            with pytest.raises(CorruptCodeError):
                ZCode.from_bytes(raw[:end])
        print(
            f"\n[bytes] real latent ({code.z_tokens} Z ids): {8 * len(raw)} bit flips, {len(raw)} truncations raised"
        )


def test_residual_and_z_id_damage_of_a_legacy_json_latent_exact_code_is_caught(
    tiny_latent_compressor, latent_codes
):
    """Sampled: flips in the residual and in the Z ids of a JSON latent ``exact=True`` code without ``crc32``."""
    zc, code = tiny_latent_compressor, latent_codes["exact"]
    original = TEXT * 2
    assert zc.decompress(code) == original
    counts = {"raised": 0, "same": 0}
    residual = code.residual
    for bit in range(0, 8 * len(residual), max(1, 8 * len(residual) // 12)):
        data = code.to_dict()
        del data["crc32"]
        data["residual"] = base64.b64encode(_flip(residual, bit)).decode("ascii")
        counts[_decode_outcome(zc, data, original)] += 1
    for i in range(0, len(code.z_ids), max(1, len(code.z_ids) // 6)):
        data = code.to_dict()
        del data["crc32"]
        data["z_ids"][i] = (data["z_ids"][i] + 1) % code.k
        counts[_decode_outcome(zc, data, original)] += 1
    assert counts["raised"] >= sum(counts.values()) - 2
    print(f"\n[decode] latent exact=True: {sum(counts.values())} residual/Z-id mutations: {counts}")


def test_forged_latent_containers_raise_or_decode_the_original(tiny_latent_compressor, latent_codes) -> None:
    zc, original = tiny_latent_compressor, TEXT * 2
    code = latent_codes["exact"]
    r = dataclasses.replace
    p = code.params
    variants = {
        "text_tokens+1": r(code, text_tokens=code.text_tokens + 1),
        "text_tokens-1": r(code, text_tokens=code.text_tokens - 1),
        "checksum": r(code, checksum=b"\x00\x00\x00\x00"),
        "fingerprint": r(code, fingerprint=b"\x00\x00\x00\x00"),
        "segments merged": r(code, segments=(sum(code.segments),)),
        "lanes": r(code, params={**p, "lanes": 64}),
        "freq_bits": r(code, params={**p, "freq_bits": 20}),
        "segment_len": r(code, params={**p, "segment_len": 8}),
        "residual dropped": r(code, residual=b""),
        "residual zero": r(code, residual=b"\x00" * len(code.residual)),
        "exact codec": r(code, codec="exact", segments=(), params={**EXACT_PARAMS, "lanes": 1, "lane0": 0}),
    }
    variants = {name: forged for name, forged in variants.items() if forged != code}  # one segment: no merge
    outcomes = {name: _decode_outcome(zc, forged.to_bytes(), original) for name, forged in variants.items()}
    same = sorted(name for name, outcome in outcomes.items() if outcome == "same")
    assert set(same) <= {"lanes"}  # lane placement does not change a row's probabilities here
    print(
        f"\n[decode] latent: {len(variants)} forged containers: {len(variants) - len(same)} raised, same: {same}"
    )


@pytest.mark.parametrize("k", [2, 3, 4095, 4096, 4097, 2**53 + 1, 2**60 + 1, 2**63, 2**64])
def test_ids_of_any_allowed_vocabulary_size_round_trip(k: int) -> None:
    """Z ids are packed at exactly ceil(log2 k) bits (a float log2 undercounts for k just above 2^53)."""
    code = _code(k=k, z_ids=(0, k - 1, k // 2, 1 % k, k - 1))
    for form in (code.to_bytes(), code.to_string(), code.to_json()):
        assert ZCode.load(form) == code


# ---- fuzz: arbitrary input to every parser --------------------------------------------------------------------
def _with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "big")


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    body=st.one_of(
        st.binary(max_size=64).map(lambda b: b"ZC\x01" + b),
        st.builds(  # a plausible header, then anything
            lambda flags, fields, rest: b"ZC\x01" + bytes([flags]) + _varints(*fields) + rest,
            st.integers(0, 15),
            st.lists(st.integers(0, 2**45), min_size=5, max_size=12),
            st.binary(max_size=48),
        ),
    )
)
def test_any_binary_with_a_valid_crc_raises_or_parses_canonically(body: bytes) -> None:
    """Forged bytes (a valid CRC over anything): CorruptCodeError, or a code within the limits whose own binary
    form is exactly the input (one code, one byte string: nothing unread, nothing non-canonical). A container
    without the parameter masks (flag 8, the form written before them) parses to a code written now with them."""
    raw = _with_crc(body)
    try:
        code = ZCode.from_bytes(raw)
    except CorruptCodeError:
        return
    code.check_limits()
    if raw[3] & 8:
        assert code.to_bytes() == raw
    else:
        assert ZCode.from_bytes(code.to_bytes()) == code


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    data=st.one_of(
        st.dictionaries(
            st.sampled_from(sorted(CODES["latent_residual"].to_dict())), _json_values, max_size=16
        ),
        st.builds(  # a real code's dict with some fields replaced by anything
            lambda repl: {**CODES["latent_residual"].to_dict(), **repl},
            st.dictionaries(
                st.sampled_from(sorted(CODES["latent_residual"].to_dict())), _json_values, max_size=3
            ),
        ),
    )
)
def test_any_dict_raises_or_parses(data: dict[str, Any]) -> None:
    try:
        code = ZCode.from_dict(data)
    except CorruptCodeError:
        return
    code.check_limits()
    assert ZCode.from_bytes(code.to_bytes()) == code


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    value=st.one_of(
        st.text(max_size=80), st.text(max_size=80).map(lambda t: "zc1:" + t), st.binary(max_size=80)
    )
)
def test_any_text_or_bytes_to_load_raises_corrupt_code(value: str | bytes) -> None:
    with pytest.raises(CorruptCodeError):
        ZCode.load(value)
