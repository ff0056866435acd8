"""Markdown tables of a learned-code training log (``zcompress train compressor``'s ``log.jsonl``).

    python benchmarks/training_log_table.py benchmarks/results/learned_code_run3/log.jsonl --window 25

Train rows are averaged over windows of ``--window`` steps: the reader's CE with the row's own Z, the gap to the
CE with another row's Z (the information Z carries; it must reach >= 1 nat/token), the match term (MSE of Z to the
span's token-group embedding over the target's mean square: 1.0 is what an all-zero Z scores; the log holds it times
the run's ``match_weight``, which ``--match-weight`` divides out), the VQ term, Z-tokens per segment, and seconds
a training step (the log's ``seconds`` counts steps only, not evals or checkpoints). Eval rows (inference path:
the model's span ends and quantised ids) and answer rows (held-apart answer-from-Z CE, runs with ``qa_weight``) are
listed as logged. Prints to stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def tables(rows: list[dict], window: int, match_weight: float = 1.0) -> list[str]:
    train = [r for r in rows if r["kind"] == "train"]
    lines = [
        "| steps | ratios | CE, own Z (nats/token) | CE gap (other Z - own) | match (relative MSE) | vq "
        "| Z per 64-token segment | s/step |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    last_s, last_step = 0.0, 0
    top = max((r["step"] for r in train), default=0)
    for lo in range(1, top + 1, window):
        block = [r for r in train if lo <= r["step"] < lo + window]
        if not block:
            continue

        def mean(key: str, block: list[dict] = block) -> float:
            return sum(r.get(key) or 0.0 for r in block) / len(block)

        ratios = ",".join(sorted({f"{r['ratio']:g}x" for r in block}))
        per_step = (block[-1]["seconds"] - last_s) / max(block[-1]["step"] - last_step, 1)  # any log_every
        last_s, last_step = block[-1]["seconds"], block[-1]["step"]
        lines.append(
            f"| {lo}-{block[-1]['step']} | {ratios} | {mean('ce'):.3f} | {mean('ce_gap'):+.3f} | "
            f"{mean('match') / match_weight:.3f} | {mean('vq'):.3f} | {mean('z_per_seg'):.1f} | {per_step:.1f} |"
        )
    evals = [r for r in rows if r["kind"] == "eval"]
    if evals:
        lines += [
            "",
            "| eval at step | CE own Z, 2x / 4x | CE other Z, 2x / 4x | usage perplexity, 2x / 4x "
            "| achieved ratio, 2x / 4x asked | Spearman(Z count, NLL), 2x / 4x |",
            "| ---: | --- | --- | --- | --- | --- |",
        ]
        for r in evals:
            lines.append(
                f"| {r['step']} | {r['ce_true_2x']:.3f} / {r.get('ce_true_4x', '-')} | "
                f"{r['ce_other_2x']:.3f} / {r.get('ce_other_4x', '-')} | {r['usage_ppl_2x']} / {r.get('usage_ppl_4x', '-')} | "
                f"{r.get('ratio_2x')} / {r.get('ratio_4x')} | {r.get('spearman_2x')} / {r.get('spearman_4x')} |"
            )
    answers = [r for r in rows if r["kind"] == "answers"]
    if answers:
        keys = sorted(
            (k for k in answers[0] if k.startswith("held_answer_ce_")), key=lambda k: float(k[15:-1])
        )
        lines += [
            "",
            "| answers at step | " + " | ".join(f"held-apart answer CE, {k[15:]}" for k in keys) + " |",
            "| ---: |" + " ---: |" * len(keys),
        ]
        lines += [f"| {r['step']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |" for r in answers]
        shown = [r for r in train if r.get("answer") is not None]
        if shown:
            lines.append(
                f"\nTrain rows' answer loss, mean over {len(shown)} steps: "
                f"{sum(r['answer'] for r in shown) / len(shown):.3f} nats/token."
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("log", type=Path)
    parser.add_argument("--window", type=int, default=25)
    parser.add_argument(
        "--match-weight", type=float, default=1.0, help="the run's match_weight (see its config)"
    )
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    print("\n".join(tables(rows, args.window, args.match_weight)))


if __name__ == "__main__":
    main()
