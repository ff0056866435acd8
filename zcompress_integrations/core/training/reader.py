"""Train the token-group code's reader: the ``decompress`` LoRA (``zcompress train reader``).

The code is not learned, so it cannot collapse: each Z-token stands for a group of 1..``max_group`` consecutive text
tokens and its embedding is fixed (``core/codes/token_groups.py``). What the adapter learns is to find and read
it. With ``positions="aligned"`` (the shipped reader) Z-tokens sit where their group's first token sits, so reading
is a local lookup; with ``"consecutive"`` they take positions ``0 .. m-1`` and the reader finds them by content.

Loss: teacher-forced reconstruction cross-entropy (text + end token) after the prefix ``[Z_1 .. Z_m, sep]``, over
random partitions of training segments into groups (sizes drawn from ``group_probs``), so one adapter reads any
grouping the compressor chooses at any ratio up to ``max_group``. Optionally plus ``qa_weight`` times the
answer-from-Z loss (``from_z.py``). ``log.jsonl`` gets a train row every ``log_every`` steps and an eval row
every ``eval_every`` steps: held-out CE with the true code and with a shuffled one (what the reader gets from its
prior alone), at 2x and at ``max_group``x.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from zcompress_integrations.core.codes.token_groups import even_groups, group_starts
from zcompress_integrations.core.latent import (
    CONFIG_NAME,
    MODULES_NAME,
    READER,
    LatentCodec,
    LatentConfig,
    default_adapter_dir,
)
from zcompress_integrations.core.training.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    make_state,
    restore,
    save_checkpoint,
)
from zcompress_integrations.core.training.config import ReaderConfig
from zcompress_integrations.core.training.from_z import AnswerLoss, answer_card
from zcompress_integrations.core.training.schedule import due, out_of_time, set_lr
from zcompress_integrations.errors import ConfigError

__all__ = [
    "train_reader",
    "random_groups",
    "batch_inputs",
    "reconstruction_loss",
    "held_ce",
    "init_source",
    "apply_weights",
    "reader_weights",
    "write_adapters",
    "evaluate",
    "log_row",
    "train_row",
]

logger = logging.getLogger(__name__)

EVAL_BATCH = 8
SHAPE_FIELDS = (
    "model",
    "segment_len",
    "max_group",
    "lora_r",
    "train_sep",
    "positions",
)  # a resumed run cannot change these


def random_groups(length: int, probs: list[float], rng: Any) -> list[int]:
    """Sizes of a random partition of ``length`` tokens into groups (size k+1 with probability probs[k])."""
    sizes: list[int] = []
    left = length
    while left > 0:
        g = min(int(rng.choice(len(probs), p=probs)) + 1, left)
        sizes.append(g)
        left -= g
    return sizes


def batch_inputs(codec: LatentCodec, seg: Any, groups: list[list[int]]) -> tuple[Any, Any, Any]:
    """Inputs ``[B, m_max + 1 + n, H]``, position ids and attention mask of a batch ``seg [B, n]`` with per-row
    group sizes. Each row's prefix ``[Z.., sep]`` is left-padded to the longest, so separators and text line up."""
    import torch

    batch, n = seg.shape
    rows = [
        [seg[b, s : s + g].tolist() for s, g in zip(group_starts(groups[b]), groups[b], strict=True)]
        for b in range(batch)
    ]
    m_max = max(len(r) for r in rows)
    weight = codec.lm.get_input_embeddings().weight
    x = torch.zeros(batch, m_max + 1 + n, weight.shape[1], dtype=weight.dtype, device=seg.device)
    pos = torch.zeros(batch, m_max + 1 + n, dtype=torch.long, device=seg.device)
    mask = torch.zeros(batch, m_max + 1 + n, dtype=torch.long, device=seg.device)
    for b, token_groups in enumerate(rows):
        m = len(token_groups)
        prefix = codec.decoder_prefix(codec.code.group_embeddings(token_groups).unsqueeze(0))[0]  # [m + 1, H]
        x[b, m_max - m : m_max + 1] = prefix
        pos[b, m_max - m : m_max] = torch.as_tensor(codec.code.group_positions(groups[b])[0])
        mask[b, m_max - m :] = 1
    x[:, m_max + 1 :] = codec.embed(seg)
    pos[:, m_max] = 0  # the separator: where the first token is predicted
    pos[:, m_max + 1 :] = torch.arange(1, n + 1)
    return x, pos, mask


