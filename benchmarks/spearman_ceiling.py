"""What issue 23's adaptivity check can reach on its own segments, whatever the code (no code is written).

    python benchmarks/spearman_ceiling.py --adapters benchmarks/results/learned_code_run15/adapters \
        --out benchmarks/results/spearman_ceiling

The check is segment-level Spearman(Z count, segment NLL) >= 0.5 at 4x, with the segment's NLL its mean per-token
NLL under the base model (``LatentCodec.segment_nll``, as ``learned_code.py`` and the token-group baseline of
0.095 / -0.126 measure it). A paragraph's last segment is short, so the count also follows length. For each segment
cut (the shipped sentence-aware one, and ``learned_code.py``'s diagnostic ``tail`` and ``equal`` cuts) and each
text set (the issue's 200 WikiText-2 test paragraphs; 100 CNN/DM test articles cut to 256 tokens as the summary
suite reads them), this gives the Spearman correlation with mean NLL of the counts two reference writers would
give at each ratio:

* *length only*: ``ceil(tokens / ratio)`` a segment, difficulty ignored;
* *information-proportional*: all the texts' ``tokens / ratio`` Z-tokens shared among the segments in proportion
  to each one's total NLL (mean x length, what its text costs the model to write), rounded, at least one.

The second is the count of a writer that spends its ids exactly where the information is. Both use the base
model's NLL only (nothing is trained or chosen on these texts). Writes ``OUT.json`` and ``OUT.md``.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

CUTS = ("sentence", "tail", "equal")


def reference_counts(lengths: list[int], mean_nll: list[float], ratio: float) -> dict[str, list[int]]:
    """Z counts of the two reference writers (see the module docstring) for segments of these lengths and NLLs."""
    total = [m * n for m, n in zip(mean_nll, lengths, strict=True)]
    per_nat = (sum(lengths) / ratio) / sum(total)
    return {
        "length_only": [max(1, math.ceil(n / ratio)) for n in lengths],
        "information_proportional": [max(1, round(t * per_nat)) for t in total],
    }


def _rho(a: list[float], b: list[float]) -> float | None:
    """Spearman correlation, or None where one side is constant (every segment the same length)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(set(a)) > 1 and len(set(b)) > 1 else None


def measure(codec: object, texts: list[str], ratios: list[float]) -> dict:
    segs = [codec.model_ids(s) for t in texts for s in codec.segments(t.encode("utf-8"))]
    lengths = [len(s) for s in segs]
    nll = codec.segment_nll(segs)
    row = {
        "segments": len(segs),
        "full_segments": sum(n == codec.config.segment_len for n in lengths),
        "spearman_length_vs_nll": _rho(lengths, nll),
    }
    for ratio in ratios:
        for name, counts in reference_counts(lengths, nll, ratio).items():
            row[f"{name}_{ratio:g}x"] = _rho(counts, nll)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", required=True, help="a learned code (its segment cut and length)")
    parser.add_argument("--wikitext-limit", type=int, default=200)
    parser.add_argument("--cnndm-limit", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=256, help="cnndm: tokens kept of each article")
    parser.add_argument("--ratios", default="2,4,8")
    parser.add_argument("--out", default="benchmarks/results/spearman_ceiling")
    args = parser.parse_args(argv)

    import torch
    from learned_code import use_cut

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.eval.baselines import truncate_to_tokens
    from zcompress_integrations.eval.datasets import load_cnndm, load_wikitext_paragraphs

    ratios = [float(r) for r in args.ratios.split(",")]
    texts = {
        "WikiText-2": [p.text_detok for p in load_wikitext_paragraphs(limit=args.wikitext_limit, seed=0)],
    }
    zc = ZCompressor.from_pretrained(adapters=args.adapters)
    articles = load_cnndm(limit=args.cnndm_limit, seed=0)
    texts["CNN/DM"] = [
        truncate_to_tokens(a.article, args.max_tokens, zc.backbone.tokenizer) for a in articles
    ]
    shipped = zc.latent_codec.segments
    rows = []
    for cut in CUTS:
        zc.latent_codec.segments = shipped
        if cut != "sentence":
            use_cut(zc, cut)
        for name, group in texts.items():
            rows.append({"texts": name, "cut": cut, **measure(zc.latent_codec, group, ratios)})
            print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "adapters": args.adapters,
        "texts": {k: len(v) for k, v in texts.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    head = " | ".join(f"{r:g}x length only / information-proportional" for r in ratios)

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "# The adaptivity check's reach on its own segments",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; segment cut and length from {args.adapters}. Spearman correlation with each "
        "segment's mean NLL (the check's measure) of the Z counts two reference writers give: one by length only, "
        "one in proportion to the segment's total NLL (see the script's docstring). The check asks >= 0.5 at 4x.",
        "",
        f"| texts | cut | segments (full-length) | Spearman(length, NLL) | {head} |",
        "| --- | --- | ---: | ---: |" + " ---: |" * len(ratios),
    ]
    for r in rows:
        cells = " | ".join(
            f"{cell(r[f'length_only_{x:g}x'])} / {cell(r[f'information_proportional_{x:g}x'])}"
            for x in ratios
        )
        lines.append(
            f"| {r['texts']} | {r['cut']} | {r['segments']} ({r['full_segments']}) | "
            f"{cell(r['spearman_length_vs_nll'])} | {cells} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
