"""What the learned code's reader gains when it knows each segment's text length (a diagnostic, no training).

    python benchmarks/length_oracle.py --adapters benchmarks/results/learned_code_run11/adapters --limit 40 \
        --ratios 2,4 --out benchmarks/results/length_oracle

The stored code says how many Z-tokens each segment has, not how many text tokens: the reader writes until it
writes the end token (up to ``segment_len + max_decode_extra`` tokens), so a segment can end early or run on into
a loop. This decodes the same stored codes twice: as shipped, and with each segment's true token count (the end
token never ends it, it stops at that count). Storing the counts would cost ``ceil(log2(segment_len + 1))`` bits a
segment, reported as bits/char. Texts: paragraphs of 300-900 characters from the last 100 records of
``../shared/data/train/wikipedia_en_06.jsonl``, training-corpus text that ``segments5m.npy`` (the first 5M tokens
of the corpus) never reached: a development set, so that nothing here is chosen on the evaluation paragraphs.
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
sys.path.insert(0, str(ROOT))
DEV_FILE = ROOT.parent / "shared/data/train/wikipedia_en_06.jsonl"


def dev_paragraphs(limit: int) -> list[str]:
    records = [json.loads(line) for line in DEV_FILE.read_text().splitlines()][-100:]
    paragraphs = [p.strip() for r in records for p in r["text"].split("\n")]
    return [p for p in paragraphs if 300 <= len(p) <= 900][:limit]


def decode_with_lengths(zc: object, codes: list, texts: list[str], batch_size: int = 32) -> list[str]:
    """Free-running decode of each segment for exactly its true number of text tokens."""
    import torch

    from zcompress_integrations.core.backbone import decode_batch

    codec = zc.latent_codec
    segs, lengths = [], []
    for i, (code, text) in enumerate(zip(codes, texts, strict=True)):
        true = codec.segments(text.encode("utf-8"))
        z_lists = codec._segment_ids(code)
        assert len(true) == len(z_lists)
        segs += [(i, z) for z in z_lists]
        lengths += [len(t) for t in true]
    outputs: list[list[int]] = [[] for _ in segs]
    with codec.reading(), torch.inference_mode():
        for s in range(0, len(segs), batch_size):
            chunk = list(range(s, min(s + batch_size, len(segs))))
            prefixes, positions = zip(*(codec.segment_prefix(segs[j][1]) for j in chunk), strict=True)
            decoded = decode_batch(
                codec.lm,
                list(prefixes),
                max(lengths[j] for j in chunk),
                vocab=codec.backbone.text_vocab_size,
                eos=set(),
                positions=[torch.tensor(p) for p in positions],
                limits=[lengths[j] for j in chunk],
            )
            for j, toks in zip(chunk, decoded, strict=True):
                outputs[j] = toks
    pieces: list[list[int]] = [[] for _ in codes]
    for (i, _), toks in zip(segs, outputs, strict=True):
        pieces[i] += toks
    return [codec.backbone.tokenizer.decode(p, skip_special_tokens=True) for p in pieces]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", required=True)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--ratios", default="2,4")
    ap.add_argument("--out", default="benchmarks/results/length_oracle")
    args = ap.parse_args(argv)

    import torch

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.core.zcode import ZCode
    from zcompress_integrations.eval.metrics import bleu

    texts = dev_paragraphs(args.limit)
    zc = ZCompressor.from_pretrained(adapters=args.adapters)
    seg_len = zc.latent_codec.config.segment_len
    chars = sum(len(t) for t in texts)
    rows = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        codes = zc.compress_batch(texts, mode="latent", ratio=ratio)
        stored = [ZCode.from_bytes(c.to_bytes()) for c in codes]
        shipped = zc.decompress_batch(stored)
        known = decode_with_lengths(zc, stored, texts)
        n_segs = sum(len(c.segments) for c in codes)
        rows.append(
            {
                "target_ratio": ratio,
                "achieved_ratio": sum(c.text_tokens for c in codes) / sum(c.z_tokens for c in codes),
                "bits_per_char": 8 * sum(len(c.to_bytes()) for c in codes) / chars,
                "bleu4_shipped": float(bleu(shipped, texts)),
                "bleu4_true_lengths": float(bleu(known, texts)),
                "chars_ratio_shipped": sum(len(h) for h in shipped) / chars,
                "length_bits_per_char": n_segs * math.ceil(math.log2(seg_len + 1)) / chars,
                "samples": [
                    {"ref": texts[0][:200], "shipped": shipped[0][:200], "true_lengths": known[0][:200]}
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
        "# The learned code's reader with and without each segment's text length (development paragraphs)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {len(texts)} paragraphs ({chars} characters) from the unused tail of "
        "`train/wikipedia_en_06.jsonl`.",
        "",
        "| target | achieved ratio | bits/char (whole code) | BLEU-4 as shipped | BLEU-4, true lengths | "
        "output/reference characters, shipped | lengths would cost (bits/char) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['target_ratio']:g}x | {r['achieved_ratio']:.2f} | {r['bits_per_char']:.2f} | "
            f"{r['bleu4_shipped']:.2f} | {r['bleu4_true_lengths']:.2f} | {r['chars_ratio_shipped']:.2f} | "
            f"{r['length_bits_per_char']:.3f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
