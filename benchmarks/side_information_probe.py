"""Probe: how much text the base model recovers from a few context-free bits per token (issue 23).

    python benchmarks/side_information_probe.py --limit 200 --ratios 2,4,6,8 --schemes random,colored,clustered \
        --out benchmarks/results/side_information_probe

Run 2 of the staged learned code (``benchmarks/results/learned_code_run2``) gave each 2-token span a 24-bit
k-means id of its token-group embedding, and the trained reader rebuilt WikiText-2 paragraphs at BLEU-4 6.3. This
probe asks what a code of the same kind (context-free, a fixed number of bits per token) could give if its
vocabulary were built for a reader that already knows the language: a Z-token of 16 bits names ``r`` consecutive
tokens, ``16 / r`` bits each (a token's *bucket*), and the reader is the untrained base model decoding greedily
with its next token restricted to the bucket the code names. No adapter, no Z embedding: only the base model's
prior and the buckets. Three bucket vocabularies, all built from training text or the model's own embeddings:

* ``random``: a seeded random partition of the vocabulary.
* ``colored``: greedy graph colouring of the tokens the model confuses (each true token against the tokens it
  ranked above it) on training segments (``runs/learned/segments.npy``, from ``zcompress train prepare``), so that
  the tokens the model hesitates between land in different buckets.
* ``clustered``: k-means over the input embeddings, so a bucket holds similar tokens (what run 2's vocabulary
  did, per span instead of per token).

Per scheme and ratio, on WikiText-2 test paragraphs (evaluation data, used for nothing else): BLEU-4 and token
accuracy of the free-running reconstruction, token accuracy with the true prefix (teacher-forced), and the payload
in bits per character (``16 * Z-tokens / characters``; a stored code adds its container on top). The bucket
vocabulary is fixed, so the Z count is ``ceil(tokens / r)`` (not content-adaptive). Writes ``OUT.json`` and
``OUT.md``.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Z_BITS = 16


def bit_pattern(ratio: int) -> list[int]:
    """Bits of each of the ``ratio`` tokens of a 16-bit Z-token (the remainder goes to the first tokens)."""
    base, extra = divmod(Z_BITS, ratio)
    return [base + (1 if i < extra else 0) for i in range(ratio)]


def confusion_graph(model, rows, batch: int = 32, top: int = 64, floor: float = 0.3):  # noqa: ANN001, ANN201
    """Weighted pairs (true token, a token the model ranked above it with at least ``floor`` of its probability)."""
    import torch

    weights: dict[tuple[int, int], float] = collections.defaultdict(float)
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            ids = torch.as_tensor(rows[i : i + batch].astype("int64"))
            probs = torch.softmax(model(ids).logits[:, :-1].float(), -1).flatten(0, 1)
            true = ids[:, 1:].flatten()
            p_true = probs.gather(1, true[:, None])[:, 0]
            vals, idx = probs.topk(top, dim=1)
            keep = (vals > p_true[:, None] * floor) & (idx != true[:, None])
            for r, c in keep.nonzero().tolist():
                t, o, w = int(true[r]), int(idx[r, c]), float(vals[r, c])
                weights[(t, o)] += w
                weights[(o, t)] += w
    return weights


def colored_buckets(weights, vocab: int, bits: int, seed: int):  # noqa: ANN001, ANN201
    """Greedy colouring: tokens by falling confusion weight, each to the bucket where it collides least."""
    import numpy as np
    import torch

    buckets = (torch.randperm(vocab, generator=torch.Generator().manual_seed(seed)) % (1 << bits)).numpy()
    neighbours = collections.defaultdict(list)
    degree: collections.Counter = collections.Counter()
    for (a, b), w in weights.items():
        neighbours[a].append((b, w))
        degree[a] += w
    placed = np.zeros(vocab, dtype=bool)
    for t, _ in degree.most_common():
        cost = np.zeros(1 << bits)
        for o, w in neighbours[t]:
            if placed[o]:
                cost[buckets[o]] += w
        cost[buckets[t]] -= 1e-9  # ties keep the random bucket, which spreads the load
        buckets[t] = int(cost.argmin())
        placed[t] = True
    return torch.as_tensor(buckets)


def clustered_buckets(embeddings, bits: int, seed: int, iters: int = 15):  # noqa: ANN001, ANN201
    """k-means over the input embedding rows (cosine), one cluster per bucket."""
    import torch

    x = torch.nn.functional.normalize(embeddings.float(), dim=1)
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=g)[: 1 << bits]].clone()
    for _ in range(iters):
        assign = (x @ centres.T).argmax(1)
        for c in range(len(centres)):
            members = x[assign == c]
            if len(members):
                centres[c] = torch.nn.functional.normalize(members.mean(0), dim=0)
    return (x @ centres.T).argmax(1)


def reconstruct(model, token_rows, bucket_rows, tables, start: int, batch: int):  # noqa: ANN001, ANN201
    """Greedy decoding restricted at each position to the bucket the code names; also the teacher-forced hits."""
    import torch
    from transformers import DynamicCache

    from zcompress_integrations.core.backbone import cache_kwargs

    order = sorted(range(len(token_rows)), key=lambda i: len(token_rows[i]))
    out: list[list[int]] = [[] for _ in token_rows]
    forced_hits = 0
    with torch.no_grad():
        for lo in range(0, len(order), batch):
            idx = order[lo : lo + batch]
            length = max(len(token_rows[i]) for i in idx)
            cols = [b for b, _ in tables]
            # per row, per position: which table (bits) and which bucket
            which = torch.zeros(len(idx), length, dtype=torch.long)
            bucket = torch.full((len(idx), length), -1, dtype=torch.long)
            true = torch.zeros(len(idx), length, dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(token_rows[i])
                which[r, :n] = torch.as_tensor([cols.index(b) for b in bucket_rows[i][0]])
                bucket[r, :n] = torch.as_tensor(bucket_rows[i][1])
                true[r, :n] = torch.as_tensor(token_rows[i])
            stacked = torch.stack([t for _, t in tables])  # [tables, V]

            def allowed(step: int, stacked=stacked, which=which, bucket=bucket) -> torch.Tensor:  # noqa: ANN001
                return stacked[which[:, step]] == bucket[:, step, None]

            # teacher-forced: one parallel pass over the true text
            inp = torch.cat([torch.full((len(idx), 1), start), true[:, :-1]], 1)
            logits = model(inp).logits.float()
            for s in range(length):
                pred = logits[:, s].masked_fill(~allowed(s), -math.inf).argmax(1)
                valid = bucket[:, s] >= 0
                forced_hits += int(((pred == true[:, s]) & valid).sum())
            # free-running
            cache = DynamicCache()
            nxt = torch.full((len(idx), 1), start)
            decoded = []
            for s in range(length):
                step_logits = model(nxt, use_cache=True, **cache_kwargs(model, cache)).logits[:, -1].float()
                pred = step_logits.masked_fill(~allowed(s), -math.inf).argmax(1)
                decoded.append(pred)
                nxt = pred[:, None]
            decoded_t = torch.stack(decoded, 1)
            for r, i in enumerate(idx):
                out[i] = decoded_t[r, : len(token_rows[i])].tolist()
    return out, forced_hits


def container_bytes(text: str, text_tokens: int, z_tokens: int) -> int:
    """Size of a ZCode holding ``z_tokens`` 16-bit Z-tokens of ``text`` (the container every latent code uses)."""
    from zcompress_integrations.core.zcode import ZCode, text_checksum

    code = ZCode(
        z_ids=(0,) * z_tokens,
        codec="latent",
        k=1 << Z_BITS,
        text_tokens=text_tokens,
        text_chars=len(text),
        checksum=text_checksum(text.encode("utf-8")),
        fingerprint=bytes(4),  # its size, not its value, counts here
        segments=(z_tokens,),
    )
    return len(code.to_bytes())


def container_bits_per_char(texts: list[str], token_rows: list[list[int]], ratio: int) -> float:
    """Bits per character of ZCodes holding ``ceil(tokens / ratio)`` Z-tokens per text."""
    total = sum(
        container_bytes(t, len(r), math.ceil(len(r) / ratio)) for t, r in zip(texts, token_rows, strict=True)
    )
    return 8 * total / sum(len(t) for t in texts)


def write_report(out: Path, meta: dict, results: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2) + "\n")
    lines = [
        "# Side-information probe: the base model reading context-free bucket ids",
        "",
        f"Machine: {meta['machine']}; {meta['paragraphs']} WikiText-2 test paragraphs (`text_detok`, seed "
        f"{meta['seed']}), {meta['characters']} characters. A Z-token is {Z_BITS} bits naming the buckets of `ratio` "
        "consecutive tokens; the reader is the base model, greedy, restricted to the named bucket. Payload: 16 bits per Z-token (a "
        "ZCode container ('with container') adds its header). Rows are resumable: each row's command is in the JSON.",
        "",
        "| buckets | ratio | bits per token | payload bits/char | with container | BLEU-4 | token acc. (free) | token acc. (true prefix) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['scheme']} | {r['achieved_ratio']:.2f}x | {'/'.join(map(str, sorted(set(r['bits_per_token']))))} | "
            f"{r['payload_bits_per_char']:.2f} | {r['bits_per_char_with_container']:.2f} | {r['bleu4']:.2f} | "
            f"{r['token_accuracy_free']:.3f} | "
            f"{r['token_accuracy_forced']:.3f} |"
        )
    lines += ["", "Commands:", ""]
    lines += sorted({f"- `{r['command']}`" for r in results})
    lines += ["", "Samples (first 240 characters):", ""]
    for r in results:
        for sample in r.get("samples", [])[:1]:
            lines += [f"- {r['scheme']} {r['ratio']}x ref: {sample['ref']!r}", f"  hyp: {sample['hyp']!r}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratios", default="2,4,6,8")
    parser.add_argument("--schemes", default="random,colored,clustered")
    parser.add_argument(
        "--segments", default="runs/learned/segments.npy", help="training segments (colouring)"
    )
    parser.add_argument("--fit-rows", type=int, default=600, help="training segments the colouring reads")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--out", default="benchmarks/results/side_information_probe")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs
    from zcompress_integrations.eval.metrics import bleu

    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])])
    out = Path(args.out)
    saved = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    results = saved.get("rows", [])
    done = {(r["scheme"], r["ratio"]) for r in results}
    todo = [
        (s, int(r))
        for s in args.schemes.split(",")
        for r in args.ratios.split(",")
        if (s, int(r)) not in done
    ]

    torch.manual_seed(args.seed)
    backbone = load_backbone()
    model, tok = backbone.model, backbone.tokenizer
    vocab = backbone.text_vocab_size
    start = tok.eos_token_id
    bit_sizes = sorted({b for _, r in todo for b in bit_pattern(r)})

    texts = [p.text_detok for p in load_wikitext_paragraphs(limit=args.limit, seed=args.seed)]
    token_rows = [tok(t, add_special_tokens=False).input_ids for t in texts]
    chars = sum(len(t) for t in texts)
    meta = saved.get("meta", {}) | {
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "model": backbone.name,
        "paragraphs": len(texts),
        "seed": args.seed,
        "characters": chars,
    }

    vocabularies: dict[str, dict[int, torch.Tensor]] = {}
    schemes = {s for s, _ in todo}
    if "colored" in schemes:
        t0 = time.time()
        rows = np.load(args.segments, mmap_mode="r")[: args.fit_rows]
        weights = confusion_graph(model, rows)
        vocabularies["colored"] = {b: colored_buckets(weights, vocab, b, args.seed) for b in bit_sizes}
        meta["colored_fit"] = {
            "segments": args.segments,
            "rows": int(len(rows)),
            "tokens": int(rows.size),
            "pairs": len(weights),
            "seconds": round(time.time() - t0, 1),
        }
    if "random" in schemes:
        perm = torch.randperm(vocab, generator=torch.Generator().manual_seed(args.seed))
        vocabularies["random"] = {b: perm % (1 << b) for b in bit_sizes}
    if "clustered" in schemes:
        emb = model.get_input_embeddings().weight[:vocab].detach()
        vocabularies["clustered"] = {b: clustered_buckets(emb, b, args.seed) for b in bit_sizes}

    for r in results:  # the container size follows from the texts and the ratio alone
        r.setdefault("bits_per_char_with_container", container_bits_per_char(texts, token_rows, r["ratio"]))
    for scheme, ratio in todo:
        buckets = vocabularies[scheme]
        pattern = bit_pattern(ratio)
        bucket_rows = []
        for row in token_rows:
            bits = [pattern[i % ratio] for i in range(len(row))]
            bucket_rows.append((bits, [int(buckets[b][t]) for b, t in zip(bits, row, strict=True)]))
        t1 = time.time()
        tables = [(b, buckets[b]) for b in sorted(set(pattern))]
        decoded, forced = reconstruct(model, token_rows, bucket_rows, tables, start, args.batch)
        hyps = [tok.decode(d) for d in decoded]
        n_tok = sum(len(r) for r in token_rows)
        z = sum(math.ceil(len(r) / ratio) for r in token_rows)
        free = sum(
            sum(a == b for a, b in zip(d, r, strict=True)) for d, r in zip(decoded, token_rows, strict=True)
        )
        row = {
            "scheme": scheme,
            "ratio": ratio,
            "bits_per_token": pattern,
            "z_tokens": z,
            "text_tokens": n_tok,
            "achieved_ratio": n_tok / z,
            "payload_bits_per_char": Z_BITS * z / chars,
            "bits_per_char_with_container": container_bits_per_char(texts, token_rows, ratio),
            "bleu4": float(bleu(hyps, texts)),
            "token_accuracy_free": free / n_tok,
            "token_accuracy_forced": forced / n_tok,
            "exact_match": sum(h == t for h, t in zip(hyps, texts, strict=True)) / len(texts),
            "seconds": round(time.time() - t1, 1),
            "command": command,
            "samples": [{"ref": texts[i][:240], "hyp": hyps[i][:240]} for i in range(2)],
        }
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "samples"}), flush=True)
        write_report(out, meta, results)


if __name__ == "__main__":
    main()
