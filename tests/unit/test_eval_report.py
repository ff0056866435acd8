"""Report writers: JSON, Markdown table, PNG plots (checked by file signature, not pixels)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from zcompress_integrations.eval import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Point:
    ratio: float
    bleu: float


def test_write_json_is_sorted_and_nan_safe(tmp_path: Path) -> None:
    path = report.write_json(
        {"b": [Point(2.0, 99.5)], "a": {"nan": math.nan, "inf": math.inf, "t": (1, 2)}}, tmp_path / "x/f.json"
    )
    text = path.read_text("utf-8")
    assert text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {
        "a": {"inf": None, "nan": None, "t": [1, 2]},
        "b": [{"bleu": 99.5, "ratio": 2.0}],
    }


def test_markdown_table() -> None:
    rows = [{"method": "gzip-9", "bpc": 2.5, "n": 3}, {"method": "a|b", "bpc": math.nan, "extra": None}]
    table = report.markdown_table(rows)
    assert table.splitlines() == [
        "| method | bpc | n | extra |",
        "| --- | ---: | ---: | --- |",
        "| gzip-9 | 2.50 | 3 |  |",
        "| a\\|b | n/a |  |  |",
    ]
    assert report.markdown_table(rows, ["n"], float_format="{:.1f}").splitlines()[2] == "| 3 |"
    assert report.markdown_table([]) == ""


@pytest.mark.parametrize(
    "draw",
    [
        lambda p: report.plot_ratio_vs_quality(
            {"latent": [(4.0, 90.0), (2.0, 99.0)], "entropy": [(2.8, 100.0)]}, p, bound=2.86
        ),
        lambda p: report.plot_qa_f1_vs_tokens(
            {"full": [(1500, 0.6)], "llmlingua": [(300, 0.4), (600, 0.5)]}, p
        ),
        lambda p: report.plot_throughput({"compress": [(64, 120.0), (1024, 800.0)]}, p, unit="tokens/s"),
        lambda p: report.plot_curves({}, p, xlabel="x", ylabel="y"),
        lambda p: report.plot_curves(
            {"a": [(1.0, 2.0)]}, p, xlabel="x", ylabel="y", vlines={"bound": 1.5}, legend_outside=True
        ),
    ],
)
def test_plots_write_png(draw: Callable[[Path], Path], tmp_path: Path) -> None:
    path = draw(tmp_path / "plots" / "figure.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_legend_outside_widens_the_figure(tmp_path: Path) -> None:
    import struct

    def width(path: Path) -> int:
        return struct.unpack(">I", path.read_bytes()[16:20])[0]  # the PNG header's IHDR width

    curves = {"a": [(1.0, 2.0), (2.0, 3.0)]}
    inside = report.plot_curves(curves, tmp_path / "in.png", xlabel="x", ylabel="y")
    outside = report.plot_curves(curves, tmp_path / "out.png", xlabel="x", ylabel="y", legend_outside=True)
    assert width(outside) > width(inside)
