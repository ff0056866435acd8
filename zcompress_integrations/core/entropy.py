"""The exact (entropy) codec: the backbone's next-token distribution drives an arithmetic coder.

How it works. The text's bytes become token ids (:class:`TokenBytes`, exact for any bytes), cut into windows of
``window`` tokens. Each window is coded from a fresh start token: at every step the model predicts the next token,
the prediction is turned into an integer frequency table (total <= 2^24, every codable token >= 1), and the true
token's share of the table narrows the arithmetic coder's interval. The code bits are cut into Z-tokens of
``log2(k)`` bits. The decoder runs the same model step by step, rebuilds each table, finds the token whose share
holds the code value, and feeds it back.

Why the path is fixed. Encoder and decoder must compute *bit-identical* frequency tables, and on CPUs a model's
logits for a row depend on the computation's shape: a parallel forward vs a KV-cache step, the batch size, the
thread count, and even which half of the batch a row sits in (with 2 threads each thread takes half the rows).
They do not depend on what the other rows contain. So both sides run the one path the decoder can run, a KV-cache
step per token over a batch of ``lanes`` rows, with the same thread count, and every window keeps its lane: the
code records ``lanes``, the first window's lane and the thread count. Windows of several texts share a batch
(``compress_batch``), and any set of codes decodes together as long as their lanes do not collide. Decoding on other
hardware or library versions can still differ; a 4-byte checksum of the original text turns that into an error,
never wrong text.

Step paths. How a step and its table are computed is versioned by the code parameter ``path`` (:data:`PATHS`).
Path 1 (codes without the parameter, made before it existed) runs the model's own forward over a ``DynamicCache``
and builds tables from a float64 softmax. Path 2, which new codes take, runs
:mod:`~zcompress_integrations.core.lanestep` (for Llama models, the decoder layers over a cache allocated once per
run) and builds tables from a float32 softmax written straight into int32; it spreads a batch's windows evenly
over as few runs of at most 64 lanes as possible (:func:`balanced_lanes`). Both cost the same bits. A decoder
takes each code's own path, so codes of every path decode, together or apart.

Speed. Codes run with one torch thread by default (see ``threads`` below). A step is almost all matrix products
(85% of its CPU time on SmolLM2-135M; the coder, the tables and the Python around them are the rest). With few
lanes they are memory-bound, each step one pass over the weights (16 lanes cost about twice one lane), so
throughput grows almost linearly with the number of windows coded side by side; from ~32 lanes on, a step is
compute-bound and approaches the per-token cost of a parallel forward (``benchmarks/exact_codec.py``). A single text of ``n`` tokens gets ``ceil(n / window)`` lanes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from zcompress_integrations.core.arithmetic import (
    MAX_TOTAL_BITS,
    ArithmeticDecoder,
    ArithmeticEncoder,
    bits_to_ids,
    ids_to_bits,
)
from zcompress_integrations.core.lanestep import decoder_of
from zcompress_integrations.core.loading import check_precision, precision_params
from zcompress_integrations.core.tokenbytes import TokenBytes
from zcompress_integrations.core.zcode import ZCode, text_checksum
from zcompress_integrations.errors import (
    ChecksumMismatchError,
    ConfigError,
    CorruptCodeError,
    ModelMismatchError,
    UnsupportedTextError,
)

__all__ = [
    "PATH",
    "PATHS",
    "EntropyCodec",
    "LaneRunner",
    "LaneWindow",
    "balanced_lanes",
    "choose_lanes",
    "decode_windows",
    "encode_windows",
    "fixed_threads",
    "place_windows",
    "window_sizes",
]

logger = logging.getLogger(__name__)

MAX_LANES = 64
PATH = 2
"""The step path new exact codes are made with (recorded as the code parameter ``path``; absent means 1)."""
PATHS = (1, 2)
"""Step paths this version decodes: 1, the model's own forward over a ``DynamicCache`` and float64 tables; 2,
:mod:`~zcompress_integrations.core.lanestep` and float32 tables (:meth:`LaneRunner.tables`), with runs of equal
size (:func:`balanced_lanes`)."""


def choose_lanes(n_windows: int, max_lanes: int = 32) -> int:
    """One lane per window, capped at ``max_lanes`` (a step costs about the same for 1 to ~8 lanes, then grows
    roughly linearly on CPU, so idle lanes are pure waste). Path 1's rule, also the latent residual's."""
    return max(1, min(n_windows, max_lanes, MAX_LANES))


def balanced_lanes(n_windows: int, max_lanes: int = MAX_LANES) -> int:
    """Path 2's rule: as few runs as ``max_lanes`` allows, with the windows spread evenly over them (70 windows
    under a cap of 64 make 2 runs of 35 lanes, not a run of 64 and one of 6 beside 58 idle lanes)."""
    cap = max(1, min(max_lanes, MAX_LANES))
    runs = max(1, -(-n_windows // cap))
    return max(1, -(-n_windows // runs))


def window_sizes(n_tokens: int, window: int) -> list[int]:
    """Token counts of a text's windows: ``window`` tokens each, the rest in the last. (Windows of equal length
    would let a batch's runs end together, but cost ~0.5% more bits on 256-512-token paragraphs: a 300-token text
    cut 150 + 150 loses more context than 256 + 44.)"""
    return [min(window, n_tokens - s) for s in range(0, n_tokens, window)]


@contextlib.contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads, restoring the previous count after."""
    import torch

    previous = torch.get_num_threads()
    if n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != previous:
            torch.set_num_threads(previous)


