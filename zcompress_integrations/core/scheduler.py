"""Batching scheduler: concurrent calls on one :class:`ZCompressor` gathered into shared batches.

    zc = ZCompressor.from_pretrained()
    with ThreadPoolExecutor(8) as pool:                      # eight callers, a few shared batches
        codes = list(pool.map(lambda t: zc.compress(t, mode="latent"), texts))
    code = await zc.acompress(text, mode="latent")            # asyncio: the event loop never waits on the model

Every ``compress``/``decompress``/``generate`` call, and its ``a*`` twin, becomes a request on one bounded queue.
One worker thread per compressor takes the oldest request and, with it, every queued request that can share its
batch, up to the batch limits of the backbone's device: continuous micro-batching, i.e. whatever is queued when
the worker becomes free. Under load the queue fills while the previous batch runs (tens of milliseconds to
seconds), so batches form without a gather window, and a lone caller waits for nothing; ``gather_ms`` adds a
window for bursts that reach an idle worker. A batch runs through the facade's own batch paths
(``compress_batch``, ``decompress_batch``, ``generate_batch``), and each result goes back to its caller.

Results are identical to serial calls, so only batch-invariant work is merged (measurements in
``docs/concurrency.md``):

* **latent compression** (``exact=False``, same ratio, token-group code): merged. Its model work is one parallel
  forward per group of equal-length segments, and a row of such a forward is bit-identical whatever else is in the
  batch (segments too short for that run alone: ``core/latent.py``). Other code kinds run one request at a time
  (:data:`BATCH_INVARIANT_CODES`).
* **decompression** of exact codes and of latent codes with a residual: merged. Each code keeps the lane layout it
  records (``core/entropy.py``), so it runs on the same rows as alone, and its checksum is verified.
* **everything else runs one request at a time, as its serial call.** An exact code's lanes (and a residual's) are
  laid out over the texts of its own call, so merging calls would change the codes. Free-running latent
  decompression and generation pad prompts and step a KV cache, and a step's logits move in the last bits with the
  number of rows (1, 2-3 and 4+ rows use different matrix kernels on a CPU), which can flip a greedy token.
  ``batch_generation=True`` merges greedy ``generate`` calls anyway: faster, with results equal to
  ``generate_batch``'s, which can differ from ``generate``'s where two tokens nearly tie.

A request is checked before it joins a batch, and a batch that fails anyway is rerun one request at a time, so a
bad input raises only in its own caller. Each request runs with its caller's torch thread count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from zcompress_integrations.errors import ConfigError, SchedulerBusyError

if TYPE_CHECKING:
    from zcompress_integrations.core.compressor import ZCompressor

__all__ = [
    "BATCH_INVARIANT_CODES",
    "BatchLimits",
    "BatchScheduler",
    "DEVICE_LIMITS",
    "Request",
    "SchedulerConfig",
]

logger = logging.getLogger(__name__)

Op = Literal["compress", "decompress", "generate"]
# Latent code kinds whose Z ids for a text do not depend on the other texts of a compress_batch call: token groups
# (parallel NLL forwards of equal-length segments, short ones alone; core/latent.py) and the learned code (its
# compress pass batched the same way; core/codes/learned.py). Other kinds' texts run one request at a time until
# shown to be batch-invariant (benchmarks/batch_invariance.py).
BATCH_INVARIANT_CODES = frozenset({"token_groups", "learned"})
# An idle worker thread ends after this (and lets its compressor be freed); the next call starts another.
_IDLE_EXIT_S = 5.0


@dataclass(frozen=True)
class BatchLimits:
    """Most work one shared batch holds (a single request larger than this still runs, alone).

    Attributes:
        compress: texts per merged latent-compression batch.
        decompress: codes per merged decompression batch.
        generate: prompts per merged generation batch (``batch_generation=True`` only).
    """

    compress: int = 16
    decompress: int = 32
    generate: int = 8

    def __post_init__(self) -> None:
        for name in ("compress", "decompress", "generate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BatchLimits.{name} must be an integer >= 1; got {value!r}")


DEVICE_LIMITS: dict[str, BatchLimits] = {
    # A CPU forward is compute-bound: past ~16 texts a batch adds latency, not throughput. 32 codes is the
    # facade's exact decoding batch. Decode steps are not: 64 answers as one generate_batch(batch_size=32) ran 4.2x
    # the serial rate, merged 8 at a time 2.5x (benchmarks/results/concurrency.md; batch_generation only).
    "cpu": BatchLimits(compress=16, decompress=32, generate=32),
    # A GPU has idle compute at these sizes for a 135M model (not measured here: no GPU on the test machine).
    "cuda": BatchLimits(compress=64, decompress=64, generate=32),
}
"""Batch limits by device type; any device not listed (``mps``) uses ``"cpu"``."""


@dataclass(frozen=True)
class SchedulerConfig:
    """How a compressor gathers concurrent calls: ``ZCompressor(..., scheduler=SchedulerConfig(...))``.

    Attributes:
        enabled: gather calls into shared batches; ``False`` runs each call in its caller's thread under the
            compressor's lock (async calls in a worker thread each), as before the scheduler.
        max_pending: requests that may wait in the queue; a caller that finds it full waits for room.
        queue_timeout_s: how long a caller waits for room: ``None`` as long as it takes, else
            :class:`~zcompress_integrations.errors.SchedulerBusyError` after this many seconds.
        gather_ms: after a batch's first request arrives, wait up to this long for more (0: take what is queued
            when the worker becomes free).
        limits: batch sizes; ``None`` picks :data:`DEVICE_LIMITS` by the backbone's device.
        batch_generation: merge greedy ``generate`` calls into ``generate_batch`` (not identical to serial calls:
            see the module docstring).
    """

    enabled: bool = True
    max_pending: int = 256
    queue_timeout_s: float | None = None
    gather_ms: float = 0.0
    limits: BatchLimits | None = None
    batch_generation: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_pending, bool)
            or not isinstance(self.max_pending, int)
            or self.max_pending < 1
        ):
            raise ConfigError(
                f"SchedulerConfig.max_pending must be an integer >= 1; got {self.max_pending!r}"
            )
        if self.queue_timeout_s is not None and not _non_negative(self.queue_timeout_s):
            raise ConfigError(
                f"SchedulerConfig.queue_timeout_s must be None or a number >= 0; got {self.queue_timeout_s!r}"
            )
        if not _non_negative(self.gather_ms):
            raise ConfigError(f"SchedulerConfig.gather_ms must be a number >= 0; got {self.gather_ms!r}")
        if self.limits is not None and not isinstance(self.limits, BatchLimits):
            raise ConfigError(f"SchedulerConfig.limits must be a BatchLimits or None; got {self.limits!r}")

    def limits_for(self, device_type: str) -> BatchLimits:
        """The batch limits on a device type (``"cpu"``, ``"cuda"``, ...)."""
        return self.limits or DEVICE_LIMITS.get(device_type, DEVICE_LIMITS["cpu"])


def _non_negative(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and 0 <= value < float("inf")


@dataclass(eq=False)
class Request:
    """One call: ``items`` (texts, parsed codes, or one prompt) and the call's options. ``future`` receives what
    the serial call returns; ``key`` is ``None`` for a request that runs alone, else requests with equal keys
    share a batch."""

    op: Op
    items: list[Any]
    options: dict[str, Any]
    key: Hashable | None = None
    threads: int | None = None
    future: Future[Any] = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


# ---- what each kind of request runs ------------------------------------------------------------------------
# ``key``: which requests may share a batch; ``check``: per-request checks before batching; ``alone``: the serial
# call itself; ``merged``: one batch for several requests, one result per request.


class _Compress:
    """``compress``/``compress_batch`` requests; the serial call is ``compress_batch(items, **options)``."""

    @staticmethod
    def key(options: dict[str, Any], config: SchedulerConfig) -> Hashable | None:
        if options["mode"] == "latent" and not options["exact"]:
            return ("compress", options["ratio"])
        return None  # an exact code's lanes (and a residual's) are laid out over the texts of its own call

    @staticmethod
    def limit(limits: BatchLimits) -> int:
        return limits.compress

    @staticmethod
    def check(zc: ZCompressor, req: Request) -> None:
        from zcompress_integrations.core.entropy import as_bytes

        for item in req.items:
            as_bytes(item)  # a str UTF-8 cannot encode fails here, alone, not in the shared batch

    @staticmethod
    def alone(zc: ZCompressor, req: Request) -> Any:
        return zc.compress_batch(req.items, **req.options)

    @staticmethod
    def merged(zc: ZCompressor, reqs: list[Request], limits: BatchLimits) -> list[Any]:
        if zc.latent_codec.code.name not in BATCH_INVARIANT_CODES:
            return [_Compress.alone(zc, r) for r in reqs]
        codes = zc.compress_batch([t for r in reqs for t in r.items], **reqs[0].options)
        out, start = [], 0
        for r in reqs:
            out.append(codes[start : start + len(r.items)])
            start += len(r.items)
        return out


def _keeps_lanes(code: Any) -> bool:
    """Whether a code decodes on the lanes it records (exact, or latent with a residual)."""
    return code.codec == "exact" or "threads" in code.params


class _Decompress:
    """``decompress``/``decompress_batch`` requests (codes already parsed); the serial call is
    ``decompress_batch(items, **options)``."""

    @staticmethod
    def key(options: dict[str, Any], config: SchedulerConfig) -> Hashable | None:
        return ("decompress",)

    @staticmethod
    def limit(limits: BatchLimits) -> int:
        return limits.decompress

    @staticmethod
    def check(zc: ZCompressor, req: Request) -> None:
        for code in req.items:  # another model's code, or a damaged header, fails here, alone
            (zc.exact_codec if code.codec == "exact" else zc.latent_codec).check_compatible(code)

    @staticmethod
    def alone(zc: ZCompressor, req: Request) -> Any:
        return zc.decompress_batch(req.items, **req.options)

    @staticmethod
    def merged(zc: ZCompressor, reqs: list[Request], limits: BatchLimits) -> list[Any]:
        out: list[list[Any]] = [[None] * len(r.items) for r in reqs]
        lane = [(i, j) for i, r in enumerate(reqs) for j, c in enumerate(r.items) if _keeps_lanes(c)]
        if lane:  # every request's lane codes in one call: each keeps its recorded lanes
            texts = zc.decompress_batch([reqs[i].items[j] for i, j in lane])
            for (i, j), text in zip(lane, texts, strict=True):
                out[i][j] = text
        for i, r in enumerate(reqs):  # free-running latent codes: padded batches, so each request's own call
            free = [j for j, c in enumerate(r.items) if not _keeps_lanes(c)]
            if free:
                texts = zc.decompress_batch([r.items[j] for j in free], **r.options)
                for j, text in zip(free, texts, strict=True):
                    out[i][j] = text
        return out


class _Generate:
    """``generate`` requests (one prompt; ``stream=True`` never comes here); the serial call is
    :func:`~zcompress_integrations.core.generation.generate`."""

    @staticmethod
    def key(options: dict[str, Any], config: SchedulerConfig) -> Hashable | None:
        if config.batch_generation and options["temperature"] == 0:
            return ("generate", options["max_new_tokens"], tuple(options["stop"] or ()))
        return None  # a batch steps its KV cache over several rows: not bit-identical to one row

    @staticmethod
    def limit(limits: BatchLimits) -> int:
        return limits.generate

    @staticmethod
    def check(zc: ZCompressor, req: Request) -> None:
        return None  # the prompt is checked where it is built; a failing batch reruns its requests alone

    @staticmethod
    def alone(zc: ZCompressor, req: Request) -> Any:
        from zcompress_integrations.core.generation import generate

        return generate(zc, req.items[0], **req.options)

    @staticmethod
    def merged(zc: ZCompressor, reqs: list[Request], limits: BatchLimits) -> list[Any]:
        o = reqs[0].options
        return zc.generate_batch(
            [r.items[0] for r in reqs],
            contexts=[r.options["context"] for r in reqs],
            titles=[r.options["titles"] for r in reqs],
            max_new_tokens=o["max_new_tokens"],
            stop=o["stop"],
            batch_size=limits.generate,
        )


_OPS: dict[str, Any] = {"compress": _Compress, "decompress": _Decompress, "generate": _Generate}


# ---- the scheduler ------------------------------------------------------------------------------------------
class BatchScheduler:
    """The queue and worker thread of one compressor (``zc.scheduler``). See the module docstring.

    ``stats`` counts ``requests`` queued, ``batches`` run, ``merged`` batches of more than one request, the
    ``largest`` batch (in requests) and ``fallbacks`` (shared batches that failed and were rerun alone).
    """

    def __init__(self, zc: ZCompressor, config: SchedulerConfig) -> None:
        self.zc = zc
        self.config = config
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._queue: deque[Request] = deque()
        self._worker: threading.Thread | None = None
        self._limits: BatchLimits | None = None
        self._stats = {"requests": 0, "batches": 0, "merged": 0, "largest": 0, "fallbacks": 0}

    @property
    def pending(self) -> int:
        """Requests waiting in the queue (not counting the batch running)."""
        return len(self._queue)

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    # ---- callers -----------------------------------------------------------------------------------------
    def call(self, op: Op, items: list[Any], options: dict[str, Any]) -> Any:
        """Run one request and return its result (blocks this thread, never the worker)."""
        if self._inline():
            return _OPS[op].alone(self.zc, Request(op, items, options))
        req = self._request(op, items, options)
        self._put(req)
        return req.future.result()

    async def acall(self, op: Op, items: list[Any], options: dict[str, Any]) -> Any:
        """Awaitable :meth:`call`: queues without blocking the event loop (polls while the queue is full) and
        awaits the result. Cancelling the awaiting task drops the request if it has not started."""
        if not self.config.enabled:
            return await asyncio.to_thread(_OPS[op].alone, self.zc, Request(op, items, options))
        if self._inline():  # this thread holds the compressor's lock: no other thread may run the call
            return _OPS[op].alone(self.zc, Request(op, items, options))
        req = self._request(op, items, options)
        timeout = self.config.queue_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while not self._try_put(req):
            if deadline is not None and time.monotonic() >= deadline:
                raise self._busy()
            await asyncio.sleep(delay)
            delay = min(2 * delay, 0.05)
        return await asyncio.wrap_future(req.future)

    def _inline(self) -> bool:
        """Whether a call must run in the calling thread: the scheduler is off, or this thread is its worker or
        holds the compressor's lock (a call made while consuming a generation stream), which the worker would
        wait for."""
        if not self.config.enabled:
            return True
        if self._pid != os.getpid():  # a forked child: the parent's worker thread does not exist here
            self._reset()
        if threading.current_thread() is self._worker:
            return True
        owned = getattr(self.zc.lock, "_is_owned", None)
        return bool(owned is not None and owned())

    def _request(self, op: Op, items: list[Any], options: dict[str, Any]) -> Request:
        torch = sys.modules.get("torch")  # never imported here: no torch yet means no model yet
        threads = torch.get_num_threads() if torch is not None else None
        key = _OPS[op].key(options, self.config)
        return Request(op, items, options, key=None if key is None else (op, key, threads), threads=threads)

    def _busy(self) -> SchedulerBusyError:
        return SchedulerBusyError(
            f"the compressor's queue has held {self.config.max_pending} requests for "
            f"{self.config.queue_timeout_s} s (SchedulerConfig.max_pending / queue_timeout_s); retry later, or "
            "raise them"
        )

    def _try_put(self, req: Request) -> bool:
        with self._cond:
            if len(self._queue) >= self.config.max_pending:
                return False
            self._append(req)
            return True

    def _put(self, req: Request) -> None:
        timeout = self.config.queue_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._queue) >= self.config.max_pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise self._busy()
                self._cond.wait(remaining)
            self._append(req)

    def _append(self, req: Request) -> None:
        """Queue ``req`` and make sure a worker runs (call with ``self._cond`` held)."""
        self._queue.append(req)
        self._stats["requests"] += 1
        if self._worker is None:
            self._worker = threading.Thread(target=self._loop, name="zcompress-scheduler", daemon=True)
            self._worker.start()
        self._cond.notify_all()

    # ---- the worker --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            self._run(batch)

    def _limits_now(self) -> BatchLimits:
        if self._limits is None:
            try:
                device = self.zc.backbone.device.type  # loads the model on first use, in this thread
            except Exception:  # the requests themselves raise the load error
                return self.config.limits_for("cpu")
            self._limits = self.config.limits_for(device)
        return self._limits

    def _take(self) -> list[Request] | None:
        """The next batch: the oldest request and the queued requests that share its key (within the limits),
        or ``None`` when the worker has been idle for a while and ends."""
        limits = self._limits_now()
        with self._cond:
            deadline = time.monotonic() + _IDLE_EXIT_S
            while not self._queue:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._worker = None
                    return None
                self._cond.wait(remaining)
            first = self._queue[0]
            cap = _OPS[first.op].limit(limits)
            if self.config.gather_ms > 0 and first.key is not None:
                until = first.queued_at + self.config.gather_ms / 1000
                while len(self._queue) < cap and (left := until - time.monotonic()) > 0:
                    self._cond.wait(left)
            batch = [first]
            if first.key is not None:
                size = len(first.items)
                for req in list(self._queue)[1:]:
                    if req.key == first.key and size + len(req.items) <= cap:
                        batch.append(req)
                        size += len(req.items)
            for req in batch:
                self._queue.remove(req)
            self._cond.notify_all()  # room for callers waiting on a full queue
            return batch

    def _run(self, batch: list[Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]  # cancelled ones are dropped
        if not live:
            return
        op = _OPS[live[0].op]
        try:
            with _torch_threads(live[0].threads):
                ready = []
                for req in live:
                    try:
                        op.check(self.zc, req)
                    except Exception as exc:
                        req.future.set_exception(exc)
                    else:
                        ready.append(req)
                self._count(ready)
                if len(ready) == 1:
                    self._alone(op, ready[0])
                elif ready:
                    self._merged(op, ready)
        except BaseException as exc:  # never leave a caller waiting, never end the worker
            logger.exception("zcompress scheduler: a batch raised outside its requests")
            for req in live:
                if not req.future.done():
                    req.future.set_exception(exc)

    def _merged(self, op: Any, reqs: list[Request]) -> None:
        try:
            results = op.merged(self.zc, reqs, self._limits_now())
        except Exception as exc:
            logger.info(
                "a shared batch of %d requests failed (%s); running them one at a time", len(reqs), exc
            )
            self._stats["fallbacks"] += 1
            for req in reqs:
                self._alone(op, req)
        else:
            for req, result in zip(reqs, results, strict=True):
                req.future.set_result(result)

    def _alone(self, op: Any, req: Request) -> None:
        try:
            req.future.set_result(op.alone(self.zc, req))
        except Exception as exc:
            req.future.set_exception(exc)

    def _count(self, reqs: list[Request]) -> None:
        if reqs:
            self._stats["batches"] += 1
            self._stats["merged"] += len(reqs) > 1
            self._stats["largest"] = max(self._stats["largest"], len(reqs))


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with the caller's torch thread count (what its serial call would have used)."""
    if n is None:
        yield
        return
    from zcompress_integrations.core.entropy import fixed_threads

    with fixed_threads(n):
        yield
