"""The exact codec on the real default model (SmolLM2-135M): a sample of evaluation texts and naughty strings
round-trip exactly, and ``zcompress demo`` works offline. Marked slow: about 2-3 minutes on a 2-core CPU."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _sample() -> list[str | bytes]:
    from zcompress_integrations.eval.datasets import (
        DataNotFoundError,
        load_hotpot_wiki_paragraphs,
        resolve_data_dir,
    )

    try:
        root = resolve_data_dir()
        paragraphs = [p.text for p in load_hotpot_wiki_paragraphs(5, seed=1)]
    except DataNotFoundError as exc:
        pytest.skip(f"evaluation data not found: {exc}")
    naughty = [base64.b64decode(s) for s in json.loads((root / "naughty" / "blns.base64.json").read_text())]
    picked: list[str | bytes] = []
    for raw in naughty[100::57][:10]:  # spread over the list: scripts, emoji, RTL, injections
        try:
            picked.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            picked.append(raw)
    picked.append(b"\x04\xff\xfe bytes SmolLM2 cannot spell \x00")
    return [p[:400] for p in paragraphs] + picked


def test_sample_round_trips_and_tracks_cross_entropy(default_compressor: Any) -> None:
    texts = _sample()
    codes = default_compressor.compress_batch(texts)
    assert default_compressor.decompress_batch(codes) == texts
    ce = default_compressor.exact_codec.cross_entropy_bits_batch(texts[:5])
    for code, h in zip(codes[:5], ce, strict=True):
        # the bound: 3% over the model's cross-entropy plus one Z-token of padding
        assert code.bits <= 1.03 * h + math.log2(code.k)
    # English prose: ~4.5 bits/token with 12-bit Z-tokens (short texts pay the last Z-token's padding)
    assert sum(c.text_tokens for c in codes[:5]) / sum(c.z_tokens for c in codes[:5]) > 2.0


def test_cli_demo_offline(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from zcompress_integrations.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "round trip exact: True" in out and "bound log2(K)/H" in out