def reconstruction_loss(codec: LatentCodec, seg: Any, groups: list[list[int]], shuffle: bool = False) -> Any:
    """Mean CE (nats/token) of the text ``seg [B, n]`` and its end token given its token-group code. With
    ``shuffle`` every row reads the next row's code instead: what the reader gets from its prior alone."""
    import torch

    if shuffle:
        order = list(range(1, seg.shape[0])) + [0]
        x, pos, mask = batch_inputs(codec, seg[order], [groups[i] for i in order])
        x[:, -seg.shape[1] :] = codec.embed(seg)
    else:
        x, pos, mask = batch_inputs(codec, seg, groups)
    n = seg.shape[1]
    hidden = codec.lm.model(inputs_embeds=x, position_ids=pos, attention_mask=mask).last_hidden_state
    logits = codec.lm.lm_head(hidden[:, -n - 1 :]).float()  # [B, n + 1, V]
    end = torch.full((seg.shape[0], 1), codec.end_token, dtype=seg.dtype, device=seg.device)
    target = torch.cat([seg, end], 1)  # [B, n + 1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def held_ce(codec: LatentCodec, held: Any, groups: list[list[int]], shuffle: bool = False) -> float:
    """Mean :func:`reconstruction_loss` over held-out rows, ``EVAL_BATCH`` rows a forward, no gradients."""
    import torch

    with torch.no_grad(), codec.reading():
        losses = [
            float(reconstruction_loss(codec, held[i : i + EVAL_BATCH], groups[i : i + EVAL_BATCH], shuffle))
            for i in range(0, len(held), EVAL_BATCH)
        ]
    return sum(losses) / len(losses)


# ---- weights in and out ------------------------------------------------------------------------------------
def _lora_params(codec: LatentCodec, adapter: str) -> dict[str, Any]:
    return {n: p for n, p in codec.peft_model.named_parameters() if "lora_" in n and f".{adapter}." in n}


def reader_weights(codec: LatentCodec) -> dict[str, Any]:
    """What a reader checkpoint holds: the reader LoRA (live names), ``sep`` and the code's tensors (``code.*``)."""
    out = {n: p.detach().cpu().clone() for n, p in _lora_params(codec, READER).items()}
    out["sep"] = codec.sep.detach().cpu().clone()
    out.update({f"code.{k}": v.detach().cpu().clone() for k, v in codec.code.state_dict().items()})
    return out


def apply_weights(codec: LatentCodec, weights: dict[str, Any], adapter: str = READER) -> None:
    """Load :func:`reader_weights` (or :func:`init_source`'s) into ``codec``. LoRA weights of rank r <= the live
    rank fill A's first r rows and B's first r columns, the rest of B is zeroed: the adapter computes what the
    smaller one did (same alpha / r scale) and the extra rank trains from there."""
    import torch

    live = _lora_params(codec, adapter)
    lora = {k: v for k, v in weights.items() if "lora_" in k}
    unknown = sorted(set(lora) - set(live))
    if unknown:
        raise ConfigError(f"the weights to load hold LoRA tensors this model has not, e.g. {unknown[:2]}")
    missing = sorted(set(live) - set(lora))
    if missing:
        raise ConfigError(f"the weights to load lack LoRA tensors of this model, e.g. {missing[:2]}")
    with torch.no_grad():
        for name, value in lora.items():
            p = live[name]
            r = value.shape[0] if "lora_A" in name else value.shape[1]
            if r > (p.shape[0] if "lora_A" in name else p.shape[1]):
                raise ConfigError(f"{name} has rank {r}; the live adapter's is lower (set lora_r >= {r})")
            if "lora_A" in name:
                p[:r] = value.to(p)
            else:
                p.zero_()
                p[:, :r] = value.to(p)
        if "sep" in weights:
            codec.sep.copy_(weights["sep"].to(codec.sep))
    code_state = {k[len("code.") :]: v for k, v in weights.items() if k.startswith("code.")}
    if code_state:
        codec.code.load_state_dict(code_state)
    codec.refresh_fingerprint()


