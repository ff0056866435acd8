"""Training of the ``infer`` adapter: predict the Z-tokens of the next segment from those of earlier ones.

The data are windows of ``k`` consecutive segments (a token array ``[N, k * segment_len]``). The compress adapter
and the Z embedding are frozen: they define the targets, and the decompress adapter must keep reading the same
vectors. One flat loop (nanoGPT style):

1. sample a batch of windows (a seeded numpy generator: runs are deterministic);
2. targets: compress every segment of the batch with the frozen ``compress`` adapter under ``torch.no_grad()``
   (cached per window: they never change), Z counts from the codec's own surprisal rule at ``ratio``;
3. teacher-forced forward of ``E(z^1) C E(z^2) C .. E(z^k)`` with the ``infer`` adapter; loss = cross-entropy of
   the Z head's ``fsq_dims`` digit softmaxes against the digits of segments ``2..k``;
4. backprop into the infer LoRA weights and the head only; AdamW step; log.

At the end the LoRA weights are rounded to bf16, the precision ``save_pretrained`` stores, so a saved and reloaded
codec continues exactly as the one in memory.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zcompress_integrations.core.latent import LatentCodec
from zcompress_integrations.core.zspace import (
    IGNORE,
    INFER_ADAPTER,
    add_infer_adapter,
    digit_loss,
    has_infer,
    infer_hidden,
    require_infer,
    window_inputs,
)
from zcompress_integrations.errors import ConfigError

__all__ = ["train_infer", "infer_loss", "group_infer_loss", "window_digits", "infer_lr"]

logger = logging.getLogger(__name__)


def infer_lr(step: int, steps: int, warmup: int, base: float, min_frac: float = 0.1) -> float:
    """Linear warmup, then cosine decay to ``min_frac * base`` at ``steps``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return base * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def _check_windows(codec: LatentCodec, windows: Any) -> Any:
    import numpy as np

    arr = np.asarray(windows, dtype=np.int64)
    L = codec.config.segment_len
    if arr.ndim != 2 or arr.shape[1] % L or arr.shape[1] // L < 2:
        raise ConfigError(
            f"infer windows must be a token array [N, k * segment_len] with k >= 2 (segment_len {L}); "
            f"got shape {tuple(arr.shape)}"
        )
    return arr


def window_digits(
    codec: LatentCodec, windows: Any, *, ratio: float | None = None, adaptive: bool = True
) -> list[list[Any]]:
    """Target digits of each window's segments: ``[[digits[m_j, D] for each segment] for each window]``.

    Made by the frozen compress adapter exactly as :meth:`LatentCodec.compress_batch` makes them (same Z counts,
    same padded batch path). ``adaptive=False`` gives every segment ``round(segment_len / ratio)`` Z-tokens.
    """
    import torch

    arr = _check_windows(codec, windows)
    cfg = codec.config
    L, k = cfg.segment_len, arr.shape[1] // cfg.segment_len
    ratio = float(ratio or cfg.default_ratio)
    flat = [list(map(int, row[j * L : (j + 1) * L])) for row in arr for j in range(k)]
    if adaptive:
        counts = [codec.slot_count(L, nll, ratio) for nll in codec.segment_nll(flat)]
    else:
        counts = [max(1, min(cfg.max_slots, round(L / ratio)))] * len(flat)
    was_training = codec.peft_model.training
    codec.peft_model.eval()
    # no_grad, not inference_mode: the digits' embeddings feed an autograd graph later
    with codec.adapter("compress"), torch.no_grad():
        hidden = codec._encode_padded(flat, counts)
        digits = [codec.modules.quantize(h)[0] for h in hidden]
    codec.peft_model.train(was_training)
    return [digits[i * k : (i + 1) * k] for i in range(len(arr))]


def _infer_params(codec: LatentCodec) -> list[Any]:
    marker = f".{INFER_ADAPTER}."
    return [p for n, p in codec.peft_model.named_parameters() if "lora_" in n and marker in n]


def _forward_loss(codec: LatentCodec, digits: list, train: bool) -> tuple[Any, Any, Any]:
    """(loss, logits[B, T, D, levels], targets[B, T, D]) for windows' digits, with the infer adapter."""
    import torch

    use_autocast = codec.backbone.device.type == "cuda"
    inputs, targets = window_inputs(codec, digits)
    with codec.adapter(INFER_ADAPTER):
        if train:
            _only_infer_grads(codec)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
            hidden = infer_hidden(codec, inputs)
        logits = codec.infer_head(hidden)
    return digit_loss(logits, targets), logits, targets


