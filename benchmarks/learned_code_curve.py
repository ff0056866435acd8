"""Issue 23's curve: BLEU-4 of free-running reconstruction against the achieved ratio, every code on one plot.

    python benchmarks/learned_code_curve.py --out benchmarks/results/learned_code_curve

Reads the result files of the runs below (all on the same 200 WikiText-2 test paragraphs, seed 0, 27,386 tokens)
and draws them with the exact codec's lossless bound ``log2(K) / H`` at K = 2^12, 2^16 and 2^24 (H: the base
model's cross-entropy on these paragraphs, from the side-information run). Left of a bound an entropy code is
lossless with Z-tokens of that size; right of it any code of that size loses information.

The token-group rows need the stored size of their codes, which ``latent_default.json`` does not hold: this script
compresses the paragraphs again with the shipped adapters (forward passes only, about a minute) and checks that it
gets the same number of Z-tokens as the stored run before it uses that run's BLEU-4.

Writes ``OUT.md`` (a table: code, writer, requested and achieved ratio, BLEU-4, stored bits/char) and ``OUT.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def token_group_rows(limit: int, seed: int) -> list[dict]:
    """The shipped token-group code: BLEU-4 from ``latent_default.json``, stored size computed here."""
    from zcompress_integrations import ZCompressor
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs

    stored = _load("latent_default.json")
    texts = [p.text_detok for p in load_wikitext_paragraphs(limit=limit, seed=seed)]
    chars = sum(len(t) for t in texts)
    zc = ZCompressor.from_pretrained()
    rows = []
    for run in stored["rows"]:
        codes = zc.compress_batch(texts, mode="latent", ratio=run["target_ratio"])
        tokens = sum(c.text_tokens for c in codes)
        z = sum(len(c.z_ids) for c in codes)
        if not math.isclose(tokens / z, run["achieved_ratio"], rel_tol=1e-9):
            raise SystemExit(
                f"token-group {run['target_ratio']}x: {tokens / z:.4f}x here, {run['achieved_ratio']:.4f}x in "
                "latent_default.json: not the same codes, rerun benchmarks/latent_default.py first"
            )
        rows.append(
            {
                "code": "token groups (shipped)",
                "writer": "surprisal DP",
                "requested": run["target_ratio"],
                "achieved": run["achieved_ratio"],
                "bleu4": run["bleu4"],
                "bits_per_char": 8 * sum(len(c.to_bytes()) for c in codes) / chars,
                "source": "latent_default.json (BLEU-4); sizes computed by this script",
            }
        )
    return rows


def stored_rows() -> list[dict]:
    """Every other code, from its result file."""
    rows = []
    for name, code, writer in (
        ("learned_code_run2/eval_teacher200.json", "learned run 2 (K = 2 x 4096)", "teacher ids"),
        ("learned_code_run2/eval_model_expected_count.json", "learned run 2 (K = 2 x 4096)", "model"),
        ("learned_code_run8/eval_200.json", "learned run 8 (K = 2 x 4096)", "model"),
        ("learned_code_run9/eval_200.json", "learned run 9 (K = 2 x 4096; GPU)", "model"),
        ("learned_code_run10/eval_200.json", "learned run 10 (run 9 + 8x)", "model"),
        ("learned_code_run11/eval_200.json", "learned run 11 (run 10, match weight 0.5)", "model"),
        ("learned_code_run11/eval_200_lengths.json", "learned run 11, stored segment lengths", "model"),
        ("learned_code_run12/eval_200.json", "learned run 12 (run 11 + scheduled sampling)", "model"),
        ("learned_code_run13/eval_200.json", "learned run 13 (run 12 + answer-from-Z term)", "model"),
        ("learned_code_run14/eval_200.json", "learned run 14 (run 13 + lr decay, calibrated)", "model"),
        ("learned_code_run15/eval_200.json", "learned run 15 (K = 4096 x 1, from run 14)", "model"),
    ):
        for r in _load(name)["rows"]:
            rows.append(
                {
                    "code": code,
                    "writer": writer,
                    "requested": r["target_ratio"],
                    "achieved": r["achieved_ratio"],
                    "bleu4": r["bleu4"],
                    "bits_per_char": r["bits_per_char"],
                    "source": name,
                }
            )
    for r in _load("side_information_probe.json")["rows"]:
        rows.append(
            {
                "code": f"probe: fixed 8-bit {r['scheme']} buckets (16-bit Z)",
                "writer": "base model",
                "requested": r["ratio"],
                "achieved": r["achieved_ratio"],
                "bleu4": r["bleu4"],
                "bits_per_char": r["bits_per_char_with_container"],
                "source": "side_information_probe.json",
            }
        )
    for r in _load("side_information_adaptive.json")["rows"]:
        rows.append(
            {
                "code": "probe: variable-length buckets (16-bit Z)",
                "writer": f"base model, {r.get('writer', 'open')} loop",
                "requested": r["requested_ratio"],
                "achieved": r["achieved_ratio"],
                "bleu4": r["bleu4"],
                "bits_per_char": r["bits_per_char_with_container"],
                "source": "side_information_adaptive.json",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/learned_code_curve")
    args = parser.parse_args(argv)

    from zcompress_integrations.eval.report import plot_curves

    side = _load("side_information_adaptive.json")["meta"]
    if side["paragraphs"] != args.limit or side["seed"] != args.seed:
        raise SystemExit("the stored runs are on 200 paragraphs, seed 0: use --limit 200 --seed 0")
    h_bits = side["base_model_cross_entropy_bits_per_token"]
    rows = token_group_rows(args.limit, args.seed) + stored_rows()

    curves: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["requested"] is None:  # the lossless probe row: a point of its own
            curves.setdefault("probe: variable-length buckets, lossless", []).append(
                (r["achieved"], r["bleu4"])
            )
            continue
        curves.setdefault(f"{r['code']}, {r['writer']}", []).append((r["achieved"], r["bleu4"]))
    bounds = {f"exact codec bound, K = 2^{b}: {b / h_bits:.2f}x": b / h_bits for b in (12, 16, 24)}
    out = Path(args.out)
    plot_curves(
        curves,
        out.with_suffix(".png"),
        xlabel="achieved ratio (text tokens / Z-tokens)",
        ylabel="BLEU-4, free-running reconstruction",
        title="200 WikiText-2 test paragraphs, SmolLM2-135M",
        vlines=bounds,
        legend_outside=True,
    )
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])])
    lines = [
        "# Ratio vs BLEU-4: every code on the issue-23 paragraphs",
        "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}. 200 WikiText-2 test paragraphs (`text_detok`, seed "
        f"0), {side['characters']} characters, {side['text_tokens']} tokens; base-model cross-entropy H = "
        f"{h_bits:.2f} bits/token, so an entropy code is lossless up to log2(K) / H: "
        + ", ".join(f"{x:.2f}x at K = 2^{b}" for b, x in zip((12, 16, 24), bounds.values(), strict=True))
        + ". Stored bits/char: the whole `to_bytes()` container (for the probes, a ZCode of their Z count).",
        "",
        "| code | writer | requested | achieved ratio | BLEU-4 | stored bits/char | source |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        req = "lossless" if r["requested"] is None else f"{r['requested']:g}x"
        lines.append(
            f"| {r['code']} | {r['writer']} | {req} | {r['achieved']:.2f}x | {r['bleu4']:.2f} | "
            f"{r['bits_per_char']:.2f} | `{r['source']}` |"
        )
    lines += ["", f"Plot: `{out.with_suffix('.png').name}`."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(
        json.dumps({"command": command, "h_bits": h_bits, "rows": rows}, indent=2)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
