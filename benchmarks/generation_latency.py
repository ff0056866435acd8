"""Latency and memory of answering from Z-tokens vs from the full text, for contexts of 512 to 4k tokens.

    python benchmarks/generation_latency.py --lengths 512,1024,2048,4096 --ratios 4 --out benchmarks/results/generation_latency

Each configuration runs in a fresh process (so its peak memory is its own): the default backbone with the shipped
latent adapters, greedy, ``--new-tokens`` at most. The context is the first N tokens of WikiText-2 test articles
(evaluation text, read only), the prompt one fixed instruction. Per length:

* ``full``: the whole text in the prompt;
* ``z precompressed``: the context compressed to latent Z at ingestion (not timed), then answered from Z;
* ``z on the fly``: compression timed as part of the request.

Reported: prompt tokens, time to first token, end-to-end seconds, completion tokens, and the peak resident memory
of the request above the loaded model (VmHWM after resetting it through ``/proc/self/clear_refs``; Linux only).
Quality is not measured here (see ``zcompress eval``); the shipped adapters are weak, so answers from Z are not
useful yet, but their cost is what a good codec would cost too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "Write one sentence about the topic of these documents."


def _rss_kb(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def worker(length: int, mode: str, ratio: float, new_tokens: int, threads: int) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(threads)
    from zcompress_integrations import ZCompressor
    from zcompress_integrations.eval.baselines import truncate_to_tokens
    from zcompress_integrations.eval.datasets import load_wikitext_articles

    zc = ZCompressor.from_pretrained()
    source = "\n".join(a.text_detok for a in load_wikitext_articles(None, 0)[:12])
    text = truncate_to_tokens(source, length, zc.backbone.tokenizer)
    # warm up both paths on a short text (lazy loads, first-call allocations)
    zc.generate(PROMPT, context=[zc.compress(text[:400], mode="latent", ratio=ratio)], max_new_tokens=2)
    zc.generate(PROMPT, context=[text[:400]], max_new_tokens=2)
    row: dict = {"length": length, "mode": mode, "ratio": ratio if mode != "full" else None}
    context: object = text
    if mode == "z precompressed":
        t = time.perf_counter()
        context = zc.compress(text, mode="latent", ratio=ratio)
        row["compress_s_at_ingestion"] = round(time.perf_counter() - t, 2)
    base = _rss_kb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    if mode == "z on the fly":
        context = zc.compress(text, mode="latent", ratio=ratio)
        row["compress_s"] = round(time.perf_counter() - t0, 2)
    stream = zc.generate(PROMPT, context=[context], max_new_tokens=new_tokens, stream=True)
    first = None
    for _ in stream:
        first = first or time.perf_counter()
    end = time.perf_counter()
    row.update(
        {
            "text_tokens": zc.count_tokens(text),
            "prompt_tokens": stream.prompt_tokens,
            "uncompressed_prompt_tokens": stream.uncompressed_prompt_tokens,
            "completion_tokens": stream.completion_tokens,
            "first_token_s": round((first or end) - t0, 2),
            "total_s": round(end - t0, 2),
            "peak_extra_mb": round((_rss_kb("VmHWM") - base) / 1024, 1),
            "answer": stream.text[:160],
        }
    )
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", default="512,1024,2048,4096")
    parser.add_argument("--ratios", default="4")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/generation_latency")
    parser.add_argument(
        "--render", metavar="JSON", help="only rewrite the Markdown table from a results JSON"
    )
    parser.add_argument("--worker", nargs=3, metavar=("LENGTH", "MODE", "RATIO"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        render(saved["meta"], saved["rows"], Path(args.render).with_suffix(""))
        return
    if args.worker:
        length, mode, ratio = args.worker
        print(json.dumps(worker(int(length), mode, float(ratio), args.new_tokens, args.threads)))
        return
    t_start = time.time()
    rows = []
    for length in [int(v) for v in args.lengths.split(",")]:
        plan = [("full", 0.0)] + [
            (m, float(r)) for r in args.ratios.split(",") for m in ("z precompressed", "z on the fly")
        ]
        for mode, ratio in plan:
            cmd = [
                sys.executable,
                __file__,
                "--new-tokens",
                str(args.new_tokens),
                "--threads",
                str(args.threads),
            ]
            done = subprocess.run(
                [*cmd, "--worker", str(length), mode, str(ratio)], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise SystemExit(f"worker {length} {mode} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    import torch

    meta = {
        "command": "python "
        + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{args.threads} threads, load average at end {os.getloadavg()[0]:.2f}",
        "seconds": round(time.time() - t_start),
        "prompt": PROMPT,
        "new_tokens": args.new_tokens,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    render(meta, rows, out)


def render(meta: dict, rows: list[dict], out: Path) -> None:
    """Write the Markdown table (peak memory below 1 MB, including the small negative noise of resetting the
    high-water mark, shows as "< 1")."""
    lines = [
        "# Answering from Z vs from full text: latency and memory (CPU)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['seconds']} s in all. Greedy, at most {meta['new_tokens']} new tokens, "
        "each configuration in a fresh process.",
        "",
        "| context tokens | mode | prompt tokens | compress s | first token s | end-to-end s | completion tokens "
        "| peak extra MB |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        mode = r["mode"] + (f" {r['ratio']:g}x" if r["ratio"] else "")
        comp = r.get("compress_s", r.get("compress_s_at_ingestion"))
        comp_cell = (
            ""
            if comp is None
            else (f"{comp} (ingestion, not in e2e)" if "compress_s_at_ingestion" in r else f"{comp}")
        )
        lines.append(
            f"| {r['text_tokens']} | {mode} | {r['prompt_tokens']} | {comp_cell} | {r['first_token_s']} | "
            f"{r['total_s']} | {r['completion_tokens']} | {_mb(r['peak_extra_mb'])} |"
        )
    (out.parent / f"{out.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _mb(value: float) -> str:
    return "< 1" if value < 1 else f"{value:.0f}"


if __name__ == "__main__":
    main()
