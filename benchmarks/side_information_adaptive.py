"""Probe: a variable-length side-information code the base model writes and reads (issue 23).

    python benchmarks/side_information_adaptive.py --limit 200 --ratios 2,4,6,8 \
        --out benchmarks/results/side_information_adaptive

Builds on ``side_information_probe.py`` (fixed bits per token). Here the writer is the base model itself: one
forward pass over the text gives, for every token, the fewest bits ``b`` of a nested random hash (``h(v) mod 2^b``)
for which the model's greedy choice restricted to that bucket is the token (``b = 0``: the model's plain greedy
choice). A Z-token is 16 bits: a 3-bit header saying how many tokens it names (``1, 2, 3, 4, 6, 8, 12, 16``) and
13 bits shared evenly among their buckets (a lone token gets 12 and a flag bit: when set, the next Z-token holds
the token id whole, an escape). A dynamic programme over each paragraph picks the spans: the fewest Z-tokens with no error (the
lossless row), or, at a requested ratio, the fewest errors within ``ceil(tokens / ratio)`` Z-tokens. The reader is
the base model, greedy, restricted to each token's bucket, free-running, so an error also changes what follows.
No adapter is trained: this measures what a code whose ids only separate the text from what the model already
expects costs and gives, to set the target for a learned one.

On WikiText-2 test paragraphs (evaluation data, used for nothing else; the header's span lengths were chosen on
training text): achieved ratio, payload bits per character, BLEU-4 and exact match of the free-running
reconstruction, planned errors, and the Spearman correlation of Z count with NLL over 64-token segments. Writes
``OUT.json`` and ``OUT.md``.
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
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

Z_BITS = 16
HEADER_BITS = 3
SPANS = (
    1,
    2,
    3,
    4,
    6,
    8,
    12,
    16,
)  # chosen on training text (wikipedia_en_03), not on the evaluation paragraphs
PAYLOAD = Z_BITS - HEADER_BITS
ESCAPE_BITS = 16  # a token sent whole: h is a permutation of a vocabulary below 2^16
SEGMENT = 64


def allocation(n: int) -> list[int]:
    if n == 1:  # one bit flags an escape: the next Z-token holds the token id whole
        return [PAYLOAD - 1]
    base, extra = divmod(PAYLOAD, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def beats(logits, true):  # noqa: ANN001, ANN201
    """Tokens the greedy choice prefers to the true one: a higher logit, or an equal one at a lower index (argmax
    takes the first maximum)."""
    import torch

    mine = logits.gather(1, true[:, None])
    lower = torch.arange(logits.shape[1])[None, :] < true[:, None]
    return (logits > mine) | ((logits == mine) & lower)


def bits_needed(logits, true, h):  # noqa: ANN001, ANN201
    """Per position: the fewest low bits of ``h`` that make the restricted greedy choice the true token."""
    import torch

    out = []
    for i in range(0, len(true), 256):
        lg, t = logits[i : i + 256], true[i : i + 256]
        above = beats(lg, t)
        x = h[None, :] ^ h[t][:, None]
        low = (x & -x).clamp(min=1).float().log2().round().long() + 1  # trailing equal bits + 1
        out.append(torch.where(above, low, torch.zeros_like(low)).max(1).values)
    return torch.cat(out).tolist()


def span_errors(need: list[int]) -> dict[int, list[int]]:
    """``errors[n][i]``: tokens of the span of ``n`` from ``i`` whose bucket would be too coarse.

    The last span may name fewer tokens than its header says: the container's text-token count ends it.
    """
    length = len(need)
    alloc = {n: allocation(n) for n in SPANS}
    return {
        n: [sum(need[i + j] > alloc[n][j] for j in range(min(n, length - i))) for i in range(length)]
        for n in SPANS
    }


def plan(errors: dict[int, list[int]], weight: float) -> tuple[list[tuple[int, int, bool]], int]:
    """Spans ``(start, n, escape)`` minimising Z-tokens + ``weight`` x errors; returns them and the error count."""
    length = len(errors[1])
    best = [0.0] * (length + 1)
    choice: list[tuple[int, bool]] = [(1, False)] * length
    for i in range(length - 1, -1, -1):
        options = [(2 + best[i + 1], (1, True))]
        for n in SPANS:  # a span past the end names only the tokens left
            options.append((1 + weight * errors[n][i] + best[min(i + n, length)], (n, False)))
        best[i], choice[i] = min(options, key=lambda o: o[0])
    spans, i, errs = [], 0, 0
    while i < length:
        n, esc = choice[i]
        spans.append((i, n, esc))
        errs += 0 if esc else errors[n][i]
        i = min(i + n, length)
    return spans, errs


def z_count(spans: list[tuple[int, int, bool]]) -> int:
    return sum(2 if esc else 1 for _, _, esc in spans)


def fit_budget(errors: dict[int, list[int]], budget: int) -> tuple[list[tuple[int, int, bool]], int]:
    """The spans with the fewest errors in at most ``budget`` Z-tokens (exact DP over position x Z-tokens left)."""
    import numpy as np

    length = len(errors[1])
    inf = 1 << 30
    best = np.full((length + 1, budget + 1), inf, dtype=np.int64)
    best[length, :] = 0
    pick = np.zeros((length, budget + 1), dtype=np.int64)  # 0: escape, else the span length
    for i in range(length - 1, -1, -1):
        row = np.full(budget + 1, inf, dtype=np.int64)
        row[2:] = best[i + 1, :-2]  # escape: two Z-tokens, no error
        choice = np.zeros(budget + 1, dtype=np.int64)
        for n in SPANS:  # a span past the end names only the tokens left
            cand = np.full(budget + 1, inf, dtype=np.int64)
            cand[1:] = best[min(i + n, length), :-1] + errors[n][i]
            better = cand < row
            row[better], choice[better] = cand[better], n
        best[i], pick[i] = row, choice
    if best[0, budget] >= inf:
        raise ValueError(f"{length} tokens do not fit {budget} Z-tokens")
    spans, i, k = [], 0, budget
    while i < length:
        n = int(pick[i, k])
        spans.append((i, max(n, 1), n == 0))
        i, k = (i + 1, k - 2) if n == 0 else (min(i + n, length), k - 1)
    return spans, int(best[0, budget])


def bits_needed_sparse(logits, true, h):  # noqa: ANN001, ANN201
    """``bits_needed`` over only the tokens ranked above the true one (few, usually): the closed loop's hot path."""
    import torch

    above = beats(logits, true).nonzero()
    x = h[above[:, 1]] ^ h[true[above[:, 0]]]
    low = (x & -x).float().log2().round().long() + 1
    return torch.zeros(len(true), dtype=torch.long).scatter_reduce(0, above[:, 0], low, "amax").tolist()


