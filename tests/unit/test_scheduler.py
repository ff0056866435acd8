"""The batching scheduler on a tiny random Llama: concurrent calls from threads and asyncio share batches and give
exactly the serial results (exact codes bit for bit, latent ids, generated text), a bad input fails only its own
caller, the queue is bounded, and 32 threads mixing every call neither deadlock nor lose or cross a result.

Calls are made to share batches deterministically: a blocker call is parked in the worker (it waits for the
compressor's lock, held by a helper thread) while the calls under test queue up behind it, so the worker takes them
together once the lock is released. Every wait has a timeout: a deadlock fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zcompress_integrations import (
    ChecksumMismatchError,
    ConfigError,
    CorruptCodeError,
    SchedulerBusyError,
    UnsupportedTextError,
    ZCompressor,
)
from zcompress_integrations.core.scheduler import DEVICE_LIMITS, BatchLimits, SchedulerConfig

TIMEOUT = 120.0  # seconds any one wait may take before the test calls it a deadlock
BASE = "The quick brown fox jumps over the lazy dog. Compression turns long text into a few tokens. "
# equal prefixes give segments of equal length across texts (they share a forward); the tails differ, some short
TEXTS = [f"{BASE * (1 + i % 3)}Note {i}: item {i * 7} is {'long ' * (i % 5)}here." for i in range(8)]
QUESTIONS = [f"What is item {i}?" for i in range(8)]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fresh (untrained) token-group adapters: the latent paths run for real; quality is not the point."""
    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.latent import LatentCodec, LatentConfig

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    config = LatentConfig(segment_len=32, max_slots=32, lora_r=4)
    return LatentCodec.create(backbone, config).save_pretrained(tmp_path_factory.mktemp("sched") / "adapters")


def _compressor(tiny_model_dir: Path, adapters: Path, **config: Any) -> ZCompressor:
    zc = ZCompressor.from_pretrained(
        tiny_model_dir, adapters=adapters, window=64, scheduler=SchedulerConfig(**config)
    )
    zc.compress_batch(["warm up"], mode="latent")  # loads the model and the adapters
    return zc


@pytest.fixture(scope="module")
def serial(tiny_model_dir: Path, adapters: Path) -> ZCompressor:
    """The reference: no scheduler, every call made alone in the calling thread."""
    return _compressor(tiny_model_dir, adapters, enabled=False)


@pytest.fixture(scope="module")
def zc(tiny_model_dir: Path, adapters: Path) -> ZCompressor:
    return _compressor(tiny_model_dir, adapters)


@pytest.fixture(scope="module")
def codes(serial: ZCompressor) -> dict[str, list[Any]]:
    """Serial codes of TEXTS: exact, latent, and latent with a residual."""
    return {
        "exact": [serial.compress(t) for t in TEXTS],
        "latent": [serial.compress(t, mode="latent") for t in TEXTS],
        "residual": [serial.compress(t, mode="latent", exact=True) for t in TEXTS],
    }


# ---- helpers -------------------------------------------------------------------------------------------------
def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


