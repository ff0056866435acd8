"""Property tests (hypothesis, bounded) of ``ZCompressor.continue_z`` on the tiny model with the shared tiny latent
adapters and a fresh (untrained) ``infer`` adapter: generation in Z space is lossy, so the contract is that it
returns a latent code whose text ``decompress`` renders, or raises a documented ``ZCompressError``, never another
exception, for any code and any decoding setting.

The inputs are codes of arbitrary Unicode, hostile mixes (RTL overrides, zero-width characters, NUL, CRLF,
combining marks, emoji sequences), bytes that are not UTF-8, empty and whitespace-only texts, very long single
words and the naughty strings; at ratios 1 to 4, with and without a residual; continued by 1 to 3 segments with
drawn (valid and invalid) settings. Counts run are printed with ``-s`` and recorded in ``docs/reliability.md``.
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcompress_integrations import ConfigError, UnsupportedTextError, ZCode, ZCompressError

pytest.importorskip("torch")

NAUGHTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "naughty" / "blns.base64.json"
RUNS: Counter[str] = Counter()


def bounded(n: int) -> Any:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Any:
    yield
    print("\n[zspace properties] examples run: " + ", ".join(f"{k}={v}" for k, v in sorted(RUNS.items())))


@pytest.fixture(scope="module")
def zc(tiny_model_dir: Path, tiny_latent_adapters: Path) -> Any:
    """Its own compressor (the shared one must keep having no infer adapter), with a fresh infer adapter."""
    from zcompress_integrations import ZCompressor
    from zcompress_integrations.core.zspace import add_infer_adapter

    zc = ZCompressor.from_pretrained(tiny_model_dir, adapters=tiny_latent_adapters, window=64)
    add_infer_adapter(zc.latent_codec, seed=0)
    return zc


SPECIAL = [
    "\u202e",
    "\u202d\u2066\u2069",
    "\u200b\u200c\u200d",
    "\x00",
    "\r\n",
    "e\u0301",
    "\u0301\u0308",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f1fa\U0001f1f8",
    "\ufeff",
    "\u2028",
    " ",
    "\t",
    ". ",
    "zc1:AAAA",
]
texts = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(SPECIAL) | st.text(max_size=6), max_size=20).map("".join),
    st.text(st.sampled_from(" \t\n\r\u3000\u00a0"), max_size=20),
    st.builds(lambda u, n: u * n, st.text(min_size=1, max_size=2), st.integers(100, 300)),  # one long "word"
)
items = st.one_of(texts, st.binary(max_size=80))
# settings: valid ones, and in a third of the draws one of them replaced by a wrong value (then ConfigError)
VALID = {
    "n_segments": st.integers(1, 3),
    "temperature": st.one_of(st.just(0.0), st.floats(0.1, 2.0)),
    "top_p": st.one_of(st.just(1.0), st.floats(0.05, 1.0)),
    "context_segments": st.one_of(st.none(), st.integers(1, 3)),
    "z_per_segment": st.one_of(st.none(), st.integers(1, 32)),
    "repetition_penalty": st.one_of(st.none(), st.floats(0.5, 2.0)),
    "seed": st.integers(-1, 2**32),
}
WRONG = {
    "n_segments": [0, -1, True, 1.0, "2", None, 10**9],
    "temperature": [1e-300, 5e-324, 1e300, -1.0, math.nan, math.inf, "0.7", None, True],
    "top_p": [0.0, 1.5, math.nan, "1", None],
    "context_segments": [0, -1, 1.5, math.nan, "1"],
    "z_per_segment": [0, 33, 2.5, math.nan, "4", True],
    "repetition_penalty": [0.0, -1.0, math.inf, math.nan, "x"],
    "seed": [-(2**63) - 1, 2**70, 1.5, "s", None],
}
settings_kw = st.fixed_dictionaries(VALID).flatmap(
    lambda kw: st.one_of(
        st.just(kw),
        st.just(kw),
        st.sampled_from(sorted(WRONG)).flatmap(
            lambda k: st.sampled_from(WRONG[k]).map(lambda v: {**kw, k: v})
        ),
    )
)


def _expected_config_error(zc: Any, code: ZCode, n: Any, kw: dict[str, Any]) -> bool:
    """Whether these settings must be refused with a ConfigError (before any forward pass)."""
    num = lambda v: isinstance(v, int | float) and not isinstance(v, bool)  # noqa: E731
    integer = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    L = zc.latent_codec.config.segment_len
    t, p, cs = kw["temperature"], kw["top_p"], kw["context_segments"]
    zps, rp, sd = kw["z_per_segment"], kw["repetition_penalty"], kw["seed"]
    if (
        not (integer(n) and n >= 1)
        or not (num(t) and (t == 0 or 1e-6 <= t <= 1e6))
        or not (integer(sd) and -(2**63) <= sd < 2**64)
        or not (cs is None or (integer(cs) and cs >= 0))
        or not (zps is None or (integer(zps) and 1 <= zps <= L))
        or not (num(p) and 0 < p <= 1)
        or not (rp is None or (num(rp) and math.isfinite(rp) and rp > 0))
    ):
        return True
    keep = len(code.segments) if cs is None else min(cs, len(code.segments))
    groups = zc.latent_codec.code.groups(code.z_ids)[sum(code.segments[: len(code.segments) - keep]) :]
    span = sum(len(g) for g in groups) + n * L
    max_pos = zc.backbone.model.config.max_position_embeddings
    return not groups or span > max_pos  # nothing to continue, or too long


@bounded(60)
@given(
    item=items,
    ratio=st.sampled_from([1.0, 2.0, 3.5, 4.0]),
    exact=st.booleans(),
    kw=settings_kw,
)
def test_continue_z_returns_a_latent_code_or_a_config_error(
    zc: Any, item: str | bytes, ratio: float, exact: bool, kw: dict[str, Any]
) -> None:
    RUNS["continue_z"] += 1
    code = zc.compress(item, mode="latent", ratio=ratio, exact=exact)
    n = kw.pop("n_segments")
    refuse = _expected_config_error(zc, code, n, kw)
    form = [code, code.to_string(), code.to_bytes(), code.to_json()][RUNS["continue_z"] % 4]  # every form
    try:
        out = zc.continue_z(form, n, **kw)
    except ConfigError:
        assert refuse, (kw, n, code)
        RUNS["continue_z refused with ConfigError"] += 1
        return
    assert not refuse, (kw, n, code)
    RUNS["continue_z continued"] += 1
    assert out.codec == "latent" and len(out.segments) == n and out.params["generated"] == 1
    zc.latent_codec.code.check_ids(out.z_ids)
    assert ZCode.from_bytes(out.to_bytes()) == out
    text = zc.decompress(out)
    assert isinstance(text, str)
    again = zc.continue_z(out, 1)  # a continuation continues too
    assert len(again.segments) == 1


junk = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=80),
    st.text(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), max_size=80
    ).map(lambda s: "zc1:" + s),
    st.none(),
    st.integers(),
    st.lists(st.integers(), max_size=3),
)


@bounded(30)
@given(value=junk)
def test_continue_z_on_junk_raises_a_zcompress_error(zc: Any, value: Any) -> None:
    RUNS["continue_z junk"] += 1
    with pytest.raises(ZCompressError):
        zc.continue_z(value)


@bounded(15)
@given(item=items, position=st.integers(min_value=0), bit=st.integers(0, 7))
def test_continue_z_refuses_a_damaged_code(zc: Any, item: str | bytes, position: int, bit: int) -> None:
    RUNS["continue_z damaged code"] += 1
    code = zc.compress(item, mode="latent")
    data = bytearray(code.to_bytes())
    data[position % len(data)] ^= 1 << bit
    with pytest.raises(ZCompressError):  # the CRC-32 catches every single-bit flip
        zc.continue_z(bytes(data))


def test_continue_z_refuses_exact_codes_empty_codes_and_lone_surrogates(zc: Any) -> None:
    with pytest.raises(ConfigError, match="exact"):
        zc.continue_z(zc.compress("an exact code"))
    with pytest.raises(ConfigError, match="at least one Z-token"):
        zc.continue_z(zc.compress("", mode="latent"))
    with pytest.raises(UnsupportedTextError):
        zc.compress("a lone \ud800 surrogate", mode="latent")


def test_continue_z_continues_every_naughty_string(zc: Any) -> None:
    if not NAUGHTY.is_file():
        pytest.skip(f"naughty strings not found at {NAUGHTY}")
    raw = [base64.b64decode(s) for s in json.loads(NAUGHTY.read_text())]
    strings: list[str | bytes] = []
    for r in raw:
        try:
            strings.append(r.decode("utf-8"))
        except UnicodeDecodeError:
            strings.append(r)
    codes = zc.compress_batch(strings, mode="latent")
    continued = []
    for item, code in zip(strings, codes, strict=True):
        if not item:
            with pytest.raises(ConfigError):
                zc.continue_z(code)
            RUNS["continue_z naughty: ConfigError (empty, nothing to continue)"] += 1
            continue
        continued.append(zc.continue_z(code))
    assert all(isinstance(t, str) for t in zc.decompress_batch(continued))
    RUNS["continue_z naughty strings"] += len(strings)