class ReaderPrefix:
    """The prefix the reader will have, in a KV cache: what the closed-loop writer simulates.

    Appended tokens wait until logits are needed, so a run of correct spans costs one forward pass.
    """

    def __init__(self, model, start: int) -> None:  # noqa: ANN001
        from transformers import DynamicCache

        from zcompress_integrations.core.backbone import cache_kwargs

        self.model, self.cache = model, DynamicCache()
        self.cache_kwargs = cache_kwargs(model, self.cache)
        self.tokens: list[int] = []
        self.pending: list[int] = []
        self.last = self._forward([start])[-1]

    def _forward(self, tokens: list[int]):  # noqa: ANN202
        import torch

        with torch.no_grad():
            ids = torch.tensor([tokens])
            return self.model(ids, use_cache=True, **self.cache_kwargs).logits[0].float()

    def append(self, tokens: list[int]) -> None:
        self.tokens += tokens
        self.pending += tokens

    def next_logits(self):  # noqa: ANN201
        """The reader's logits for the next token."""
        if self.pending:
            self.last, self.pending = self._forward(self.pending)[-1], []
        return self.last

    def peek(self, tail: list[int]):  # noqa: ANN201
        """Logits for each token of ``tail`` were it to follow the prefix (the cache is left as it was)."""
        import torch

        first = self.next_logits()
        if len(tail) == 1:
            return first[None]
        kept = self.cache.get_seq_length()
        rest = self._forward(tail[:-1])
        self.cache.crop(kept - self.cache.get_seq_length())
        return torch.cat([first[None], rest])