@contextlib.contextmanager
def _blocked(zc: ZCompressor) -> Iterator[None]:
    """Park a blocker call in the worker (waiting for the compressor's lock, held by a helper thread) until the
    block ends; calls made inside the block queue up behind it and are then taken together."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with zc.lock:
            held.set()
            release.wait(TIMEOUT)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(TIMEOUT)
    start = zc.scheduler.stats["requests"]
    blocker = threading.Thread(target=zc.compress, args=("blocker",), daemon=True)
    blocker.start()
    _wait_for(lambda: zc.scheduler.stats["requests"] > start and zc.scheduler.pending == 0, "the blocker")
    try:
        yield
    finally:
        release.set()
        holder.join(TIMEOUT)
        blocker.join(TIMEOUT)
        assert not blocker.is_alive(), "the blocker call never returned"


def _gathered(zc: ZCompressor, calls: list[Callable[[], Any]]) -> list[Any]:
    """Run each call in its own thread, all queued before the worker takes any; each result or exception."""
    out: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            out[i] = calls[i]()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    with _blocked(zc):
        start = zc.scheduler.stats["requests"]
        for t in threads:
            t.start()
        _wait_for(lambda: zc.scheduler.stats["requests"] - start == len(calls), "every call to queue")
    for t in threads:
        t.join(TIMEOUT)
        assert not t.is_alive(), "a call never returned (deadlock)"
    return out


def _same(got: Any, want: Any) -> bool:
    """Equal results; ZCodes bit for bit (their serialised form holds every field, the lane layout included)."""
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, got, want))
    if hasattr(want, "to_bytes"):
        return got == want and got.to_bytes() == want.to_bytes()
    return got == want


# ---- results equal serial calls --------------------------------------------------------------------------------
def test_concurrent_threads_give_the_serial_results(zc, serial, codes) -> None:
    calls: list[tuple[Callable[[], Any], Any]] = []
    for i, text in enumerate(TEXTS):
        calls += [
            (lambda t=text: zc.compress(t, mode="latent"), codes["latent"][i]),
            (
                lambda t=text: zc.compress(t, mode="latent", ratio=4.0),
                serial.compress(text, mode="latent", ratio=4),
            ),
            (lambda c=codes["exact"][i]: zc.decompress(c), text),
            (lambda c=codes["residual"][i]: zc.decompress(c.to_string()), text),
            (lambda c=codes["latent"][i]: zc.decompress(c), serial.decompress(codes["latent"][i])),
        ]
    for i in range(
        3
    ):  # exact and residual codes run one call at a time: their lanes belong to their own call
        calls += [
            (lambda t=TEXTS[i]: zc.compress(t), codes["exact"][i]),
            (lambda t=TEXTS[i]: zc.compress(t, mode="latent", exact=True), codes["residual"][i]),
        ]
    for i, q in enumerate(QUESTIONS[:4]):
        context = [codes["latent"][i], TEXTS[i][:40]]
        want = serial.generate(q, context=context, max_new_tokens=5)
        calls.append((lambda q=q, c=context: zc.generate(q, context=c, max_new_tokens=5), want))
    before = zc.scheduler.stats
    results = _gathered(zc, [call for call, _ in calls])
    wrong = [i for i, (got, (_, want)) in enumerate(zip(results, calls, strict=True)) if not _same(got, want)]
    assert not wrong, f"{len(wrong)} results differ from serial calls, first: {results[wrong[0]]!r:.200}"
    stats = zc.scheduler.stats
    assert (
        stats["merged"] - before["merged"] >= 3
    )  # latent 2x, latent 4x and the decompressions shared batches
    assert stats["largest"] >= len(TEXTS)
    assert stats["batches"] - before["batches"] < len(calls)


def test_compress_batch_of_many_texts_equals_one_call_per_text(serial, codes) -> None:
    """What the merging of latent compressions rests on: a text's Z ids do not depend on the other texts."""
    assert serial.compress_batch(TEXTS, mode="latent") == codes["latent"]
    assert serial.compress_batch(TEXTS[::-1], mode="latent", batch_size=3) == codes["latent"][::-1]


@pytest.mark.parametrize("length", [1, 2, 5, 16, 31])
def test_a_segment_nll_does_not_depend_on_its_batch(serial, length: int) -> None:
    """Equal-length segments of several texts share one forward; a row's NLL must not change with the rows beside
    it. Short segments run alone for that (2-3 rows pick other matrix kernels than 4+ on a CPU)."""
    codec = serial.latent_codec
    ids = serial.backbone.tokenizer(BASE * 3)["input_ids"]
    segments = [ids[i : i + length] for i in range(0, 16 * length, length)][:16]
    codec._nll_memo.clear()
    alone = [codec.token_nll([seg])[0] for seg in segments]
    codec._nll_memo.clear()
    assert codec.token_nll(segments) == alone


