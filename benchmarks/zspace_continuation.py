"""Generation in Z space: continue a text one segment in Z, render it, and judge it with the base model.

    python benchmarks/zspace_continuation.py --adapters DIR --limit 100 --out benchmarks/results/zspace_continuation

For ``--limit`` WikiText-2 test paragraphs with at least ``1 + --segments`` segments of ``segment_len`` tokens:
the first segment is compressed (latent, ``--ratio``), ``continue_z`` writes the Z-tokens of the next
``--segments`` segment(s) with the ``infer`` adapter, and the decompress adapter renders them as text. Each
continuation is scored by the *base* model (adapters disabled) as the perplexity of its tokens given the true first
segment, next to

* the true continuation (the paragraph's own next tokens): what real text costs the base model;
* a plain-text greedy continuation of the same length by the base model: its own argmax path, so its perplexity is
  low by construction (and often repetitive): a floor, not a quality bar;

plus unigram F1 of each continuation's tokens against the true continuation, distinct-bigram share (repetition)
and the number of empty renderings. A few samples are printed side by side. The decompressed first segment
(``recon``) is shown too, since a continuation can only be as readable as the codec's reconstruction.
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
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = ("z_continuation", "true_continuation", "greedy_continuation")


def _unigram_f1(hyp: list[int], ref: list[int]) -> float:
    if not hyp or not ref:
        return 0.0
    common = sum((Counter(hyp) & Counter(ref)).values())
    if not common:
        return 0.0
    p, r = common / len(hyp), common / len(ref)
    return 2 * p * r / (p + r)


def _distinct2(ids: list[int]) -> float:
    pairs = list(zip(ids, ids[1:], strict=False))
    return len(set(pairs)) / len(pairs) if pairs else 0.0


def _nll(codec: Any, context: list[int], cont: list[int]) -> float:
    """Summed NLL (nats) of ``cont`` after ``context`` under the base model (adapters off)."""
    import torch

    ids = torch.tensor([context + cont], device=codec.backbone.device)
    with codec.peft_model.disable_adapter(), torch.inference_mode():
        logits = codec.lm(input_ids=ids).logits[0, len(context) - 1 : -1, : codec.backbone.text_vocab_size]
        return float(
            torch.nn.functional.cross_entropy(logits.float(), ids[0, len(context) :], reduction="sum")
        )


def _greedy(codec: Any, context: list[int], n_tokens: int) -> list[int]:
    """The base model's greedy continuation (adapters off), stopped at its end token."""
    import torch

    ids = torch.tensor([context], device=codec.backbone.device)
    with codec.peft_model.disable_adapter(), torch.inference_mode():
        out = codec.lm.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n_tokens,
            do_sample=False,
            eos_token_id=codec.end_token,
            pad_token_id=codec.end_token,
        )
    toks = out[0, len(context) :].tolist()
    return toks[: toks.index(codec.end_token)] if codec.end_token in toks else toks


def _paragraph_pool(data: str | None, tok: Any, length: int, vocab: int) -> list[list[int]]:
    """First ``length`` token ids of every paragraph that long (WikiText-2 test, or a jsonl's 'text' fields)."""
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs

    if data:
        with open(data) as f:
            texts = [json.loads(line)["text"] for line in f if line.strip()]
    else:
        texts = [p.text_detok for p in load_wikitext_paragraphs()]
    pool = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length and max(ids[:length]) < vocab:
            pool.append(ids[:length])
    return pool