def default_codec_threads() -> int:
    """Thread count codes are made with: ``$ZCOMPRESS_CODEC_THREADS``, else 1 (see :class:`EntropyCodec`)."""
    env = os.environ.get("ZCOMPRESS_CODEC_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else 1


def as_bytes(item: bytes | str) -> bytes:
    if isinstance(item, str):
        try:
            return item.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UnsupportedTextError(
                f"text holds a character UTF-8 cannot encode ({exc.reason} at index {exc.start}, e.g. a lone "
                "surrogate); pass bytes instead, e.g. text.encode('utf-8', 'surrogatepass')"
            ) from exc
    return bytes(item)


@dataclass
class LaneWindow:
    """One row of work: ``prefix`` is fed first (its last token predicts ``tokens[0]``); token ids, or an
    embedding tensor ``[P, H]`` when the runner feeds embeddings (the latent codec's Z prefix)."""

    owner: int  # index of the text/code this window belongs to
    prefix: Any
    tokens: list[int] | None  # known when encoding; filled in when decoding
    length: int  # number of tokens to code
    slot: int  # global slot: run = slot // lanes, lane = slot % lanes
    prefix_positions: list[int] | None = (
        None  # position ids of the prefix (default: 0, 1, ...); tokens follow on
    )


class LaneRunner:
    """Step-wise, KV-cached forward over a fixed number of lanes, yielding integer frequency tables.

    ``forward_hidden(input_ids[B, 1], cache) -> hidden[B, H]`` runs the model body; ``head_weight[V, H]`` is the
    text vocabulary's rows of the output layer (a fixed contiguous copy, so Z-rows added later cannot change the
    shape of this product). ``codable`` covers ``V`` model tokens plus virtual byte ids after them (fixed
    frequency 1 where codable); a virtual id is fed to the model as ``stand_in``. With ``embed(ids[B, 1]) ->
    [B, 1, H]`` given, every step feeds embeddings (``forward_hidden`` then takes ``[B, 1, H]``) and window
    prefixes may be embedding rows.
    """

    def __init__(
        self,
        forward_hidden: Callable[[Any, Any], Any],
        make_cache: Callable[[], Any],
        head_weight: Any,
        codable: Sequence[bool],
        total_bits: int = MAX_TOTAL_BITS,
        stand_in: int = 0,
        embed: Callable[[Any], Any] | None = None,
        *,
        sized_cache: bool = False,
        float32_tables: bool = False,
    ) -> None:
        import torch

        self.sized_cache = sized_cache
        self.float32_tables = float32_tables
        self.stand_in = stand_in
        self.embed = embed
        self.forward_hidden = forward_hidden
        self.make_cache = make_cache
        self.head_weight = head_weight
        self.vocab_size = head_weight.shape[0]
        self.codable = torch.tensor(list(codable), dtype=torch.bool)
        self.virtual = torch.tensor(list(codable)[self.vocab_size :], dtype=torch.long)
        if total_bits > MAX_TOTAL_BITS:
            raise ConfigError(f"frequency precision must be <= {MAX_TOTAL_BITS} bits; got {total_bits}")
        self.scale = (1 << total_bits) - len(self.codable)
        self.limit = 1 << total_bits
        # float32 tables: a float32 softmax can sum to a hair over 1, so its scale leaves 2^-12 of the range
        # spare (0.0004 bits a token); a row whose total still overflows is halved (see tables_float32)
        self.scale32 = float(self.scale - (self.limit >> 12))
        self._weights32: Any = None

    def tables(self, hidden: Any) -> Any:
        """Cumulative integer frequencies ``cum[B, V]`` (``cum[:, -1]`` is the total) for hidden states."""
        if self.float32_tables:
            return self.tables_float32(hidden)
        return self.tables_float64(hidden)

    def tables_float64(self, hidden: Any) -> Any:
        """Path 1 (and the latent residual): a float64 softmax, ``floor(p * scale) + 1``, int64 cumulative sums."""
        import torch

        logits = torch.nn.functional.linear(hidden.float(), self.head_weight)
        probs = torch.softmax(logits.double(), dim=-1)
        freq = torch.floor(probs * self.scale).long() + 1
        freq = torch.cat([freq, self.virtual.to(freq.device).expand(freq.shape[0], -1)], dim=-1)
        freq.masked_fill_(~self.codable.to(freq.device), 0)
        return torch.cumsum(freq, dim=-1).cpu()

    def tables_float32(self, hidden: Any) -> Any:
        """Path 2: the same table from a float32 softmax, written straight into int32 (truncation is the floor
        of a non-negative number), with no float64 copy, no ``cat`` and no separate mask pass."""
        import torch

        logits = torch.nn.functional.linear(hidden.float(), self.head_weight)  # [B, V]
        probs = torch.softmax(logits, dim=-1).mul_(self.scale32)
        rows, vocab = probs.shape
        if self._weights32 is None or self._weights32.device != probs.device:
            self._weights32 = self.codable.to(device=probs.device, dtype=torch.int32)
        freq = self._weights32.repeat(rows, 1)  # [B, S]: 1 where codable (the virtual ids keep it), else 0
        head = freq[:, :vocab]
        head.add_(probs.to(torch.int32)).mul_(self._weights32[:vocab])
        cum = torch.cumsum(freq, dim=-1, dtype=torch.int32)
        over = cum[:, -1] > self.limit
        if bool(over.any()):  # never seen; kept so that a table can never exceed the coder's range
            freq[over] = (freq[over] + 1) // 2
            cum = torch.cumsum(freq, dim=-1, dtype=torch.int32)
        return cum.cpu()

    def run(
        self,
        windows: list[LaneWindow],
        lanes: int,
        on_step: Callable[[LaneWindow, Any, int], int],
        on_tokens: Callable[[int], None] | None = None,
    ) -> None:
        """Run all windows, grouped by run (``slot // lanes``). ``on_step(window, cum_row, i)`` codes token ``i``
        of the window given its table (a numpy row) and returns the token id to feed next; ``on_tokens(n)``, when
        given, hears after every step how many tokens it coded (a progress bar inside one long document)."""
        import torch

        runs: dict[int, list[LaneWindow]] = {}
        for w in windows:
            runs.setdefault(w.slot // lanes, []).append(w)
        device = self.head_weight.device
        for run_index in sorted(runs):
            members = sorted(runs[run_index], key=lambda w: w.slot)
            by_lane = {w.slot % lanes: w for w in members}
            steps = max((len(w.prefix) + w.length - 1 for w in members), default=0)
            # the previous run's KV cache goes first: two alive at once doubled the peak (64 lanes: ~0.75 GB each)
            cache = hidden = None
            cache = self.make_cache(lanes, steps) if self.sized_cache else self.make_cache()
            feed = [0] * lanes
            for lane, w in by_lane.items():
                if w.tokens is None:
                    w.tokens = []
                feed[lane] = w.prefix[0] if self.embed is None else -1
            positioned = any(w.prefix_positions is not None for w in members)
            with torch.inference_mode():
                for t in range(steps):
                    x = self._inputs(feed, by_lane, t, device)
                    if positioned:
                        pos = torch.tensor(
                            [[self._position(by_lane.get(lane), t)] for lane in range(lanes)], device=device
                        )
                        hidden = self.forward_hidden(x, cache, pos)
                    else:
                        hidden = self.forward_hidden(x, cache)
                    cum = self.tables(hidden).numpy()  # rows read as numpy arrays: cheap to index
                    coded = self._advance(by_lane, feed, cum, t, on_step)
                    if on_tokens is not None and coded:
                        on_tokens(coded)

    def _advance(
        self,
        by_lane: dict[int, LaneWindow],
        feed: list[int],
        cum: Any,
        t: int,
        on_step: Callable[[LaneWindow, Any, int], int],
    ) -> int:
        """Code step ``t``'s tokens and set each lane's next input in ``feed``; returns how many tokens it coded."""
        coded = 0
        # lanes in slot order: a code's windows in a run are consecutive lanes, coded in window order
        for lane in sorted(by_lane):
            w = by_lane[lane]
            nxt = t + 1  # position in prefix+tokens this step predicts
            if nxt < len(w.prefix):
                feed[lane] = w.prefix[nxt] if self.embed is None else -1
            elif nxt - len(w.prefix) < w.length:
                sym = on_step(w, cum[lane], nxt - len(w.prefix))
                feed[lane] = sym if sym < self.vocab_size else self.stand_in
                coded += 1
            else:
                feed[lane] = 0
        return coded

    @staticmethod
    def _position(w: LaneWindow | None, t: int) -> int:
        """Position id of step ``t`` of window ``w`` (an idle lane: ``t``)."""
        if w is None or w.prefix_positions is None:
            return t
        p = w.prefix_positions
        return p[t] if t < len(p) else p[-1] + 1 + t - len(p)

    def _inputs(self, feed: list[int], by_lane: dict[int, LaneWindow], t: int, device: Any) -> Any:
        """This step's model input: ids ``[B, 1]``, or embeddings ``[B, 1, H]`` (``-1`` = the window's prefix row)."""
        import torch

        ids = torch.tensor([max(f, 0) for f in feed], dtype=torch.long, device=device).unsqueeze(1)
        if self.embed is None:
            return ids
        x = self.embed(ids).clone()
        for lane, f in enumerate(feed):
            if f < 0:
                x[lane, 0] = by_lane[lane].prefix[t].to(x.dtype)
        return x


def encode_windows(
    runner: LaneRunner,
    windows: list[LaneWindow],
    lanes: int,
    owners: int,
    on_tokens: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Arithmetic-code every window's known tokens under the runner's tables: one bit list per owner (an owner's
    windows are coded in slot order, step by step with the other lanes). The only encoding loop: the exact codec
    and the latent codec's residual both call it."""
    encoders = [ArithmeticEncoder() for _ in range(owners)]

    def on_step(w: LaneWindow, cum: Any, i: int) -> int:
        sym = w.tokens[i]  # type: ignore[index]
        encoders[w.owner].encode(int(cum[sym - 1]) if sym else 0, int(cum[sym]), int(cum[-1]))
        return sym

    runner.run(windows, lanes, on_step, on_tokens)
    return [enc.finish() for enc in encoders]


def decode_windows(
    runner: LaneRunner,
    windows: list[LaneWindow],
    lanes: int,
    bits: Sequence[Sequence[int]],
    end_token: int | None = None,
    on_tokens: Callable[[int], None] | None = None,
) -> dict[int, list[int]]:
    """Inverse of :func:`encode_windows`: the tokens of every owner (its windows in slot order).

    With ``end_token``, a window ends when that token is decoded (it is not kept) and its lane idles until the run
    ends; otherwise each window decodes exactly ``length`` tokens. Bits that point outside the model's
    distribution raise :class:`CorruptCodeError`."""
    decoders = [ArithmeticDecoder(b) for b in bits]
    ended: set[int] = set()

    def on_step(w: LaneWindow, cum: Any, i: int) -> int:
        if w.slot in ended:
            return end_token  # type: ignore[return-value]
        dec = decoders[w.owner]
        total = int(cum[-1])
        sym = int(cum.searchsorted(dec.target(total), side="right"))
        if sym >= len(cum):
            raise CorruptCodeError(
                "the code's bits point outside the model's distribution: the code is damaged"
            )
        dec.consume(int(cum[sym - 1]) if sym else 0, int(cum[sym]), total)
        if sym == end_token:
            ended.add(w.slot)
        else:
            w.tokens.append(sym)  # type: ignore[union-attr]
        return sym

    runner.run(windows, lanes, on_step, on_tokens)
    per_owner: dict[int, list[int]] = {}
    for w in sorted(windows, key=lambda w: (w.owner, w.slot)):
        per_owner.setdefault(w.owner, []).extend(w.tokens or [])
    return per_owner


@contextlib.contextmanager
def token_bar(total: int, enabled: bool, desc: str) -> Iterator[Callable[[int], None] | None]:
    """A tqdm bar over ``total`` tokens, yielded as its ``update`` (``None`` when disabled)."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="token", leave=False) as bar:
        yield bar.update


def place_windows(window_counts: Sequence[int], lane0s: Sequence[int], lanes: int) -> list[list[int]]:
    """Slots for the windows of several codes decoded together: each code's windows keep their lanes
    (``lane0 + i``), shifted by whole runs until no lane is taken twice in a run."""
    occupied: dict[int, set[int]] = {}  # run -> lanes used
    slots: list[list[int]] = []
    for count, lane0 in zip(window_counts, lane0s, strict=True):
        base = 0
        while any(
            (lane0 + i) % lanes in occupied.get(base + (lane0 + i) // lanes, set()) for i in range(count)
        ):
            base += 1
        mine = [base * lanes + lane0 + i for i in range(count)]
        for slot in mine:
            occupied.setdefault(slot // lanes, set()).add(slot % lanes)
        slots.append(mine)
    return slots


class EntropyCodec:
    """Exact, training-free codec. See the module docstring.

    Args:
        backbone: the loaded :class:`~zcompress_integrations.core.backbone.Backbone`.
        k: Z vocabulary size; a power of two (each Z-token carries ``log2(k)`` code bits).
        window: most tokens per independently coded window (longer = better context, fewer lanes in parallel).
        threads: torch intra-op threads used on both sides (recorded in each code; the decoder uses the code's
            count). ``None``: ``$ZCOMPRESS_CODEC_THREADS``, else 1. One thread is the default on purpose: a step
            is a few hundred small ops, and on a shared CPU every multi-threaded op waits at an OpenMP barrier for
            a core that another process holds (measured on a loaded 2-core box: 16 ms vs 0.09 ms per attention
            call, 5x slower single-text coding); and a 1-thread code decodes identically on any machine size.
        total_bits: frequency-table precision (2^24: quantisation costs ~0% over the model's cross-entropy).
        disable_adapters: context manager factory that turns LoRA adapters off (so the latent codec's adapters
            never change exact codes).
        path: the step path new codes are made with (:data:`PATH`, the newest, by default; ``1`` makes codes
            as zcompress made them before path 2). Codes of every path decode.
    """

    def __init__(
        self,
        backbone: Any,
        *,
        k: int = 4096,
        window: int = 256,
        threads: int | None = None,
        total_bits: int = MAX_TOTAL_BITS,
        disable_adapters: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        path: int = PATH,
    ) -> None:
        if k < 2 or k & (k - 1):
            raise ConfigError(f"k must be a power of two >= 2 for the exact codec; got {k}")
        max_pos = getattr(backbone.model.config, "max_position_embeddings", None) or 1 << 30
        if not 2 <= window <= max_pos - 1:
            raise ConfigError(f"window must be in [2, {max_pos - 1}] tokens for this model; got {window}")
        if path not in PATHS:
            raise ConfigError(f"path must be one of {PATHS}; got {path!r}")
        self.backbone = backbone
        self.k = k
        self.width = int(math.log2(k))
        self.window = window
        if threads is None:
            threads = default_codec_threads()
        if threads < 1:
            raise ConfigError(f"threads must be >= 1; got {threads}")
        self.threads = threads
        self.total_bits = total_bits
        self.path = path
        self.disable_adapters = disable_adapters or contextlib.nullcontext
        self.token_bytes = TokenBytes(backbone.tokenizer, backbone.text_vocab_size)
        self.start_token = self._start_token(backbone.tokenizer)
        self._runners: dict[tuple[int, int], LaneRunner] = {}
        self._head: Any = None

    @staticmethod
    def _start_token(tokenizer: Any) -> int:
        # A document separator gives plain text the best first-token prediction; fall back to BOS/EOS.
        for candidate in ("<|endoftext|>", "</s>", "<s>"):
            tid = tokenizer.convert_tokens_to_ids(candidate)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
                return tid
        for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
            if tid is not None:
                return int(tid)
        return 0

    # ---- model plumbing ----------------------------------------------------------------------------------
    def runner(self, path: int | None = None, total_bits: int | None = None) -> LaneRunner:
        """The lane runner of a step path (default: this codec's) and table precision (default: its own)."""
        from zcompress_integrations.core.lanestep import HFLaneStep, lane_step_for

        path = self.path if path is None else path
        total_bits = self.total_bits if total_bits is None else total_bits
        key = (path, total_bits)
        if key not in self._runners:
            model = self.backbone.model
            if self._head is None:
                # the text vocabulary's rows of the output layer, a fixed contiguous copy
                head = model.get_output_embeddings().weight[: self.backbone.text_vocab_size]
                self._head = head.detach().float().contiguous().clone()
            step = HFLaneStep(model) if path == 1 else lane_step_for(model)
            self._runners[key] = LaneRunner(
                step.step,
                step.start,
                self._head,
                self.token_bytes.codable,
                total_bits,
                self.start_token,
                sized_cache=True,
                float32_tables=path >= 2,
            )
        return self._runners[key]

    # ---- encode -------------------------------------------------------------------------------------------
    def encode_batch(
        self, items: Sequence[bytes | str], *, max_lanes: int | None = None, progress: bool = False
    ) -> list[ZCode]:
        """Code several texts side by side. ``str`` items decode back to ``str``, ``bytes`` to ``bytes``.

        ``max_lanes``: most windows stepped together (default 64 on path 2, 32 on path 1); every window of the
        batch is placed in runs of ``lanes`` of them, as few runs as the cap allows, each as full as possible.
        ``progress``: a token-level progress bar (it moves inside one long document too)."""
        datas = [as_bytes(x) for x in items]
        token_lists = [self.token_bytes.encode(d) for d in datas]
        sizes = [window_sizes(len(t), self.window) for t in token_lists]
        n_windows = sum(len(s) for s in sizes)
        if self.path == 1:
            lanes = choose_lanes(n_windows, max_lanes or 32)
        else:
            lanes = balanced_lanes(n_windows, max_lanes or MAX_LANES)
        threads = self.threads
        windows: list[LaneWindow] = []
        lane0: list[int] = []
        slot = 0
        for owner, tokens in enumerate(token_lists):
            lane0.append(slot % lanes)
            start = 0
            for size in sizes[owner]:
                chunk = tokens[start : start + size]
                windows.append(LaneWindow(owner, [self.start_token], chunk, size, slot))
                start += size
                slot += 1
        total = sum(len(t) for t in token_lists)
        with (
            fixed_threads(threads),
            self.disable_adapters(),
            token_bar(total, progress, "exact compress") as bar,
        ):
            bit_lists = encode_windows(self.runner(), windows, lanes, len(items), bar)
        precision = precision_params(self.backbone.model)
        codes = []
        for owner, item in enumerate(items):
            bits = bit_lists[owner] if token_lists[owner] else []
            params = {
                "window": self.window,
                "lanes": lanes,
                "lane0": lane0[owner],
                "threads": threads,
                "freq_bits": self.total_bits,
                "start": self.start_token,
                **precision,  # device/dtype/quant; none for fp32 on a CPU (core/loading.py)
            }
            if self.path != 1:  # path 1 codes carry no "path" (they predate it)
                params["path"] = self.path
            codes.append(
                ZCode(
                    z_ids=tuple(bits_to_ids(bits, self.width)),
                    codec="exact",
                    k=self.k,
                    text_tokens=len(token_lists[owner]),
                    text_chars=len(item),
                    checksum=text_checksum(datas[owner]),
                    fingerprint=self.backbone.fingerprint,
                    is_bytes=not isinstance(item, str),
                    params=params,
                )
            )
        return codes

    # ---- model cross-entropy ------------------------------------------------------------------------------
    def cross_entropy_bits(self, text: bytes | str) -> float:
        """The backbone's cross-entropy of ``text`` in bits (see :meth:`cross_entropy_bits_batch`)."""
        return self.cross_entropy_bits_batch([text])[0]

    def cross_entropy_bits_batch(
        self, items: Sequence[bytes | str], *, batch_windows: int = 8
    ) -> list[float]:
        """``-sum log2 p(token)`` of each text under the backbone, on the same windows and start token the codec
        codes, with one parallel (not KV-cached) forward pass per batch of windows.

        This is the bound the exact codec approaches: its bits are this figure plus the frequency-table
        quantisation and the coder's flush (a few bits), rounded up to whole Z-tokens. A virtual byte token (a
        byte the vocabulary cannot spell) costs what the codec pays for it, ``log2`` of the table total. Floating
        point differences between the parallel and step-wise paths move this figure by far less than a bit.
        """
        import torch

        datas = [as_bytes(x) for x in items]
        head_weight = self.runner().head_weight
        vocab = head_weight.shape[0]
        virtual_bits = float(self.total_bits)
        rows: list[tuple[int, list[int]]] = []  # (owner, tokens of one window)
        for owner, data in enumerate(datas):
            tokens = self.token_bytes.encode(data)
            start = 0
            for size in window_sizes(len(tokens), self.window):
                rows.append((owner, tokens[start : start + size]))
                start += size
        totals = [0.0] * len(datas)
        body = decoder_of(self.backbone.model)
        device = head_weight.device
        rows.sort(key=lambda r: len(r[1]))
        with fixed_threads(self.threads), self.disable_adapters(), torch.inference_mode():
            for s in range(0, len(rows), batch_windows):
                chunk = rows[s : s + batch_windows]
                width = max(len(toks) for _, toks in chunk)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, (_, toks) in enumerate(chunk):
                    feed = [self.start_token] + [t if t < vocab else self.start_token for t in toks[:-1]]
                    ids[r, : len(feed)] = torch.tensor(feed)
                    mask[r, : len(feed)] = 1
                hidden = body(
                    input_ids=ids.to(device), attention_mask=mask.to(device)
                ).last_hidden_state  # [B, T, H]
                for r, (owner, toks) in enumerate(chunk):
                    # one row at a time: [T, V] logits in float64 (~100 MB for 256 tokens of a 49k vocabulary)
                    logits = torch.nn.functional.linear(hidden[r, : len(toks)].float(), head_weight)
                    logp = torch.log_softmax(logits.double(), dim=-1).cpu()  # [T, V]
                    target = torch.tensor(toks)
                    real = target < vocab
                    picked = logp[torch.arange(len(toks))[real], target[real]]
                    totals[owner] += float(-picked.sum()) / math.log(2) + virtual_bits * int((~real).sum())
        return totals

    # ---- decode -------------------------------------------------------------------------------------------
    def check_compatible(self, code: ZCode) -> None:
        if code.codec != "exact":
            raise ConfigError(f"this is a {code.codec!r} code; the exact codec cannot decode it")
        if code.fingerprint != self.backbone.fingerprint:
            raise ModelMismatchError(
                f"this code was made by a different backbone (fingerprint {code.fingerprint.hex()}, this model "
                f"{self.backbone.fingerprint.hex()}); decode it with the model that compressed it"
            )
        needed = ("window", "lanes", "lane0", "threads", "freq_bits", "start")
        missing = [p for p in needed if p not in code.params]
        if missing:
            raise CorruptCodeError(f"exact code lacks parameters {missing}")
        if code.params.get("path", 1) not in PATHS:
            raise CorruptCodeError(
                f"exact code was made on step path {code.params['path']}; this zcompress decodes paths {PATHS} "
                "(a newer zcompress made it: upgrade zcompress-integrations)"
            )
        if code.k != self.k and code.k & (code.k - 1):
            raise CorruptCodeError(f"exact code has k={code.k}, which is not a power of two")
        if not 0 <= code.params["start"] < self.backbone.text_vocab_size:
            raise CorruptCodeError(
                f"exact code's start token {code.params['start']} is outside this model's vocabulary "
                f"({self.backbone.text_vocab_size} tokens)"
            )
        if (1 << code.params["freq_bits"]) <= len(self.token_bytes.codable):
            raise CorruptCodeError(
                f"exact code's frequency precision {code.params['freq_bits']} bits is too small"
            )
        if not 1 <= code.params["lanes"] <= MAX_LANES or code.params["lane0"] >= code.params["lanes"]:
            raise CorruptCodeError(f"exact code has an impossible lane layout {code.params}")
        check_precision(code.params, self.backbone.model)

    def decode_batch(self, codes: Sequence[ZCode], *, progress: bool = False) -> list[bytes]:
        """Decode codes, sharing runs between codes whose lanes do not collide. Raises on any mismatch.
        ``progress``: a token-level progress bar."""
        for code in codes:
            self.check_compatible(code)
        results: list[bytes | None] = [None] * len(codes)
        groups: dict[_Layout, list[int]] = {}
        for i, code in enumerate(codes):
            if code.text_tokens == 0:
                results[i] = b""
                continue
            p = code.params
            layout = _Layout(
                p.get("path", 1), p["window"], p["lanes"], p["threads"], p["freq_bits"], p["start"]
            )
            groups.setdefault(layout, []).append(i)
        for layout, members in groups.items():
            data = self._decode_group([codes[i] for i in members], layout, progress)
            for i, item in zip(members, data, strict=True):
                results[i] = item
        return results  # type: ignore[return-value]

    def _decode_group(self, codes: list[ZCode], layout: _Layout, progress: bool = False) -> list[bytes]:
        runner = self.runner(layout.path, layout.freq_bits)
        sizes = [window_sizes(code.text_tokens, layout.window) for code in codes]
        placed = self._place(codes, sizes, layout.lanes)
        windows = [
            LaneWindow(owner, [layout.start], None, size, slot)
            for owner in range(len(codes))
            for size, slot in zip(sizes[owner], placed[owner], strict=True)
        ]
        bits = [ids_to_bits(c.z_ids, int(math.log2(c.k))) for c in codes]
        total = sum(sum(s) for s in sizes)
        with (
            fixed_threads(layout.threads),
            self.disable_adapters(),
            token_bar(total, progress, "exact decompress") as bar,
        ):
            per_owner = decode_windows(runner, windows, layout.lanes, bits, on_tokens=bar)
        out = []
        for owner, code in enumerate(codes):
            data = self.token_bytes.decode(per_owner.get(owner, []))
            if text_checksum(data) != code.checksum:
                raise ChecksumMismatchError(
                    "the decoded text does not match the code's checksum: the code was made on hardware or "
                    "software that computes this model's probabilities differently (or it is damaged). Decode it "
                    f"where it was made, with {code.params.get('threads')} threads."
                )
            out.append(data)
        return out

    @staticmethod
    def _place(codes: list[ZCode], sizes: list[list[int]], lanes: int) -> list[list[int]]:
        """Slots for the codes' windows (:func:`place_windows`), first fit in the given order and in the order
        ``compress_batch`` codes texts in (longest first, by characters): that one rebuilds a batch's own layout
        when its codes come back in the order they were made, where the given order can push a code whose
        windows wrap from one run into the next into a run of its own. The placement with fewer steps wins."""
        lane0s = [c.params["lane0"] for c in codes]
        counts = [len(s) for s in sizes]

        def steps(slots: list[list[int]]) -> int:
            longest: dict[int, int] = {}
            for owner, mine in enumerate(slots):
                for size, slot in zip(sizes[owner], mine, strict=True):
                    longest[slot // lanes] = max(longest.get(slot // lanes, 0), size)
            return sum(longest.values())

        best = place_windows(counts, lane0s, lanes)
        order = sorted(range(len(codes)), key=lambda i: -codes[i].text_chars)
        if order != sorted(order):
            shuffled = place_windows([counts[i] for i in order], [lane0s[i] for i in order], lanes)
            other: list[list[int]] = [[] for _ in codes]
            for k, i in enumerate(order):
                other[i] = shuffled[k]
            if steps(other) < steps(best):
                best = other
        return best


class _Layout(NamedTuple):
    """What codes must share to decode in one batch: the step path and every number that shapes a step."""

    path: int
    window: int
    lanes: int
    threads: int
    freq_bits: int
    start: int