def adapter_dir_weights(path: Path, adapters: tuple[str, ...]) -> dict[str, Any]:
    """The LoRA weights of ``adapters`` in an adapters directory, under their live parameter names, plus ``"sep"``
    and the code's tensors (``"code.*"``), all fp32."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for adapter in adapters:
        saved = load_file(str(path / adapter / "adapter_model.safetensors"))
        # peft drops the adapter name when saving: put it back to match the live parameter names
        out.update({k.replace(".weight", f".{adapter}.weight"): v.float() for k, v in saved.items()})
    modules = load_file(str(path / MODULES_NAME))
    out["sep"] = modules.pop("sep").float()
    out.update({f"code.{k}": v for k, v in modules.items()})
    return out


def init_source(source: str | Path) -> dict[str, Any]:
    """Reader weights to start from (``--init-from``): an adapters directory (``"default"``: the shipped one) or
    a reader run's ``checkpoint.pt``, as :func:`reader_weights` names them. The optimizer starts fresh."""

    path = default_adapter_dir() if str(source) == "default" else Path(source)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise ConfigError(f"init_from: {path} is not a latent adapters directory (no {CONFIG_NAME})")
        LatentConfig.load(path)  # refuses the removed code kinds
        return adapter_dir_weights(path, (READER,))
    if path.is_file():
        return load_checkpoint(path, task="reader")["trainable"]
    raise ConfigError(
        f"init_from: {source} is neither 'default', an adapters directory nor a checkpoint file"
    )


def write_adapters(
    codec: LatentCodec, directory: Path, cfg: ReaderConfig, held: Any, progress: dict[str, Any]
) -> Path:
    """The adapters directory: reader LoRA, separator, config (with ``calib_nll`` from the held-apart segments, so
    Z counts follow surprisal relative to training text, and how the adapters were trained)."""
    if len(held):
        codec.config.calib_nll = float(sum(codec.segment_nll(held.tolist())) / len(held))
    codec.config.training = {
        "recipe": "token-group code, decompress LoRA (zcompress train reader)",
        "steps": progress["step"],
        "batch": cfg.batch_size,
        "segment_len": cfg.segment_len,
        "lr": cfg.lr,
        "decay": cfg.decay,
        "decay_start": cfg.decay_start,
        "group_probs": cfg.group_probs,
        "train_sep": cfg.train_sep,
        "tokens_seen": progress["tokens"],
        "wall_s": round(progress["seconds"]),
        "data": [str(d) for d in cfg.data],
    }
    if cfg.qa_weight > 0:
        codec.config.training["answer_from_z"] = answer_card(cfg, progress["qa_seen"])
    codec.refresh_fingerprint()
    out = codec.save_pretrained(directory)
    logger.info(
        "saved %s (step %d, %d text tokens, %.0f s)",
        out,
        progress["step"],
        progress["tokens"],
        progress["seconds"],
    )
    return out


def evaluate(
    codec: LatentCodec,
    held: Any,
    eval_groups: dict[str, list[list[int]]],
    answers: AnswerLoss | None,
    progress: dict[str, Any],
) -> dict[str, Any]:
    """The eval row: held-out CE with the true code and a shuffled one per grouping, and the held-out answer CE."""
    codec.peft_model.eval()
    row: dict[str, Any] = {
        "kind": "eval",
        "step": progress["step"],
        "tokens": progress["tokens"],
        "seconds": round(progress["seconds"], 1),
    }
    if len(held):
        for name, groups in eval_groups.items():
            row[f"held_ce_{name}"] = round(held_ce(codec, held, groups), 4)
            row[f"held_ce_{name}_shuffled"] = round(held_ce(codec, held, groups, shuffle=True), 4)
    if answers is not None:
        row["held_answer_ce_2x"] = round(answers.held_ce(2.0), 4)
    codec.peft_model.train()
    codec.peft_model.base_model.set_adapter(READER)
    return row


