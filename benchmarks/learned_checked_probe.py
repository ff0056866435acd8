"""Probe: checked reading of the staged learned code (run 2) with the teacher's ids, against free-running reading.

    python benchmarks/learned_checked_probe.py --adapters runs/learned/run2/adapters --limit 3 --ratio 2 \
        --out benchmarks/results/learned_code_run2/checked_probe.json

The teacher's id of a span is a function of its tokens alone (residual VQ of its token-group embedding), so a
decoder can compute the id of any candidate span. Checked reading searches, for each Z-token in order, for the most
likely span under the reader (every earlier span committed) whose id is the stored one: a beam of ``--beam``
partial spans grows one token at a time from each one's ``--expand`` most likely next tokens; a candidate with the
stored id is a finished span; the search stops when no partial span scores above the best finished one, or after
``max_span`` tokens. When nothing matches, the reader's greedy span of the expected length is committed instead
(counted: ``spans_matched`` is the share that did match). A diagnostic of whether the reader's own candidates hold
the true span, not a shipped decoder. WikiText-2 test paragraphs (evaluation data).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SpanIds = Callable[[list[list[int]]], list[int]]


def _step(codec: Any, x: Any, positions: Any, cache: Any) -> tuple[Any, Any]:
    """Next-token log-probabilities (text vocabulary) after ``x [B, T, H]``, and the grown cache."""
    out = codec.lm(inputs_embeds=x, position_ids=positions, past_key_values=cache, use_cache=True)
    logits = out.logits[:, -1, : codec.backbone.text_vocab_size].float()
    return logits.log_softmax(-1), out.past_key_values


def _search_span(
    codec: Any,
    z_id: int,
    span_ids: SpanIds,
    logp: Any,
    cache: Any,
    start: int,
    max_span: int,
    beam: int,
    expand: int,
) -> list[int] | None:
    """The most likely span after the committed ``cache`` (next-token ``logp [1, V]``; its first token sits at
    position ``start``) whose id is ``z_id``, or None."""
    import torch

    base = cache.get_seq_length()
    wide = copy.deepcopy(cache)
    wide.batch_repeat_interleave(beam)
    hyps: list[tuple[float, list[int]]] = [(0.0, [])]
    hyp_logp = logp
    best: tuple[float, list[int]] | None = None
    end = codec.end_token
    for depth in range(1, max_span + 1):
        top = hyp_logp.topk(expand, -1)
        grown = [
            (score + lp, toks + [t])
            for (score, toks), lps, ts in zip(hyps, top.values.tolist(), top.indices.tolist(), strict=True)
            for lp, t in zip(lps, ts, strict=True)
            if t != end
        ]
        grown.sort(key=lambda h: -h[0])
        for hyp, found in zip(grown, span_ids([h[1] for h in grown]), strict=True):
            if found == z_id and (best is None or hyp[0] > best[0]):
                best = hyp
        floor = best[0] if best is not None else float("-inf")
        hyps = [h for h in grown if h[0] > floor][:beam]
        if not hyps or depth == max_span:
            break
        rows = hyps + [hyps[-1]] * (beam - len(hyps))  # the cache keeps ``beam`` rows
        if wide.get_seq_length() > base:  # back to the committed text (a negative crop removes tokens)
            wide.crop(base - wide.get_seq_length())
        x = codec.embed(torch.tensor([toks for _, toks in rows], device=logp.device))
        positions = torch.arange(start, start + depth, device=logp.device).expand(beam, -1)
        hyp_logp, wide = _step(codec, x, positions, wide)
        hyp_logp = hyp_logp[: len(hyps)]
    return None if best is None else best[1]


def read_checked(
    codec: Any,
    z_ids: Sequence[int],
    span_ids: SpanIds,
    *,
    max_span: int,
    beam: int,
    expand: int,
    fallback_len: int,
) -> tuple[list[int], int]:
    """Text tokens of one segment read from its ``z_ids`` (call under ``codec.reading()`` and inference mode), and
    the number of spans that no candidate matched (read greedily instead)."""
    import torch

    dev = codec.lm.get_input_embeddings().weight.device
    prefix, positions = codec.segment_prefix(z_ids)
    logp, cache = _step(codec, prefix.unsqueeze(0), torch.tensor([positions], device=dev), None)
    text: list[int] = []
    unchecked = 0
    for z_id in z_ids:
        start = len(text) + 1  # the separator sits at position 0, text token i at i + 1
        span = _search_span(codec, int(z_id), span_ids, logp, cache, start, max_span, beam, expand)
        if span is None:
            unchecked += 1
            span, lp, greedy = [], logp, copy.deepcopy(cache)
            for _ in range(fallback_len):
                order = lp[0].topk(2).indices.tolist()
                span.append(order[1] if order[0] == codec.end_token else order[0])
                x = codec.embed(torch.tensor([[span[-1]]], device=dev))
                lp, greedy = _step(codec, x, torch.tensor([[start + len(span) - 1]], device=dev), greedy)
        x = codec.embed(torch.tensor([span], device=dev))
        logp, cache = _step(codec, x, torch.arange(start, start + len(span), device=dev).unsqueeze(0), cache)
        text += span
    return text, unchecked


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", required=True)
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=2.0)
    parser.add_argument("--beam", type=int, default=8)
    parser.add_argument("--expand", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import torch

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.core.codes.token_groups import TokenGroupCode
    from zcompress_integrations.core.training.compressor import teacher_spans
    from zcompress_integrations.core.training.staged import span_embeddings, teacher_ids
    from zcompress_integrations.eval.datasets import load_wikitext_paragraphs
    from zcompress_integrations.eval.metrics import bleu

    torch.set_grad_enabled(False)
    zc = ZCompressor.from_pretrained(adapters=args.adapters)
    codec = zc.latent_codec
    code = codec.code
    teacher = TokenGroupCode(codec.lm.get_input_embeddings(), codec.config.vocab_size, code.max_span)

    def span_ids(spans: list[list[int]]) -> list[int]:
        return code.ids_of(teacher_ids(code.codebook, [teacher.group_embeddings(spans).float()])[0])

    texts = [p.text_detok for p in load_wikitext_paragraphs(limit=args.limit, seed=0)]
    jobs = []  # (paragraph, text ids, teacher z ids); computed before reading: the teacher's NLL runs adapters off
    for k, text in enumerate(texts):
        for seg in codec.segments(text.encode("utf-8")):
            ids = codec.model_ids(seg)
            rows = torch.tensor([ids])
            spans = teacher_spans(codec, rows, args.ratio, code.max_span)
            (tid,) = teacher_ids(code.codebook, span_embeddings(teacher, rows, spans))
            jobs.append((k, ids, code.ids_of(tid)))
    checked: list[list[int]] = [[] for _ in texts]
    free: list[list[int]] = [[] for _ in texts]
    n_z = n_unchecked = 0
    t0 = time.time()
    with codec.reading():
        for k, ids, z_ids in jobs:
            toks, unchecked = read_checked(
                codec,
                z_ids,
                span_ids,
                max_span=code.max_span,
                beam=args.beam,
                expand=args.expand,
                fallback_len=max(1, round(len(ids) / len(z_ids))),
            )
            checked[k] += toks
            n_z += len(z_ids)
            n_unchecked += unchecked
    seconds = time.time() - t0
    from zcompress_integrations.core.backbone import decode_batch

    with codec.reading():
        for k, _ids, z_ids in jobs:
            prefix, positions = codec.segment_prefix(z_ids)
            (toks,) = decode_batch(
                codec.lm,
                [prefix],
                codec.config.segment_len + codec.config.max_decode_extra,
                vocab=codec.backbone.text_vocab_size,
                eos={codec.end_token},
                positions=[torch.tensor(positions)],
            )
            free[k] += toks
    decode = codec.backbone.tokenizer.decode
    hyp_checked = [decode(p, skip_special_tokens=True) for p in checked]
    hyp_free = [decode(p, skip_special_tokens=True) for p in free]
    result = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "paragraphs": len(texts),
        "segments": len(jobs),
        "ratio": args.ratio,
        "beam": args.beam,
        "expand": args.expand,
        "z_tokens": n_z,
        "spans_matched": round(1 - n_unchecked / n_z, 4),
        "bleu4_checked": round(float(bleu(hyp_checked, texts)), 2),
        "bleu4_free_running": round(float(bleu(hyp_free, texts)), 2),
        "checked_seconds": round(seconds, 1),
        "samples": [
            {"ref": t[:300], "checked": c[:300], "free": f[:300]}
            for t, c, f in zip(texts, hyp_checked, hyp_free, strict=True)
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))


if __name__ == "__main__":
    main()
