"""`ZCompressor`: the one facade every integration calls.

    zc = ZCompressor.from_pretrained()              # embedded SmolLM2-135M, offline, CPU or GPU
    code = zc.compress("some long text")             # exact entropy codec -> ZCode
    assert zc.decompress(code) == "some long text"
    codes = zc.compress_batch(texts, show_progress_bar=True)

The model loads on first use, once, behind a lock. One instance is meant to be shared: concurrent ``compress``,
``decompress`` and ``generate`` calls from threads, and their awaitable twins (``acompress``, ``adecompress``,
``agenerate``, ...) from asyncio code, go through a batching scheduler that gathers them into shared batches with
results identical to serial calls (``core/scheduler.py``); the ``*_batch`` methods run directly, under the lock.
Instances pickle as their settings and reload the model lazily in the receiving process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from zcompress_integrations.core.generation import GenerationResult
from zcompress_integrations.core.scheduler import BatchScheduler, SchedulerConfig
from zcompress_integrations.core.zcode import ZCode
from zcompress_integrations.errors import ConfigError, CorruptCodeError, UnsupportedTextError

if TYPE_CHECKING:
    from zcompress_integrations.core.backbone import Backbone
    from zcompress_integrations.core.entropy import EntropyCodec
    from zcompress_integrations.core.latent import LatentCodec

__all__ = ["ZCompressor", "GenerationResult"]

logger = logging.getLogger(__name__)

Mode = Literal["exact", "latent"]
EXACT_DECODE_BATCH = 32  # exact codes decoded side by side
LATENT_DECODE_BATCH = 128  # latent segments read in one left-padded batch (the shipped figures use this)
_MODES = ("exact", "latent")


def _check_text(text: Any, what: str = "text") -> str | bytes:
    if isinstance(text, str | bytes):
        return text
    if isinstance(text, bytearray | memoryview):
        return bytes(text)
    raise UnsupportedTextError(f"{what} must be str or bytes; got {type(text).__name__}")


class ZCompressor:
    """Compress text into Z-tokens and back with one backbone LLM.

    Build it with :meth:`from_pretrained` (a model name or path) or :meth:`from_model` (objects already in memory).

    Args:
        name_or_path: ``None`` for the embedded default, or a local model directory / cached Hub id.
        adapters: latent-codec adapter directory, ``"default"`` for the shipped one, or ``None``.
        device: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
        dtype: ``"auto"`` (bf16 on a CUDA GPU with native bf16, else fp32), ``"float32"``, ``"bfloat16"`` or
            ``"float16"``.
        quantization: ``None``, ``"4bit"`` (nf4, computing in bf16) or ``"8bit"``: bitsandbytes, CUDA only.
        k: Z vocabulary size of the exact codec (power of two; each Z-token carries ``log2(k)`` bits).
        window: tokens per independently coded window of the exact codec.
        model_kwargs: extra keyword arguments for ``AutoModelForCausalLM.from_pretrained`` (they override the
            options above).
        scheduler: how concurrent calls are gathered into shared batches (:class:`SchedulerConfig`; ``None``: the
            defaults, batch sizes by device).

    Exact codes (and latent residuals) decode only with the device kind, dtype and quantization that made them:
    an exact code records them and another setting refuses it with :class:`ModelMismatchError` (see
    ``docs/gpu.md``).
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str] | None = None,
        *,
        adapters: str | os.PathLike[str] | None = "default",
        device: str | None = "auto",
        dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = "auto",
        quantization: Literal["4bit", "8bit"] | None = None,
        k: int = 4096,
        window: int = 256,
        model_kwargs: dict[str, Any] | None = None,
        scheduler: SchedulerConfig | None = None,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k & (k - 1) or k > 2**32:
            raise ConfigError(f"k must be an integer power of two in [2, 2**32]; got {k!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ConfigError(f"window must be an integer >= 2 tokens; got {window!r}")
        if scheduler is not None and not isinstance(scheduler, SchedulerConfig):
            raise ConfigError(f"scheduler must be a SchedulerConfig or None; got {scheduler!r}")
        from zcompress_integrations.core.loading import LoadOptions

        options = LoadOptions(device=device, dtype=dtype, quantization=quantization)  # values only: no torch
        self._settings: dict[str, Any] = {
            "name_or_path": None if name_or_path is None else str(name_or_path),
            "adapters": None if adapters is None else str(adapters),
            "device": options.device,
            "dtype": options.dtype,
            "quantization": options.quantization,
            "k": k,
            "window": window,
            "model_kwargs": dict(model_kwargs or {}),
            "scheduler": scheduler,
        }
        self._lock = threading.RLock()
        self._scheduler: BatchScheduler | None = None
        self._scheduler_lock = threading.Lock()
        self._backbone: Any = None
        self._exact: Any = None
        self._latent: Any = None
        self._latent_error: str | None = None

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> ZCompressor:
        """Settings are checked now; the model itself loads on first use (see the class docstring for args).

        What depends on the machine (CUDA present, bitsandbytes installed) is checked when the model loads, before
        any model file is read, so a compressor can be built on one machine and sent to another (a Ray actor)."""
        return cls(name_or_path, **kwargs)

    @classmethod
    def from_model(
        cls, model: Any, tokenizer: Any, *, adapters: str | None = None, **kwargs: Any
    ) -> ZCompressor:
        """Wrap a model and tokenizer already in memory (tests use tiny random models this way)."""
        from zcompress_integrations.core.backbone import backbone_from_model

        zc = cls(None, adapters=adapters, **kwargs)
        zc._settings["name_or_path"] = getattr(model.config, "_name_or_path", None) or "in-memory"
        zc._backbone = backbone_from_model(model, tokenizer, name=zc._settings["name_or_path"])
        zc._settings["_in_memory"] = True
        return zc

    @classmethod
    def from_codec(cls, codec: LatentCodec, **kwargs: Any) -> ZCompressor:
        """Wrap a latent codec already in memory, with its backbone (what a training loop holds)."""
        zc = cls(None, adapters=None, **kwargs)
        zc._settings["name_or_path"] = codec.backbone.name
        zc._settings["_in_memory"] = True
        zc._backbone, zc._latent = codec.backbone, codec
        return zc

    def __getstate__(self) -> dict[str, Any]:
        state = {"settings": dict(self._settings)}
        if self._settings.get("_in_memory"):
            state["model"] = self._backbone.model
            state["tokenizer"] = self._backbone.tokenizer
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        settings = state["settings"]
        in_memory = settings.pop("_in_memory", False)
        self.__init__(**settings)  # type: ignore[misc]
        if in_memory:
            from zcompress_integrations.core.backbone import backbone_from_model

            self._backbone = backbone_from_model(
                state["model"], state["tokenizer"], name=settings["name_or_path"]
            )
            self._settings["_in_memory"] = True

    def __repr__(self) -> str:
        loaded = "loaded" if self._backbone is not None else "not loaded"
        return f"ZCompressor(model={self.model_name!r}, k={self.k}, {loaded})"

    # ---- lazy state ----------------------------------------------------------------------------------------
    @property
    def settings(self) -> dict[str, Any]:
        """The constructor settings (what pickling and integration cache keys use)."""
        return {k: v for k, v in self._settings.items() if not k.startswith("_")}

    @property
    def model_name(self) -> str:
        from zcompress_integrations.core.backbone import DEFAULT_MODEL

        return self._settings["name_or_path"] or DEFAULT_MODEL

    @property
    def k(self) -> int:
        return self._settings["k"]

    @property
    def lock(self) -> threading.RLock:
        """The lock every model call of this instance runs under (re-entrant)."""
        return self._lock

    @property
    def scheduler(self) -> BatchScheduler:
        """The batching scheduler single calls go through (its ``stats`` and ``pending`` show what it does)."""
        if self._scheduler is None:
            with self._scheduler_lock:
                if self._scheduler is None:
                    self._scheduler = BatchScheduler(self, self._settings["scheduler"] or SchedulerConfig())
        return self._scheduler

    @property
    def backbone(self) -> Backbone:
        """The loaded backbone (loads it on first access)."""
        if self._backbone is None:
            with self._lock:
                if self._backbone is None:
                    from zcompress_integrations.core.backbone import load_backbone

                    s = self._settings
                    self._backbone = load_backbone(
                        s["name_or_path"],
                        device=s["device"],
                        dtype=s["dtype"],
                        quantization=s["quantization"],
                        model_kwargs=s["model_kwargs"],
                    )
        return self._backbone

    @property
    def fingerprint(self) -> bytes:
        """4-byte fingerprint of the backbone, stored in every exact code."""
        return self.backbone.fingerprint

    @property
    def exact_codec(self) -> EntropyCodec:
        """The exact (entropy) codec, built on first use."""
        if self._exact is None:
            with self._lock:
                if self._exact is None:
                    from zcompress_integrations.core.entropy import EntropyCodec

                    self._exact = EntropyCodec(
                        self.backbone,
                        k=self._settings["k"],
                        window=self._settings["window"],
                        disable_adapters=self.base_model,
                    )
        return self._exact

    def base_model(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which the backbone runs without any LoRA adapter (the exact codec, plain prompts)."""
        if self._latent is not None:
            return self._latent.adapters_off()
        return contextlib.nullcontext()

    @property
    def latent_codec(self) -> LatentCodec:
        """The latent codec with the configured adapters, loaded on first use (:class:`LatentUnavailableError`
        when there are none)."""
        if self._latent is None:
            with self._lock:
                if self._latent is None:
                    from zcompress_integrations.core.latent import load_latent_codec

                    self._latent = load_latent_codec(self.backbone, self._settings["adapters"])
        return self._latent

    # ---- public API --------------------------------------------------------------------------------------
    def count_tokens(self, text: str | bytes) -> int:
        """Number of backbone tokens of ``text`` (exactly what the codecs count as ``text_tokens``)."""
        from zcompress_integrations.core.entropy import as_bytes

        data = _check_text(text)
        return len(self.exact_codec.token_bytes.encode(as_bytes(data)))

    def cross_entropy_bits(self, text: str | bytes) -> float:
        """The backbone's cross-entropy of ``text`` in bits (the floor an exact code can reach)."""
        return self.exact_codec.cross_entropy_bits(_check_text(text))

    def compress(
        self, text: str | bytes, *, mode: Mode = "exact", ratio: float | None = None, exact: bool = False
    ) -> ZCode:
        """Compress one text. ``mode="exact"`` is lossless; ``mode="latent"`` gives Z-tokens the model can read,
        and with ``exact=True`` also a residual that makes its decompression byte-exact.

        Concurrent calls share batches where that changes no result (see ``core/scheduler.py``); the code is the
        one ``compress_batch([text], ...)`` makes."""
        items = self._check_compress([text], mode, ratio, exact, 32)
        options = {"mode": mode, "ratio": ratio, "exact": exact}
        return self.scheduler.call("compress", items, options)[0]

    async def acompress(
        self, text: str | bytes, *, mode: Mode = "exact", ratio: float | None = None, exact: bool = False
    ) -> ZCode:
        """Awaitable :meth:`compress`: queued on the scheduler; the event loop never waits on the model."""
        items = self._check_compress([text], mode, ratio, exact, 32)
        options = {"mode": mode, "ratio": ratio, "exact": exact}
        return (await self.scheduler.acall("compress", items, options))[0]

    async def acompress_batch(
        self,
        texts: Sequence[str | bytes],
        *,
        mode: Mode = "exact",
        ratio: float | None = None,
        exact: bool = False,
        batch_size: int = 32,
    ) -> list[ZCode]:
        """Awaitable :meth:`compress_batch`: one request on the scheduler, with the codes ``compress_batch`` makes
        (latent texts may share a batch with other callers'; exact ones are coded as one call, their lanes laid
        out over ``texts``)."""
        items = self._check_compress(texts, mode, ratio, exact, batch_size)
        options = {"mode": mode, "ratio": ratio, "exact": exact, "batch_size": batch_size}
        return await self.scheduler.acall("compress", items, options)

    def _check_compress(
        self, texts: Sequence[str | bytes], mode: Any, ratio: Any, exact: Any, batch_size: Any
    ) -> list[str | bytes]:
        """The texts of a compress call, checked (the same errors wherever the call runs)."""
        if isinstance(texts, str | bytes):
            raise UnsupportedTextError("compress_batch takes a list of texts; use compress() for one text")
        items = [_check_text(t, f"texts[{i}]") for i, t in enumerate(texts)]
        if mode not in _MODES:
            raise ConfigError(f"mode must be one of {_MODES}; got {mode!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        if mode == "exact" and (ratio is not None or exact):
            raise ConfigError(
                "ratio= and exact= apply to mode='latent'; the exact codec is always lossless and its ratio is set "
                "by the text itself"
            )
        return items

    def compress_batch(
        self,
        texts: Sequence[str | bytes],
        *,
        mode: Mode = "exact",
        ratio: float | None = None,
        exact: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool = False,
    ) -> list[ZCode]:
        """Compress many texts; windows of several texts are coded side by side (``batch_size`` texts a group)."""
        items = self._check_compress(texts, mode, ratio, exact, batch_size)
        if mode == "latent":
            return self._compress_latent(
                items, ratio=ratio, exact=exact, batch_size=batch_size, progress=show_progress_bar
            )
        codec = self.exact_codec
        order = sorted(range(len(items)), key=lambda i: len(items[i]), reverse=True)
        out: list[ZCode | None] = [None] * len(items)
        groups = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        outer = show_progress_bar and len(groups) > 1  # one group: its token bar says it all
        with self._lock:
            for group in _progress(groups, outer, "compress"):
                batch = [items[i] for i in group]
                for i, code in zip(group, codec.encode_batch(batch, progress=show_progress_bar), strict=True):
                    out[i] = code
        return out  # type: ignore[return-value]

    def _compress_latent(
        self, items: list[str | bytes], *, ratio: float | None, exact: bool, batch_size: int, progress: bool
    ) -> list[ZCode]:
        codec = self.latent_codec  # LatentUnavailableError when no adapters are installed
        with self._lock:
            return codec.compress_batch(
                items, ratio=ratio, exact=exact, batch_size=batch_size, progress=progress
            )

    def decompress(self, code: ZCode | bytes | str) -> str | bytes:
        """Text of a code (``bytes`` when the original was bytes). Raises rather than return wrong text.

        Exact codes, latent codes made with ``exact=True``, and token-group latent codes (whose ids name their
        tokens) give the original byte for byte. Where a latent code does not hold its text (a learned code,
        generated Z-tokens, bytes the tokenizer cannot spell) this is the reader's reconstruction, as
        :meth:`reconstruct` gives it. Concurrent calls share batches where that changes no result (see
        ``core/scheduler.py``)."""
        return self.scheduler.call("decompress", [ZCode.load(code)], {})[0]

    async def adecompress(self, code: ZCode | bytes | str) -> str | bytes:
        """Awaitable :meth:`decompress`: queued on the scheduler; the event loop never waits on the model."""
        return (await self.scheduler.acall("decompress", [ZCode.load(code)], {}))[0]

    async def adecompress_batch(
        self, codes: Sequence[ZCode | bytes | str], *, batch_size: int | None = None
    ) -> list[str | bytes]:
        """Awaitable :meth:`decompress_batch`: one request on the scheduler, with the texts it returns."""
        _check_decode_batch_size(batch_size)
        parsed = [ZCode.load(c) for c in codes]
        return await self.scheduler.acall("decompress", parsed, {"batch_size": batch_size})

    def decompress_batch(
        self,
        codes: Sequence[ZCode | bytes | str],
        *,
        show_progress_bar: bool = False,
        batch_size: int | None = None,
    ) -> list[str | bytes]:
        """Decode many codes (see :meth:`decompress`); codes compressed together decode together at the same speed.

        ``batch_size``: exact codes decoded together (default 32), or latent segments read together in one
        left-padded batch (default 128)."""
        _check_decode_batch_size(batch_size)
        parsed = [ZCode.load(c) for c in codes]
        out: list[str | bytes | None] = [None] * len(parsed)
        exact = [i for i, c in enumerate(parsed) if c.codec == "exact"]
        latent = [i for i, c in enumerate(parsed) if c.codec == "latent"]
        with self._lock:
            if exact:
                codec = self.exact_codec
                size = batch_size or EXACT_DECODE_BATCH
                groups = [exact[s : s + size] for s in range(0, len(exact), size)]
                for group in _progress(groups, show_progress_bar and len(groups) > 1, "decompress"):
                    batch = [parsed[i] for i in group]
                    for i, data in zip(
                        group, codec.decode_batch(batch, progress=show_progress_bar), strict=True
                    ):
                        out[i] = data if parsed[i].is_bytes else _utf8(data)
            if latent:
                texts = self.latent_codec.decompress_batch(
                    [parsed[i] for i in latent],
                    batch_size=batch_size or LATENT_DECODE_BATCH,
                    progress=show_progress_bar,
                )
                for i, text in zip(latent, texts, strict=True):
                    out[i] = text
        return out  # type: ignore[return-value]

    def reconstruct(self, code: ZCode | bytes | str) -> str | bytes:
        """What the model reads back from a latent code's Z-tokens: the reader's free-running reconstruction.

        Lossy, and the same whether or not the code holds the exact text (``decompress`` returns that where it can).
        It shows what a prompt of these Z-tokens gives the model; the evaluation's BLEU-4 is measured on it."""
        return self.reconstruct_batch([code])[0]

    def reconstruct_batch(
        self,
        codes: Sequence[ZCode | bytes | str],
        *,
        show_progress_bar: bool = False,
        batch_size: int | None = None,
    ) -> list[str | bytes]:
        """:meth:`reconstruct` for many latent codes, ``batch_size`` segments read together (default 128).

        Raises:
            ConfigError: a code is not a latent code (an exact code's Z-tokens are not for the model to read).
        """
        _check_decode_batch_size(batch_size)
        parsed = [ZCode.load(c) for c in codes]
        for code in parsed:
            if code.codec != "latent":
                raise ConfigError(
                    f"reconstruct reads latent codes; this is a {code.codec!r} code: use decompress for its text"
                )
        if not parsed:
            return []
        with self._lock:
            return self.latent_codec.reconstruct_batch(
                parsed, batch_size=batch_size or LATENT_DECODE_BATCH, progress=show_progress_bar
            )

    def continue_z(
        self,
        code: ZCode | bytes | str,
        n_segments: int = 1,
        *,
        z_per_segment: int | None = None,
        context_segments: int | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float | None = None,
    ) -> ZCode:
        """Generation in Z space: the Z-tokens of the ``n_segments`` segments that follow a latent ``code``.

        The result holds only the continuation; ``decompress`` renders it as text. Needs adapters with an
        ``infer`` adapter (:class:`LatentUnavailableError` otherwise). Greedy by default, with a mild
        repetition penalty for the token-group code (``None``: 1.1; pass 1 for none). See :mod:`.zspace`.
        """
        parsed = ZCode.load(code)
        codec = self.latent_codec
        with self._lock:
            return codec.continue_z(
                parsed,
                n_segments,
                z_per_segment=z_per_segment,
                context_segments=context_segments,
                temperature=temperature,
                seed=seed,
                top_p=top_p,
                repetition_penalty=repetition_penalty,
            )

    def generate(
        self,
        prompt: str | Sequence[dict[str, Any]],
        *,
        context: Sequence[ZCode | str | bytes] = (),
        titles: Sequence[str | None] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        stream: bool = False,
        system: str | None = None,
    ) -> GenerationResult | Iterator[str]:
        """Answer ``prompt`` from ``context`` items (Z codes or plain text). See :mod:`.generation`.

        ``prompt`` is a question or a conversation (``[{"role": ..., "content": ...}, ...]``, rendered with the
        backbone's chat template, the context in the last user turn); ``system`` replaces the default system turn.
        Concurrent calls queue on the scheduler, each answered as alone (``stream=True`` runs in this thread,
        holding the lock while the stream is read).
        """
        from zcompress_integrations.core.generation import generate

        if stream:
            return generate(
                self,
                _with_system(prompt, system),
                context=context,
                titles=titles,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                stop=stop,
                stream=True,
            )
        options = _generate_options(context, titles, max_new_tokens, temperature, stop)
        return self.scheduler.call("generate", [_with_system(prompt, system)], options)

    async def agenerate(
        self,
        prompt: str | Sequence[dict[str, Any]],
        *,
        context: Sequence[ZCode | str | bytes] = (),
        titles: Sequence[str | None] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        system: str | None = None,
    ) -> GenerationResult:
        """Awaitable :meth:`generate` (no streaming): queued on the scheduler; the event loop never waits on the
        model."""
        options = _generate_options(context, titles, max_new_tokens, temperature, stop)
        return await self.scheduler.acall("generate", [_with_system(prompt, system)], options)

    def generate_batch(
        self,
        prompts: Sequence[str | Sequence[dict[str, Any]]],
        *,
        contexts: Sequence[Sequence[ZCode | str | bytes]] | None = None,
        titles: Sequence[Sequence[str | None] | None] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        batch_size: int = 8,
        seed: int = 0,
        system: str | None = None,
    ) -> list[GenerationResult]:
        """Answers to many prompts at once (``contexts[i]`` and ``titles[i]`` belong to ``prompts[i]``); greedy, or
        sampled at ``temperature > 0`` (seeded by ``seed``).

        Same prompts and token accounting as :meth:`generate`, decoded in left-padded batches of ``batch_size``:
        many short answers cost little more than one. Results are in the order of ``prompts``.
        """
        from zcompress_integrations.core.generation import generate_batch

        return generate_batch(
            self,
            [_with_system(p, system) for p in prompts],
            contexts=contexts,
            titles=titles,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop=stop,
            batch_size=batch_size,
            seed=seed,
        )

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write this compressor's latent adapters (reader, ``infer`` when loaded, config) to ``directory``, so that
        ``ZCompressor.from_pretrained(name, adapters=directory)`` loads them. The backbone itself is not copied: it
        is named in the config by name and fingerprint."""
        with self._lock:
            return self.latent_codec.save_pretrained(directory)

    def info(self) -> dict[str, Any]:
        """Model and codec facts (for ``zcompress info`` and integration metadata)."""
        b = self.backbone
        return {
            "model": self.model_name,
            "fingerprint": b.fingerprint.hex(),
            "device": str(b.device),
            "dtype": str(b.model.get_input_embeddings().weight.dtype).removeprefix("torch."),
            "quantization": b.extra.get("quantization"),
            "text_vocab_size": b.text_vocab_size,
            "k": self.k,
        }


def _generate_options(
    context: Any, titles: Any, max_new_tokens: Any, temperature: Any, stop: Any
) -> dict[str, Any]:
    """The keyword arguments of a scheduled ``generate`` call, its decoding settings checked."""
    from zcompress_integrations.core.generation import _check_decoding, _context_list

    stops = _check_decoding(max_new_tokens, temperature, stop)
    return {
        "context": _context_list(context),  # a bare text is refused, not split into one document per letter
        "titles": titles,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "stop": stops or None,
    }


def _check_decode_batch_size(batch_size: Any) -> None:
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ConfigError(f"batch_size must be an integer >= 1 or None; got {batch_size!r}")


def _with_system(prompt: Any, system: str | None) -> Any:
    """A prompt whose system turn is ``system`` (the prompt itself when ``system`` is None)."""
    if system is None:
        return prompt
    if isinstance(prompt, dict):  # {"messages": [...], "tools": [...]}
        return {**prompt, "messages": _with_system(prompt.get("messages", []), system)}
    turns = [{"role": "user", "content": f"Question: {prompt}"}] if isinstance(prompt, str) else list(prompt)
    return [{"role": "system", "content": system}, *(t for t in turns if t.get("role") != "system")]


def _utf8(data: bytes) -> str:
    """Decoded bytes of a code that says it holds text (a forged flag on bytes that are not UTF-8 is refused)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptCodeError("the code says it holds text, but its decoded bytes are not UTF-8") from exc


def _progress(items: list[Any], enabled: bool, desc: str) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch")