def log_row(run: Path | None, row: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Keep ``row``, log it, and append it to ``run/log.jsonl`` (the run's diagnostics) when there is a run folder."""
    records.append(row)
    logger.info("%s", json.dumps(row))
    if run is not None:
        with open(run / "log.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")


def train_row(step: int, loss: Any, lr: float, progress: dict[str, Any]) -> dict[str, Any]:
    """The train row of ``log.jsonl``: step, loss, learning rate, training seconds so far."""
    return {
        "kind": "train",
        "step": step,
        "loss": float(loss.detach()),
        "lr": lr,
        "seconds": round(progress["seconds"], 2),
    }


def _setup(
    cfg: ReaderConfig, *, resume: bool, init_from: str | Path | None, backbone: Any
) -> tuple[Any, LatentCodec]:
    """The run folder, the backbone (loaded unless given) and a fresh codec (same seed: same adapter init and
    separator)."""
    import torch

    from zcompress_integrations.core.backbone import load_backbone

    if resume and init_from:
        raise ConfigError(
            "resume and init_from exclude each other: resume goes on from this run's own checkpoint"
        )
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if backbone is None:
        backbone = load_backbone(cfg.model, device=cfg.device, dtype="float32")
    if backbone.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    L = cfg.segment_len
    latent = LatentConfig(
        segment_len=L,
        max_slots=L,
        max_group=cfg.max_group,
        lora_r=cfg.lora_r,
        lora_alpha=2 * cfg.lora_r,
        positions=cfg.positions,
    )
    return backbone, LatentCodec.create(backbone, latent, seed=cfg.seed)


def _split_rows(cfg: ReaderConfig, backbone: Any, segments: Any) -> tuple[Any, Any]:
    """(held ``[held, L]`` on the backbone's device, train rows ``[N - held, L]`` int64 numpy) from ``segments``
    or, when that is None, ``cfg.data``."""
    import numpy as np
    import torch

    from zcompress_integrations.core.training.data import load_rows

    L = cfg.segment_len
    if segments is None:
        segments = load_rows(backbone.tokenizer, cfg.data, L, cfg.max_data_tokens)
    rows = np.asarray(segments)
    if rows.ndim != 2 or rows.shape[1] < L or len(rows) <= cfg.held:
        raise ConfigError(
            f"reader data: need more than held={cfg.held} rows of >= {L} tokens; got {rows.shape}"
        )
    rows = rows[:, :L].astype(np.int64)
    return torch.as_tensor(rows[: cfg.held], device=backbone.device), rows[cfg.held :]


def _trainable(codec: LatentCodec, cfg: ReaderConfig) -> tuple[list[Any], Any]:
    """(parameters, AdamW over them): the reader LoRA, plus the separator with ``train_sep``."""
    import torch

    codec.peft_model.base_model.set_adapter(READER)
    for name, p in codec.peft_model.named_parameters():
        p.requires_grad_("lora_" in name and f".{READER}." in name)
    codec.sep.requires_grad_(cfg.train_sep)
    params = list(_lora_params(codec, READER).values()) + ([codec.sep] if cfg.train_sep else [])
    return params, torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)


def _start_from(
    codec: LatentCodec,
    cfg: ReaderConfig,
    opt: Any,
    rng: Any,
    progress: dict[str, Any],
    *,
    resume: bool,
    init_from: str | Path | None,
) -> dict[str, Any]:
    """Load this run's checkpoint (``resume``, when there is one: weights, optimizer, data stream) or other
    weights (``init_from``) into ``codec``; returns the progress to go on from."""
    ckpt_path = Path(cfg.out) / CHECKPOINT_NAME
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, task="reader")
        # a field a checkpoint predates holds its default there
        saved = {**{k: getattr(ReaderConfig(), k) for k in SHAPE_FIELDS}, **state["config"]}
        changed = [k for k in SHAPE_FIELDS if saved[k] != getattr(cfg, k)]
        if changed:
            raise ConfigError(
                f"resume: {ckpt_path} was trained with other {changed}; use init_from to change them"
            )
        apply_weights(codec, state["trainable"])
        progress = restore(state, opt, rng, progress)
        logger.info("resumed %s at step %d", ckpt_path, progress["step"])
    elif init_from:
        apply_weights(codec, init_source(init_from))
        logger.info("initialised from %s", init_from)
    return progress


def _eval_groups(cfg: ReaderConfig, n_held: int) -> dict[str, list[list[int]]]:
    """The fixed held-out groupings: all pairs (``"2x"``) and all ``max_group``-groups."""
    sizes = sorted({min(2, cfg.max_group), cfg.max_group})
    return {f"{g}x": [even_groups(cfg.segment_len, g)] * n_held for g in sizes}


