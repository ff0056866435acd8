"""The learning-rate schedule of every training task, and when a step logs, checkpoints, evaluates or stops."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["get_lr", "schedule_of", "set_lr", "allowed_ratios", "curriculum_ratio", "due", "out_of_time"]


def get_lr(
    step: int,
    *,
    lr: float,
    steps: int,
    warmup_steps: int = 0,
    decay: str = "constant",
    decay_start: int | None = None,
    min_lr_frac: float = 0.1,
) -> float:
    """The learning rate of (0-based) ``step``: linear warm-up to ``lr`` over ``warmup_steps``, then ``decay``
    (``"constant"``, ``"linear"`` or ``"cosine"``) from ``decay_start`` (default: the end of the warm-up) down to
    ``lr * min_lr_frac`` at ``steps``, and flat after that."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant":
        return lr
    start = warmup_steps if decay_start is None else max(decay_start, warmup_steps)
    progress = min(1.0, max(0.0, (step - start) / max(1, steps - start)))
    if decay == "linear":
        return lr * (1 - (1 - min_lr_frac) * progress)
    if decay == "cosine":
        return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))
    raise ValueError(f"decay must be 'constant', 'linear' or 'cosine'; got {decay!r}")


def schedule_of(cfg: Any) -> dict[str, Any]:
    """:func:`get_lr`'s keyword arguments (all but ``lr``) from a task config."""
    names = ("steps", "warmup_steps", "decay", "decay_start", "min_lr_frac")
    return {name: getattr(cfg, name) for name in names}


def set_lr(opt: Any, cfg: Any, step: int) -> float:
    """Give every parameter group of ``opt`` the learning rate of ``step`` under ``cfg``'s schedule; return it."""
    lr = get_lr(step, lr=cfg.lr, **schedule_of(cfg))
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def allowed_ratios(cfg: Any, step: int) -> list[float]:
    """The ratios the curriculum allows at ``step``: ``cfg.ratios`` in order, one more every
    ``cfg.curriculum_every`` steps."""
    return list(cfg.ratios[: 1 + step // cfg.curriculum_every])


def curriculum_ratio(cfg: Any, step: int, rng: Any) -> float:
    """One of :func:`allowed_ratios`, drawn with ``rng`` (a numpy generator; one draw)."""
    allowed = allowed_ratios(cfg, step)
    return float(allowed[int(rng.integers(0, len(allowed)))])


def due(step: int, every: int, last: bool) -> bool:
    """Whether (1-based) ``step`` logs / checkpoints / evaluates: every ``every`` steps, and at the ``last`` one."""
    return step % every == 0 or last


def out_of_time(cfg: Any, progress: dict[str, Any]) -> bool:
    """Whether the run has trained ``cfg.max_minutes`` (0: no limit) by ``progress["seconds"]``."""
    return cfg.max_minutes > 0 and progress["seconds"] >= 60 * cfg.max_minutes
