"""Held-out CE of token-group readers by training step, side by side (the eval rows of ``zcompress train reader``).

    python benchmarks/reader_curve.py benchmarks/results/reader_consecutive/log.jsonl \
        benchmarks/results/token_code_run/log.jsonl --names consecutive aligned --every 100 \
        --out benchmarks/results/reader_consecutive/curve.md

Each log's eval rows hold the reader's CE (nats/token) on its held-apart training segments, all cut into pairs
(2x) or fours (4x), with the true code and with another segment's (shuffled). A row is printed at every step that
is a multiple of ``--every`` and present in any log; a log without that step shows a dash. The held-apart
segments differ between runs (each run's first ``held`` rows of its own data), so compare trends, not decimals.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("held_ce_2x", "held_ce_2x_shuffled", "held_ce_4x", "held_ce_4x_shuffled")


def eval_rows(path: Path) -> dict[int, dict]:
    """step -> the last eval row logged at that step (older logs have no ``kind``)."""
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("kind", "eval") == "eval" and "held_ce_2x" in row:
            out[int(row["step"])] = row
    return out


def table(logs: list[dict[int, dict]], names: list[str], every: int) -> list[str]:
    head = " | ".join(f"{n}: 2x (shuffled) | {n}: 4x (shuffled)" for n in names)
    lines = [f"| step | {head} |", "| ---: |" + " ---: | ---: |" * len(names)]
    steps = sorted({s for log in logs for s in log if s % every == 0})
    for step in steps:
        cells = []
        for log in logs:
            r = log.get(step)
            if r is None:
                cells += ["-", "-"]
            else:
                cells += [
                    f"{r['held_ce_2x']:.3f} ({r['held_ce_2x_shuffled']:.2f})",
                    f"{r['held_ce_4x']:.3f} ({r['held_ce_4x_shuffled']:.2f})",
                ]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--names", nargs="+")
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    names = args.names or [p.parent.name for p in args.logs]
    if len(names) != len(args.logs):
        parser.error("--names needs one name per log")
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])])
    lines = [
        "# Reader held-out CE by step (nats/token)",
        "",
        f"Command: `{command}`",
        "",
        *table([eval_rows(p) for p in args.logs], names, args.every),
    ]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
