"""Soak test (issue 26, item 6): 1,000 calls mixing compress, decompress and generate (both codecs, streams, batches,
the LangChain decode middleware and the LlamaIndex memory block) from many threads and asyncio tasks at once, on one
shared tiny-model compressor: its batching scheduler merges the concurrent calls it may (``core/scheduler.py``).
The asyncio tasks use the awaitable twins (``acompress``, ``adecompress``, ``agenerate``, ``arecover_messages``)
where there is one, else ``asyncio.to_thread``.

* **Same results as serial**: every call's result equals what the same request gave when run alone, before.
* **No deadlock**: every call finishes within ``CALL_TIMEOUT`` seconds, the whole run within ``RUN_TIMEOUT``.
* **Bounded memory**: the caches that see new keys on every call stay within their bounds (the latent codec's NLL
  memo, with its bound lowered for the test so it must wrap many times; the middleware's decode cache; the memory
  block's decode cache; the integrations' compressor cache), and after a warm-up of ``WARM`` calls the process's
  resident memory grows by less than ``RSS_TOLERANCE_MIB`` and the GC-tracked Python objects by less than
  ``OBJECT_TOLERANCE`` over the remaining calls. The figures are printed with ``-s`` (``docs/reliability.md``).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from zcompress_integrations import ZCode

CALLS = 1_000
WARM = 200  # calls before the memory baseline (thread arenas, lazy imports, tokenizer caches)
THREADS = 6  # worker threads; the asyncio tasks run beside them in one more thread (and its to_thread pool)
ASYNC_SHARE = 3  # every third call goes through an asyncio task
CALL_TIMEOUT = 60.0  # seconds one call may take, waiting for the compressor's lock included
RUN_TIMEOUT = 300.0
NLL_MEMO_BOUND = 16  # the latent codec's NLL memo bound during the test (default 20,000): it must wrap
MIDDLEWARE_CACHE = 8
RSS_TOLERANCE_MIB = 32.0
OBJECT_TOLERANCE = 5_000

SENTENCES = [  # short: the exact codec runs one model step per token
    "The quick brown fox.",
    "Few tokens.",
    "LangChain and LlamaIndex.",
    "Plain English prose.",
    "Caf\u00e9 \u202ertl\u202c e\u0301 \U0001f468\u200d\U0001f469\r\n",
]


def _text(i: int) -> str:
    """A distinct short text per request index: new segments for the NLL memo every time."""
    return f"[{i}] {SENTENCES[i % len(SENTENCES)]}"


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


Call = Callable[[], Any]
ACall = Callable[[], Awaitable[Any]]


async def _then(awaitable: Awaitable[Any], f: Callable[[Any], Any]) -> Any:
    return f(await awaitable)


def _requests(zc: Any, middleware: Any, block: Any, n: int) -> list[tuple[str, Call, ACall]]:
    """The request pool: ``(kind, call, acall)`` for ``n`` distinct requests, kinds in turn: the call as a thread
    makes it, and as an asyncio task does (the awaitable twin, ``acompress``/``adecompress``/``agenerate``/
    ``arecover_messages``, where there is one; else the call in a worker thread). Inputs are made here, serially."""
    from langchain_core.messages import HumanMessage

    from zcompress_integrations.langchain import ZCompressSummarizer

    summarizer = ZCompressSummarizer(compressor=zc)
    text_of, codes = (lambda r: r.text), (lambda cs: [c.to_string() for c in cs])  # noqa: E731

    def threaded(call: Call) -> tuple[Call, ACall]:
        return call, lambda: asyncio.to_thread(call)

    def decode(code: Any) -> tuple[Call, ACall]:
        return partial(zc.decompress, code), partial(zc.adecompress, code)

    def answer(prompt: str, **kw: Any) -> tuple[Call, ACall]:
        return lambda: zc.generate(prompt, **kw).text, lambda: _then(zc.agenerate(prompt, **kw), text_of)

    def compress(t: str, **kw: Any) -> tuple[Call, ACall]:
        return lambda: zc.compress(t, **kw).to_string(), lambda: _then(zc.acompress(t, **kw), ZCode.to_string)

    def batch(t: str) -> tuple[Call, ACall]:
        items = [t, t[::-1], b"\xff" + t.encode()]
        return lambda: codes(zc.compress_batch(items)), lambda: _then(zc.acompress_batch(items), codes)

    def expand(memory: str) -> Call:
        return lambda: [
            (x.type, x.text)
            for x in middleware.decode([HumanMessage(f"Earlier: {memory}"), HumanMessage("q")])
        ]

    def recovered(messages: list[Any]) -> list[tuple[str, str]]:
        return [(str(m.role), m.content) for m in messages]

    makers: dict[str, Callable[[str, int], tuple[Call, ACall]]] = {
        "compress exact": lambda t, i: compress(t),
        "compress latent": lambda t, i: compress(t, mode="latent", ratio=(2.0, 4.0)[i % 2]),
        "compress latent exact": lambda t, i: compress(t, mode="latent", exact=True),
        "compress_batch": lambda t, i: batch(t),
        "decompress exact": lambda t, i: decode(zc.compress(t).to_bytes()),
        "decompress latent": lambda t, i: decode(zc.compress(t, mode="latent").to_string()),
        "decompress latent exact": lambda t, i: decode(zc.compress(t, mode="latent", exact=True)),
        "generate": lambda t, i: answer("Who jumps?", context=[t], max_new_tokens=3),
        "generate latent context": lambda t, i: answer(
            "What is it about?", context=[zc.compress(t, mode="latent")], max_new_tokens=3
        ),
        "generate sampled": lambda t, i: answer(t, max_new_tokens=3, temperature=0.8),
        "generate stream": lambda t, i: threaded(
            lambda: "".join(zc.generate(t, max_new_tokens=3, stream=True))
        ),
        "generate_batch": lambda t, i: threaded(
            lambda: [r.text for r in zc.generate_batch([t, "Why?"], contexts=[[], [t]], max_new_tokens=3)]
        ),
        "middleware decode": lambda t, i: threaded(expand(summarizer([HumanMessage(t)]))),
        "memory block": lambda t, i: (
            lambda: recovered(block.recover_messages()),
            lambda: _then(block.arecover_messages(), recovered),
        ),
    }
    kinds = list(makers)
    return [(kinds[i % len(kinds)], *makers[kinds[i % len(kinds)]](_text(i), i)) for i in range(n)]


class _Driver:
    """Runs request indices from threads and asyncio tasks at once and checks each result against ``expected``."""

    def __init__(self, calls: list[tuple[str, Call, ACall]], expected: list[Any], gauges: Any) -> None:
        self.calls, self.expected, self.gauges = calls, expected, gauges
        self.mismatches: list[str] = []
        self.errors: list[BaseException] = []
        self.done: Counter[str] = Counter()
        self.peaks: Counter[str] = Counter()
        self.lock = threading.Lock()

    def check(self, index: int, result: Any) -> None:
        with self.lock:
            kind = self.calls[index][0]
            if result != self.expected[index]:
                self.mismatches.append(f"{kind} #{index}: {result!r:.80} != {self.expected[index]!r:.80}")
            self.done[kind] += 1
            for name, size in self.gauges().items():  # cache sizes, right after each call
                self.peaks[name] = max(self.peaks[name], size)

    def run_one(self, index: int) -> None:
        self.check(index, self.calls[index][1]())

    async def run_async(self, indices: list[int]) -> None:
        in_flight = asyncio.Semaphore(THREADS)  # each timeout then measures one call, not the queue before it

        async def one(index: int) -> None:
            async with in_flight:
                result = await asyncio.wait_for(self.calls[index][2](), CALL_TIMEOUT)
            self.check(index, result)

        await asyncio.gather(*(one(i) for i in indices))

    def phase(self, indices: list[int]) -> None:
        """Every ``ASYNC_SHARE``-th call as an asyncio task (one event loop in its own thread), the rest on a pool
        of ``THREADS`` threads, all at once."""
        sync = [i for k, i in enumerate(indices) if k % ASYNC_SHARE]
        tasks = [i for k, i in enumerate(indices) if not k % ASYNC_SHARE]
        loop_thread = threading.Thread(target=self._loop, args=(tasks,))
        loop_thread.start()
        with ThreadPoolExecutor(THREADS) as pool:
            for future in [pool.submit(self.run_one, i) for i in sync]:
                try:
                    future.result(timeout=CALL_TIMEOUT * 4)  # a few calls ahead at most, on one shared lock
                except BaseException as exc:  # a TimeoutError here is a deadlock
                    self.errors.append(exc)
        loop_thread.join(timeout=RUN_TIMEOUT)
        assert not loop_thread.is_alive(), "the asyncio tasks did not finish: deadlock?"

    def _loop(self, tasks: list[int]) -> None:
        try:
            asyncio.run(self.run_async(tasks))
        except BaseException as exc:  # reported by the test thread
            self.errors.append(exc)


def test_soak_threads_and_asyncio_match_serial_without_deadlock_or_growth(
    tiny_latent_compressor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_index.core.base.llms.types import ChatMessage

    from zcompress_integrations import _integration_common
    from zcompress_integrations.core import latent
    from zcompress_integrations.langchain import ZCompressDecodeMiddleware
    from zcompress_integrations.llama_index import ZCompressMemoryBlock

    zc = tiny_latent_compressor
    codec = zc.latent_codec
    monkeypatch.setattr(latent, "_NLL_MEMO_SIZE", NLL_MEMO_BOUND)
    codec._nll_memo.clear()
    middleware = ZCompressDecodeMiddleware(compressor=zc, cache_size=MIDDLEWARE_CACHE)
    block = ZCompressMemoryBlock(compressor=zc)
    for j in range(4):
        asyncio.run(block._aput([ChatMessage(role="user", content=_text(1000 + j))]))
    shared_before = len(_integration_common._CACHE)

    # ---- serial: each distinct request once, alone --------------------------------------------------------
    calls = _requests(zc, middleware, block, 140)  # 14 kinds x 10 distinct texts
    t0 = time.monotonic()
    expected = [call() for _, call, _ in calls]
    serial_s = time.monotonic() - t0

    # ---- concurrent: CALLS calls, every request many times, mixed; memory read between three phases ----------
    driver = _Driver(
        calls,
        expected,
        lambda: {
            "nll_memo": len(codec._nll_memo),
            "middleware": len(middleware._cache),
            "block": len(block._decoded),
            "shared": len(_integration_common._CACHE),
            "queue": zc.scheduler.pending,
        },
    )
    order = [(k * 7919 + 13) % len(calls) for k in range(CALLS)]
    marks: dict[str, float] = {}
    middle = (WARM + CALLS) // 2
    t0 = time.monotonic()
    for name, part in (("warm", order[:WARM]), ("middle", order[WARM:middle]), ("end", order[middle:])):
        driver.phase(part)
        gc.collect()
        marks[f"rss_{name}"], marks[f"objects_{name}"] = _rss_mib(), len(gc.get_objects())
    concurrent_s = time.monotonic() - t0

    growth = marks["rss_end"] - marks["rss_warm"]
    objects = marks["objects_end"] - marks["objects_warm"]
    peaks = driver.peaks
    print(
        f"\n[soak] {sum(driver.done.values())} calls ({len(calls)} distinct requests, {THREADS} threads + asyncio "
        f"tasks for every {ASYNC_SHARE}rd call) in {concurrent_s:.1f} s (serial pass over the distinct requests: "
        f"{serial_s:.1f} s); mismatches {len(driver.mismatches)}, errors {len(driver.errors)}; RSS after {WARM} "
        f"calls {marks['rss_warm']:.1f} MiB, after {middle}: {marks['rss_middle']:.1f} MiB, after {CALLS}: "
        f"{marks['rss_end']:.1f} MiB (growth {growth:+.1f} MiB, tolerance {RSS_TOLERANCE_MIB}); GC-tracked objects "
        f"{objects:+d} (tolerance {OBJECT_TOLERANCE}); largest cache sizes: NLL memo {peaks['nll_memo']} (bound "
        f"{NLL_MEMO_BOUND} + one call's segments), middleware {peaks['middleware']} (cache_size "
        f"{MIDDLEWARE_CACHE}), memory block {peaks['block']} (entries {len(block.entries)}), shared compressors "
        f"{peaks['shared']}, scheduler queue {peaks['queue']} (max_pending {zc.scheduler.config.max_pending}); "
        f"scheduler {zc.scheduler.stats}; per kind: {dict(sorted(driver.done.items()))}"
    )
    assert not driver.errors, driver.errors[:3]
    assert not driver.mismatches, driver.mismatches[:5]
    assert sum(driver.done.values()) == CALLS
    assert (
        peaks["nll_memo"] <= NLL_MEMO_BOUND + 8
    )  # + the segments of one call (compress_batch: 3 short texts)
    assert peaks["middleware"] <= MIDDLEWARE_CACHE + 1  # + the one code of the call that filled it
    assert peaks["block"] <= len(block.entries)
    assert peaks["shared"] == shared_before
    assert peaks["queue"] <= zc.scheduler.config.max_pending and zc.scheduler.pending == 0
    assert growth < RSS_TOLERANCE_MIB, marks
    assert objects < OBJECT_TOLERANCE, marks


class _ClearedByAnotherThread(dict):
    """A decode cache that another thread's ``ZCompressDecodeMiddleware.decode`` empties right after each write
    (it clears the shared cache when it is over ``cache_size``): the worst interleaving, made deterministic."""

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        self.clear()


def test_expand_codes_survives_its_cache_being_cleared_mid_call(tiny_compressor: Any) -> None:
    from langchain_core.messages import HumanMessage

    from zcompress_integrations.langchain import ZCompressSummarizer, expand_codes

    turns = [HumanMessage(_text(1)), HumanMessage(_text(2))]
    memory = ZCompressSummarizer(compressor=tiny_compressor)(turns)
    plain = tiny_compressor.compress(_text(3)).to_string()
    out = expand_codes(
        [HumanMessage(f"Earlier: {memory}"), HumanMessage(plain)],
        tiny_compressor,
        cache=_ClearedByAnotherThread(),
    )
    assert out == [
        *turns,
        HumanMessage(_text(3)),
    ]  # was: KeyError when the cache was emptied between write and read