def _only_infer_grads(codec: LatentCodec) -> None:
    """set_adapter turns the active adapter's grads on; make sure no other adapter's are."""
    for n, p in codec.peft_model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(f".{INFER_ADAPTER}." in n)


def _group_forward(codec: LatentCodec, windows: Any, sizes: list[list[int]], train: bool) -> tuple[Any, Any, Any]:
    """Token-group code: (loss, logits[B, T, G, V], targets[B, T, G]) of predicting each group's next tokens."""
    from zcompress_integrations.core.zspace_groups import group_loss

    with codec.adapter(INFER_ADAPTER):
        if train:
            _only_infer_grads(codec)
        return group_loss(codec, [list(map(int, w)) for w in windows], sizes)


def group_infer_loss(codec: LatentCodec, windows: Any, size: int = 2) -> dict[str, float]:
    """Token-group code: teacher-forced CE (nats/token) and per-offset token accuracy of the infer adapter on
    ``windows`` cut into groups of ``size`` tokens (the context a continuation at ``size``x reads)."""
    import torch

    from zcompress_integrations.core.latent import even_groups

    require_infer(codec)
    arr = _check_windows(codec, windows)
    sizes = [even_groups(arr.shape[1], size)] * len(arr)
    was_training = codec.peft_model.training
    codec.peft_model.eval()
    with torch.no_grad():
        losses, hits, counts = [], None, None
        for i in range(0, len(arr), 4):
            loss, logits, targets = _group_forward(codec, arr[i : i + 4], sizes[i : i + 4], train=False)
            valid = targets != IGNORE
            hit = ((logits.argmax(-1) == targets) & valid).sum((0, 1)).float()
            hits = hit if hits is None else hits + hit
            n = valid.sum((0, 1)).float()
            counts = n if counts is None else counts + n
            losses.append(float(loss) * float(valid.sum()))
    codec.peft_model.train(was_training)
    out = {"loss": sum(losses) / float(counts.sum())}
    for k, (h, n) in enumerate(zip(hits.tolist(), counts.tolist(), strict=True)):
        out[f"acc_offset{k}"] = h / max(n, 1.0)
    return out


def infer_loss(
    codec: LatentCodec, windows: Any, *, ratio: float | None = None, adaptive: bool = True
) -> dict[str, float]:
    """Digit cross-entropy (nats), digit accuracy and whole-Z-token accuracy of the infer adapter on ``windows``
    (teacher-forced, segments ``2..k`` given the earlier ones)."""
    import torch

    require_infer(codec)
    digits = window_digits(codec, windows, ratio=ratio, adaptive=adaptive)
    was_training = codec.peft_model.training
    codec.peft_model.eval()
    with torch.no_grad():
        loss, logits, targets = _forward_loss(codec, digits, train=False)
    codec.peft_model.train(was_training)
    valid = targets[..., 0] != -100
    hit = logits.argmax(-1) == targets
    return {
        "loss": float(loss),
        "digit_acc": float(hit[valid].float().mean()),
        "z_acc": float(hit[valid].all(-1).float().mean()),
        "predicted_z": int(valid.sum()),
    }


