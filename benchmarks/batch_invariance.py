"""Which model computations give a row the same bits whatever else is in its batch (what the scheduler may merge).

    python benchmarks/batch_invariance.py --texts 16 --out benchmarks/results/batch_invariance

On the default model (SmolLM2-135M, fp32, the shipped adapters) and the current torch thread count (``--threads``),
each probe compares a row computed alone with the same row computed beside others, bit for bit:

1. ``linear``: one of the model's MLP weights (``up_proj`` of layer 0) applied to M rows, for M = 1..64 and more;
   which M give rows that differ from the same rows among 512.
2. ``forward``: the parallel forward the latent codec's NLL uses, B equal-length segments of L tokens (no padding),
   against each segment alone.
3. ``decode step``: KV-cached greedy steps after equal-length prompts (no padding), B rows against one.
4. ``padded prompt``: a short prompt left-padded beside a longer one, against the short one alone.
5. end to end: ``compress_batch`` of ``--texts`` paragraphs (latent, 2x) against one call per paragraph; and
   ``generate_batch`` (left-padded batches of 8) against ``generate`` one at a time (``--new-tokens`` greedy).

Writes ``<out>.json`` and ``<out>.md``. Bits are what is compared: the machine's load does not change them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTION = "What is this document about? Answer in one sentence."


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _linear(model: Any) -> dict[str, Any]:
    import torch

    weight = model.model.layers[0].mlp.up_proj.weight.detach()
    x = torch.randn(512, weight.shape[1], generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.linear(x, weight)
    sizes = [*range(1, 65), 96, 128, 256]
    differ = [m for m in sizes if not torch.equal(torch.nn.functional.linear(x[:m], weight), ref[:m])]
    return {"rows_tried": sizes, "rows_that_differ": differ}


def _forward(model: Any, ids: list[int]) -> list[dict[str, Any]]:
    import torch

    out = []
    for length in (2, 8, 16, 48):
        segs = [[0, *ids[i : i + length]] for i in range(0, 16 * length, length)][:16]
        alone = [model(input_ids=torch.tensor([s])).logits[0] for s in segs]
        for batch in (2, 4, 16):
            both = model(input_ids=torch.tensor(segs[:batch])).logits
            same = all(torch.equal(both[r], alone[r]) for r in range(batch))
            diff = max(float((both[r] - alone[r]).abs().max()) for r in range(batch))
            out.append(
                {"segment tokens": length, "batch": batch, "bit-identical": same, "max abs diff": diff}
            )
    return out


def _decode_steps(model: Any, ids: list[int], steps: int = 6) -> list[dict[str, Any]]:
    import torch
    from transformers import DynamicCache

    from zcompress_integrations.core.backbone import cache_kwargs

    prompts = [ids[i : i + 16] for i in range(0, 16 * 8, 16)]

    def run(rows: list[list[int]]) -> list[Any]:
        cache = DynamicCache(config=model.config)
        x = torch.tensor(rows)
        mask = torch.ones_like(x)
        out = model(input_ids=x, attention_mask=mask, use_cache=True, **cache_kwargs(model, cache))
        logits = [out.logits[:, -1]]
        for s in range(steps):
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
            pos = torch.full((len(rows), 1), x.shape[1] + s)
            nxt = logits[-1].argmax(-1)[:, None]
            out = model(
                input_ids=nxt,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                **cache_kwargs(model, cache),
            )
            logits.append(out.logits[:, -1])
        return logits

    alone = [run([p]) for p in prompts]
    rows = []
    for batch in (2, 3, 4, 8):
        got = run(prompts[:batch])
        pairs = [(got[t][b], alone[b][t][0]) for t in range(steps + 1) for b in range(batch)]
        rows.append(
            {
                "batch": batch,
                "bit-identical": all(torch.equal(a, b) for a, b in pairs),
                "max abs diff": max(float((a - b).abs().max()) for a, b in pairs),
            }
        )
    return rows


def _padded(model: Any, ids: list[int]) -> dict[str, Any]:
    import torch

    short, long_ = ids[:20], ids[20:68]
    alone = model(input_ids=torch.tensor([short])).logits[0, -1]
    x = torch.zeros(2, len(long_), dtype=torch.long)
    mask = torch.zeros_like(x)
    x[0, -len(short) :], mask[0, -len(short) :] = torch.tensor(short), 1
    x[1], mask[1] = torch.tensor(long_), 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = model(input_ids=x, attention_mask=mask, position_ids=pos).logits[0, -1]
    return {"bit-identical": torch.equal(padded, alone), "max abs diff": float((padded - alone).abs().max())}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--texts", type=int, default=16, help="paragraphs for the end-to-end checks (default 16)"
    )
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per answer (default 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", default="benchmarks/results/batch_invariance")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from zcompress_integrations import ZCompressor
    from zcompress_integrations.eval import report
    from zcompress_integrations.eval.datasets import load_hotpot_wiki_paragraphs

    texts = [p.text for p in load_hotpot_wiki_paragraphs()][: args.texts]
    zc = ZCompressor.from_pretrained()
    model = zc.backbone.model
    ids = zc.backbone.tokenizer(" ".join(texts))["input_ids"]
    with torch.inference_mode():
        linear = _linear(model)
        print("linear:", linear["rows_that_differ"], flush=True)
        forward = _forward(model, ids)
        print(
            "forward:", [(r["segment tokens"], r["batch"], r["bit-identical"]) for r in forward], flush=True
        )
        steps = _decode_steps(model, ids)
        print("decode steps:", [(r["batch"], r["bit-identical"]) for r in steps], flush=True)
        padded = _padded(model, ids)
        print("padded prompt:", padded, flush=True)

    one_by_one = [zc.compress_batch([t], mode="latent")[0] for t in texts]
    zc.latent_codec._nll_memo.clear()  # the batch must measure its own NLLs
    together = zc.compress_batch(texts, mode="latent")
    codes_same = sum(
        a == b and a.to_bytes() == b.to_bytes() for a, b in zip(one_by_one, together, strict=True)
    )
    print(f"latent compress_batch vs one call per text: {codes_same}/{len(texts)} identical", flush=True)
    contexts = [[c] for c in one_by_one]
    from zcompress_integrations.core.generation import generate

    alone = [generate(zc, QUESTION, context=c, max_new_tokens=args.new_tokens) for c in contexts]
    batched = zc.generate_batch([QUESTION] * len(texts), contexts=contexts, max_new_tokens=args.new_tokens)
    answers_same = sum(a.text == b.text for a, b in zip(alone, batched, strict=True))
    print(f"generate_batch vs generate: {answers_same}/{len(texts)} identical answers", flush=True)

    machine = {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "model": zc.model_name,
        "device": str(zc.backbone.device),
    }
    end_to_end = {
        "texts": len(texts),
        "latent codes identical": codes_same,
        "new_tokens": args.new_tokens,
        "answers identical": answers_same,
        "answers that differ": [
            {"index": i, "generate": a.text, "generate_batch": b.text}
            for i, (a, b) in enumerate(zip(alone, batched, strict=True))
            if a.text != b.text
        ],
    }
    command = "python benchmarks/batch_invariance.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    figures = {
        "command": command,
        "machine": machine,
        "linear": linear,
        "forward": forward,
        "decode_steps": steps,
        "padded_prompt": padded,
        "end_to_end": end_to_end,
    }
    report.write_json(figures, f"{out}.json")
    md = f"""# Batch invariance of the default model's computations

