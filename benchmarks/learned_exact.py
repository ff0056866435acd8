"""A learned code with its residual (``exact=True``): a prompt of Z-tokens, and the text back byte-exact.

    python benchmarks/learned_exact.py --adapters benchmarks/results/learned_code_run15/adapters --limit 50 \
        --ratios 4,8 --out benchmarks/results/learned_code_run15/exact_50

The Z-tokens are what a prompt holds (the model answers and summarises from them); the residual is the text
arithmetic-coded under the reader's distribution given those Z-tokens (``core/latent.py``), so decompressing is
byte-exact. Per requested ratio, on WikiText-2 test paragraphs (``text_detok``, the first ``--limit`` of the 200
that ``benchmarks/learned_code.py`` reads): the achieved prompt ratio (text tokens / Z-tokens), the stored size in
bits/char of the whole container (``to_bytes()``) split into Z ids, residual and the rest, whether every paragraph
decodes byte-exact, and the same paragraphs through the exact codec (the base model's own arithmetic code, no
prompt) and brotli-11. Coding is one KV step per token (slow on a CPU). Evaluation data: nothing feeds back into
training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def sizes(codes: list, chars: int) -> dict[str, float]:
    """Bits per character of ``codes``: the whole container, its Z ids, its residual, and the rest."""
    whole = 8 * sum(len(c.to_bytes()) for c in codes)
    ids = sum(len(c.z_ids) * math.log2(c.k) for c in codes)
    residual = 8 * sum(len(c.residual) for c in codes)
    return {
        "bits_per_char": whole / chars,
        "ids_bits_per_char": ids / chars,
        "residual_bits_per_char": residual / chars,
        "container_bits_per_char": (whole - ids - residual) / chars,
    }


def measure(zc: object, texts: list[str], ratio: float | None) -> dict:
    """``ratio`` None: the exact codec (``mode="exact"``); else the latent code at ``ratio`` with ``exact=True``."""
    t0 = time.time()
    if ratio is None:
        codes = zc.compress_batch(texts, mode="exact")
    else:
        codes = zc.compress_batch(texts, mode="latent", ratio=ratio, exact=True)
    t1 = time.time()
    back = zc.decompress_batch(codes)
    t2 = time.time()
    chars = sum(map(len, texts))
    return {
        "target_ratio": ratio,
        "achieved_ratio": sum(c.text_tokens for c in codes) / max(1, sum(c.z_tokens for c in codes)),
        **sizes(codes, chars),
        "byte_exact": sum(b == t for b, t in zip(back, texts, strict=True)),
        "paragraphs": len(texts),
        "compress_s": round(t1 - t0, 1),
        "decompress_s": round(t2 - t1, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", required=True)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratios", default="4,8")
    parser.add_argument("--out", required=True, help="path stem: writes .json and .md")
    args = parser.parse_args(argv)

    import torch

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from learned_code import brotli_bits_per_char

    texts = [p.text_detok for p in load_wikitext_paragraphs(limit=args.limit, seed=args.seed)]
    zc = ZCompressor.from_pretrained(adapters=args.adapters)
    cfg = zc.latent_codec.config
    rows = []
    for ratio in [None, *(float(r) for r in args.ratios.split(","))]:
        rows.append(measure(zc, texts, ratio))
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "adapters": args.adapters,
        "code": cfg.code,
        "bits_per_z": math.log2(zc.latent_codec.code.k),
        "paragraphs": len(texts),
        "chars": sum(map(len, texts)),
        "brotli11_bits_per_char": brotli_bits_per_char(texts),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# A learned code with its residual (`exact=True`)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; adapters: {args.adapters} ({cfg.code}, {meta['bits_per_z']:.0f} bits per Z).",
        "",
        f"{len(texts)} WikiText-2 test paragraphs ({meta['chars']} characters); brotli-11 on them: "
        + (f"{meta['brotli11_bits_per_char']:.2f} bits/char." if meta["brotli11_bits_per_char"] else "n/a."),
        "",
        "| code | prompt ratio | bits/char, whole container | Z ids | residual | the rest | byte-exact | compress / "
        "decompress s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        name = (
            "exact codec (no prompt)"
            if r["target_ratio"] is None
            else f"latent {r['target_ratio']:g}x + residual"
        )
        ratio = "-" if r["target_ratio"] is None else f"{r['achieved_ratio']:.2f}x"
        lines.append(
            f"| {name} | {ratio} | {r['bits_per_char']:.3f} | {r['ids_bits_per_char']:.3f} | "
            f"{r['residual_bits_per_char']:.3f} | {r['container_bits_per_char']:.3f} | "
            f"{r['byte_exact']}/{r['paragraphs']} | {r['compress_s']} / {r['decompress_s']} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