def train_infer(
    codec: LatentCodec,
    segments: Any,
    *,
    steps: int = 200,
    batch_size: int = 8,
    lr: float = 5e-4,
    lr_head: float = 2e-3,
    ratio: float | None = None,
    adaptive: bool = True,
    warmup_steps: int = 10,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    log_every: int = 10,
    log_file: str | Path | None = None,
    progress: bool = False,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    group_probs: Sequence[float] = (0.2, 0.45, 0.15, 0.2),
    chain_rank: int = 0,
) -> list[dict[str, Any]]:
    """Train (or keep training) ``codec``'s ``infer`` adapter and Z head in place; returns the logged records.

    Args:
        codec: a latent codec with trained compress/decompress adapters (they stay frozen). A fresh ``infer``
            adapter is added (seeded by ``seed``) when it has none.
        segments: token windows ``[N, k * segment_len]``, ``k >= 2`` consecutive segments per row.
        steps / batch_size / lr / lr_head / warmup_steps / grad_clip / weight_decay: the optimisation (AdamW;
            ``lr`` for the LoRA weights, ``lr_head`` for the head and the "continue" embedding).
        ratio / adaptive: how the targets' Z counts are chosen (see :func:`window_digits`; learned codes).
        group_probs: token-group code: each window is cut at random into groups of ``k + 1`` tokens with
            probability ``group_probs[k]`` (the context a continuation reads), and every group's next
            ``max_group`` tokens are the targets.
        chain_rank: token-group code: give the head a chain of this rank first when it has none (offsets then
            read the token before them; see :func:`.zspace_groups.add_chain`). 0 leaves the head as it is.
        log_every / log_file / progress / on_log: a record every ``log_every`` steps, appended to ``log_file``
            (jsonl) and passed to ``on_log``; a tqdm bar with ``progress``.
    """
    import numpy as np
    import torch

    arr = _check_windows(codec, segments)
    token_code = codec.config.token_code
    probs = [p / sum(group_probs) for p in group_probs]
    if token_code and len(probs) > codec.config.max_group:
        raise ConfigError(f"group_probs has {len(probs)} sizes; this code's groups hold at most {codec.config.max_group}")
    if steps < 0 or batch_size < 1:
        raise ConfigError(f"need steps >= 0 and batch_size >= 1; got steps={steps}, batch_size={batch_size}")
    if not has_infer(codec):
        add_infer_adapter(codec, seed=seed)
    torch.manual_seed(seed)
    if chain_rank:
        if not token_code:
            raise ConfigError("chain_rank applies to the token-group code's head only; leave it at 0")
        from zcompress_integrations.core.zspace_groups import add_chain

        add_chain(codec, chain_rank)
    lora_params = _infer_params(codec)
    head_params = list(codec.infer_head.parameters())
    for p in [*lora_params, *head_params]:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [{"params": lora_params, "base": lr}, {"params": head_params, "base": lr_head}],
        lr=lr,
        weight_decay=weight_decay,
        betas=(0.9, 0.98),
    )
    rng = np.random.default_rng(seed)
    cache: dict[int, list[Any]] = {}  # window index -> target digits (int16: the compress adapter is frozen)
    records: list[dict[str, Any]] = []
    sink = Path(log_file).open("a") if log_file else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train infer", unit="step")
    t0 = time.time()
    codec.infer_head.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = infer_lr(step, steps, warmup_steps, group["base"])
        # 1. batch of windows
        idx = [int(i) for i in rng.integers(0, len(arr), size=batch_size)]
        if token_code:  # 2-3. a random grouping of each window; CE of every group's next max_group tokens
            from zcompress_integrations.core.training.token_code import random_groups

            sizes = [random_groups(arr.shape[1], probs, rng) for _ in idx]
            codec.peft_model.train()
            loss, _, _ = _group_forward(codec, arr[idx], sizes, train=True)
        else:
            # 2. targets from the frozen compress adapter (computed once per window)
            missing = sorted({i for i in idx if i not in cache})
            if missing:
                targets = window_digits(codec, arr[missing], ratio=ratio, adaptive=adaptive)
                for i, digits in zip(missing, targets, strict=True):
                    cache[i] = [d.to(torch.int16) for d in digits]
            batch = [[d.long() for d in cache[i]] for i in idx]
            # 3. teacher-forced infer forward, digit cross-entropy on segments 2..k
            codec.peft_model.train()
            loss, _, _ = _forward_loss(codec, batch, train=True)
        # 4. backward, clipped per group (the head's gradients are larger than the LoRA weights'), step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_params, grad_clip)
        torch.nn.utils.clip_grad_norm_(head_params, grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % log_every == 0 or step == 0 or step + 1 == steps:
            rec = {"step": step + 1, "loss": round(float(loss.detach()), 4), "lr": opt.param_groups[0]["lr"]}
            rec["wall_s"] = round(time.time() - t0, 1)
            records.append(rec)
            logger.info("infer step %d loss %.4f", step + 1, rec["loss"])
            if sink is not None:
                sink.write(json.dumps(rec) + "\n")
                sink.flush()
            if on_log is not None:
                on_log(rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
        if bar is not None:
            bar.update(1)
    if sink is not None:
        sink.close()
    if bar is not None:
        bar.close()
    # the saved adapters are bf16: round now so the codec in memory is the one a reload gives
    with torch.no_grad():
        for p in lora_params:
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    codec.peft_model.eval()
    codec.infer_head.eval()
    previous = codec.config.training.get("infer", {})
    codec.config.training["infer"] = {
        "steps": int(previous.get("steps", 0)) + steps,
        "window_segments": int(arr.shape[1] // codec.config.segment_len),
        "windows": len(arr),
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "last_loss": records[-1]["loss"] if records else None,
        "wall_s": round(time.time() - t0),
    }
    if token_code:
        codec.config.training["infer"].update(
            recipe="next token groups (core/zspace_groups.py)",
            group_probs=probs, lr_head=lr_head, chain_rank=codec.infer_head.chain_rank,
        )
    else:
        codec.config.training["infer"].update(ratio=float(ratio or codec.config.default_ratio), adaptive=adaptive)
    return records
