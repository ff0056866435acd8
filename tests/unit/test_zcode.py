"""ZCode forms round-trip; damaged, truncated and foreign bytes raise CorruptCodeError (never a wrong code)."""

from __future__ import annotations

import json

import pytest

from zcompress_integrations import CorruptCodeError, ZCode


def _code(**overrides: object) -> ZCode:
    fields: dict[str, object] = {
        "z_ids": (0, 4095, 17, 2048, 1),
        "codec": "exact",
        "k": 4096,
        "text_tokens": 17,
        "text_chars": 80,
        "checksum": b"\x01\x02\x03\x04",
        "fingerprint": b"\xaa\xbb\xcc\xdd",
        "params": {"window": 256, "lanes": 32, "lane0": 5, "threads": 1, "freq_bits": 24, "start": 0},
    }
    fields.update(overrides)
    return ZCode(**fields)  # type: ignore[arg-type]


CODES = {
    "exact": _code(),
    "bytes": _code(is_bytes=True),
    "empty": _code(z_ids=(), text_tokens=0, text_chars=0),
    "latent": _code(
        codec="latent",
        k=512,
        z_ids=(1, 511, 3),
        residual=b"\x00\xffres",
        segments=(2, 1),
        params={"ratio_x100": 400, "custom_name": 3},
    ),
    "latent_lengths": _code(
        codec="latent",
        k=4096 * 4096,
        z_ids=(1, 4096 * 4096 - 1, 3),
        segments=(2, 1),
        segment_tokens=(10, 7),
        params={"segment_len": 16, "ratio_x100": 400},
    ),
    "k2": _code(k=2, z_ids=(0, 1, 1, 0, 1, 1, 1, 0, 1)),
    "path2": _code(
        params={"window": 256, "lanes": 64, "lane0": 63, "threads": 1, "freq_bits": 24, "start": 0, "path": 2}
    ),
    "big_k": _code(k=1 << 20, z_ids=(0, (1 << 20) - 1, 12345)),
}


@pytest.mark.parametrize("name", sorted(CODES))
def test_every_form_round_trips(name: str) -> None:
    code = CODES[name]
    assert ZCode.from_bytes(code.to_bytes()) == code
    assert ZCode.from_string(code.to_string()) == code
    assert ZCode.from_json(code.to_json()) == code
    assert ZCode.from_dict(json.loads(json.dumps(code.to_dict()))) == code
    for form in (code, code.to_bytes(), code.to_string(), code.to_json(), code.to_dict()):
        assert ZCode.load(form) == code
    assert code.to_string().startswith("zc1:") and code.to_string().isascii()


def test_derived_figures() -> None:
    code = _code()
    assert code.z_tokens == 5
    assert code.ratio == pytest.approx(17 / 5)
    assert code.bits == 5 * 12
    assert code.bits_per_char == pytest.approx(60 / 80)
    assert CODES["empty"].ratio == 1.0 and CODES["empty"].bits_per_char == 0.0
    assert CODES["latent"].bits == 3 * 9 + 8 * 5


def test_known_parameter_names_are_stored_compactly() -> None:
    code = _code()
    assert b"window" not in code.to_bytes() and b"freq_bits" not in code.to_bytes()
    assert len(code.to_bytes()) <= 52  # 8 bytes of Z ids + header, 6 params, fingerprint, checksum, CRC


@pytest.mark.parametrize("name", sorted(CODES))
def test_every_single_byte_corruption_raises(name: str) -> None:
    raw = CODES[name].to_bytes()
    for pos in range(len(raw)):
        for delta in (1, 0x80, 0xFF):
            damaged = bytearray(raw)
            damaged[pos] ^= delta
            with pytest.raises(CorruptCodeError):
                ZCode.from_bytes(bytes(damaged))


