"""Concurrent clients on one ZCompressor: latent compression and generation throughput against serial calls.

    python benchmarks/concurrency.py --texts 64 --clients 1 8 32 --out benchmarks/results/concurrency

Smoke test (a few minutes on a loaded 2-core CPU):

    python benchmarks/concurrency.py --texts 8 --clients 1 8 --new-tokens 8 --out /tmp/concurrency

On the default model with the shipped adapters and ``--texts`` Wikipedia paragraphs (HotpotQA lead paragraphs in
the loader's order; the package's sample documents, cycled, when the evaluation data is absent), two workloads:

* ``latent compress``: ``zc.compress(text, mode="latent", ratio=--ratio)`` for every text;
* ``generate``: ``zc.generate(QUESTION, context=[code], max_new_tokens=--new-tokens)`` for every text, from its
  latent code (greedy).

Each workload runs serially first (the same calls one after another from one thread: the baseline, and the
reference results), then with C concurrent clients for each C in ``--clients``, as threads (``compress`` /
``generate``) and as asyncio tasks on one event loop (``acompress`` / ``agenerate``); client k makes calls k, k+C,
... one after another. Throughput is calls and text (or generated) tokens per second; ``x serial`` divides by the
serial run's. Every result is asserted equal to its serial counterpart (latent codes field for field and byte for
byte, generated text and token counts): a run that finishes has shown that concurrency changed no result. The
per-segment NLL memo is cleared before every run, so no run reuses another's forward passes.

``--batch-generation`` adds a second compressor with ``SchedulerConfig(batch_generation=True)`` (greedy generate
calls merged into ``generate_batch``); its rows count how many answers equal the serial ones instead of asserting it
(docs/concurrency.md says why they may not).

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
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


def _texts(n: int) -> tuple[list[str], str]:
    from zcompress_integrations.eval.datasets import DataNotFoundError, load_hotpot_wiki_paragraphs

    try:
        return [p.text for p in load_hotpot_wiki_paragraphs()][:n], "HotpotQA Wikipedia lead paragraphs"
    except DataNotFoundError:
        from zcompress_integrations.samples import load_documents

        docs = [d.text for d in load_documents()]
        return list(itertools.islice(itertools.cycle(docs), n)), "the package's sample documents (cycled)"


def _in_threads(call: Callable[[int], Any], n: int, clients: int) -> tuple[list[Any], float]:
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            for i in range(k, n, clients):
                results[i] = call(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(min(clients, n))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return results, seconds


def _in_asyncio(call: Callable[[int], Any], n: int, clients: int) -> tuple[list[Any], float]:
    results: list[Any] = [None] * n

    async def client(k: int) -> None:
        for i in range(k, n, clients):
            results[i] = await call(i)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(min(clients, n))))
        return time.perf_counter() - start

    return results, asyncio.run(main())


def _same(got: Any, want: Any) -> bool:
    if hasattr(want, "to_bytes"):
        return got == want and got.to_bytes() == want.to_bytes()
    return got == want


class _Runs:
    """The rows of one benchmark run: every measurement of every workload, in order."""

    def __init__(self, n: int, clients: list[int]) -> None:
        self.n, self.clients = n, clients
        self.rows: list[dict[str, Any]] = []

    def measure(
        self, zc: Any, workload: str, mode: str, clients: int | None, call: Any, want: Any
    ) -> list[Any]:
        """One run of ``call(i)`` for every i (``clients=None``: serially); ``want``: the serial results."""
        zc.latent_codec._nll_memo.clear()  # no run may reuse another's NLL forwards
        before = zc.scheduler.stats
        if clients is None:
            got, seconds = _in_threads(call, self.n, 1)
        elif mode.startswith("threads"):
            got, seconds = _in_threads(call, self.n, clients)
        else:
            got, seconds = _in_asyncio(call, self.n, clients)
        serial = next((r for r in self.rows if r["workload"] == workload and r["clients"] == "serial"), None)
        tokens = sum(g.text_tokens if hasattr(g, "text_tokens") else g.completion_tokens for g in got)
        row = {
            "workload": workload,
            "clients": "serial" if clients is None else clients,
            "mode": mode,
            "calls": self.n,
            "seconds": seconds,
            "calls/s": self.n / seconds,
            "tokens/s": tokens / seconds,
            "x serial": 1.0 if serial is None else serial["seconds"] / seconds,
            "identical": self.n if want is None else sum(map(_same, got, want)),
            "batches": zc.scheduler.stats["batches"] - before["batches"],
            "largest batch": zc.scheduler.stats["largest"],
        }
        self.rows.append(row)
        print(
            f"{workload:16} {row['clients']!s:>6} {mode:28} {seconds:7.1f}s  x{row['x serial']:.2f}  "
            f"identical {row['identical']}/{self.n}  batches {row['batches']}",
            flush=True,
        )
        return got

    def one_batch(self, zc: Any, workload: str, run: Callable[[], list[Any]], want: Any) -> None:
        """Every call in one direct ``*_batch`` call (no scheduler, no clients): the most batching can give here."""
        zc.latent_codec._nll_memo.clear()
        start = time.perf_counter()
        got = run()
        seconds = time.perf_counter() - start
        serial = next(r for r in self.rows if r["workload"] == workload and r["clients"] == "serial")
        tokens = sum(g.text_tokens if hasattr(g, "text_tokens") else g.completion_tokens for g in got)
        row = {
            "workload": workload,
            "clients": "one batch",
            "mode": "one *_batch call (ceiling)",
            "calls": self.n,
            "seconds": seconds,
            "calls/s": self.n / seconds,
            "tokens/s": tokens / seconds,
            "x serial": serial["seconds"] / seconds,
            "identical": sum(map(_same, got, want)),
            "batches": 1,
            "largest batch": self.n,
        }
        self.rows.append(row)
        print(
            f"{workload:16} one batch {seconds:7.1f}s  x{row['x serial']:.2f}  identical {row['identical']}/{self.n}"
        )

    def concurrent(
        self, zc: Any, workload: str, sync: Any, coro: Any, want: Any, *, strict: bool, tag: str = ""
    ) -> None:
        """Every client count, as threads and as asyncio tasks; ``strict``: assert every result is the serial one."""
        for clients in self.clients:
            for mode, call in (("threads", sync), ("asyncio", coro)):
                self.measure(zc, workload, mode + tag, clients, call, want)
                differ = self.n - self.rows[-1]["identical"]
                if strict and differ:
                    raise AssertionError(
                        f"{workload}, {clients} {mode} clients: {differ} of {self.n} results differ from their "
                        "serial counterparts"
                    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=64, help="calls per run, one per text (default 64)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="default: 1 8 32")
    parser.add_argument("--ratio", type=float, default=2.0, help="latent ratio (default 2)")
    parser.add_argument("--new-tokens", type=int, default=32, help="max_new_tokens per answer (default 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--batch-generation", action="store_true", help="also run generation with batch_generation=True"
    )
    parser.add_argument("--out", default="benchmarks/results/concurrency")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from zcompress_integrations import ZCompressor
    from zcompress_integrations.core.scheduler import SchedulerConfig

    texts, source = _texts(args.texts)
    n, ratio, new = len(texts), args.ratio, args.new_tokens
    start = time.perf_counter()
    zc = ZCompressor.from_pretrained()
    zc.generate("Hello?", context=[zc.compress(texts[0][:200], mode="latent")], max_new_tokens=2)  # loads all
    print(
        f"loaded {zc.model_name} in {time.perf_counter() - start:.1f}s; {n} texts from {source}", flush=True
    )
    runs = _Runs(n, args.clients)

    # 1. Latent compression: serially (the baseline and the reference codes), then concurrently.
    compress = lambda i: zc.compress(texts[i], mode="latent", ratio=ratio)  # noqa: E731
    codes = runs.measure(zc, "latent compress", "one thread", None, compress, None)
    acompress = lambda i: zc.acompress(texts[i], mode="latent", ratio=ratio)  # noqa: E731
    runs.concurrent(zc, "latent compress", compress, acompress, codes, strict=True)
    runs.one_batch(zc, "latent compress", lambda: zc.compress_batch(texts, mode="latent", ratio=ratio), codes)

    # 2. Generation from each text's latent code, the same way.
    def ask(c: Any) -> tuple[Any, Any]:
        return (
            lambda i: c.generate(QUESTION, context=[codes[i]], max_new_tokens=new),
            lambda i: c.agenerate(QUESTION, context=[codes[i]], max_new_tokens=new),
        )

    answers = runs.measure(zc, "generate", "one thread", None, ask(zc)[0], None)
    runs.concurrent(zc, "generate", *ask(zc), answers, strict=True)
    contexts = [[c] for c in codes]
    runs.one_batch(
        zc,
        "generate",
        lambda: zc.generate_batch([QUESTION] * n, contexts=contexts, max_new_tokens=new, batch_size=32),
        answers,
    )
    if args.batch_generation:
        zb = ZCompressor.from_pretrained(scheduler=SchedulerConfig(batch_generation=True))
        zb.generate("Hello?", context=[codes[0]], max_new_tokens=2)
        runs.concurrent(zb, "generate", *ask(zb), answers, strict=False, tag=", batch_generation")
    _write(args, argv, zc, runs.rows, {"texts": n, "source": source, "ratio": ratio, "new_tokens": new})


def _write(
    args: Any, argv: Sequence[str] | None, zc: Any, rows: list[dict[str, Any]], settings: dict[str, Any]
) -> None:
    import torch

    from zcompress_integrations.eval import report

    machine = {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "model": zc.model_name,
        "device": str(zc.backbone.device),
        "batch_limits": vars(zc.scheduler._limits_now()),
    }
    command = "python benchmarks/concurrency.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    settings = {**settings, "question": QUESTION}
    report.write_json(
        {"command": command, "machine": machine, "settings": settings, "rows": rows}, f"{out}.json"
    )
    md = f"""# Concurrent clients on one ZCompressor

Command: `{command}`

Machine: {machine["nproc"]} CPUs ({machine["cpu"]}), load average {machine["load_average"]} at the end, torch
{machine["torch"]} ({machine["torch_threads"]} threads), device {machine["device"]}, batch limits
{machine["batch_limits"]}. Model {machine["model"]} with the shipped adapters; {settings["texts"]} texts
({settings["source"]}); latent ratio {settings["ratio"]:g}; answers greedy, at most {settings["new_tokens"]} tokens, to
"{QUESTION}" from each text's latent code.

`x serial`: the serial run's time over this run's (same calls). `one batch` rows make all the calls in one direct
`compress_batch` / `generate_batch` call: the most any batching of these calls can give on this machine. `identical`: results equal to their serial
counterparts (asserted for every row except `batch_generation` ones). `batches`: batches the scheduler ran;
`largest batch`: most requests in one batch since the compressor was made. Clients beyond the number of calls
idle. What is merged and what runs one request at a time: docs/concurrency.md.

{report.markdown_table(rows)}
"""
    Path(f"{out}.md").write_text(md, encoding="utf-8")
    print(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
