"""Measure a learned-code adapter directory (``zcompress train compressor``) against the issue-23 checks.

    python benchmarks/learned_code.py --adapters runs/learned/run1/adapters --limit 50 --ratios 2,4,6,8 \
        --out benchmarks/results/learned_code

On WikiText-2 test paragraphs (evaluation data: nothing here feeds back into training), per requested ratio:
the achieved ratio (text tokens / Z-tokens), BLEU-4 and exact match of free-running greedy reconstruction from
the stored code (each code goes through ``to_bytes()`` and back first), the size of that whole container in bits
per character (brotli-11 on the same texts beside it), bits per Z, and the segment-level Spearman correlation of
Z count with the segment's NLL under the base model. ``--writer teacher`` replaces the trained writer by the staged
recipe's teacher (``core/training/staged.py``: surprisal-balanced spans, residual-VQ ids of their token-group
embeddings): what the reader reaches when the writer is perfect, to tell a writer's errors from the reader's.
``--cut`` replaces the shipped sentence-aware segment cut (diagnostic, for the Spearman check): ``tail`` splits a
short last segment (under half ``segment_len``) evenly with the one before it; ``equal`` cuts each paragraph into
``ceil(tokens / segment_len)`` segments of equal length, ignoring sentence ends. ``--data cnndm`` reads CNN/DM test
articles instead, each cut to its first ``--max-tokens`` tokens as the eval suite's summaries read them. Writes
``OUT.json``, ``OUT.md`` and ``OUT.png`` (ratio vs BLEU-4, with the token-group code's points from ``benchmarks/results/latent_default.json`` and the exact codec's
lossless point at its measured ratio from ``benchmarks/results/exact_codec.json`` when those files exist).
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


def brotli_bits_per_char(texts: list[str]) -> float | None:
    try:
        import brotli
    except ImportError:
        return None
    return 8 * sum(len(brotli.compress(t.encode(), quality=11)) for t in texts) / sum(len(t) for t in texts)


def measure(zc: object, texts: list[str], ratio: float) -> dict:
    from scipy.stats import spearmanr

    from zcompress_integrations.core.training.compressor import usage_perplexity
    from zcompress_integrations.core.zcode import ZCode
    from zcompress_integrations.eval.metrics import bleu

    codec = zc.latent_codec
    t0 = time.time()
    codes = zc.compress_batch(texts, mode="latent", ratio=ratio)
    stored = [ZCode.from_bytes(c.to_bytes()) for c in codes]
    t1 = time.time()
    hyps = zc.decompress_batch(stored)
    t2 = time.time()
    segs = [codec.model_ids(s) for t in texts for s in codec.segments(t.encode("utf-8"))]
    counts = [n for c in codes for n in c.segments]
    nll = codec.segment_nll(segs)
    rho = spearmanr(counts, nll).statistic if len(set(counts)) > 1 else 0.0
    # a paragraph's last segment is short: its Z count follows its length, not its content; full-length segments
    # alone measure what the training diagnostics measure
    full = [i for i, s in enumerate(segs) if len(s) == codec.config.segment_len]
    full_counts = [counts[i] for i in full]
    rho_full = spearmanr(full_counts, [nll[i] for i in full]).statistic if len(set(full_counts)) > 1 else 0.0
    # Z-tokens per text token against NLL per text token: a short segment's length cancels on both sides
    density = [counts[i] / max(1, len(s)) for i, s in enumerate(segs)]
    rho_density = spearmanr(density, nll).statistic if len(set(density)) > 1 else 0.0
    # the usage check on these texts: the first codebook's rows over every stored Z
    first = [row[0] for c in codes for row in codec.code.indices_of(c.z_ids)]
    return {
        "target_ratio": ratio,
        "usage_perplexity": usage_perplexity(first),
        "achieved_ratio": sum(c.text_tokens for c in codes) / max(1, sum(c.z_tokens for c in codes)),
        "bleu4": float(bleu(hyps, texts)),
        "exact_match": sum(h == t for h, t in zip(hyps, texts, strict=True)) / len(texts),
        "bits_per_char": 8 * sum(len(c.to_bytes()) for c in codes) / sum(len(t) for t in texts),
        # the Z ids alone: what the container adds is the difference
        "payload_bits_per_char": sum(c.bits for c in codes) / sum(len(t) for t in texts),
        "spearman_z_count_vs_segment_nll": float(rho),
        "spearman_full_segments": float(rho_full),
        "full_segments": len(full),
        "spearman_z_per_token_vs_nll": float(rho_density),
        "compress_s": round(t1 - t0, 1),
        "decompress_s": round(t2 - t1, 1),
        "samples": [{"ref": texts[i][:300], "hyp": hyps[i][:300]} for i in range(2)],
    }


def use_teacher_writer(zc: object) -> None:
    """Make the learned code write the staged recipe's teacher ids instead of the writer's own (diagnostic)."""
    import torch

    from zcompress_integrations.core.codes.token_groups import TokenGroupCode
    from zcompress_integrations.core.training.compressor import teacher_spans
    from zcompress_integrations.core.training.staged import span_embeddings, teacher_ids

    codec = zc.latent_codec
    code = codec.code
    teacher = TokenGroupCode(codec.lm.get_input_embeddings(), codec.config.vocab_size, code.max_span)

    def write(codec, segments, ratio, batch_size, progress):  # noqa: ANN001, ANN202
        out = []
        with torch.no_grad():
            for seg in segments:  # segments differ in length: one at a time
                rows = torch.tensor([seg], device=code.codebook.device)
                spans = teacher_spans(codec, rows, ratio, code.max_span)
                (ids,) = teacher_ids(code.codebook, span_embeddings(teacher, rows, spans))
                out.append(code.ids_of(ids))
        return out

    code.write = write


def use_cut(zc: object, cut: str) -> None:
    """Replace the codec's segment cut by ``cut`` (``tail`` or ``equal``, see the module docstring; diagnostic)."""
    codec = zc.latent_codec
    shipped = codec.segments
    L = codec.config.segment_len

    def tail(data: bytes) -> list[list[int]]:
        segs = shipped(data)
        if len(segs) >= 2 and len(segs[-1]) < L // 2:
            both = segs[-2] + segs[-1]
            half = (len(both) + 1) // 2
            segs[-2:] = [both[:half], both[half:]]
        return segs

    def equal(data: bytes) -> list[list[int]]:
        ids = codec.token_bytes.encode(data)
        n = max(1, -(-len(ids) // L))
        bounds = [round(i * len(ids) / n) for i in range(n + 1)]
        return [ids[bounds[i] : bounds[i + 1]] for i in range(n)]

    codec.segments = {"tail": tail, "equal": equal}[cut]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["achieved_ratio"] for r in rows], [r["bleu4"] for r in rows], "o-", label="learned code")
    tg = ROOT / "benchmarks/results/latent_default.json"
    if tg.is_file():
        t = json.loads(tg.read_text())["rows"]
        ax.plot([r["achieved_ratio"] for r in t], [r["bleu4"] for r in t], "s--", label="token-group code")
    ex = ROOT / "benchmarks/results/exact_codec.json"
    if ex.is_file():
        summary = json.loads(ex.read_text()).get("summary", {})
        ratio = summary.get("ratio_total") or summary.get("mean_ratio")
        if ratio:
            ax.plot([ratio], [100], "k*", markersize=10, label="exact codec (lossless)")
    ax.set_xlabel("achieved prompt ratio (text tokens / Z-token)")
    ax.set_ylabel("BLEU-4 (free-running reconstruction)")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", required=True)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratios", default="2,4,6,8")
    parser.add_argument("--out", default="benchmarks/results/learned_code")
    parser.add_argument(
        "--writer", choices=["model", "teacher"], default="model", help="who writes the ids (see above)"
    )
    parser.add_argument(
        "--cut", choices=["sentence", "tail", "equal"], default="sentence", help="segment cut (see above)"
    )
    parser.add_argument("--data", choices=["wikitext", "cnndm"], default="wikitext", help="evaluation texts")
    parser.add_argument("--max-tokens", type=int, default=256, help="cnndm: tokens kept of each article")
    args = parser.parse_args(argv)

    import torch

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs

    zc = ZCompressor.from_pretrained(adapters=args.adapters)
    if args.data == "cnndm":
        from zcompress_integrations.eval.baselines import truncate_to_tokens
        from zcompress_integrations.eval.datasets import load_cnndm

        articles = load_cnndm(limit=args.limit, seed=args.seed)
        texts = [truncate_to_tokens(a.article, args.max_tokens, zc.backbone.tokenizer) for a in articles]
        what = f"CNN/DM test articles, first {args.max_tokens} tokens each"
    else:
        texts = [p.text_detok for p in load_wikitext_paragraphs(limit=args.limit, seed=args.seed)]
        what = "WikiText-2 test paragraphs (`text_detok`)"
    cfg = zc.latent_codec.config
    if args.writer == "teacher":
        use_teacher_writer(zc)
    if args.cut != "sentence":
        use_cut(zc, args.cut)
    rows = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        rows.append(measure(zc, texts, ratio))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "samples"}), flush=True)
    meta = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "adapters": args.adapters,
        "writer": args.writer,
        "cut": args.cut,
        "data": what,
        "code": cfg.code,
        "codebook_size": cfg.codebook_size,
        "codebooks": cfg.codebooks,
        "bits_per_z": math.log2(zc.latent_codec.code.k),
        "training": cfg.training,
        "paragraphs": len(texts),
        "brotli11_bits_per_char": brotli_bits_per_char(texts),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    brotli = meta["brotli11_bits_per_char"]
    lines = [
        "# Learned code on "
        + ("CNN/DM test articles" if args.data == "cnndm" else "WikiText-2 test paragraphs"),
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; adapters: {args.adapters}; writer: {args.writer}; cut: {args.cut}; K = {cfg.codebook_size} x {cfg.codebooks} "
        f"codebook(s) = {meta['bits_per_z']:.0f} bits per Z; training: {json.dumps(cfg.training)}",
        "",
        f"{len(texts)} {what}, seed {args.seed}; brotli-11 on the same texts: "
        + (f"{brotli:.2f} bits/char." if brotli else "not installed."),
        "",
        "| target | achieved ratio | BLEU-4 | exact match | bits/char (whole code) | bits/char (Z ids) | Spearman(Z count, segment NLL), "
        "all segments | the same, full-length segments (count) | Spearman(Z per token, NLL per token), all segments | "
        "usage perplexity, codebook 1 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['target_ratio']:g}x | {r['achieved_ratio']:.2f} | {r['bleu4']:.2f} | {r['exact_match']:.3f} | "
            f"{r['bits_per_char']:.2f} | {r.get('payload_bits_per_char', float('nan')):.2f} | "
            f"{r['spearman_z_count_vs_segment_nll']:.3f} | "
            f"{r.get('spearman_full_segments', float('nan')):.3f} ({r.get('full_segments', 0)}) | "
            f"{r.get('spearman_z_per_token_vs_nll', float('nan')):.3f} | {r.get('usage_perplexity', '-')} |"
        )
    lines += ["", f"![ratio vs BLEU-4]({out.name}.png)", "", "Samples (first 300 characters):", ""]
    for r in rows:
        for s in r["samples"]:
            lines += [f"- {r['target_ratio']:g}x ref: {s['ref']!r}", f"  hyp: {s['hyp']!r}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