@pytest.mark.parametrize("name", sorted(CODES))
def test_every_truncation_raises(name: str) -> None:
    raw = CODES[name].to_bytes()
    for end in range(len(raw)):
        with pytest.raises(CorruptCodeError):
            ZCode.from_bytes(raw[:end])
    with pytest.raises(CorruptCodeError):
        ZCode.from_bytes(raw + b"\x00")


@pytest.mark.parametrize(
    "foreign",
    [
        b"",
        b"hello world",
        b"ZC",
        b"ZC\x01\x00" + b"\x00" * 20,
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 30,
        bytes(range(256)),
    ],
)
def test_foreign_bytes_raise(foreign: bytes) -> None:
    with pytest.raises(CorruptCodeError):
        ZCode.from_bytes(foreign)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "zc1:",
        "zc1:@@@",
        "zc2:" + CODES["exact"].to_string()[4:],
        "hello",
        "{",
        "[]",
        '{"version": 1}',
        '{"version": 99, "z_ids": []}',
        42,
        None,
    ],
)
def test_foreign_strings_and_objects_raise(value: object) -> None:
    with pytest.raises(CorruptCodeError):
        ZCode.load(value)  # type: ignore[arg-type]


def test_string_form_detects_damage() -> None:
    text = CODES["exact"].to_string()
    middle = len(text) // 2
    damaged = text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1 :]
    with pytest.raises(CorruptCodeError):
        ZCode.from_string(damaged)


@pytest.mark.parametrize(
    "overrides",
    [
        {"codec": "lossy"},
        {"k": 1},
        {"z_ids": (4096,)},
        {"z_ids": (-1,)},
        {"checksum": b"abc"},
        {"fingerprint": b"abcde"},
        {"params": {"": 1}},
    ],
)
def test_invalid_fields_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _code(**overrides)


def test_path_param_is_a_known_name_and_range_checked() -> None:
    plain = _code()
    with_path = CODES["path2"]
    # path 2 is the format's default: a known name at its default costs only its mask bit
    assert len(with_path.to_bytes()) == len(plain.to_bytes())
    assert ZCode.from_bytes(with_path.to_bytes()).params["path"] == 2
    path3 = _code(params={**with_path.params, "path": 3})
    assert len(path3.to_bytes()) - len(plain.to_bytes()) == 1  # a value off its default: one varint
    assert ZCode.from_bytes(path3.to_bytes()).params["path"] == 3
    for bad in (0, 256):
        params = {**with_path.params, "path": bad}
        with pytest.raises(CorruptCodeError, match="path"):
            ZCode.from_bytes(_code(params=params).to_bytes())


def test_latent_parameter_names_are_stored_compactly_and_old_spellings_still_parse() -> None:
    code = CODES["latent_lengths"]
    raw = code.to_bytes()
    assert b"segment_len" not in raw and b"ratio_x100" not in raw
    # the same code as written before these names were known: each name spelled out after its length byte
    spelled = bytes.fromhex(
        "5a430105808080081150030202010a07020a726174696f5f7831303090030b7365676d656e745f6c656e10"
        "00000001ffffff000003aabbccdd01020304eefccc0d"
    )
    assert len(spelled) - len(raw) == len("ratio_x100") + len("segment_len") - 2  # an index byte each instead
    assert ZCode.from_bytes(spelled) == code


# Containers written before the masked parameter block (flag 8): each known name as a zero length, a one-byte
# index and its value. They must parse to the same codes for as long as the format is read.
INDEXED_CONTAINERS = {
    "path2": "5a4301008020115005000700041800023f0001400006020005000003010000800200000fff0118000010aabbccdd01020304db866c60",
    "latent_lengths": "5a430105808080081150030202010a07020008900300071000000001ffffff000003aabbccdd01020304ee1f8fc8",
}


