"""Learning curves of latent-codec training runs: loss and reconstruction BLEU-4 vs text tokens and wall time.

    python benchmarks/latent_curve.py benchmarks/results/cpu_run_2/log.jsonl benchmarks/results/gpu_run_1/curve.jsonl \\
        --out benchmarks/results/latent_curves.png

Each input is a trainer ``log.jsonl`` (training records with ``loss``; evaluation records with ``val_bleu_2x`` ...)
or a GPU-script ``curve.jsonl`` (``bleu_2x`` ...). The run's label is its folder name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(path: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    evals = []
    for r in rows:
        for prefix in ("val_bleu_", "bleu_"):
            if f"{prefix}2x" in r:
                evals.append(
                    {
                        "tokens_seen": r["tokens_seen"],
                        "wall_s": r["wall_s"],
                        "2x": r[f"{prefix}2x"],
                        "4x": r.get(f"{prefix}4x"),
                    }
                )
    return train, evals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latent_curves.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_tok, ax_wall) = plt.subplots(1, 3, figsize=(15, 4))
    for path in args.logs:
        label = path.parent.name
        train, evals = load(path)
        if train:
            ax_loss.plot([r["tokens_seen"] for r in train], [r["loss"] for r in train], label=label, lw=0.8)
        for ratio, style in (("2x", "-o"), ("4x", "--s")):
            pts = [(e["tokens_seen"], e["wall_s"] / 60, e[ratio]) for e in evals if e[ratio] is not None]
            if pts:
                ax_tok.plot([p[0] for p in pts], [p[2] for p in pts], style, label=f"{label} {ratio}")
                ax_wall.plot([p[1] for p in pts], [p[2] for p in pts], style, label=f"{label} {ratio}")
    ax_loss.set(
        xlabel="text tokens seen", ylabel="reconstruction cross-entropy (nats)", title="training loss"
    )
    ax_tok.set(xlabel="text tokens seen", ylabel="BLEU-4", title="free-running reconstruction")
    ax_wall.set(xlabel="wall minutes", ylabel="BLEU-4", title="free-running reconstruction")
    for ax in (ax_loss, ax_tok, ax_wall):
        ax.set_xscale("log" if ax is not ax_wall else "linear")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax_tok.axhline(90, color="grey", lw=0.5)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