def train_reader(
    cfg: ReaderConfig,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    backbone: Any = None,
    segments: Any = None,
) -> tuple[LatentCodec, list[dict[str, Any]]]:
    """Train (or, with ``resume``, go on training from ``cfg.out/checkpoint.pt``) a token-group reader; writes
    ``cfg.out/{checkpoint.pt, log.jsonl, adapters/}``. Returns the codec and the logged rows.

    ``init_from``: start from other reader weights (see :func:`init_source`) instead of a fresh adapter.
    ``backbone`` / ``segments`` (rows ``[N, >= segment_len]``) may be given directly instead of ``cfg.model`` /
    ``cfg.data``. A resumed run takes the schedule and the peak lr from ``cfg`` (a warm restart may change them).
    """
    import numpy as np
    import torch

    # 1. run folder, backbone, a fresh codec (same seed: same adapter init and separator)
    out, L = Path(cfg.out), cfg.segment_len
    backbone, codec = _setup(cfg, resume=resume, init_from=init_from, backbone=backbone)

    # 2. data: rows [N, L] of token ids; the first cfg.held rows are held apart for the eval
    held, train_rows = _split_rows(cfg, backbone, segments)  # [held, L] tensor, [N - held, L] array
    probs = [p / sum(cfg.group_probs) for p in cfg.group_probs]

    # 3. what trains (the reader LoRA; the separator with train_sep) and the optimizer
    params, opt = _trainable(codec, cfg)
    rng = np.random.default_rng(cfg.seed)  # the data stream: rows and groupings
    progress = {"step": 0, "tokens": 0, "seconds": 0.0, "qa_seen": 0}

    # 4. state: this run's checkpoint (resume), or other weights (init_from), or fresh
    progress = _start_from(codec, cfg, opt, rng, progress, resume=resume, init_from=init_from)

    # 5. the answer-from-Z loss (optional) and the fixed held-out groupings; a first eval row on a fresh run
    #    (a run resumed with the answer loss logs where it starts too)
    answers = AnswerLoss(codec, cfg, seed=cfg.seed) if cfg.qa_weight > 0 else None
    eval_groups = _eval_groups(cfg, len(held))
    records: list[dict[str, Any]] = []
    if progress["step"] == 0 or answers is not None:
        log_row(out, evaluate(codec, held, eval_groups, answers, progress), records)

    # 6. the loop
    codec.peft_model.train()
    while progress["step"] < cfg.steps:
        t0 = time.time()
        lr = set_lr(opt, cfg, progress["step"])
        # 6a. a batch: random rows, each cut into random groups
        rows_now = train_rows[rng.integers(0, len(train_rows), cfg.batch_size)]
        seg = torch.as_tensor(rows_now, device=backbone.device)  # [B, L]
        groups = [random_groups(L, probs, rng) for _ in range(cfg.batch_size)]
        # 6b. forward and backward (plus the answer rows' backward, with the answer-from-Z loss)
        loss = reconstruction_loss(codec, seg, groups)
        loss.backward()
        if answers is not None:
            answers.backward(cfg, rng, train_rows, backbone.tokenizer, [2.0, float(cfg.max_group)])
            progress["qa_seen"] += cfg.qa_batch
        # 6c. clip, step
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        progress["step"] += 1
        progress["tokens"] += cfg.batch_size * L
        progress["seconds"] += time.time() - t0
        # 6d. log, checkpoint, evaluate; stop early once max_minutes have passed
        step, stop = progress["step"], out_of_time(cfg, progress)
        last = step == cfg.steps or stop
        if step == 1 or due(step, cfg.log_every, last):
            log_row(out, train_row(step, loss, lr, progress), records)
        if due(step, cfg.checkpoint_every, last):
            state = make_state("reader", step, cfg, reader_weights(codec), opt, rng, progress)
            save_checkpoint(out / CHECKPOINT_NAME, state)
        if due(step, cfg.eval_every, last):
            log_row(out, evaluate(codec, held, eval_groups, answers, progress), records)
        if stop:
            logger.info("stopping at step %d: max_minutes=%s reached", step, cfg.max_minutes)
            break

    # 7. the adapters directory
    codec.peft_model.eval()
    write_adapters(codec, out / "adapters", cfg, held, progress)
    return codec, records
