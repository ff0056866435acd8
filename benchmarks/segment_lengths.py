"""What the learned code gains by storing each segment's text-token count (no training).

    python benchmarks/segment_lengths.py --adapters benchmarks/results/learned_code_run11/adapters --limit 40 \
        --ratios 2,4 --out benchmarks/results/segment_lengths

Learned Z ids say how many Z-tokens a segment has, not how many text tokens. A learned code stores the count (one
varint a segment in its container) and the reader writes exactly that many tokens, its end token banned. Without
the counts (the container before them, which still decodes) the reader writes until it writes the end token (up to
``segment_len + max_decode_extra`` tokens), so a segment can end early or run on into a loop. This decodes the same
stored codes both ways through the shipped ``decompress_batch``. Texts: paragraphs of 300-900 characters from the
last 100 records of ``../shared/data/train/wikipedia_en_06.jsonl``, training-corpus text that ``segments5m.npy`` (the first 5M tokens
of the corpus) never reached: a development set, so that nothing here is chosen on the evaluation paragraphs.

Run 11's adapters, which the committed results used, are in commit fdc7562.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEV_FILE = ROOT.parent / "shared/data/train/wikipedia_en_06.jsonl"


def dev_paragraphs(limit: int) -> list[str]:
    records = [json.loads(line) for line in DEV_FILE.read_text().splitlines()][-100:]
    paragraphs = [p.strip() for r in records for p in r["text"].split("\n")]
    return [p for p in paragraphs if 300 <= len(p) <= 900][:limit]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", required=True)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--ratios", default="2,4")
    ap.add_argument("--out", default="benchmarks/results/segment_lengths")
    args = ap.parse_args(argv)

    import torch

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.core.zcode import ZCode
    from zcompress_integrations.eval.metrics import bleu

    texts = dev_paragraphs(args.limit)
    zc = ZCompressor.from_pretrained(adapters=args.adapters)
    chars = sum(len(t) for t in texts)
    rows = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        codes = [ZCode.from_bytes(c.to_bytes()) for c in zc.compress_batch(texts, mode="latent", ratio=ratio)]
        without = [dataclasses.replace(c, segment_tokens=()) for c in codes]
        stored = zc.decompress_batch(codes)
        ended = zc.decompress_batch([ZCode.from_bytes(c.to_bytes()) for c in without])
        rows.append(
            {
                "target_ratio": ratio,
                "achieved_ratio": sum(c.text_tokens for c in codes) / sum(c.z_tokens for c in codes),
                "bits_per_char": 8 * sum(len(c.to_bytes()) for c in codes) / chars,
                "bits_per_char_without": 8 * sum(len(c.to_bytes()) for c in without) / chars,
                "bleu4": float(bleu(stored, texts)),
                "bleu4_without": float(bleu(ended, texts)),
                "chars_ratio": sum(len(h) for h in stored) / chars,
                "chars_ratio_without": sum(len(h) for h in ended) / chars,
                "samples": [
                    {"ref": texts[0][:200], "stored_lengths": stored[0][:200], "end_token": ended[0][:200]}
                ],
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "samples"}), flush=True)
    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "paragraphs": len(texts),
        "chars": chars,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "# The learned code with and without each segment's stored text-token count (development paragraphs)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {len(texts)} paragraphs ({chars} characters) from the unused tail of "
        "`train/wikipedia_en_06.jsonl`. Without: the reader stops at its end token (the container before the "
        "counts).",
        "",
        "| target | achieved ratio | bits/char (whole code): stored / without | BLEU-4: stored / without | "
        "output/reference characters: stored / without |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['target_ratio']:g}x | {r['achieved_ratio']:.2f} | {r['bits_per_char']:.2f} / "
            f"{r['bits_per_char_without']:.2f} | {r['bleu4']:.2f} / {r['bleu4_without']:.2f} | "
            f"{r['chars_ratio']:.2f} / {r['chars_ratio_without']:.2f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
