"""Report writers: a JSON of figures, a Markdown table, and PNG plots.

Pure functions over plain dicts and lists, so a benchmark suite computes its numbers and hands them over.
Curves are given as ``{method: [(x, y), ...]}``. Plots use matplotlib's object API on an Agg canvas (no
pyplot global state, no display needed); matplotlib is imported when a plot is drawn.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "Curves",
    "to_jsonable",
    "write_json",
    "markdown_table",
    "write_text",
    "plot_curves",
    "plot_ratio_vs_quality",
    "plot_qa_f1_vs_tokens",
    "plot_throughput",
]

#: ``{method name: [(x, y), ...]}``
Curves = Mapping[str, Sequence[tuple[float, float]]]
PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------------------------------- JSON


def to_jsonable(value: Any) -> Any:
    """Turn figures into JSON-safe values: dataclasses to dicts, tuples to lists, NaN/inf to ``None``.

    Args:
        value: Nested dicts, lists, dataclasses, numbers, strings (numpy scalars are turned via ``item()``).

    Returns:
        A structure ``json.dumps`` accepts with ``allow_nan=False``.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(figures: Mapping[str, Any], path: PathLike) -> Path:
    """Write figures as sorted, indented JSON (parent folders created).

    Args:
        figures: The numbers (see :func:`to_jsonable` for what is accepted).
        path: Output file.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(figures), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    logger.info("Wrote %s", path)
    return path


# ------------------------------------------------------------------------------------------------ Markdown


def _cell(value: Any, float_format: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else float_format.format(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    float_format: str = "{:.2f}",
    align_numbers_right: bool = True,
) -> str:
    """Render rows of figures as a GitHub Markdown table.

    Args:
        rows: One mapping per row.
        columns: Column order; by default the keys in order of first appearance.
        float_format: ``str.format`` pattern for floats (NaN shows as ``n/a``, ``None`` as empty).
        align_numbers_right: Right-align columns whose values are all numbers.

    Returns:
        The table, ending in a newline ("" for no rows).
    """
    if not rows:
        return ""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    header = "| " + " | ".join(columns) + " |"
    aligns = []
    for col in columns:
        values = [row.get(col) for row in rows if row.get(col) is not None]
        numeric = bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        aligns.append("---:" if numeric and align_numbers_right else "---")
    lines = [header, "| " + " | ".join(aligns) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(col), float_format) for col in columns) + " |")
    return "\n".join(lines) + "\n"


def write_text(text: str, path: PathLike) -> Path:
    """Write a Markdown (or any text) report, creating parent folders.

    Args:
        text: The content.
        path: Output file.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    logger.info("Wrote %s", path)
    return path


# --------------------------------------------------------------------------------------------------- plots


def plot_curves(
    curves: Curves,
    path: PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    vlines: Mapping[str, float] | None = None,
    log_x: bool = False,
    log_y: bool = False,
    legend_outside: bool = False,
) -> Path:
    """Draw one line per method (points sorted by x) and save a PNG.

    Args:
        curves: ``{method: [(x, y), ...]}``; a method with one point is drawn as a marker.
        path: Output ``.png``.
        xlabel: X axis label.
        ylabel: Y axis label.
        title: Figure title.
        vlines: ``{label: x}`` dashed vertical lines (e.g. a bound).
        log_x: Logarithmic x axis.
        log_y: Logarithmic y axis.
        legend_outside: Put the legend right of the axes (a wider figure), for many or long labels that would
            hide points.

    Returns:
        The path written.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("Plots need matplotlib: pip install zcompress-integrations[eval]") from err

    fig = Figure(figsize=(11.0 if legend_outside else 6.4, 4.4), dpi=120)
    ax = fig.add_subplot()
    for name, points in curves.items():
        pts = sorted((float(x), float(y)) for x, y in points)
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    for i, (label, x) in enumerate((vlines or {}).items()):
        ax.axvline(float(x), color=f"C{(i + len(curves)) % 10}", linestyle="--", linewidth=1.2, label=label)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves or vlines:
        if legend_outside:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
        else:
            ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    logger.info("Wrote %s", path)
    return path


def plot_ratio_vs_quality(
    curves: Curves,
    path: PathLike,
    *,
    bound: float | None = None,
    metric: str = "BLEU-4",
    title: str | None = None,
) -> Path:
    """Quality against compression ratio, with the exact-reconstruction bound as a vertical line.

    Args:
        curves: ``{method: [(ratio, score), ...]}`` (ratio = text tokens per Z-token).
        path: Output ``.png``.
        bound: ``log2(K) / H`` (see ``metrics.exact_reconstruction_bound``); right of it is lossy.
        metric: Y axis name (``"BLEU-4"``, ``"exact match"``...).
        title: Figure title.

    Returns:
        The path written.
    """
    vlines = {f"exact bound log2(K)/H = {bound:.2f}x": bound} if bound is not None else None
    return plot_curves(
        curves,
        path,
        xlabel="compression ratio (text tokens / Z-tokens)",
        ylabel=metric,
        title=title or f"{metric} vs compression ratio",
        vlines=vlines,
    )


def plot_qa_f1_vs_tokens(curves: Curves, path: PathLike, *, title: str | None = None) -> Path:
    """QA F1 against prompt tokens, one line per method (full context, truncation, LLMLingua, Z-tokens).

    Args:
        curves: ``{method: [(prompt_tokens, f1), ...]}``.
        path: Output ``.png``.
        title: Figure title.

    Returns:
        The path written.
    """
    return plot_curves(
        curves,
        path,
        xlabel="prompt tokens",
        ylabel="QA F1",
        title=title or "QA F1 vs prompt tokens",
        log_x=True,
    )


def plot_throughput(
    curves: Curves,
    path: PathLike,
    *,
    unit: str = "tokens/s",
    title: str | None = None,
) -> Path:
    """Throughput against input length, one line per method or direction.

    Args:
        curves: ``{method: [(text_tokens, throughput), ...]}``.
        path: Output ``.png``.
        unit: Throughput unit for the y label.
        title: Figure title.

    Returns:
        The path written.
    """
    return plot_curves(
        curves,
        path,
        xlabel="text length (tokens)",
        ylabel=f"throughput ({unit})",
        title=title or "Throughput vs text length",
        log_x=True,
    )
