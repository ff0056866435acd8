"""One checkpoint schema for every training task: a plain dict, written atomically, read with ``weights_only``.

    {
      "format": 1,
      "task": "reader" | "infer",
      "step": int,                      # optimizer steps done
      "config": {...},                  # the task's config as a plain dict
      "trainable": {name: tensor},      # LoRA weights (live parameter names), "sep", "head.*", "code.*"
      "optimizer": optimizer.state_dict(),
      "rng": {"python": ..., "numpy": ..., "torch": tensor, "cuda": [tensor, ...]},
      "data": {"rng": numpy Generator state, "tokens": int, "seconds": float, ...},   # where the data stream is
    }

Only tensors, numbers, strings, lists, tuples and dicts: ``torch.load(..., weights_only=True)`` reads it, so a
checkpoint cannot run code when it is loaded. Writing goes to a temporary file in the same folder, is fsynced and
then renamed over the old checkpoint (``os.replace``), so a run killed mid-write leaves the previous one intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

from zcompress_integrations.errors import ConfigError

__all__ = [
    "FORMAT",
    "CHECKPOINT_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "make_state",
    "restore",
    "rng_state",
    "set_rng_state",
]

FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"
_KEYS = ("format", "task", "step", "config", "trainable", "optimizer", "rng", "data")


def rng_state() -> dict[str, Any]:
    """Python, numpy (global) and torch (CPU and CUDA) generator states, as lists, tuples and tensors."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (the schema above) to ``path`` atomically: temp file in the same folder, fsync, rename."""
    import torch

    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def load_checkpoint(path: str | os.PathLike[str], task: str | None = None) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code runs); check its schema and, if given, its task."""
    import pickle

    import torch

    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ConfigError(f"{path} is not a zcompress training checkpoint (or it is damaged): {exc}") from exc
    if not isinstance(state, dict) or any(k not in state for k in _KEYS):
        raise ConfigError(
            f"{path} is not a zcompress training checkpoint (format {FORMAT}: keys {list(_KEYS)})"
        )
    if state["format"] != FORMAT:
        raise ConfigError(f"{path} has checkpoint format {state['format']!r}; this zcompress reads {FORMAT}")
    if task is not None and state["task"] != task:
        raise ConfigError(f"{path} is a {state['task']!r} checkpoint, not a {task!r} one")
    return state


def make_state(
    task: str,
    step: int,
    config: Any,
    trainable: dict[str, Any],
    optimizer: Any,
    data_rng: Any,
    progress: dict[str, Any],
) -> dict[str, Any]:
    """The checkpoint of ``task`` after ``step`` steps (``config``: the task's dataclass; ``data_rng``: the numpy
    Generator the data stream draws from; ``progress``: counters such as tokens and seconds)."""
    import dataclasses

    return {
        "format": FORMAT,
        "task": task,
        "step": step,
        "config": dataclasses.asdict(config),
        "trainable": trainable,
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "data": {"rng": data_rng.bit_generator.state, **progress},
    }


def restore(state: dict[str, Any], optimizer: Any, data_rng: Any, progress: dict[str, Any]) -> dict[str, Any]:
    """Put the optimizer, every RNG and the data stream back where ``state`` left them (the weights are the task's
    to load); returns the saved ``progress`` counters (a counter the checkpoint predates keeps its value in
    ``progress``)."""
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    data_rng.bit_generator.state = state["data"]["rng"]
    return {k: state["data"].get(k, progress[k]) for k in progress}