def test_asyncio_gives_the_serial_results_without_blocking_the_loop(zc, serial, codes) -> None:
    wants = (
        codes["latent"]
        + [serial.compress_batch(TEXTS[:3])]
        + TEXTS[:4]
        + [TEXTS[4:]]
        + [serial.generate(q, context=[codes["latent"][0]], max_new_tokens=4) for q in QUESTIONS[:3]]
    )

    def calls() -> list[Any]:
        return (
            [zc.acompress(t, mode="latent") for t in TEXTS]
            + [zc.acompress_batch(TEXTS[:3])]  # exact: one request, the lanes of compress_batch(TEXTS[:3])
            + [zc.adecompress(c) for c in codes["exact"][:4]]
            + [zc.adecompress_batch(codes["residual"][4:])]
            + [zc.agenerate(q, context=[codes["latent"][0]], max_new_tokens=4) for q in QUESTIONS[:3]]
        )

    async def main() -> tuple[list[Any], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        clock = asyncio.create_task(ticker())
        with _blocked(zc):
            start = zc.scheduler.stats["requests"]
            tasks = [asyncio.ensure_future(c) for c in calls()]
            while zc.scheduler.stats["requests"] - start < len(tasks):
                await asyncio.sleep(0.002)
        results = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
        clock.cancel()
        return results, ticks

    results, ticks = asyncio.run(main())
    assert all(_same(got, want) for got, want in zip(results, wants, strict=True))
    assert ticks > 0  # the loop ran while the model worked


def test_learned_code_compressions_share_a_batch_and_match_serial(tiny_model_dir, tmp_path) -> None:
    """The learned code writes Z for equal-length segments in one forward (short ones alone), so concurrent
    compressions share a batch and still get the ids of their serial calls."""
    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.latent import LatentCodec, LatentConfig

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    config = LatentConfig(code="learned", segment_len=32, max_slots=32, lora_r=2, codebook_size=16)
    adapters = LatentCodec.create(backbone, config).save_pretrained(tmp_path / "learned")
    zc = _compressor(tiny_model_dir, adapters)
    calls = [lambda t=t: zc.compress(t, mode="latent") for t in TEXTS[:4]]
    calls_made: list[int] = []
    real = zc.compress_batch
    zc.compress_batch = lambda texts, **kw: calls_made.append(len(texts)) or real(texts, **kw)  # type: ignore[method-assign]
    got = _gathered(zc, calls)
    assert max(calls_made) > 1  # texts taken together into one call
    assert got == [real([t], mode="latent")[0] for t in TEXTS[:4]]


# ---- errors stay with their caller -----------------------------------------------------------------------------
def test_a_bad_input_fails_only_its_caller(zc, serial, codes) -> None:
    bad_code = dataclasses.replace(
        codes["exact"][1], z_ids=codes["exact"][1].z_ids[::-1]
    )  # checks pass, bits don't
    other_model = dataclasses.replace(codes["exact"][2], fingerprint=b"\0\0\0\0")
    calls = [lambda t=t: zc.compress(t, mode="latent") for t in TEXTS[:4]]
    calls += [lambda: zc.compress("bad \ud800 text", mode="latent")]  # UTF-8 cannot encode a lone surrogate
    calls += [lambda c=c: zc.decompress(c) for c in codes["exact"][3:6]]
    calls += [lambda: zc.decompress(bad_code), lambda: zc.decompress(other_model)]
    before = zc.scheduler.stats
    results = _gathered(zc, calls)
    assert results[:4] == codes["latent"][:4]
    assert isinstance(results[4], UnsupportedTextError)  # caught by its own check, before the shared batch
    assert results[5:8] == TEXTS[3:6]
    assert isinstance(results[8], ChecksumMismatchError | CorruptCodeError)  # failed the batch: rerun alone
    assert "different backbone" in str(results[9])
    assert zc.scheduler.stats["fallbacks"] == before["fallbacks"] + 1
    assert zc.decompress(codes["exact"][0]) == TEXTS[0]  # the worker carries on


def test_call_errors_are_raised_before_queueing(zc) -> None:
    before = zc.scheduler.stats["requests"]
    with pytest.raises(ConfigError, match="mode"):
        zc.compress("x", mode="lossy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ratio"):
        zc.compress("x", ratio=2.0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        zc.generate("q", max_new_tokens=0)
    with pytest.raises(CorruptCodeError):
        zc.decompress("zc1:not-a-code")
    with pytest.raises(UnsupportedTextError):
        asyncio.run(zc.acompress(42))  # type: ignore[arg-type]
    assert zc.scheduler.stats["requests"] == before


# ---- the queue -------------------------------------------------------------------------------------------------
def test_the_queue_is_bounded(tiny_model_dir, adapters) -> None:
    zc = _compressor(tiny_model_dir, adapters, max_pending=2, queue_timeout_s=0.2)
    results: list[Any] = [None, None]

    def call(i: int) -> None:
        results[i] = zc.compress(TEXTS[i], mode="latent")

    with _blocked(zc):  # the blocker is in the worker; two more calls fill the queue
        waiting = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(2)]
        for t in waiting:
            t.start()
        _wait_for(lambda: zc.scheduler.pending == 2, "a full queue")
        with pytest.raises(SchedulerBusyError, match="max_pending"):
            zc.compress(TEXTS[2], mode="latent")
        with pytest.raises(SchedulerBusyError):
            asyncio.run(zc.acompress(TEXTS[2], mode="latent"))
    for t in waiting:
        t.join(TIMEOUT)
    assert results == [zc.compress_batch([t], mode="latent")[0] for t in TEXTS[:2]]
    assert zc.compress(TEXTS[2], mode="latent") is not None  # room again


def test_a_cancelled_async_call_is_dropped(zc, codes) -> None:
    async def main() -> Any:
        with _blocked(zc):
            start = zc.scheduler.stats["requests"]
            doomed = asyncio.ensure_future(zc.acompress(TEXTS[0], mode="latent", ratio=3.0))
            kept = asyncio.ensure_future(zc.acompress(TEXTS[1], mode="latent"))
            while zc.scheduler.stats["requests"] - start < 2:
                await asyncio.sleep(0.002)
            doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await asyncio.wait_for(kept, TIMEOUT)

    assert asyncio.run(main()) == codes["latent"][1]


def test_calls_inside_the_lock_run_inline(zc, codes) -> None:
    """A thread holding the compressor's lock (e.g. while reading a generation stream) must not wait for the
    worker, which would wait for that lock."""
    out: list[Any] = []

    def run() -> None:
        with zc.lock:
            out.append(zc.decompress(codes["exact"][0]))
            out.append(asyncio.run(zc.adecompress(codes["exact"][1])))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(TIMEOUT)
    assert out == TEXTS[:2]


def test_disabled_scheduler_runs_calls_in_the_caller(serial, codes) -> None:
    assert serial.compress(TEXTS[0], mode="latent") == codes["latent"][0]
    assert asyncio.run(serial.adecompress(codes["exact"][0])) == TEXTS[0]
    assert serial.scheduler.stats["requests"] == 0


# ---- 32 threads, every kind of call ------------------------------------------------------------------------------
def test_stress_32_threads_mixing_every_call(zc, serial) -> None:
    """32 threads x 4 calls (exact and latent compression, decompression, generation), each input its own:
    no deadlock (every thread ends within the timeout), no result lost or handed to another caller."""
    n = 32
    texts = [f"Note {i}: {'the fox ' * (1 + i % 4)}and item {i}." for i in range(n)]
    exact = [serial.compress(t) for t in texts]
    latent = [serial.compress(t, mode="latent") for t in texts]
    want: list[list[Any]] = []
    for i, t in enumerate(texts):
        op = i % 4
        answer = serial.generate(f"Who is {i}?", context=[latent[i]], max_new_tokens=3)
        first = exact[i] if op == 0 else latent[i]
        want.append([first, t, answer, t if op % 2 else serial.decompress(latent[i])])
    barrier = threading.Barrier(n)
    got: list[list[Any]] = [[] for _ in range(n)]

    def client(i: int) -> None:
        barrier.wait(TIMEOUT)
        try:
            t = texts[i]
            got[i].append(zc.compress(t) if i % 4 == 0 else zc.compress(t, mode="latent"))
            got[i].append(zc.decompress(exact[i]))
            got[i].append(zc.generate(f"Who is {i}?", context=[latent[i]], max_new_tokens=3))
            got[i].append(zc.decompress(exact[i] if i % 2 else latent[i]))
        except Exception as exc:  # recorded, so the comparison below names it
            got[i].append(exc)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    before = zc.scheduler.stats
    for t in threads:
        t.start()
    deadline = time.monotonic() + TIMEOUT
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "deadlock: some clients never finished"
    wrong = [i for i in range(n) if not _same(got[i], want[i])]
    assert not wrong, f"clients {wrong} got other results, first: {got[wrong[0]]!r:.300}"
    stats = zc.scheduler.stats
    assert stats["requests"] - before["requests"] == 4 * n
    assert zc.scheduler.pending == 0


# ---- opt-in generation batching ----------------------------------------------------------------------------------
def test_batch_generation_merges_greedy_calls(tiny_model_dir, adapters, serial, codes) -> None:
    zc = _compressor(tiny_model_dir, adapters, batch_generation=True, limits=BatchLimits(generate=4))
    contexts = [[codes["latent"][i]] for i in range(4)]
    calls = [lambda i=i: zc.generate(QUESTIONS[i], context=contexts[i], max_new_tokens=5) for i in range(4)]
    got = _gathered(zc, calls)
    assert zc.scheduler.stats["largest"] == 4
    # one shared batch: the results of generate_batch (which may differ from generate's in near-ties)
    want = serial.generate_batch(QUESTIONS[:4], contexts=contexts, max_new_tokens=5, batch_size=4)
    assert got == want
    # a bad prompt fails the shared batch; rerun alone, only it raises and the others are serial calls
    calls[1] = lambda: zc.generate(42, context=contexts[1], max_new_tokens=5)  # type: ignore[arg-type]
    got = _gathered(zc, calls)
    assert isinstance(got[1], UnsupportedTextError)
    assert [got[i] for i in (0, 2, 3)] == [
        serial.generate(QUESTIONS[i], context=contexts[i], max_new_tokens=5) for i in (0, 2, 3)
    ]
    assert zc.scheduler.stats["fallbacks"] == 1


# ---- configuration -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_pending": 0}, "max_pending"),
        ({"max_pending": True}, "max_pending"),
        ({"queue_timeout_s": -1}, "queue_timeout_s"),
        ({"gather_ms": float("nan")}, "gather_ms"),
        ({"limits": {"compress": 4}}, "limits"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=f"SchedulerConfig.{field}"):
        SchedulerConfig(**kwargs)


def test_batch_limits_by_device() -> None:
    with pytest.raises(ConfigError, match="BatchLimits.generate"):
        BatchLimits(generate=0)
    assert SchedulerConfig().limits_for("cuda") == DEVICE_LIMITS["cuda"]
    assert SchedulerConfig().limits_for("mps") == DEVICE_LIMITS["cpu"]
    mine = BatchLimits(compress=2, decompress=3, generate=4)
    assert SchedulerConfig(limits=mine).limits_for("cuda") == mine


def test_scheduler_setting_is_checked_and_pickled(tiny_model_dir) -> None:
    with pytest.raises(ConfigError, match="scheduler"):
        ZCompressor.from_pretrained(tiny_model_dir, scheduler={"enabled": False})  # type: ignore[arg-type]
    config = SchedulerConfig(max_pending=7, batch_generation=True)
    zc = ZCompressor.from_pretrained(tiny_model_dir, adapters=None, scheduler=config)
    assert pickle.loads(pickle.dumps(zc)).scheduler.config == config


def test_gather_window_still_answers(tiny_model_dir, adapters, codes) -> None:
    zc = _compressor(tiny_model_dir, adapters, gather_ms=5.0)
    assert zc.compress(TEXTS[0], mode="latent") == codes["latent"][0]


# ---- the integrations' async paths use it ------------------------------------------------------------------------
def test_langchain_async_paths_queue_on_the_scheduler(zc, codes) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from zcompress_integrations.langchain import ChatZCompress, ZCompressDocumentCompressor

    chat = ChatZCompress(compressor=zc, max_tokens=4)
    prompt = f"Context: {codes['latent'][0].to_string()}\nQuestion: what?"
    docs = [Document(page_content=t) for t in TEXTS[:3]]
    compressor = ZCompressDocumentCompressor(compressor=zc, mode="latent")
    before = zc.scheduler.stats["requests"]
    msg = asyncio.run(chat.ainvoke(prompt))
    out = asyncio.run(compressor.acompress_documents(docs, "q"))
    assert zc.scheduler.stats["requests"] - before == 2
    sync = chat.invoke(prompt)
    assert (msg.content, msg.usage_metadata) == (sync.content, sync.usage_metadata)
    assert out == compressor.compress_documents(docs, "q")


def test_llamaindex_async_paths_queue_on_the_scheduler(zc, codes) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from zcompress_integrations.llama_index import ZCompressLLM, ZCompressNodePostprocessor

    llm = ZCompressLLM(compressor=zc, num_output=4)
    prompt = f"{codes['exact'][0].to_string()}\nwhat?"
    post = ZCompressNodePostprocessor(compressor=zc, mode="latent", content_form="code")
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0) for i, t in enumerate(TEXTS[:3])]
    before = zc.scheduler.stats["requests"]
    got = asyncio.run(llm.acomplete(prompt))
    processed = asyncio.run(post.apostprocess_nodes(nodes))
    assert zc.scheduler.stats["requests"] - before >= 2
    assert got.text == llm.complete(prompt).text
    assert [n.node.get_content() for n in processed] == [c.to_string() for c in codes["latent"][:3]]
