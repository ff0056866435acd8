"""Train the ``infer`` adapter (generation in Z space, ``zcompress train infer``): from the Z-tokens read so far,
predict the next token group (``core/zspace_groups.py``).

The data are windows of ``k >= 2`` consecutive segments (token rows ``[N, k * segment_len]``). The reader and the
code are frozen: the infer adapter reads the same Z embeddings the reader does. Each step cuts every window of the
batch at random into groups (sizes from ``group_probs``) and scores every group's next ``max_group`` tokens.
Only the ``infer`` LoRA and the head train; at the end the LoRA is rounded to bf16, the precision
``save_pretrained`` stores, so a saved and reloaded codec continues exactly as the one in memory.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from zcompress_integrations.core.codes.token_groups import even_groups
from zcompress_integrations.core.latent import LatentCodec
from zcompress_integrations.core.training.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    make_state,
    restore,
    save_checkpoint,
)
from zcompress_integrations.core.training.config import InferConfig
from zcompress_integrations.core.training.reader import log_row, random_groups, train_row
from zcompress_integrations.core.training.schedule import due, get_lr, out_of_time, schedule_of
from zcompress_integrations.core.zspace import (
    IGNORE,
    INFER_ADAPTER,
    add_infer_adapter,
    has_infer,
    require_infer,
)
from zcompress_integrations.errors import ConfigError

__all__ = [
    "run_infer",
    "train_infer",
    "group_infer_loss",
    "infer_weights",
    "apply_infer_weights",
    "infer_source",
    "check_windows",
]

logger = logging.getLogger(__name__)


def check_windows(codec: LatentCodec, windows: Any) -> Any:
    """``windows`` as an int64 array ``[N, k * segment_len]`` with ``k >= 2``, or a :class:`ConfigError`."""
    import numpy as np

    arr = np.asarray(windows, dtype=np.int64)
    L = codec.config.segment_len
    if arr.ndim != 2 or arr.shape[1] % L or arr.shape[1] // L < 2:
        raise ConfigError(
            f"infer windows must be a token array [N, k * segment_len] with k >= 2 (segment_len {L}); "
            f"got shape {tuple(arr.shape)}"
        )
    return arr


def _infer_lora(codec: LatentCodec) -> dict[str, Any]:
    return {
        n: p for n, p in codec.peft_model.named_parameters() if "lora_" in n and f".{INFER_ADAPTER}." in n
    }


def _group_forward(codec: LatentCodec, windows: Any, sizes: list[list[int]]) -> tuple[Any, Any, Any]:
    """(loss, logits ``[B, T, G, V]``, targets ``[B, T, G]``) of predicting each group's next tokens."""
    from zcompress_integrations.core.zspace_groups import group_loss

    codec.peft_model.base_model.set_adapter(INFER_ADAPTER)
    return group_loss(codec, [list(map(int, w)) for w in windows], sizes)


def group_infer_loss(codec: LatentCodec, windows: Any, size: int = 2) -> dict[str, float]:
    """Teacher-forced CE (nats/token) and per-offset token accuracy of the infer adapter on ``windows`` cut into
    groups of ``size`` tokens (the context a continuation at ``size``x reads)."""
    import torch

    require_infer(codec)
    arr = check_windows(codec, windows)
    sizes = [even_groups(arr.shape[1], size)] * len(arr)
    was_training = codec.peft_model.training
    codec.peft_model.eval()
    losses, hits, counts = [], None, None
    with torch.no_grad():
        for i in range(0, len(arr), 4):
            loss, logits, targets = _group_forward(codec, arr[i : i + 4], sizes[i : i + 4])
            valid = targets != IGNORE
            hit = ((logits.argmax(-1) == targets) & valid).sum((0, 1)).float()
            n = valid.sum((0, 1)).float()
            hits = hit if hits is None else hits + hit
            counts = n if counts is None else counts + n
            losses.append(float(loss) * float(valid.sum()))
    codec.peft_model.train(was_training)
    out = {"loss": sum(losses) / float(counts.sum())}
    for k, (h, n) in enumerate(zip(hits.tolist(), counts.tolist(), strict=True)):
        out[f"acc_offset{k}"] = h / max(n, 1.0)
    return out


