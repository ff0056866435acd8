"""How much of the answer the model gets from its context: gold-answer cross-entropy on HotpotQA dev questions
given the 10 context paragraphs as full text, as Z-tokens at 2x and 4x, and with no context.

    python benchmarks/answer_nll.py --limit 30 --label shipped
    python benchmarks/answer_nll.py --limit 30 --adapters runs/x/adapters --label x

Teacher-forced, so it is far less noisy than F1 of greedy answers from a 135M model (the eval suite's QA), and
it reads the prompt exactly as ``ZCompressor.generate`` does (``core/training/from_z.answer_loss``: Z read by the
``decompress`` adapter, the rest and the answer by the base model). Each run adds a row keyed by ``--label`` to
``--out``.json/.md. The questions are evaluation data: nothing is trained, tuned or chosen on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(adapters: str, limit: int, seed: int) -> dict:
    import torch

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.core.training.from_z import AnswerExample, answer_loss
    from zcompress_integrations.eval.datasets import load_hotpotqa

    zc = ZCompressor.from_pretrained(adapters=adapters, device="cpu")
    codec = zc.latent_codec
    questions = load_hotpotqa(limit=limit, seed=seed, min_paragraphs=10)
    sums: dict[str, float] = {"text": 0.0, "z_2x": 0.0, "z_4x": 0.0, "none": 0.0}
    fed: dict[str, int] = dict.fromkeys(sums, 0)
    t0 = time.time()
    with torch.no_grad():
        for q in questions:
            example = AnswerExample(q.question, tuple(q.context), q.answer)
            texts = [text for _, text in q.context]
            contexts = {
                "text": texts,
                "z_2x": codec.compress_batch(texts, ratio=2.0),
                "z_4x": codec.compress_batch(texts, ratio=4.0),
            }
            for name, context in contexts.items():
                sums[name] += float(answer_loss(zc, context, example))
                fed[name] += sum(
                    c.z_tokens if hasattr(c, "z_tokens") else zc.count_tokens(c) for c in context
                )
            sums["none"] += float(answer_loss(zc, [], AnswerExample(q.question, (), q.answer)))
    n = len(questions)
    training = codec.config.training or {}
    return {
        "adapters": adapters,
        "step": training.get("steps"),
        "answer_from_z": training.get("answer_from_z"),
        "questions": n,
        "answer_ce": {k: round(v / n, 4) for k, v in sums.items()},
        "context_tokens": {k: round(v / n, 1) for k, v in fed.items()},
        "seconds": round(time.time() - t0, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", default="default")
    parser.add_argument("--label", required=True)
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "answer_nll"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    rows = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    rows[args.label] = measure(args.adapters, args.limit, args.seed)
    rows[args.label]["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    print(json.dumps(rows[args.label]), flush=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Gold-answer cross-entropy on HotpotQA dev (10 paragraphs of context)",
        "",
        "Nats per answer token (teacher-forced, answer + end token), read as `ZCompressor.generate` reads the",
        "prompt. Lower is better; `none` is the question alone. Context tokens: what the prompt carries for the",
        "10 paragraphs. Command: `python benchmarks/answer_nll.py --limit N --adapters DIR --label L`.",
        "",
        "| label | adapters (step) | questions | full text | Z 2x | Z 4x | no context | context tokens text / 2x / 4x | s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for label, r in rows.items():
        ce, tok = r["answer_ce"], r["context_tokens"]
        lines.append(
            f"| {label} | {r['adapters']} ({r['step']}) | {r['questions']} | {ce['text']:.3f} | {ce['z_2x']:.3f} | "
            f"{ce['z_4x']:.3f} | {ce['none']:.3f} | {tok['text']:.0f} / {tok['z_2x']:.0f} / {tok['z_4x']:.0f} | "
            f"{r['seconds']:.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
