"""Does the learned code's reader lean on its language prior over the Z-tokens? Context-aware decoding (no training).

    python benchmarks/context_decoding_probe.py --adapters benchmarks/results/learned_code_run11/adapters \
        --limit 40 --ratio 2 --alphas 0,0.5,1 --out benchmarks/results/context_decoding_probe

Each segment of a stored learned code is decoded free-running twice over, in lockstep: the reader after its Z-tokens
and the same reader after the separator alone (no Z). Each step takes the argmax of
``(1 + alpha) * logits_with_Z - alpha * logits_without_Z`` (context-aware decoding, Shi et al. 2023), so tokens the
Z-tokens make likelier than the prior does gain; ``alpha = 0`` is the shipped greedy decode. Lengths are the stored
ones, the end token banned, as shipped. Texts: the development paragraphs of ``segment_lengths.py`` (training-corpus
text the training segments never reached), not the test set.

Run 11's adapters, which the committed results used, are in commit fdc7562.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def decode_contrast(zc: object, codes: list, alpha: float, batch_size: int = 32) -> list[str]:
    """Free-running text of each code with context-aware decoding at ``alpha``."""
    import torch

    from zcompress_integrations.core.backbone import decode_batch

    codec = zc.latent_codec
    segs = [
        (i, ids, n)
        for i, c in enumerate(codes)
        for ids, n in zip(codec._segment_ids(c), c.segment_tokens, strict=True)
    ]
    outputs: list[list[int]] = [[] for _ in segs]
    sep, sep_pos = codec.decoder_prefix(codec.z_embeddings([]).unsqueeze(0))[0], torch.tensor([0])

    def combine(logits: torch.Tensor) -> torch.Tensor:
        half = logits.shape[0] // 2
        mixed = (1 + alpha) * logits[:half].float() - alpha * logits[half:].float()
        return torch.cat([mixed, mixed])

    with codec.reading(), torch.inference_mode():
        for s in range(0, len(segs), batch_size):
            chunk = segs[s : s + batch_size]
            prefixes, positions = zip(*(codec.segment_prefix(ids) for _, ids, _ in chunk), strict=True)
            lengths = [n for _, _, n in chunk]
            decoded = decode_batch(
                codec.lm,
                [*prefixes, *([sep] * len(chunk))],
                max(lengths),
                vocab=codec.backbone.text_vocab_size,
                eos=set(),
                positions=[*(torch.tensor(p) for p in positions), *([sep_pos] * len(chunk))],
                limits=lengths * 2,
                banned=[[codec.end_token]] * (2 * len(chunk)),
                logits_hook=combine if alpha else None,
            )
            for j, toks in enumerate(decoded[: len(chunk)]):
                outputs[s + j] = toks
    pieces: list[list[int]] = [[] for _ in codes]
    for (i, _, _), toks in zip(segs, outputs, strict=True):
        pieces[i] += toks
    return [codec.backbone.tokenizer.decode(p, skip_special_tokens=True) for p in pieces]


def _label(alpha: float | str) -> str:
    return alpha if isinstance(alpha, str) else f"alpha = {alpha:g}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", required=True)
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--ratio", type=float, default=2.0)
    ap.add_argument("--alphas", default="0,0.5,1")
    ap.add_argument("--out", default="benchmarks/results/context_decoding_probe")
    args = ap.parse_args(argv)

    import torch
    from segment_lengths import dev_paragraphs

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.eval.metrics import bleu

    texts = dev_paragraphs(args.limit)
    zc = ZCompressor.from_pretrained(adapters=args.adapters)
    codes = zc.compress_batch(texts, mode="latent", ratio=args.ratio)
    shipped = zc.decompress_batch(codes)
    rows = [{"alpha": "shipped decompress", "bleu4": float(bleu(shipped, texts))}]
    for alpha in [float(a) for a in args.alphas.split(",")]:
        hyps = decode_contrast(zc, codes, alpha)
        rows.append({"alpha": alpha, "bleu4": float(bleu(hyps, texts)), "sample": hyps[0][:200]})
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "paragraphs": len(texts),
        "achieved_ratio": sum(c.text_tokens for c in codes) / sum(c.z_tokens for c in codes),
        "reference_sample": texts[0][:200],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "# Context-aware decoding of the learned code (development paragraphs)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {len(texts)} paragraphs, achieved ratio {meta['achieved_ratio']:.2f}x.",
        "",
        "| decoding | BLEU-4 |",
        "| --- | ---: |",
        *(f"| {_label(r['alpha'])} | {r['bleu4']:.2f} |" for r in rows),
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