def infer_weights(codec: LatentCodec) -> dict[str, Any]:
    """What an infer checkpoint holds: the infer LoRA (live names) and the head (``head.*``)."""
    out = {n: p.detach().cpu().clone() for n, p in _infer_lora(codec).items()}
    out.update({f"head.{k}": v.detach().cpu().clone() for k, v in codec.infer_head.state_dict().items()})
    return out


def apply_infer_weights(codec: LatentCodec, weights: dict[str, Any]) -> None:
    """Load :func:`infer_weights` into ``codec`` (which has an infer adapter; a chain is added when they hold one)."""
    import torch

    from zcompress_integrations.core.zspace_groups import add_chain

    head = {k[len("head.") :]: v for k, v in weights.items() if k.startswith("head.")}
    if "chain_down" in head:
        add_chain(codec, int(head["chain_down"].shape[2]))
    live = _infer_lora(codec)
    lora = {k: v for k, v in weights.items() if "lora_" in k}
    if set(lora) != set(live):
        raise ConfigError(
            "the infer weights to load do not match this model's infer adapter (other backbone or rank)"
        )
    with torch.no_grad():
        for name, value in lora.items():
            live[name].copy_(value.to(live[name]))
    codec.infer_head.load_state_dict({k: v.to(codec.infer_head.down) for k, v in head.items()})


def _check_inputs(
    codec: LatentCodec, windows: Any, held: Any, cfg: InferConfig
) -> tuple[Any, Any, list[float]]:
    """(train windows, held windows or None, normalised group_probs), checked against the codec."""
    if codec.config.positions != "aligned":
        raise ConfigError(
            f"the infer adapter continues Z at aligned positions; these adapters' reader uses "
            f"positions={codec.config.positions!r}: train infer on aligned-position adapters"
        )
    arr = check_windows(codec, windows)
    held = None if held is None or not len(held) else check_windows(codec, held)
    if len(cfg.group_probs) > codec.config.max_group:
        raise ConfigError(
            f"InferConfig.group_probs has {len(cfg.group_probs)} sizes; this code's groups hold at most "
            f"{codec.config.max_group}"
        )
    return arr, held, [p / sum(cfg.group_probs) for p in cfg.group_probs]


def _run_paths(run_dir: str | Path | None, resume: bool) -> tuple[Path | None, Path | None]:
    """(run folder, its checkpoint path), both None without ``run_dir``; the folder is created."""
    if run_dir is None:
        if resume:
            raise ConfigError("resume needs a run_dir with a checkpoint")
        return None, None
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    return run, run / CHECKPOINT_NAME


def _prepare_adapter(codec: LatentCodec, cfg: InferConfig, ckpt_path: Path | None, resume: bool) -> Any:
    """Add the infer adapter and head when there are none, a chain on request, and the saved weights on resume;
    returns the checkpoint (None when not resuming from one)."""
    import torch

    from zcompress_integrations.core.zspace_groups import add_chain

    if not has_infer(codec):
        add_infer_adapter(codec, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.chain_rank:
        add_chain(codec, cfg.chain_rank)
    state = load_checkpoint(ckpt_path, task="infer") if resume and ckpt_path.is_file() else None  # type: ignore[union-attr]
    if state is not None:
        apply_infer_weights(codec, state["trainable"])
    return state


def _infer_optimizer(codec: LatentCodec, cfg: InferConfig) -> tuple[list[Any], list[Any], Any]:
    """(LoRA parameters, head parameters, AdamW with one group each: peak lr ``base`` = lr, lr_head)."""
    import torch

    for name, p in codec.peft_model.named_parameters():
        p.requires_grad_("lora_" in name and f".{INFER_ADAPTER}." in name)
    lora_params = list(_infer_lora(codec).values())
    head_params = list(codec.infer_head.parameters())
    for p in head_params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [{"params": lora_params, "base": cfg.lr}, {"params": head_params, "base": cfg.lr_head}],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        betas=(0.9, 0.98),
    )
    return lora_params, head_params, opt


def _eval_row(codec: LatentCodec, held: Any, step: int) -> dict[str, Any]:
    """The eval row: held-out CE and per-offset accuracy at groups of 2; leaves the head training."""
    scores = {f"held_{k}": round(v, 4) for k, v in group_infer_loss(codec, held).items()}
    codec.infer_head.train()
    return {"kind": "eval", "step": step, **scores}


