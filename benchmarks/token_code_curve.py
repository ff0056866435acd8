"""Learning curve of the token-group code's decoder: free-running reconstruction of WikiText-2 test paragraphs
(BLEU-4, exact match) at 2x and 4x, per checkpoint's adapters, against training text tokens and wall time.

    zcompress train reader --data segments.npy --out runs/tokens --steps 300   # writes runs/tokens/adapters
    cp -r runs/tokens/adapters runs/tokens/step300   # then go on: --steps N --resume
    python benchmarks/token_code_curve.py --adapters runs/tokens/step300 --limit 200
    python benchmarks/token_code_curve.py --plot-only --log runs/tokens/log.jsonl

Each ``--adapters`` run adds one point (keyed by training step) to ``--out``.json; ``--log`` adds the trainer's
held-out cross-entropy curve (training-split segments). The paragraphs are evaluation data: no training or tuning
decision reads them (checkpoints are chosen by step count and held-out training-split CE, not by this curve).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(adapters: str, limit: int, seed: int, ratios: list[float]) -> dict:
    """BLEU-4 / exact match of free-running reconstruction with one adapters directory."""
    import torch

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.latent import load_latent_codec
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs
    from zcompress_integrations.eval.metrics import bleu, exact_match_rate

    texts = [p.text_detok for p in load_wikitext_paragraphs(limit=limit, seed=seed)]
    codec = load_latent_codec(load_backbone(None, device="cpu"), adapters)
    training = codec.config.training
    point = {
        "adapters": adapters,
        "step": training.get("steps"),
        "tokens_seen": training.get("tokens_seen"),
        "wall_s": training.get("wall_s"),
        "paragraphs": len(texts),
        "threads": torch.get_num_threads(),
    }
    for ratio in ratios:
        t0 = time.time()
        codes = codec.compress_batch(texts, ratio=ratio)
        hyps = codec.reconstruct_batch(codes)
        key = f"{ratio:g}x"
        point[f"ratio_{key}"] = sum(c.text_tokens for c in codes) / sum(c.z_tokens for c in codes)
        point[f"bleu_{key}"] = float(bleu(hyps, texts))
        point[f"exact_match_{key}"] = exact_match_rate(hyps, texts)
        point[f"seconds_{key}"] = round(time.time() - t0, 1)
        point[f"sample_{key}"] = {"ref": texts[0][:240], "hyp": hyps[0][:240]}
        print(json.dumps({k: v for k, v in point.items() if not k.startswith("sample")}), flush=True)
    return point


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", help="an adapters directory written by a zcompress train reader run")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratios", default="2,4")
    parser.add_argument("--log", type=Path, help="the run's log.jsonl (held-out CE per step)")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument(
        "--import-default",
        type=Path,
        help="add the point measured by benchmarks/latent_default.py (its .json)",
    )
    parser.add_argument("--out", default="benchmarks/results/token_code_curve")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    path = out.parent / f"{out.name}.json"
    data = json.loads(path.read_text()) if path.exists() else {"points": [], "ce": []}
    if args.adapters and not args.plot_only:
        point = measure(args.adapters, args.limit, args.seed, [float(r) for r in args.ratios.split(",")])
        point["command"] = "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])])
        point["machine"] = f"{os.cpu_count()} CPUs ({platform.machine()})"
        data["points"] = [
            p for p in data["points"] if p["step"] != point["step"] or p["paragraphs"] != point["paragraphs"]
        ]
        data["points"] = sorted([*data["points"], point], key=lambda p: (p["paragraphs"], p["step"]))
    if args.import_default:
        point = from_latent_default(json.loads(args.import_default.read_text()))
        data["points"] = [
            p for p in data["points"] if p["step"] != point["step"] or p["paragraphs"] != point["paragraphs"]
        ]
        data["points"] = sorted([*data["points"], point], key=lambda p: (p["paragraphs"], p["step"]))
    if args.log:
        rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
        data["ce"] = list(
            {r["step"]: r for r in rows}.values()
        )  # a resumed run re-logs its first step: keep the last
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    write_report(data, out)


def from_latent_default(result: dict) -> dict:
    """A curve point from ``benchmarks/latent_default.py`` output (same paragraphs, same free-running decode)."""
    meta, training = result["meta"], result["meta"]["training"]
    point = {
        "adapters": meta["adapters"],
        "step": training.get("steps"),
        "tokens_seen": training.get("tokens_seen"),
        "wall_s": training.get("wall_s"),
        "paragraphs": meta["paragraphs"],
        "command": meta["command"],
        "machine": meta["machine"],
    }
    for row in result["rows"]:
        key = f"{row['target_ratio']:g}x"
        point[f"ratio_{key}"] = row["achieved_ratio"]
        point[f"bleu_{key}"] = row["bleu4"]
        point[f"exact_match_{key}"] = row["exact_match"]
        point[f"sample_{key}"] = {
            "ref": row["samples"][0]["ref"][:240],
            "hyp": row["samples"][0]["hyp"][:240],
        }
    return point


def write_report(data: dict, out: Path) -> None:
    lines = [
        "# Token-group code: learning curve of the decoder",
        "",
        "Free-running greedy reconstruction of WikiText-2 test paragraphs (`text_detok`, seed 0) from Z-tokens that",
        'each stand for 1-4 text tokens (`z_embedding="tokens"`); commands in `benchmarks/token_code_curve.py`.',
        "",
        "| step | text tokens seen | train s | paragraphs | 2x ratio | 2x BLEU-4 | 2x exact | 4x ratio | 4x BLEU-4 "
        "| 4x exact |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in data["points"]:
        lines.append(
            f"| {p['step']} | {p['tokens_seen']} | {p['wall_s']} | {p['paragraphs']} | {p.get('ratio_2x', 0):.2f} | "
            f"{p.get('bleu_2x', 0):.2f} | {p.get('exact_match_2x', 0):.3f} | {p.get('ratio_4x', 0):.2f} | "
            f"{p.get('bleu_4x', 0):.2f} | {p.get('exact_match_4x', 0):.3f} |"
        )
    if data["ce"]:
        lines += [
            "",
            "Held-out cross-entropy (nats/token, 32 training-split segments the adapter never trained on), true code",
            "and another segment's code (shuffled: the decoder's prior alone). Answer CE: gold-answer CE of held-apart",
            "training-split questions (HotpotQA train, NQ) with their context as Z at 2x, logged once the run trains",
            "the answer-from-Z loss (`--qa-weight`).",
            "",
            "| step | text tokens | train s | 2x CE | 2x CE shuffled | 4x CE | 4x CE shuffled | answer CE (Z 2x) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in data["ce"]:
            answer = f"{r['held_answer_ce_2x']:.3f}" if "held_answer_ce_2x" in r else ""
            lines.append(
                f"| {r['step']} | {r['tokens']} | {r['seconds']} | {r['held_ce_2x']:.3f} | "
                f"{r['held_ce_2x_shuffled']:.3f} | {r['held_ce_4x']:.3f} | {r['held_ce_4x_shuffled']:.3f} | {answer} |"
            )
    lines += ["", "Samples (first paragraph, 240 characters):", ""]
    for p in data["points"][-1:]:
        for key in ("2x", "4x"):
            if f"sample_{key}" in p:
                lines += [
                    f"- {key} ref: {p[f'sample_{key}']['ref']!r}",
                    f"  hyp: {p[f'sample_{key}']['hyp']!r}",
                ]
    lines += ["", "Commands:", ""] + [f"- `{p['command']}` ({p['machine']})" for p in data["points"]]
    (out.parent / f"{out.name}.md").write_text("\n".join(lines) + "\n")
    plot(data, out.parent / f"{out.name}.png")


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ce, ax_bleu) = plt.subplots(1, 2, figsize=(11, 4))
    if data["ce"]:
        x = [r["tokens"] for r in data["ce"]]
        for key, colour in (("2x", "tab:blue"), ("4x", "tab:orange")):
            ax_ce.plot(
                x, [r[f"held_ce_{key}"] for r in data["ce"]], "-o", color=colour, label=f"{key} true Z"
            )
            ax_ce.plot(
                x,
                [r[f"held_ce_{key}_shuffled"] for r in data["ce"]],
                "--",
                color=colour,
                label=f"{key} shuffled",
            )
    ax_ce.set_xlabel("training text tokens")
    ax_ce.set_ylabel("held-out CE (nats/token)")
    ax_ce.legend(fontsize=8)
    by_size: dict[int, list[dict]] = {}
    for p in data["points"]:
        by_size.setdefault(p["paragraphs"], []).append(p)
    for n, points in by_size.items():
        for key, colour in (("2x", "tab:blue"), ("4x", "tab:orange")):
            ax_bleu.plot(
                [p["tokens_seen"] for p in points],
                [p.get(f"bleu_{key}", 0) for p in points],
                "-o",
                color=colour,
                label=f"{key}, {n} paragraphs",
                alpha=1.0 if n == max(by_size) else 0.5,
            )
    ax_bleu.axhline(90, color="grey", linestyle=":", label="goal at 2x (BLEU-4 90)")
    ax_bleu.set_xlabel("training text tokens")
    ax_bleu.set_ylabel("reconstruction BLEU-4")
    ax_bleu.legend(fontsize=8)
    fig.suptitle("Token-group code: decoder learning curve (SmolLM2-135M, CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