def closed_loop_plan(
    run: SimpleNamespace, row: list[int], need: list[int], budget: int, window: int = 48
) -> tuple[list[tuple[int, int, bool]], int]:
    """Plan as ``fit_budget`` does, but re-plan after every error from the prefix the reader will have.

    The open-loop plan assumes the reader's prefix is the true text; after its first error it is not, and the
    tokens after it need other buckets. Here the writer runs the reader (``ReaderPrefix``): it refreshes the bits
    needed over the next ``window`` tokens, plans the rest within the Z-tokens left, commits the plan up to the
    first Z-token with an error (or to the window's end), works out what the reader decodes there, and repeats.
    Returns the spans and the tokens the reader will get wrong.
    """
    import torch

    if window < max(SPANS):
        raise ValueError(f"window must hold the longest span ({max(SPANS)} tokens), got {window}")
    reader = ReaderPrefix(run.model, run.start)
    need = list(need)
    spans_all: list[tuple[int, int, bool]] = []
    z_left = budget
    while (pos := len(reader.tokens)) < len(row):
        win = row[pos : pos + window]
        logits = reader.peek(win)
        need[pos : pos + len(win)] = bits_needed_sparse(logits, torch.tensor(win), run.h)
        spans, _ = fit_budget(span_errors(need[pos:]), z_left)
        for i, n, esc in spans:
            if i + n > len(win) and pos + len(win) < len(row):
                break  # beyond the refreshed window: plan again from here
            bits = [ESCAPE_BITS] if esc else allocation(n)
            spans_all.append((pos + i, n, esc))  # the header's length; the text's end may cut it
            z_left -= 2 if esc else 1
            covered = win[i : i + n]
            wrong = [j for j in range(len(covered)) if not esc and need[pos + i + j] > bits[j]]
            if not wrong:
                reader.append(covered)
                continue
            reader.append(covered[: wrong[0]])
            step = logits[i + wrong[0]]
            for j in range(wrong[0], len(covered)):  # the reader's own choices from here on
                step = step if j == wrong[0] else reader.next_logits()
                allowed = run.table_of[bits[j]] == run.table_of[bits[j]][covered[j]]
                reader.append([int(step.masked_fill(~allowed, -math.inf).argmax())])
            break
    return spans_all, sum(a != b for a, b in zip(reader.tokens, row, strict=True))