def _score(
    codec: Any, start: list[int], prefixes: list, conts: list, truths: list, vocab: int
) -> dict[str, Any]:
    """Base-model perplexity given the true first segment, unigram F1 against the truth, distinct bigrams."""
    import numpy as np

    nll_sum, count, empty, f1s, d2s = 0.0, 0, 0, [], []
    for prefix, ids, truth in zip(prefixes, conts, truths, strict=True):
        ids = [t for t in ids if t < vocab]
        if not ids:
            empty += 1
            continue
        nll_sum += _nll(codec, start + prefix, ids)
        count += len(ids)
        f1s.append(_unigram_f1(ids, truth))
        d2s.append(_distinct2(ids))
    return {
        "perplexity": math.exp(nll_sum / count) if count else float("nan"),
        "tokens_mean": count / max(1, len(prefixes) - empty),
        "empty": empty,
        "unigram_f1_vs_true": float(np.mean(f1s)) if f1s else float("nan"),
        "distinct2": float(np.mean(d2s)) if d2s else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="backbone name or path (default: the embedded default)")
    parser.add_argument("--adapters", default="default", help="latent adapters with an infer/ adapter")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--segments", type=int, default=1, help="segments to continue in Z")
    parser.add_argument("--ratio", type=float, default=None, help="latent ratio of the first segment's code")
    parser.add_argument("--samples", type=int, default=3, help="side-by-side samples to print and store")
    parser.add_argument("--temperature", type=float, default=0.0, help="continue_z sampling (0: greedy)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        help="default: continue_z's own (1.1 for token groups)",
    )
    parser.add_argument(
        "--skip-greedy", action="store_true", help="no base-model greedy row (saves its time)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--data",
        default=None,
        help="a jsonl with a 'text' field instead of WikiText-2 test (e.g. a held-apart training-split file, to "
        "choose decoding settings without touching evaluation data)",
    )
    parser.add_argument("--out", default="benchmarks/results/zspace_continuation")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from zcompress_integrations import ZCompressor

    t_start = time.time()
    zc = ZCompressor.from_pretrained(args.model, adapters=args.adapters, device=args.device)
    codec = zc.latent_codec
    cfg = codec.config
    L, n = cfg.segment_len, args.segments
    tok = codec.backbone.tokenizer
    vocab = codec.backbone.text_vocab_size
    # paragraphs long enough for a first segment and n true continuation segments, a seeded sample of them
    pool = _paragraph_pool(args.data, tok, (1 + n) * L, vocab)
    rng = np.random.default_rng(args.seed)
    picked = [pool[i] for i in sorted(rng.choice(len(pool), size=min(args.limit, len(pool)), replace=False))]
    prefixes = [ids[:L] for ids in picked]
    truths = [ids[L:] for ids in picked]
    prefix_texts = [tok.decode(p) for p in prefixes]

    # 1. Z space: compress the first segment, continue it in Z, render both
    t0 = time.time()
    codes = zc.compress_batch(prefix_texts, mode="latent", ratio=args.ratio)
    t1 = time.time()
    from zcompress_integrations.core.zspace import resolve_repetition_penalty

    penalty = resolve_repetition_penalty(args.repetition_penalty)
    decoding = {"temperature": args.temperature, "top_p": args.top_p, "repetition_penalty": penalty}
    conts = [zc.continue_z(c, n, seed=i, **decoding) for i, c in enumerate(codes)]
    continue_seconds = time.time() - t1
    z_texts = zc.decompress_batch(conts)
    recons = zc.reconstruct_batch(codes)
    z_seconds = time.time() - t0
    kinds = KINDS[:-1] if args.skip_greedy else KINDS
    # the ids name their token groups: the continuation the infer adapter wrote, before reading
    kinds = ("z_continuation", "z_continuation_as_named", *kinds[1:])
    named = [[t for g in codec.code.groups(c.z_ids) for t in g] for c in conts]
    # 2. the base model's own greedy continuation of the true first segment
    t0 = time.time()
    start = [codec.start_token]
    greedy_ids = [[] if args.skip_greedy else _greedy(codec, start + p, n * L) for p in prefixes]
    greedy_seconds = time.time() - t0
    # 3. score every continuation given the true first segment
    cont_ids = {
        "z_continuation": [tok(t, add_special_tokens=False)["input_ids"] for t in z_texts],
        "true_continuation": truths,
        "greedy_continuation": greedy_ids,
        "z_continuation_as_named": named,
    }
    rows: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        rows[kind] = _score(codec, start, prefixes, cont_ids[kind], truths, vocab)
        print(json.dumps({"kind": kind, **rows[kind]}))
    samples = [
        {
            "prefix": prefix_texts[i],
            "recon": recons[i],
            "z_continuation": z_texts[i],
            "true_continuation": tok.decode(truths[i]),
            "greedy_continuation": tok.decode(greedy_ids[i]),
            "z_continuation_as_named": tok.decode(named[i]),
            "z_ids": list(conts[i].z_ids),
        }
        for i in range(min(args.samples, len(prefixes)))
    ]
    for s in samples:
        print("-" * 100)
        for key in ("prefix", "recon", *kinds):
            print(f"{key:>24}: {s[key][:300]!r}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python "
        + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "model": zc.model_name,
        "adapters": str(args.adapters),
        "training": cfg.training,
        "segment_len": L,
        "segments_continued": n,
        "decoding": decoding,
        "data": args.data or "wikitext-2 test",
        "z_per_segment_mean": float(np.mean([c.segments[0] for c in conts])) if conts else 0.0,
        "paragraphs": len(prefixes),
        "pool": len(pool),
        "z_path_s": round(z_seconds, 1),
        "continue_z_s": round(continue_seconds, 1),
        "greedy_s": round(greedy_seconds, 1),
        "total_s": round(time.time() - t_start, 1),
    }
    (out.parent / f"{out.name}.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "samples": samples}, indent=2) + "\n"
    )
    source = f"`{args.data}`" if args.data else "WikiText-2 test"
    lines = [
        f"# Generation in Z space: continuing {source} paragraphs",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; model {meta['model']}; adapters {meta['adapters']}",
        "",
        f"{len(prefixes)} {source} paragraphs (seed {args.seed}, from {len(pool)} with at least {1 + n} "
        f"segments of {L} tokens). The first segment is compressed and continued by {n} segment(s) in Z "
        f"({meta['z_per_segment_mean']:.1f} Z-tokens per segment; continue_z {json.dumps(decoding)}, seeded per "
        "paragraph), then decompressed. Perplexity is the base "
        "model's (adapters off) on the continuation's tokens given the true first segment. The greedy continuation "
        "is the base model's own argmax path: its perplexity is low by construction. "
        f"Time: continue_z {meta['continue_z_s']} s for all paragraphs (whole Z path with compression and "
        f"decompression {meta['z_path_s']} s); the base model's greedy continuation {meta['greedy_s']} s.",
        "",
        *(
            [
                "Token-group code: a generated Z id names its token group, so the table shows the continuation both as "
                "the decompress adapter renders it (`z continuation`) and as the ids name it (`z continuation as named`: "
                "what the infer adapter wrote, before any reading).",
                "",
            ]
        ),
        "| continuation | perplexity | tokens (mean) | empty | unigram F1 vs true | distinct bigrams |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in kinds:
        r = rows[kind]
        lines.append(
            f"| {kind.replace('_', ' ')} | {r['perplexity']:.2f} | {r['tokens_mean']:.1f} | {r['empty']} | "
            f"{r['unigram_f1_vs_true']:.3f} | {r['distinct2']:.3f} |"
        )
    lines += [
        "",
        f"Infer adapter training: `{json.dumps(cfg.training.get('infer', {}))}`",
        "",
        "## Samples",
        "",
    ]
    for i, s in enumerate(samples, 1):
        lines.append(f"{i}.")
        for key in ("prefix", "recon", *kinds):
            lines.append(f"   - **{key}**: {s[key][:400]!r}")
    (out.parent / f"{out.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