@pytest.mark.parametrize("name", sorted(INDEXED_CONTAINERS))
def test_containers_from_before_the_parameter_masks_still_parse(name: str) -> None:
    old = bytes.fromhex(INDEXED_CONTAINERS[name])
    assert old[3] & 8 == 0
    assert ZCode.from_bytes(old) == CODES[name]
    assert CODES[name].to_bytes()[3] & 8  # what is written now has the flag


def test_parameters_at_their_defaults_cost_only_their_mask_bits() -> None:
    usual = {"window": 256, "lanes": 1, "lane0": 0, "threads": 1, "freq_bits": 24, "start": 1, "path": 2}
    code = _code(params=usual)
    raw = code.to_bytes()
    empty = _code(params={}).to_bytes()
    # seven names at their defaults: 3 bytes (two masks, a zero count), as for no parameters; the indexed form
    # spent 23 on them (a count, then a zero, an index and a value each; 256 takes two bytes)
    assert len(raw) == len(empty) == 34
    assert ZCode.from_bytes(raw) == code and ZCode.from_bytes(raw).params == usual
    assert ZCode.from_bytes(empty).params == {}  # a name left out stays out: it does not take its default
    one_off = _code(params={**usual, "lanes": 2, "lane0": 1})
    assert len(one_off.to_bytes()) - len(raw) == 2  # the two values that differ
    assert ZCode.from_bytes(one_off.to_bytes()).params == one_off.params


def _forged(monkeypatch: pytest.MonkeyPatch, block: bytes) -> bytes:
    """A container whose parameter block is ``block`` (with a valid CRC), written by the real writer."""
    from zcompress_integrations.core import zcode

    monkeypatch.setattr(zcode, "_write_params", lambda out, params: out.extend(block))
    return _code(params={}).to_bytes()


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (bytes([0x80, 0x08, 0, 0]), "unknown parameter #10"),  # a mask bit past the known names
        (bytes([0x01, 0x02, 5, 0]), "does not name"),  # a value for a name not present
        (bytes([0x01, 0x01, 0x80, 0x02, 0]), "at its default"),  # window=256 spelled out
        (bytes([0x80, 0x02, 0, 0]), "no default"),  # ratio_x100 present without its value
        (bytes([0, 0, 1, 6]) + b"window" + bytes([5]), "known parameter"),  # a known name spelled out
        (bytes([0, 0, 2, 1]) + b"a" + bytes([1, 1]) + b"a" + bytes([2]), "twice"),
    ],
)
def test_malformed_parameter_masks_are_refused(
    monkeypatch: pytest.MonkeyPatch, block: bytes, message: str
) -> None:
    with pytest.raises(CorruptCodeError, match=message):
        ZCode.from_bytes(_forged(monkeypatch, block))


def test_segment_tokens_cost_a_byte_a_segment_and_are_checked() -> None:
    with_lengths = CODES["latent_lengths"]
    without = _code(**{**_fields(with_lengths), "segment_tokens": ()})
    assert without.to_bytes()[3] & 4 == 0  # codes without the counts keep their old bytes (no flag)
    assert len(with_lengths.to_bytes()) - len(without.to_bytes()) == 2
    assert ZCode.from_bytes(with_lengths.to_bytes()).segment_tokens == (10, 7)
    for bad in [(10,), (10, 6), (17, 0)]:  # a count missing, a wrong sum, a segment over segment_len
        forged = ZCode(**{**_fields(with_lengths), "segment_tokens": bad})
        with pytest.raises(CorruptCodeError):  # a missing count shifts every field after it
            ZCode.from_bytes(forged.to_bytes())
        with pytest.raises(CorruptCodeError, match="per-segment text tokens"):
            ZCode.from_json(forged.to_json())
    with pytest.raises(CorruptCodeError, match="exact Z code has no per-segment"):
        ZCode.from_bytes(_code(segments=(17,), segment_tokens=(17,)).to_bytes())


def _fields(code: ZCode) -> dict[str, object]:
    import dataclasses

    return {f.name: getattr(code, f.name) for f in dataclasses.fields(code)}