def measure(ratio: float | None, run: SimpleNamespace, writer: str = "open") -> dict:
    """Plan every paragraph at ``ratio`` (``None``: lossless), read the codes back, and score them."""
    from scipy.stats import spearmanr
    from side_information_probe import container_bytes, reconstruct

    from zcompress_integrations.eval.metrics import bleu

    model, tok, token_rows, texts = run.model, run.tok, run.token_rows, run.texts
    all_errors, nlls, tables, table_of = run.all_errors, run.nlls, run.tables, run.table_of
    start, chars, n_tok = run.start, run.chars, run.n_tok
    batch = run.batch
    t1 = time.time()
    plans = []
    for row, errors, need in zip(token_rows, all_errors, run.needs, strict=True):
        if ratio is None:
            plans.append(plan(errors, 1e6))
        elif writer == "closed":
            plans.append(closed_loop_plan(run, row, need, math.ceil(len(row) / ratio)))
        else:
            plans.append(fit_budget(errors, math.ceil(len(row) / ratio)))
    bucket_rows = []
    seg_z, seg_nll = [], []
    for row, nll, (spans, _) in zip(token_rows, nlls, plans, strict=True):
        bits = [0] * len(row)
        for s, n, esc in spans:
            for j, b in enumerate(([ESCAPE_BITS] if esc else allocation(n))[: len(row) - s]):
                bits[s + j] = b
        bucket_rows.append((bits, [int(table_of[b][t]) for b, t in zip(bits, row, strict=True)]))
        for lo in range(0, len(row), SEGMENT):
            seg_z.append(sum(2 if esc else 1 for s, _, esc in spans if lo <= s < lo + SEGMENT))
            seg_nll.append(sum(nll[lo : lo + SEGMENT]))
    plan_s = time.time() - t1
    decoded, forced = reconstruct(model, token_rows, bucket_rows, tables, start, batch)
    hyps = [tok.decode(d) for d in decoded]
    z = sum(z_count(p[0]) for p in plans)
    return {
        "requested_ratio": ratio,
        "writer": writer,
        "z_tokens": z,
        "text_tokens": n_tok,
        "achieved_ratio": n_tok / z,
        "payload_bits_per_char": Z_BITS * z / chars,
        "bits_per_char_with_container": 8
        * sum(
            container_bytes(t, len(r), z_count(p[0]))
            for p, t, r in zip(plans, texts, token_rows, strict=True)
        )
        / chars,
        "bleu4": float(bleu(hyps, texts)),
        "exact_match": sum(h_ == t for h_, t in zip(hyps, texts, strict=True)) / len(texts),
        "token_accuracy_free": sum(
            sum(a == b for a, b in zip(d, r, strict=True)) for d, r in zip(decoded, token_rows, strict=True)
        )
        / n_tok,
        "token_accuracy_forced": forced / n_tok,
        "planned_errors": sum(p[1] for p in plans),
        "escapes": sum(esc for p in plans for _, _, esc in p[0]),
        "spearman_z_count_vs_segment_nll": float(spearmanr(seg_z, seg_nll).statistic),
        "segments": len(seg_z),
        "plan_s": round(plan_s, 1),
        "read_s": round(time.time() - t1 - plan_s, 1),
        "samples": [{"ref": texts[i][:240], "hyp": hyps[i][:240]} for i in range(2)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratios", default="2,4,6,8")
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument(
        "--writer",
        choices=["open", "closed"],
        default="open",
        help="plan once from the true text, or re-plan after every error from the reader's prefix",
    )
    parser.add_argument("--out", default="benchmarks/results/side_information_adaptive")
    args = parser.parse_args(argv)

    import torch

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs

    backbone = load_backbone()
    model, tok = backbone.model, backbone.tokenizer
    vocab = backbone.text_vocab_size
    assert vocab <= 1 << ESCAPE_BITS
    start = tok.eos_token_id
    h = torch.randperm(vocab, generator=torch.Generator().manual_seed(args.seed))
    tables = [(b, h % (1 << b)) for b in range(PAYLOAD + 1)] + [(ESCAPE_BITS, h)]

    texts = [p.text_detok for p in load_wikitext_paragraphs(limit=args.limit, seed=args.seed)]
    token_rows = [tok(t, add_special_tokens=False).input_ids for t in texts]
    chars = sum(len(t) for t in texts)
    n_tok = sum(len(r) for r in token_rows)

    t0 = time.time()
    needs, nlls = [], []
    with torch.no_grad():
        for row in token_rows:
            ids = torch.tensor([[start, *row]])
            logits = model(ids).logits[0, :-1].float()
            true = ids[0, 1:]
            needs.append(bits_needed(logits, true, h))
            nlls.append((-torch.log_softmax(logits, -1).gather(1, true[:, None])[:, 0]).tolist())
    all_errors = [span_errors(need) for need in needs]
    write_s = time.time() - t0
    table_of = dict(tables)

    run = SimpleNamespace(
        model=model,
        tok=tok,
        token_rows=token_rows,
        texts=texts,
        all_errors=all_errors,
        nlls=nlls,
        tables=tables,
        table_of=table_of,
        start=start,
        chars=chars,
        n_tok=n_tok,
        batch=args.batch,
        h=h,
        needs=needs,
    )
    command = "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])])
    meta = {
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "model": backbone.name,
        "paragraphs": len(texts),
        "seed": args.seed,
        "characters": chars,
        "text_tokens": n_tok,
        "spans": SPANS,
        "header_bits": HEADER_BITS,
        "write_s": round(write_s, 1),
        "mean_bits_needed": sum(map(sum, needs)) / n_tok,
        "base_model_cross_entropy_bits_per_token": sum(map(sum, nlls)) / n_tok / math.log(2),
    }
    out = Path(args.out)
    saved = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else {}
    results = saved.get("rows", [])
    done = {(r["requested_ratio"], r.get("writer", "open")) for r in results}
    for ratio in [None, *[float(r) for r in args.ratios.split(",")]]:
        writer = "open" if ratio is None else args.writer
        if (ratio, writer) in done:
            continue
        results.append(measure(ratio, run, writer) | {"command": command})
        print(json.dumps({k: v for k, v in results[-1].items() if k != "samples"}), flush=True)
        write_report(out, meta, results)


def write_report(out: Path, meta: dict, results: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2) + "\n")
    lines = [
        "# Side-information code, variable length, written and read by the base model",
        "",
        f"Machine: {meta['machine']}; {meta['paragraphs']} WikiText-2 test paragraphs (`text_detok`, seed "
        f"{meta['seed']}), {meta['characters']} characters, {meta['text_tokens']} tokens. Base-model cross-entropy "
        f"{meta['base_model_cross_entropy_bits_per_token']:.2f} bits/token; mean bucket bits needed "
        f"{meta['mean_bits_needed']:.2f}. 16 bits per Z-token; 'with container' is the size of a ZCode holding them. "
        "Rows are resumable: each row's command is in the JSON.",
        "",
        "| requested | writer | achieved ratio | payload bits/char | with container | BLEU-4 | exact match | token acc. (free) | planned errors "
        "| Spearman(Z count, segment NLL) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        req = "lossless" if r["requested_ratio"] is None else f"{r['requested_ratio']:g}x"
        lines.append(
            f"| {req} | {r.get('writer', 'open')} | {r['achieved_ratio']:.2f}x | {r['payload_bits_per_char']:.2f} | "
            f"{r['bits_per_char_with_container']:.2f} | {r['bleu4']:.2f} | "
            f"{r['exact_match']:.3f} | {r['token_accuracy_free']:.3f} | {r['planned_errors']} | "
            f"{r['spearman_z_count_vs_segment_nll']:.3f} |"
        )
    lines += ["", "Commands:", "", *sorted({f"- `{r['command']}`" for r in results})]
    lines += ["", "Samples (first 240 characters):", ""]
    for r in results:
        req = "lossless" if r["requested_ratio"] is None else f"{r['requested_ratio']:g}x"
        lines += [
            f"- {req} ({r.get('writer', 'open')}) ref: {r['samples'][0]['ref']!r}",
            f"  hyp: {r['samples'][0]['hyp']!r}",
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
