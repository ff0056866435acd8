"""Measure a latent codec (default: the shipped adapters) on 200 WikiText-2 test paragraphs at 2x and 4x.

    python benchmarks/latent_default.py --limit 200 --out benchmarks/results/latent_default

Reports, per target ratio: achieved mean ratio (text tokens / Z-tokens), how many codes ``decompress`` gives back
byte-exact (token groups: from the tokens the ids name), BLEU-4 and exact-match rate of what the model reads back
(``reconstruct``: free-running greedy reconstruction), the Spearman correlation of a segment's Z count with its NLL under the base
model, the bound log2(K_eff)/H (H = the backbone's cross-entropy in bits/token on the same paragraphs), and for
``exact=True`` the residual's size in bits per text token (the text arithmetic-coded under the decompressor's
distribution given Z; H is what the residual would cost with no Z at all), with a byte-exact decode check on the
first ``--verify`` paragraphs. Coding is slow (one KV step per token), so it runs on ``--residual-limit``
paragraphs; for the token-group code the residual's ideal size, the reader's teacher-forced cross-entropy of
the text given Z, is also reported on every paragraph, and on the coded ones beside the coded size and the cost
under the coder's own integer frequency table (which floors every token at 1/2^24, so a token the reader all but
rules out costs about 24 bits there instead of its full -log2 p: that is why the coded size can be below the
cross-entropy).
The paragraphs are evaluation data: nothing here feeds back into training.
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


def reader_bits(codec: object, code: object) -> tuple[float, float]:
    """Token-group code: bits the reader's teacher-forced distribution gives the text of ``code`` and each
    segment's end token given its Z, as (cross-entropy, cost under the coder's integer frequency table). The
    table gives every codable token at least 1/2^24, so a token the reader all but rules out costs about 24 bits
    there, not its full -log2 p: the second figure is what the residual spends without the coder's termination
    bytes, and it can sit below the first. The text tokens come from the Z ids themselves (an id names its
    tokens)."""
    import torch

    runner = codec.residual_runner()
    ce_bits, table_bits, start = 0.0, 0.0, 0
    with codec.adapter("decompress"), torch.inference_mode():
        for count in code.segments:
            z_ids = code.z_ids[start : start + count]
            start += count
            tokens = torch.tensor([[t for g in codec.code.groups(z_ids) for t in g]])
            x, pos, mask = codec.reader_inputs(tokens, [z_ids])
            target = torch.tensor(
                [*tokens[0].tolist(), codec.end_token]
            )  # the residual codes each segment's end too
            hidden = codec.lm.model(inputs_embeds=x, position_ids=pos, attention_mask=mask).last_hidden_state[
                0
            ]
            hidden = hidden[-len(target) :].float()
            logits = torch.nn.functional.linear(hidden, runner.head_weight)
            ce_bits += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum")) / math.log(2)
            cum = runner.tables(hidden).double()
            low = torch.where(target > 0, cum.gather(1, (target - 1).clamp(min=0)[:, None])[:, 0], 0.0)
            table_bits += float(-torch.log2((cum.gather(1, target[:, None])[:, 0] - low) / cum[:, -1]).sum())
    return ce_bits, table_bits


def length_correlations(counts: list[int], nll: list[float], lengths: list[int]) -> dict[str, float]:
    """How Z counts follow surprisal: against the span's total NLL, and per token against mean NLL (length
    factored out), plus the same on full-length segments only."""
    from zcompress_integrations.eval.metrics import spearman

    full = max(lengths)
    keep = [i for i, n in enumerate(lengths) if n == full]
    return {
        "spearman_z_vs_nll": float(spearman(counts, nll)),
        "spearman_z_vs_total_nll": float(
            spearman(counts, [a * n for a, n in zip(nll, lengths, strict=True)])
        ),
        "spearman_z_per_token_vs_nll": float(
            spearman([c / n for c, n in zip(counts, lengths, strict=True)], nll)
        ),
        "spearman_z_vs_nll_full_segments": float(spearman([counts[i] for i in keep], [nll[i] for i in keep])),
        "full_segments": len(keep),
    }


def write_counts(
    args: argparse.Namespace, argv: list[str] | None, codec: object, segs: list, nll: list, h_bits: float
) -> None:
    """``--counts-only``: Z counts per segment at each ratio (``codec.slot_count``, what ``compress_batch`` uses)."""
    lengths = [len(s) for s in segs]
    rows = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        counts = [codec.slot_count(n, x, ratio) for n, x in zip(lengths, nll, strict=True)]
        rows.append(
            {
                "target_ratio": ratio,
                "achieved_ratio": sum(lengths) / sum(counts),
                **length_correlations(counts, nll, lengths),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])])
    meta = {"command": command, "segments": len(segs), "H_bits_per_token": h_bits}
    (out.parent / f"{out.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Latent Z counts vs the base model's NLL of each segment",
        "",
        f"Command: `{command}`  ",
        f"{len(segs)} segments; the count is `slot_count(length, mean NLL, ratio)`, the function `compress_batch` uses.",
        "",
        "| target | achieved ratio | Spearman(Z, mean NLL) | Spearman(Z, total NLL) | Spearman(Z per token, mean NLL) "
        "| Spearman(Z, mean NLL), full-length segments |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['target_ratio']:g}x | {r['achieved_ratio']:.2f} | {r['spearman_z_vs_nll']:.3f} | "
            f"{r['spearman_z_vs_total_nll']:.3f} | {r['spearman_z_per_token_vs_nll']:.3f} | "
            f"{r['spearman_z_vs_nll_full_segments']:.3f} ({r['full_segments']}) |"
        )
    (out.parent / f"{out.name}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratios", default="2,4")
    parser.add_argument("--adapters", default="default")
    parser.add_argument("--out", default="benchmarks/results/latent_default")
    parser.add_argument(
        "--verify", type=int, default=20, help="paragraphs whose exact=True codes are decoded"
    )
    parser.add_argument(
        "--counts-only",
        action="store_true",
        help="only Z counts vs NLL (no encoder or decoder run: counts come from the codec's own slot_count)",
    )
    parser.add_argument(
        "--residual-limit",
        type=int,
        default=0,
        help="paragraphs coded with exact=True (0: all; it is the slow part)",
    )
    args = parser.parse_args(argv)

    import torch

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs
    from zcompress_integrations.eval.metrics import bleu

    texts = [p.text_detok for p in load_wikitext_paragraphs(limit=args.limit, seed=args.seed)]
    zc = ZCompressor.from_pretrained(adapters=args.adapters)
    codec = zc.latent_codec
    cfg = codec.config
    # H: base-model cross-entropy (bits/token) of the same segments the latent codec sees
    segs = [codec.model_ids(seg) for t in texts for seg in codec.segments(t.encode("utf-8"))]
    nll = codec.segment_nll(segs)
    tokens = sum(len(s) for s in segs)
    h_bits = sum(n * len(s) for n, s in zip(nll, segs, strict=True)) / tokens / math.log(2)
    bits_per_z = math.log2(codec.code.k)
    bound = bits_per_z / h_bits
    lengths = [len(s) for s in segs]
    if args.counts_only:
        return write_counts(args, argv, codec, segs, nll, h_bits)
    rows = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        t0 = time.time()
        codes = zc.compress_batch(texts, mode="latent", ratio=ratio)
        t1 = time.time()
        hyps = zc.reconstruct_batch(codes)  # the reader, not the tokens the ids name
        t_read = time.time()
        decompressed = zc.decompress_batch(codes)
        t2 = time.time()
        exact_texts = texts[: args.residual_limit or len(texts)]
        exact_codes = zc.compress_batch(exact_texts, mode="latent", ratio=ratio, exact=True)
        t3 = time.time()
        verified = zc.decompress_batch(exact_codes[: args.verify])
        t4 = time.time()
        residual_bits = sum(8 * len(c.residual) for c in exact_codes)
        ideal_pairs = [reader_bits(codec, c) for c in codes]
        ideal = [ce for ce, _ in ideal_pairs]
        table = [tb for _, tb in ideal_pairs]
        t5 = time.time()
        exact_tokens = sum(c.text_tokens for c in exact_codes)
        counts = [c for code in codes for c in code.segments]
        rows.append(
            {
                "target_ratio": ratio,
                "achieved_ratio": sum(c.text_tokens for c in codes) / max(1, sum(c.z_tokens for c in codes)),
                "bleu4": float(bleu(hyps, texts)),
                "exact_match": sum(h == t for h, t in zip(hyps, texts, strict=True)) / len(texts),
                "decompress_exact": f"{sum(d == t for d, t in zip(decompressed, texts, strict=True))}/{len(texts)}",
                **length_correlations(counts, nll, lengths),
                "bound_log2Keff_over_H": bound,
                "residual_bits_per_token": residual_bits / exact_tokens,
                "residual_paragraphs": len(exact_codes),
                "ideal_residual_bits_per_token": sum(ideal) / sum(c.text_tokens for c in codes)
                if ideal
                else None,
                "ideal_residual_bits_per_token_coded_paragraphs": (
                    sum(ideal[: len(exact_codes)]) / exact_tokens if ideal else None
                ),
                "table_residual_bits_per_token_coded_paragraphs": (
                    sum(table[: len(exact_codes)]) / exact_tokens if table else None
                ),
                "ideal_residual_s": round(t5 - t4, 1),
                "exact_verified": f"{sum(v == t for v, t in zip(verified, texts, strict=False))}/{len(verified)}",
                "compress_s": round(t1 - t0, 1),
                "reconstruct_s": round(t_read - t1, 1),
                "decompress_s": round(t2 - t_read, 2),
                "compress_exact_s": round(t3 - t2, 1),
                "decompress_exact_s": round(t4 - t3, 1),
                "samples": [{"ref": texts[i][:300], "hyp": hyps[i][:300]} for i in range(3)],
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "samples"}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "adapters": str(args.adapters),
        "training": cfg.training,
        "k_eff": codec.code.k,
        "code": cfg.code,
        "max_group": cfg.max_group,
        "bits_per_z": bits_per_z,
        "H_bits_per_token": h_bits,
        "paragraphs": len(texts),
        "text_tokens": tokens,
    }
    (out.parent / f"{out.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Latent codec on WikiText-2 test paragraphs",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; adapters: {meta['adapters']} (training: {json.dumps(cfg.training)})",
        "",
        f"{len(texts)} paragraphs (`text_detok`, seed {args.seed}), {tokens} text tokens; H = {h_bits:.3f} "
        f"bits/token; K_eff = 2^{bits_per_z:.0f}, so the exact-reconstruction bound is log2(K_eff)/H = "
        f"{bound:.1f}x."
        + f" Token-group code: a Z-token stands for at most {cfg.max_group} text tokens, so no ratio above "
        f"{cfg.max_group}x is reachable whatever the bound.",
        "",
        "| target | achieved ratio | decompress exact | BLEU-4 read back | exact match read back | "
        "Spearman(Z count, NLL) | Spearman(Z per token, NLL) "
        "| bound | residual bits/token "
        f"(H = {h_bits:.2f}) | ideal residual, all paragraphs (coded ones; coder's table) | exact=True decoded |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['target_ratio']:g}x | {r['achieved_ratio']:.2f} | {r['decompress_exact']} | {r['bleu4']:.2f} | "
            f"{r['exact_match']:.3f} | "
            f"{r['spearman_z_vs_nll']:.3f} | {r['spearman_z_per_token_vs_nll']:.3f} | {r['bound_log2Keff_over_H']:.1f}x | {r['residual_bits_per_token']:.2f} "
            f"({r['residual_paragraphs']} paragraphs) | {_ideal(r)} | "
            f"{r['exact_verified']} |"
        )
    lines += ["", "Samples (first 300 characters):", ""]
    for r in rows:
        for s in r["samples"][:2]:
            lines += [f"- {r['target_ratio']:g}x ref: {s['ref']!r}", f"  hyp: {s['hyp']!r}"]
    (out.parent / f"{out.name}.md").write_text("\n".join(lines) + "\n")


def _ideal(row: dict) -> str:
    if row.get("ideal_residual_bits_per_token") is None:
        return "n/a"
    table = row.get("table_residual_bits_per_token_coded_paragraphs")
    return (
        f"{row['ideal_residual_bits_per_token']:.2f} ({row['ideal_residual_bits_per_token_coded_paragraphs']:.2f}"
        + (f"; {table:.2f})" if table is not None else ")")
    )


if __name__ == "__main__":
    main()
