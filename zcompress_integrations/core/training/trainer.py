"""Self-expressive autoencoding trainer for the latent codec.

One flat loop, numbered phases, a pure ``get_lr(step)`` and a plain-dict checkpoint (nanoGPT style):

1. sample a batch of training segments, a segment length ``L`` (full length half the time, else shorter, so the
   codec also sees the short last segment of a text) and a Z count ``m = L / r`` with ``r`` drawn from
   ``[ratio_min, ratio_max]``, early steps biased to small ratios (a curriculum from easy to hard);
2. compress: the ``compress`` adapter reads the segment and ``m`` slots, FSQ quantises each slot (straight-through);
3. decompress: the ``decompress`` adapter reads the Z embeddings and reconstructs the segment, teacher-forced, with
   optional scheduled sampling (a share of the input tokens replaced by the decoder's own greedy guesses);
4. loss = reconstruction cross-entropy (text + end token); backprop through both adapters; AdamW step;
5. log / evaluate (cross-entropy with true Z vs Z shuffled across the batch = the information Z carries; greedy
   reconstruction BLEU on held-apart *training-split* segments) / checkpoint.

A run killed at any point resumes from its last checkpoint with ``resume=True`` and continues bit-for-bit (batch
sampling comes from a saved numpy generator, and nothing else in a step is random).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zcompress_integrations.core.latent import LatentCodec, LatentConfig
from zcompress_integrations.errors import ConfigError

__all__ = ["TrainConfig", "train", "get_lr", "prepare_segments"]

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Training settings (every field is a ``zcompress train`` flag or a YAML/JSON key)."""

    out_dir: str = "runs/latent"
    data: list[str] = field(default_factory=list)  # jsonl files (field "text") or a prepared .npy of segments
    max_data_tokens: int = 0  # 0 = tokenise all of ``data``; else stop reading after this many tokens
    model: str | None = None  # backbone name or path; None = embedded default
    max_steps: int = 1000
    max_minutes: float = 0.0  # 0 = no time limit; else stop (and save) after this wall time
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 5e-4
    lr_modules: float = 2e-3
    lr_decoder: float | None = None  # lr of the decompress adapter (None = lr; 0 = frozen decoder, as in ICAE)
    warmup_steps: int = 50
    min_lr_frac: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    len_min: int = 8
    ratio_min: float = 1.25
    ratio_max: float = 6.0
    curriculum_steps: int = 200  # ratio_max ramps up from ratio_min over these steps
    sched_sampling: float = 0.0  # max share of teacher tokens replaced by the decoder's guesses
    hint: float = 0.0  # start weight of the text hint added to the Z embeddings (0 = off); anneals to 0
    hint_steps: int = 0  # steps over which the hint weight falls linearly to 0
    eval_every: int = 200
    eval_every_minutes: float = 0.0  # >0: also evaluate each time this much wall time has passed
    ckpt_every: int = 200
    log_every: int = 10
    val_segments: int = 256
    device: str = "auto"
    dtype: str | None = None
    quantization: str | None = None
    resume: bool = False
    progress: bool = False  # tqdm bar with loss, ratio and code usage
    latent: dict[str, Any] = field(default_factory=dict)  # LatentConfig overrides

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1 or self.max_steps < 0:
            raise ConfigError("batch_size and grad_accum must be >= 1, max_steps >= 0")
        if not 0 < self.ratio_min <= self.ratio_max:
            raise ConfigError(f"need 0 < ratio_min <= ratio_max; got {self.ratio_min}, {self.ratio_max}")
        if not 0 <= self.sched_sampling < 1:
            raise ConfigError(f"sched_sampling must be in [0, 1); got {self.sched_sampling}")


