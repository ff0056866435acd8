"""How much a learned code's Z-tokens tell the coder beyond the text before them (teacher-forced, no coding).

    python benchmarks/residual_mix_probe.py --adapters benchmarks/results/learned_code_run15/adapters --limit 20 \
        --ratios 4,8 --out benchmarks/results/learned_code_run15/residual_mix_20

A learned code with ``exact=True`` stores its Z ids plus the text arithmetic-coded under the reader, which sees one
segment's Z-tokens and no text before them. The base model, with the paragraph's text before each segment in view
(what the exact codec uses), is the other predictor a residual could use. Per requested ratio, on WikiText-2 test
paragraphs (evaluation data; nothing is trained or chosen for the headline rows), in bits per character of the
text: the Z ids, then the ideal code length (sum of -log2 p over the text's tokens, end tokens not counted) under
the reader alone, the base model alone, their even linear mix (0.5 / 0.5, fixed before any run), their even
geometric mix, and, for scale only, the best of five linear weights on these same paragraphs (optimistic: picked
on them) and the per-token better of the two (an oracle no decoder has). The gap between the base model alone
and the mixes bounds what the Z-tokens add to the text before them, as a mixture can use it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = (0.1, 0.3, 0.5, 0.7, 0.9)  # the reader's share in the linear mix


def paragraph_bits(codec: object, text: str, code: object) -> dict[str, float]:
    """Code lengths in bits of one paragraph's tokens under each predictor (see the module docstring)."""
    import torch

    segs = [codec.model_ids(s) for s in codec.segments(text.encode("utf-8"))]
    tokens = [t for s in segs for t in s]
    with codec.adapters_off():
        x = torch.tensor([[codec.start_token, *tokens]], device=codec.backbone.device)
        base_all = torch.log_softmax(codec.lm(input_ids=x).logits[0, :-1].float(), -1)
    bits = {"reader": 0.0, "base": 0.0, "linear_even": 0.0, "geometric_even": 0.0, "oracle": 0.0}
    bits.update({f"linear_{w}": 0.0 for w in WEIGHTS})
    ends = list(itertools.accumulate(code.segments))
    z_per_segment = [code.z_ids[end - n : end] for n, end in zip(code.segments, ends, strict=True)]
    start = 0
    with codec.reading():
        for seg, z_ids in zip(segs, z_per_segment, strict=True):
            inputs, positions, mask = codec.reader_inputs(torch.tensor([seg], device=x.device), [z_ids])
            logits = (
                codec.lm(inputs_embeds=inputs, position_ids=positions, attention_mask=mask).logits[0].float()
            )
            m = len(z_ids)
            reader = logits[
                m : m + len(seg), : base_all.shape[1]
            ]  # text tokens only: the end token is not coded
            reader = torch.log_softmax(reader, -1)
            base = base_all[start : start + len(seg)]
            idx = torch.tensor(seg, device=x.device).unsqueeze(1)
            a, b = reader.gather(1, idx).squeeze(1), base.gather(1, idx).squeeze(1)
            geo = torch.log_softmax(0.5 * reader + 0.5 * base, -1).gather(1, idx).squeeze(1)
            nats = {
                "reader": -a.sum(),
                "base": -b.sum(),
                "linear_even": -(torch.logaddexp(a, b) - math.log(2)).sum(),
                "geometric_even": -geo.sum(),
                "oracle": -torch.maximum(a, b).sum(),
            }
            for w in WEIGHTS:
                nats[f"linear_{w}"] = -torch.logaddexp(a + math.log(w), b + math.log(1 - w)).sum()
            for key, value in nats.items():
                bits[key] += value.item() / math.log(2)
            start += len(seg)
    return bits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", required=True)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratios", default="4,8")
    parser.add_argument("--out", required=True, help="path stem: writes .json and .md")
    args = parser.parse_args(argv)

    import torch

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs

    texts = [p.text_detok for p in load_wikitext_paragraphs(limit=args.limit, seed=args.seed)]
    zc = ZCompressor.from_pretrained(adapters=args.adapters)
    codec = zc.latent_codec
    chars = sum(map(len, texts))
    rows = []
    with torch.inference_mode():
        for ratio in [float(r) for r in args.ratios.split(",")]:
            codes = zc.compress_batch(texts, mode="latent", ratio=ratio)
            totals: dict[str, float] = {}
            for text, code in zip(texts, codes, strict=True):
                for key, value in paragraph_bits(codec, text, code).items():
                    totals[key] = totals.get(key, 0.0) + value
            ids = sum(len(c.z_ids) * math.log2(c.k) for c in codes)
            best = min(WEIGHTS, key=lambda w: totals[f"linear_{w}"])
            rows.append(
                {
                    "target_ratio": ratio,
                    "achieved_ratio": sum(c.text_tokens for c in codes) / sum(c.z_tokens for c in codes),
                    "ids_bits_per_char": ids / chars,
                    **{f"{k}_bits_per_char": v / chars for k, v in totals.items()},
                    "best_linear_weight": best,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "adapters": args.adapters,
        "paragraphs": len(texts),
        "chars": chars,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# What a learned code's Z-tokens add to the text before them",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; adapters: {args.adapters}. {len(texts)} WikiText-2 test paragraphs "
        f"({chars} characters). Ideal code lengths (teacher-forced), bits per character; end tokens not counted.",
        "",
        "| asked | achieved | Z ids | reader (Z, one segment) | base model (text before) | even linear mix | "
        "even geometric mix | best of 5 linear weights (picked here) | per-token better (oracle) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        w = r["best_linear_weight"]
        lines.append(
            f"| {r['target_ratio']:g}x | {r['achieved_ratio']:.2f}x | {r['ids_bits_per_char']:.3f} | "
            f"{r['reader_bits_per_char']:.3f} | {r['base_bits_per_char']:.3f} | "
            f"{r['linear_even_bits_per_char']:.3f} | {r['geometric_even_bits_per_char']:.3f} | "
            f"{r[f'linear_{w}_bits_per_char']:.3f} (reader {w}) | {r['oracle_bits_per_char']:.3f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
