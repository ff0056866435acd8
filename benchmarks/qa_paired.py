"""Paired bootstrap of QA score differences between context methods, from a ``zcompress eval`` QA result.

    python benchmarks/qa_paired.py benchmarks/results/qa_hotpotqa200/results.json \
        --out benchmarks/results/qa_hotpotqa200/paired.md

Every method answered the same questions, so the difference of two methods is taken per question and resampled
(10,000 bootstrap draws, seed 0); the table gives its mean and 95% interval for EM, F1 and answer-in-prediction.
Reads the stored predictions only: no model runs, seconds on any machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from zcompress_integrations.eval import metrics

SCORES = {"EM": metrics.qa_exact_match, "F1": metrics.qa_f1, "answer in prediction": metrics.qa_contains}


def paired_rows(qa: dict, pairs: list[tuple[str, str]], draws: int = 10_000, seed: int = 0) -> list[dict]:
    golds, methods = qa["golds"], qa["methods"]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(golds), (draws, len(golds)))
    rows = []
    for a, b in pairs:
        row = {"comparison": f"{a} - {b}"}
        for label, score in SCORES.items():
            diff = np.array(
                [
                    score(pa, g) - score(pb, g)
                    for pa, pb, g in zip(
                        methods[a]["predictions"], methods[b]["predictions"], golds, strict=True
                    )
                ]
            )
            lo, hi = np.percentile(diff[idx].mean(axis=1), [2.5, 97.5])
            row[label] = f"{diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", help="results.json of a zcompress eval run with the qa suite")
    parser.add_argument("--out", default=None, help="write the Markdown table here too")
    args = parser.parse_args()
    qa = json.loads(Path(args.results).read_text())["suites"]["qa"]
    ok = [m for m, row in qa["methods"].items() if "predictions" in row]
    pairs = [
        (z, other) for z in ok if z.startswith("latent") for other in ok if not other.startswith("latent")
    ]
    rows = paired_rows(qa, pairs)
    cols = list(rows[0])
    lines = [
        f"Paired bootstrap over {len(qa['golds'])} questions (`{args.results}`): mean difference per question "
        "and 95% interval (10,000 draws, seed 0).",
        "",
        "| " + " | ".join(cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
        *("| " + " | ".join(r[c] for c in cols) + " |" for r in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