def get_lr(step: int, cfg: TrainConfig, base: float, elapsed_s: float = 0.0) -> float:
    """Linear warmup, then cosine decay to ``min_lr_frac * base`` at ``max_steps`` (or at ``max_minutes``, if
    that comes first: time-limited runs still finish their schedule)."""
    if step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.max_minutes:
        progress = max(progress, min(1.0, elapsed_s / (cfg.max_minutes * 60)))
    return base * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def prepare_segments(tokenizer: Any, files: Sequence[str], segment_len: int, max_tokens: int | None = None) -> Any:
    """Token segments ``[N, segment_len]`` (int32) from jsonl files with a ``text`` field, or a saved ``.npy``.

    Paragraphs of one record are joined by blank lines, tokenised, and cut into full segments (the remainder is
    dropped; shorter segments are made at training time by cropping).
    """
    import numpy as np

    if len(files) == 1 and str(files[0]).endswith(".npy"):
        return np.load(files[0]).astype(np.int64)
    rows: list[list[int]] = []
    total = 0
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                text = json.loads(line).get("text", "")
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                for s in range(0, len(ids) - segment_len + 1, segment_len):
                    rows.append(ids[s : s + segment_len])
                    total += segment_len
                if max_tokens and total >= max_tokens:
                    break
        if max_tokens and total >= max_tokens:
            break
    if not rows:
        raise ConfigError(f"no training segments of {segment_len} tokens in {list(files)}")
    return np.asarray(rows, dtype=np.int64)


def _bleu(hyps: list[str], refs: list[str]) -> float:
    try:
        from zcompress_integrations.eval.metrics import bleu

        return float(bleu(hyps, refs))
    except ImportError:  # sacrebleu missing: report nan rather than fail a training run
        return float("nan")