def _finish(
    codec: LatentCodec,
    cfg: InferConfig,
    lora_params: list[Any],
    arr: Any,
    probs: list[float],
    progress: dict[str, Any],
    records: list[dict[str, Any]],
) -> None:
    """Round the LoRA to bf16 (what ``save_pretrained`` stores), switch to eval, and record in the codec's config
    how the adapter was trained."""
    import torch

    with torch.no_grad():
        for p in lora_params:
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    codec.peft_model.eval()
    codec.infer_head.eval()
    previous = codec.config.training.get("infer", {})
    codec.config.training["infer"] = {
        "recipe": "next token groups (core/zspace_groups.py; zcompress train infer)",
        "steps": int(previous.get("steps", 0)) + progress["step"],
        "window_segments": int(arr.shape[1] // codec.config.segment_len),
        "windows": len(arr),
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "lr_head": cfg.lr_head,
        "decay": cfg.decay,
        "seed": cfg.seed,
        "group_probs": probs,
        "chain_rank": codec.infer_head.chain_rank,
        "last_loss": next((r["loss"] for r in reversed(records) if "loss" in r), None),
        "wall_s": round(progress["seconds"]),
    }


def train_infer(
    codec: LatentCodec,
    windows: Any,
    cfg: InferConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    held: Any = None,
) -> list[dict[str, Any]]:
    """Train (or keep training) ``codec``'s ``infer`` adapter and Z head in place; returns the logged rows.

    Args:
        codec: a latent codec with a trained reader (frozen). A fresh ``infer`` adapter is added (seeded by
            ``cfg.seed``) when it has none.
        windows: token rows ``[N, k * segment_len]``, ``k >= 2`` consecutive segments per row.
        cfg: the :class:`InferConfig` (``cfg.steps``, ``cfg.lr`` ...; its ``out``/``data``/``adapters`` are the
            CLI's business, not read here).
        run_dir: where ``checkpoint.pt`` and ``log.jsonl`` go; ``None`` writes nothing.
        resume: go on from ``run_dir/checkpoint.pt`` when there is one.
        held: windows for the held-out CE (groups of 2) in eval rows every ``cfg.eval_every`` steps.
    """
    import numpy as np
    import torch

    # 1. data and settings that depend on the codec
    arr, held, probs = _check_inputs(codec, windows, held, cfg)  # [N, k * L], [held, k * L] or None
    run, ckpt_path = _run_paths(run_dir, resume)

    # 2. the adapter and head (fresh when there are none), a chain on request, the saved state on resume
    state = _prepare_adapter(codec, cfg, ckpt_path, resume)

    # 3. what trains and the optimizer (lr for the LoRA, lr_head for the head)
    lora_params, head_params, opt = _infer_optimizer(codec, cfg)
    rng = np.random.default_rng(cfg.seed)
    progress = {"step": 0, "seconds": 0.0, "windows_seen": 0}
    if state is not None:
        progress = restore(state, opt, rng, progress)
        logger.info("resumed %s at step %d", ckpt_path, progress["step"])
    records: list[dict[str, Any]] = []

    # 4. the loop
    codec.peft_model.train()
    codec.infer_head.train()
    while progress["step"] < cfg.steps:
        t0 = time.time()
        scale = get_lr(progress["step"], lr=1.0, **schedule_of(cfg))  # each group: its own peak lr times this
        for group in opt.param_groups:
            group["lr"] = group["base"] * scale
        # 4a. a batch of windows, each cut at random into groups
        idx = rng.integers(0, len(arr), size=cfg.batch_size)
        sizes = [random_groups(arr.shape[1], probs, rng) for _ in idx]
        # 4b. CE of every group's next max_group tokens; backward
        loss, _, _ = _group_forward(codec, arr[idx], sizes)
        loss.backward()
        # 4c. clip per group (the head's gradients are larger than the LoRA's), step
        torch.nn.utils.clip_grad_norm_(lora_params, cfg.grad_clip)
        torch.nn.utils.clip_grad_norm_(head_params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        progress["step"] += 1
        progress["windows_seen"] += cfg.batch_size
        progress["seconds"] += time.time() - t0
        # 4d. log, checkpoint, evaluate; stop early once max_minutes have passed
        step, stop = progress["step"], out_of_time(cfg, progress)
        last = step == cfg.steps or stop
        if step == 1 or due(step, cfg.log_every, last):
            log_row(run, train_row(step, loss, opt.param_groups[0]["lr"], progress), records)
        if ckpt_path is not None and due(step, cfg.checkpoint_every, last):
            save_checkpoint(
                ckpt_path, make_state("infer", step, cfg, infer_weights(codec), opt, rng, progress)
            )
        if held is not None and due(step, cfg.eval_every, last):
            log_row(run, _eval_row(codec, held, step), records)
        if stop:
            logger.info("stopping at step %d: max_minutes=%s reached", step, cfg.max_minutes)
            break

    # 5. round to what save_pretrained stores; record how the adapter was trained
    _finish(codec, cfg, lora_params, arr, probs, progress, records)
    return records


def infer_source(source: str | Path) -> dict[str, Any]:
    """Infer weights to start from (``--init-from``): an infer run's ``checkpoint.pt`` or an adapters directory
    with ``infer/`` and the head, as :func:`infer_weights` names them. The optimizer starts fresh."""
    from safetensors.torch import load_file

    from zcompress_integrations.core.latent import default_adapter_dir
    from zcompress_integrations.core.zspace import INFER_HEAD_NAME

    path = default_adapter_dir() if str(source) == "default" else Path(source)
    if path.is_dir():
        lora_file, head_file = path / INFER_ADAPTER / "adapter_model.safetensors", path / INFER_HEAD_NAME
        if not lora_file.is_file() or not head_file.is_file():
            raise ConfigError(
                f"init_from: {path} has no infer adapter ({INFER_ADAPTER}/ and {INFER_HEAD_NAME})"
            )
        out = {
            k.replace(".weight", f".{INFER_ADAPTER}.weight"): v.float()
            for k, v in load_file(str(lora_file)).items()
        }
        out.update({f"head.{k}": v.float() for k, v in load_file(str(head_file)).items()})
        return out
    if path.is_file():
        return load_checkpoint(path, task="infer")["trainable"]
    raise ConfigError(f"init_from: {source} is neither an adapters directory nor an infer checkpoint file")


def run_infer(
    cfg: InferConfig, *, resume: bool = False, init_from: str | Path | None = None, backbone: Any = None
) -> LatentCodec:
    """``zcompress train infer``: load ``cfg.adapters``, cut windows of ``cfg.window_segments`` segments from
    ``cfg.data`` (the first ``cfg.held`` held apart), train, and write ``cfg.out/adapters`` (the input adapters
    plus ``infer/``)."""
    import numpy as np

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.latent import load_latent_codec
    from zcompress_integrations.core.training.data import load_rows

    if not cfg.adapters:
        raise ConfigError("InferConfig.adapters is required: the trained latent adapters to add infer/ to")
    if resume and init_from:
        raise ConfigError(
            "resume and init_from exclude each other: resume goes on from this run's own checkpoint"
        )
    if backbone is None:
        backbone = load_backbone(cfg.model, device=cfg.device, dtype="float32")
    codec = load_latent_codec(backbone, cfg.adapters)
    width = codec.config.segment_len * cfg.window_segments
    rows = load_rows(backbone.tokenizer, cfg.data, width, cfg.max_data_tokens)
    if len(rows) <= cfg.held:
        raise ConfigError(
            f"infer data: {len(rows)} windows of {width} tokens; need more than held={cfg.held}"
        )
    if init_from:
        if not has_infer(codec):
            add_infer_adapter(codec, seed=cfg.seed)
        apply_infer_weights(codec, infer_source(init_from))
        logger.info("initialised the infer adapter from %s", init_from)
    held, train = rows[: cfg.held], rows[cfg.held :]
    train = train[np.random.default_rng(cfg.seed).permutation(len(train))]
    train_infer(codec, train, cfg, run_dir=cfg.out, resume=resume, held=held)
    codec.save_pretrained(Path(cfg.out) / "adapters")
    logger.info("adapters with infer/ written to %s", Path(cfg.out) / "adapters")
    return codec