Command: `{command}`

Machine: {machine["nproc"]} CPUs ({machine["cpu"]}), torch {machine["torch"]} ({machine["torch_threads"]} threads),
device {machine["device"]}, model {machine["model"]} (fp32). Each probe compares a row computed alone with the same
row beside others, bit for bit (what docs/concurrency.md builds on).

1. `linear` (layer 0 `up_proj`, M rows against the same rows among 512): rows differ for M in
   {linear["rows_that_differ"]} (tried 1-64, 96, 128, 256).

2. Parallel forward of B equal-length segments (the latent codec's NLL), against each segment alone:

{report.markdown_table(forward, float_format="{:.3g}")}

3. KV-cached greedy decode steps after equal-length prompts (no padding), B rows against one:

{report.markdown_table(steps, float_format="{:.3g}")}

4. A left-padded prompt against the same prompt alone: bit-identical {padded["bit-identical"]}, max abs diff
   {padded["max abs diff"]:.3g}.

5. End to end on {len(texts)} HotpotQA paragraphs: latent `compress_batch` (2x) against one call per paragraph:
   {codes_same}/{len(texts)} codes identical. `generate_batch` (left-padded batches of 8) against `generate`,
   {args.new_tokens} greedy tokens from each paragraph's latent code: {answers_same}/{len(texts)} answers identical.
"""
    Path(f"{out}.md").write_text(md, encoding="utf-8")
    print(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
