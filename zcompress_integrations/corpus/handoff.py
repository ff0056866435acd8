"""Hand one batch of texts from an integration to Ray Data and get its codes back, in order.

What ``ZCompressTransform(ray_workers=N)`` (LlamaIndex) and ``ZCompressDocumentTransformer(ray_workers=N)``
(LangChain) call instead of ``compress_batch``: the texts go to a jsonl file, :func:`compress_corpus` compresses
them on an actor pool (one model per actor, on this machine's local cluster or at ``address``), and the parts are
read back with :func:`read_codes`. Every text comes back or the call raises; none is dropped.

The actors build their compressors from the integration's settings (model, adapters, ``k``, ``window``); settings
the corpus pipeline cannot pass on (``dtype``, ``quantization``, ``model_kwargs``, a CUDA device without GPUs per
actor) are refused with a :class:`ConfigError` rather than silently changed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from zcompress_integrations.errors import ConfigError, ZCompressError

if TYPE_CHECKING:
    from zcompress_integrations.core.zcode import ZCode

__all__ = ["compress_texts", "check_settings"]


def check_settings(settings: Mapping[str, Any], num_gpus_per_worker: float) -> None:
    """Refuse compressor settings the actors would not reproduce."""
    if settings.get("model_name_or_path") == "in-memory":
        raise ConfigError(
            "ray_workers: the compressor wraps an in-memory model the Ray actors cannot load; build it from a "
            "model name or directory, or set ray_workers=0"
        )
    for name in ("dtype", "quantization"):
        if settings.get(name) not in (None, "auto"):
            raise ConfigError(
                f"ray_workers: the Ray actors cannot use {name}={settings[name]!r}; set {name}=None or ray_workers=0"
            )
    if settings.get("model_kwargs"):
        raise ConfigError(
            "ray_workers: the Ray actors cannot use model_kwargs; drop them or set ray_workers=0"
        )
    device = str(settings.get("device") or "auto")
    if device.startswith("cuda") and num_gpus_per_worker <= 0:
        raise ConfigError(
            f"ray_workers: device={device!r} needs ray_num_gpus_per_worker > 0 (actors without a GPU run on CPU)"
        )
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"ray_workers: the Ray actors run on CPU or CUDA, not device={device!r}")


def compress_texts(
    texts: Sequence[str],
    settings: Mapping[str, Any],
    *,
    mode: Literal["exact", "latent"],
    ratio: float | None,
    workers: int,
    address: str | None = None,
    num_cpus_per_worker: float = 1.0,
    num_gpus_per_worker: float = 0.0,
    batch_size: int = 32,
    workdir: str | None = None,
    progress: bool = False,
) -> list[ZCode]:
    """The codes of ``texts`` (same order), made on Ray Data by ``workers`` actors.

    Args:
        settings: ``ZCompressor.from_pretrained`` options (``model_name_or_path``, ``adapters``, ``k``, ``window``...).
        workdir: where the run's input and parts go, kept after the call so that calling again with the same texts
            resumes instead of recompressing; ``None``: a temporary folder, removed after.
    """
    from zcompress_integrations.core.zcode import ZCode
    from zcompress_integrations.corpus import compress_corpus, read_codes

    check_settings(settings, num_gpus_per_worker)
    if not texts:
        return []
    with tempfile.TemporaryDirectory(prefix="zcompress-ray-") as scratch:
        root = Path(workdir) if workdir is not None else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        source = root / "texts.jsonl"
        lines = "".join(
            json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)
        )
        if not (source.is_file() and source.read_text(encoding="utf-8") == lines):
            if (root / "codes").exists():
                raise ConfigError(f"ray_workdir {root} holds the run of other texts; give an empty folder")
            source.write_text(lines, encoding="utf-8")
        compress_corpus(
            str(source),
            root / "codes",
            mode=mode,
            ratio=ratio,
            model=settings.get("model_name_or_path"),
            adapters=settings.get("adapters", "default"),
            k=int(settings.get("k", 4096)),
            window=int(settings.get("window", 256)),
            workers=workers,
            batch_size=batch_size,
            num_cpus_per_worker=num_cpus_per_worker,
            num_gpus_per_worker=num_gpus_per_worker,
            code_format="string",
            input_format="jsonl",
            address=address,
            progress=progress,
        )
        codes = read_codes(root / "codes")
    missing = [i for i in range(len(texts)) if str(i) not in codes]
    if missing:
        raise ZCompressError(
            f"Ray run returned no code for {len(missing)} of {len(texts)} texts (first: {missing[0]})"
        )
    return [ZCode.load(codes[str(i)]) for i in range(len(texts))]