def train(
    cfg: TrainConfig,
    *,
    backbone: Any = None,
    segments: Any = None,
    on_eval: Callable[[LatentCodec, int, dict[str, Any]], None] | None = None,
) -> tuple[LatentCodec, list[dict[str, Any]]]:
    """Train (or resume) a latent codec; writes ``out_dir/{adapters/, checkpoint.pt, log.jsonl}``.

    Returns the codec and the logged records. ``backbone``/``segments`` may be given directly (tests);
    ``on_eval(codec, step, record)`` runs at each evaluation (e.g. a learning-curve hook).
    """
    import numpy as np
    import torch

    from zcompress_integrations.core.backbone import load_backbone

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if backbone is None:
        backbone = load_backbone(cfg.model, device=cfg.device, dtype=cfg.dtype, quantization=cfg.quantization)
    device = backbone.device
    latent_cfg = LatentConfig(**cfg.latent)
    if segments is None:
        segments = prepare_segments(
            backbone.tokenizer, cfg.data, latent_cfg.segment_len, max_tokens=cfg.max_data_tokens or None
        )
        np.random.default_rng(cfg.seed).shuffle(segments)  # files are in source order
    segments = np.asarray(segments, dtype=np.int64)
    n_val = min(cfg.val_segments, max(1, len(segments) // 10))
    train_segs, val_segs = segments[:-n_val], segments[-n_val:]
    L = latent_cfg.segment_len
    codec = LatentCodec.create(backbone, latent_cfg, seed=cfg.seed)
    eos = codec._eos
    use_autocast = device.type == "cuda"
    if not latent_cfg.training.get("calib_done"):
        val_lists = [list(map(int, row)) for row in val_segs[:128]]
        latent_cfg.calib_nll = float(np.mean(codec.segment_nll(val_lists)))
        latent_cfg.training["calib_done"] = True

    lora_params = [p for n, p in codec.peft_model.named_parameters() if "lora_" in n]
    for p in lora_params:
        p.requires_grad_(True)
    decoder_params = [p for n, p in codec.peft_model.named_parameters() if "lora_" in n and ".decompress." in n]
    decoder_ids = {id(p) for p in decoder_params}
    encoder_params = [p for p in lora_params if id(p) not in decoder_ids]
    lr_decoder = cfg.lr if cfg.lr_decoder is None else cfg.lr_decoder
    module_params = list(codec.modules.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": cfg.lr, "base": cfg.lr},
            {"params": module_params, "lr": cfg.lr_modules, "base": cfg.lr_modules},
            {"params": decoder_params, "lr": lr_decoder, "base": lr_decoder},
        ],
        weight_decay=cfg.weight_decay,
        betas=(0.9, 0.98),
    )
    rng = np.random.default_rng(cfg.seed)
    step, tokens_seen, wall = 0, 0, 0.0
    records: list[dict[str, Any]] = []
    ckpt_path = out / CHECKPOINT_NAME
    if cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        codec.peft_model.load_state_dict(ck["lora"], strict=False)
        codec.modules.load_state_dict(ck["modules"])
        opt.load_state_dict(ck["optimizer"])
        rng.bit_generator.state = ck["rng"]
        step, tokens_seen, wall = ck["step"], ck["tokens_seen"], ck["wall"]
        latent_cfg.calib_nll = ck["calib_nll"]
        logger.info("resumed from %s at step %d", ckpt_path, step)

    def save_checkpoint() -> None:
        lora_state = {k: v.detach().cpu() for k, v in codec.peft_model.state_dict().items() if "lora_" in k}
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(
            {
                "step": step,
                "tokens_seen": tokens_seen,
                "wall": wall,
                "lora": lora_state,
                "modules": codec.modules.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": rng.bit_generator.state,
                "calib_nll": latent_cfg.calib_nll,
                "config": asdict(cfg),
            },
            tmp,
        )
        tmp.replace(ckpt_path)

    def loss_on(
        x: Any, m: int, shuffle: bool = False, sampled_inputs: Any = None, hint: float = 0.0
    ) -> tuple[Any, Any]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
            with codec.adapter("compress", train=codec.peft_model.training):
                digits, q = codec.modules.quantize(codec.encode_hidden(x, m))
                z = codec.modules.embed(q)
            if hint > 0:
                z = z + hint * span_hint(x, m).to(z.dtype)
            if shuffle:
                z = z.roll(1, dims=0)
            with codec.adapter("decompress", train=codec.peft_model.training):
                logits = codec.reconstruction_logits(z, x if sampled_inputs is None else sampled_inputs)
        target = torch.cat([x, torch.full_like(x[:, :1], eos)], dim=1)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1))
        return loss, digits

    def span_hint(x: Any, m: int) -> Any:
        """[B, m, H]: Z slot i's share of the text (tokens i*L/m .. (i+1)*L/m), summed and scaled to one token's
        norm. Added to the Z embeddings early in training (annealed away) so the decoder learns to read its
        prefix positionally from the first steps; the encoder then learns to make Z carry what the hint did."""
        with torch.no_grad():
            emb = codec._embed(x).float()
            bounds = [round(i * x.shape[1] / m) for i in range(m + 1)]
            parts = [
                emb[:, a:b].sum(1) / max(1, b - a) ** 0.5 if b > a else emb[:, :0].sum(1)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]
            return torch.stack(parts, dim=1)

    def evaluate() -> dict[str, Any]:
        codec.peft_model.eval()
        codec.modules.eval()
        rec: dict[str, Any] = {}
        with torch.no_grad():
            x = torch.as_tensor(val_segs[:64], device=device)
            for r in (2.0, 4.0):
                m = max(1, round(L / r))
                true_loss, _ = loss_on(x, m)
                shuf_loss, _ = loss_on(x, m, shuffle=True)
                rec[f"val_ce_{r:g}x"] = float(true_loss)
                rec[f"val_info_{r:g}x"] = float(shuf_loss - true_loss)
            texts = [backbone.tokenizer.decode(list(map(int, row))) for row in val_segs[:32]]
            for r in (2.0, 4.0):
                codes = codec.compress_batch(texts, ratio=r)
                hyps = codec.decompress_batch(codes)
                rec[f"val_bleu_{r:g}x"] = _bleu(hyps, texts)
                rec[f"val_exact_{r:g}x"] = float(np.mean([h == t for h, t in zip(hyps, texts, strict=True)]))
                rec[f"val_ratio_{r:g}x"] = float(np.mean([c.ratio for c in codes]))
        codec.peft_model.train()
        codec.modules.train()
        return rec

    codec.peft_model.train()
    codec.modules.train()
    log_file = (out / "log.jsonl").open("a")
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", unit="step")
    t0 = time.time() - wall
    next_eval_s = wall + cfg.eval_every_minutes * 60
    while step < cfg.max_steps:
        if cfg.max_minutes and (time.time() - t0) / 60 >= cfg.max_minutes:
            logger.info("time limit reached at step %d", step)
            break
        for group in opt.param_groups:
            group["lr"] = get_lr(step, cfg, group["base"], time.time() - t0)
        # 1. batch, length, Z count (curriculum: the hardest ratio ramps up)
        ramp = min(1.0, step / max(1, cfg.curriculum_steps))
        hi = cfg.ratio_min + (cfg.ratio_max - cfg.ratio_min) * ramp
        loss_sum = 0.0
        for _ in range(cfg.grad_accum):
            idx = rng.integers(0, len(train_segs), size=cfg.batch_size)
            length = L if rng.random() < 0.5 else int(rng.integers(max(2, cfg.len_min), L + 1))
            ratio = float(rng.uniform(cfg.ratio_min, hi))
            m = max(1, min(latent_cfg.max_slots, round(length / ratio)))
            x = torch.as_tensor(train_segs[idx, :length], device=device)
            # 3b. scheduled sampling: replace a share of teacher tokens by the decoder's own guesses
            sampled = None
            share = cfg.sched_sampling * ramp
            if share > 0:
                with torch.no_grad():
                    codec.peft_model.eval()
                    _, guess_logits = None, None
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
                        with codec.adapter("compress"):
                            _, q0 = codec.modules.quantize(codec.encode_hidden(x, m))
                        with codec.adapter("decompress"):
                            guess_logits = codec.reconstruction_logits(codec.modules.embed(q0), x)
                    codec.peft_model.train()
                    guesses = guess_logits[:, :-1].argmax(-1)
                    mask = torch.as_tensor(rng.random(x.shape) < share, device=device)
                    sampled = torch.where(mask, guesses, x)
            # 2-4. compress, decompress, loss, backward
            hint = cfg.hint * max(0.0, 1 - step / cfg.hint_steps) if cfg.hint_steps else cfg.hint
            loss, digits = loss_on(x, m, sampled_inputs=sampled, hint=hint)
            (loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach()) / cfg.grad_accum
            tokens_seen += x.numel()
        # clipped per group: the Z embedding's gradients are large and would otherwise starve the adapters
        torch.nn.utils.clip_grad_norm_(encoder_params, cfg.grad_clip)
        torch.nn.utils.clip_grad_norm_(decoder_params, cfg.grad_clip)
        torch.nn.utils.clip_grad_norm_(module_params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        wall = time.time() - t0
        # 5. log, evaluate, checkpoint
        if step % cfg.log_every == 0 or step == 1:
            usage = int(torch.unique(digits.reshape(-1, digits.shape[-1]), dim=0).shape[0])
            rec = {
                "step": step,
                "loss": round(loss_sum, 4),
                "lr": opt.param_groups[0]["lr"],
                "ratio": round(length / m, 3),
                "hint": round(hint, 3),
                "codes_distinct_in_batch": usage,
                "tokens_seen": tokens_seen,
                "wall_s": round(wall, 1),
            }
            records.append(rec)
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()
            logger.info("step %d loss %.4f ratio %.2f", step, loss_sum, length / m)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum:.3f}", ratio=f"{length / m:.2f}", codes=usage)
        if bar is not None:
            bar.update(1)
        timed_eval = cfg.eval_every_minutes and wall >= next_eval_s
        if timed_eval:
            next_eval_s += cfg.eval_every_minutes * 60
        if (cfg.eval_every and step % cfg.eval_every == 0) or timed_eval:
            rec = {"step": step, "tokens_seen": tokens_seen, "wall_s": round(wall, 1), **evaluate()}
            records.append(rec)
            log_file.write(json.dumps(rec) + "\n")
            log_file.flush()
            if on_eval is not None:
                on_eval(codec, step, rec)
        if cfg.ckpt_every and step % cfg.ckpt_every == 0:
            save_checkpoint()
    save_checkpoint()
    log_file.close()
    if bar is not None:
        bar.close()
    latent_cfg.training.update(
        {"steps": step, "tokens_seen": tokens_seen, "wall_s": round(wall, 1), "device": str(device)}
    )
    codec.peft_model.eval()
    codec.modules.eval()
    codec.refresh_fingerprint()
    codec.save_pretrained(out / "adapters", card=model_card(cfg, latent_cfg, records, backbone))
    return codec, records


def model_card(cfg: TrainConfig, latent_cfg: LatentConfig, records: list[dict[str, Any]], backbone: Any) -> str:
    """README.md for an adapter directory: what was trained, on what, for how long, and how it scored."""
    import platform

    import torch

    t = latent_cfg.training
    evals = [r for r in records if any(k.startswith("val_") for k in r)]
    last = evals[-1] if evals else {}
    device = str(t.get("device", ""))
    hardware = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    lines = [
        f"# zcompress latent adapters for {latent_cfg.backbone or backbone.name}",
        "",
        "LoRA adapters `compress/` and `decompress/` (peft format) plus `latent_modules.safetensors` (slot and",
        "separator embeddings, FSQ projection, Z embedding table) for the latent codec of `zcompress_integrations`.",
        "Load with `ZCompressor.from_pretrained(adapters=DIR)`.",
        "",
        "## Training",
        "",
        f"- Data: {', '.join(str(d) for d in cfg.data) or 'given in code'} (training split only).",
        f"- Steps: {t.get('steps')}, batch {cfg.batch_size} x grad_accum {cfg.grad_accum}; text tokens seen: "
        f"{t.get('tokens_seen')}; wall time: {t.get('wall_s')} s on {hardware} ({platform.machine()}, torch "
        f"{torch.__version__}).",
        f"- Ratios {cfg.ratio_min}-{cfg.ratio_max} (curriculum over {cfg.curriculum_steps} steps); lr {cfg.lr} "
        f"(adapters), {cfg.lr_modules} (modules); seed {cfg.seed}.",
        f"- Z-tokens: FSQ {latent_cfg.fsq_levels}^{latent_cfg.fsq_dims} = 2^{latent_cfg.bits_per_z:.0f} codes, "
        f"`{latent_cfg.z_embedding}` embedding; segments of {latent_cfg.segment_len} tokens; LoRA r="
        f"{latent_cfg.lora_r} on {', '.join(latent_cfg.target_modules)}.",
        "",
        "## Last in-training evaluation (held-apart training-split segments, not the benchmark)",
        "",
        "```",
        json.dumps(last, indent=1),
        "```",
        "",
        "## Reproduce",
        "",
        "```",
        "zcompress train " + " ".join(_flags(cfg)),
        "```",
        "",
    ]
    return "\n".join(lines)


def _flags(cfg: TrainConfig) -> list[str]:
    default = TrainConfig()
    flags = []
    for key, value in asdict(cfg).items():
        if value == getattr(default, key) or key in ("resume", "progress"):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            flags.append(flag + " " + " ".join(map(str, value)))
        elif isinstance(value, dict):
            flags.append(f"{flag} '{json.dumps(value)}'")
        else:
            flags.append(f"{flag} {value}")
    return flags
