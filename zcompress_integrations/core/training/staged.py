"""Train the learned code in stages that each fit on a CPU (``zcompress train staged``).

The joint recipe (``compressor.py``) backpropagates through a compress pass and a reader pass (two with the
contrast term) every step: ~65 s a step on this 2-core CPU, and run 1's Z carried nothing after 43 steps. This
recipe splits the learned code into three pieces that each train against a fixed target:

0. **The vocabulary** (step 0, deterministic): the codebook is residual k-means over the token-group embeddings
   (``token_groups.py``: the embeddings the shipped reader already reads) of surprisal-balanced training spans of
   ``kmeans_rows`` rows at every curriculum ratio. Spans of up to ``max_span`` tokens, so ratios past 4x have Z
   rows too. The codebook then stays fixed: it is the finite vocabulary both other pieces agree on.
1. **Reader** (steps < ``reader_steps``): a span's *teacher id* is the residual-VQ id of its token-group embedding;
   the reader (the shipped token-group ``decompress`` LoRA to start) learns to write the text back from the
   teacher ids' codebook rows at consecutive positions. Only the reader trains; no compress pass is needed.
2. **Writer** (the next ``writer_steps``): the backbone with its ``compress`` LoRA, ``to_z`` and the stop head
   learns to write the teacher ids from its own hidden states. ``to_z`` starts from a ridge regression of the
   teacher rows on the hidden states at span ends (``writer_fit_rows`` rows); then, per codebook, cross-entropy of the teacher row
   under logits ``2 z.B - |B|^2`` (the nearest row is the most likely: argmax = what ``quantize`` picks; the second
   codebook reads the residual after the teacher's first row), plus the stop head's imitation of the span ends
   under the length budget, as in ``compressor.py``. Only the writer trains.

Each stage's loss has a fixed target, so neither can collapse onto the other; whether Z carries information is
logged, not assumed: every eval row has the reader's CE with the teacher ids and with another segment's, the
writer's id accuracy, and (once the writer trains) the whole inference path's diagnostics (``diagnostics``).
What the recipe cannot give: a code better than the quantised token-group embedding it imitates (content-adaptive
spans come only from the surprisal teacher). That is the next stage (end to end), not this module.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from zcompress_integrations.core.codes.learned import COMPRESS, quantize
from zcompress_integrations.core.codes.token_groups import TokenGroupCode, group_starts
from zcompress_integrations.core.latent import READER, LatentCodec
from zcompress_integrations.core.training.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    make_state,
    restore,
    save_checkpoint,
)
from zcompress_integrations.core.training.compressor import (
    _apply,
    _lora,
    _rows,
    _setup,
    _weights,
    diagnostics,
    kmeans,
    reader_ce,
    teacher_spans,
)
from zcompress_integrations.core.training.config import StagedConfig
from zcompress_integrations.core.training.reader import log_row
from zcompress_integrations.core.training.schedule import curriculum_ratio, due, out_of_time, set_lr

__all__ = ["train_staged", "span_embeddings", "teacher_ids", "writer_loss", "init_vocabulary", "fit_to_z"]

logger = logging.getLogger(__name__)


def span_embeddings(teacher: TokenGroupCode, seg: Any, spans: list[list[int]]) -> list[Any]:
    """Per row of ``seg [B, n]``: ``[m, H]`` token-group embeddings of its spans (sizes ``spans[b]``)."""
    out = []
    for b, sizes in enumerate(spans):
        toks = seg[b].tolist()
        groups = [toks[s : s + g] for s, g in zip(group_starts(sizes), sizes, strict=True)]
        out.append(teacher.group_embeddings(groups).float())
    return out


def teacher_ids(codebook: Any, embeddings: list[Any]) -> list[Any]:
    """``[m, C]`` residual-VQ codebook rows of each row's span embeddings: the ids the writer must write."""
    return [quantize(e.to(codebook.dtype), codebook)[1] for e in embeddings]


def writer_loss(z: Any, target: Any, codebook: Any) -> tuple[Any, Any]:
    """Cross-entropy (summed over codebooks, mean over spans) of the teacher rows ``target [m, C]`` under logits
    ``2 z.B - |B|^2`` (the residual after the teacher's earlier rows for codebooks 2..C), and the share of spans
    whose greedy residual VQ of ``z`` gives exactly the teacher ids."""
    import torch
    import torch.nn.functional as F

    rest, loss = z, z.new_zeros(())
    for c, book in enumerate(codebook):
        logits = 2 * rest @ book.T - book.pow(2).sum(-1)
        loss = loss + F.cross_entropy(logits, target[:, c])
        rest = rest - book[target[:, c]]
    with torch.no_grad():
        exact = (quantize(z.detach(), codebook)[1] == target).all(-1).float().mean()
    return loss, exact


def init_vocabulary(
    codec: LatentCodec, teacher: TokenGroupCode, rows: Any, ratios: list[float], max_span: int, seed: int
) -> int:
    """Residual k-means over the token-group embeddings of ``rows``' teacher spans at every ratio; returns the
    number of span vectors it saw."""
    import torch

    code = codec.code
    vectors = []
    for ratio in ratios:
        for s in range(0, len(rows), 16):
            seg = rows[s : s + 16]
            vectors += span_embeddings(teacher, seg, teacher_spans(codec, seg, ratio, max_span))
    data = torch.cat(vectors).cpu()
    with torch.no_grad():
        for c in range(code.codebooks):
            centres = kmeans(data, code.codebook_size, seed=seed + c)
            code.codebook[c].copy_(centres.to(code.codebook))
            data = data - centres[torch.cdist(data, centres).argmin(-1)]
    return len(data)


def fit_to_z(
    codec: LatentCodec, teacher: TokenGroupCode, rows: Any, ratios: list[float], max_span: int
) -> float:
    """Start the writer's ``to_z`` from the ridge regression of the teacher rows (the sum of each span's teacher
    codebook rows) on the compress pass's hidden states at the span ends of ``rows`` at every ratio; returns the
    fit's R^2. Gradient steps then start from a map that already points near the right rows."""
    import torch

    code = codec.code
    xs, ys = [], []
    with torch.no_grad(), codec.adapter(COMPRESS):
        for ratio in ratios:
            for s in range(0, len(rows), 16):
                seg = rows[s : s + 16]
                spans = teacher_spans(codec, seg, ratio, max_span)
                ids = teacher_ids(code.codebook, span_embeddings(teacher, seg, spans))
                hidden = code.compress_hidden(codec, seg, ratio)
                for b, sizes in enumerate(spans):
                    ends = [a + g - 1 for a, g in zip(group_starts(sizes), sizes, strict=True)]
                    xs.append(hidden[b, ends].double().cpu())
                    ys.append(code.embeddings(code.ids_of(ids[b])).double().cpu())
    x, y = torch.cat(xs), torch.cat(ys)
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    gram = x.T @ x
    ridge = 1e-3 * gram.diagonal().mean() * torch.eye(len(gram), dtype=x.dtype)
    w = torch.linalg.solve(gram + ridge, x.T @ y)  # [H + 1, H]
    with torch.no_grad():
        code.to_z.weight.copy_(w[:-1].T.to(code.to_z.weight))
        code.to_z.bias.copy_(w[-1].to(code.to_z.bias))
    residual = (y - x @ w).pow(2).sum()
    return float(1 - residual / (y - y.mean(0)).pow(2).sum())


class _Stages:
    """One step of either stage, and the teacher-path diagnostics."""

    def __init__(self, codec: LatentCodec, teacher: TokenGroupCode, cfg: StagedConfig) -> None:
        self.codec, self.teacher, self.cfg, self.code = codec, teacher, cfg, codec.code

    def _teacher(self, seg: Any, ratio: float) -> tuple[list[list[int]], list[Any]]:
        spans = teacher_spans(self.codec, seg, ratio, self.cfg.max_span)
        return spans, teacher_ids(self.code.codebook.detach(), span_embeddings(self.teacher, seg, spans))

    def reader_step(self, seg: Any, ratio: float) -> tuple[Any, dict[str, Any]]:
        import torch

        spans, ids = self._teacher(seg, ratio)
        with torch.no_grad():
            z_rows = [self.code.embeddings(self.code.ids_of(i)).float() for i in ids]
        with self.codec.adapter(READER, train=True):
            ce = reader_ce(self.codec, seg, z_rows)
            loss, gap = ce, None
            if self.cfg.contrast_weight > 0 and len(z_rows) > 1:
                gap = reader_ce(self.codec, seg, z_rows[1:] + z_rows[:1]) - ce
                loss = ce + self.cfg.contrast_weight * torch.relu(self.cfg.contrast_margin - gap)
        return loss, {
            "stage": "reader",
            "ce": round(float(ce.detach()), 4),
            "ce_gap": None if gap is None else round(float(gap.detach()), 4),
            "z_per_seg": sum(map(len, spans)) / len(spans),
        }

    def writer_step(self, seg: Any, ratio: float) -> tuple[Any, dict[str, Any]]:
        import torch
        import torch.nn.functional as F

        code, cfg = self.code, self.cfg
        spans, ids = self._teacher(seg, ratio)
        with self.codec.adapter(COMPRESS, train=True):
            hidden = code.compress_hidden(self.codec, seg, ratio)  # [B, n, H]
        stops = code.stop(hidden).squeeze(-1)
        target = torch.zeros_like(stops)
        ids_loss, exact = [], []
        book = code.codebook.detach()
        for b, sizes in enumerate(spans):
            ends = [s + g - 1 for s, g in zip(group_starts(sizes), sizes, strict=True)]
            target[b, ends] = 1.0
            loss_b, exact_b = writer_loss(code.to_z(hidden[b, ends]), ids[b], book)
            ids_loss.append(loss_b)
            exact.append(exact_b)
        stop_loss = F.binary_cross_entropy_with_logits(stops, target)
        budget = (torch.sigmoid(stops).mean() - 1.0 / ratio) ** 2
        id_loss = torch.stack(ids_loss).mean()
        loss = id_loss + cfg.stop_weight * stop_loss + cfg.budget_weight * budget
        return loss, {
            "stage": "writer",
            "ids": round(float(id_loss.detach()), 4),
            "id_exact": round(float(torch.stack(exact).mean()), 4),
            "stop": round(float(stop_loss.detach()), 4),
            "budget": round(float(budget.detach()), 5),
            "z_per_seg": sum(map(len, spans)) / len(spans),
        }

    def teacher_diagnostics(self, held: Any, batch: int = 8) -> dict[str, Any]:
        """Per ratio on held-apart segments, with the teacher's spans and ids: reader CE with the row's own ids and
        with the next row's (Z carries information when the first is well below the second), the writer's exact
        id share with the teacher spans, and usage perplexity of the teacher ids' first codebook."""
        import torch

        code, out = self.code, {}
        for ratio in self.cfg.ratios:
            ce, ce_other, exact, used = [], [], [], []
            with torch.no_grad():
                for s in range(0, len(held), batch):
                    seg = held[s : s + batch]
                    spans, ids = self._teacher(seg, ratio)
                    used += [int(v) for i in ids for v in i[:, 0]]
                    z = [code.embeddings(code.ids_of(i)).float() for i in ids]
                    with self.codec.reading():
                        ce.append(float(reader_ce(self.codec, seg, z)))
                        ce_other.append(float(reader_ce(self.codec, seg, z[1:] + z[:1])))
                    with self.codec.adapter(COMPRESS):
                        hidden = code.compress_hidden(self.codec, seg, ratio)
                    for b, sizes in enumerate(spans):
                        ends = [a + g - 1 for a, g in zip(group_starts(sizes), sizes, strict=True)]
                        picked = quantize(code.to_z(hidden[b, ends]), code.codebook)[1]
                        exact.append(float((picked == ids[b]).all(-1).float().mean()))
            p = torch.bincount(torch.tensor(used), minlength=code.codebook_size).float()
            p = p[p > 0] / p.sum()
            tag = f"{ratio:g}x"
            out[f"teacher_ce_true_{tag}"] = round(sum(ce) / len(ce), 4)
            out[f"teacher_ce_other_{tag}"] = round(sum(ce_other) / len(ce_other), 4)
            out[f"teacher_usage_ppl_{tag}"] = round(float(torch.exp(-(p * p.log()).sum())), 1)
            out[f"writer_id_exact_{tag}"] = round(sum(exact) / len(exact), 4)
        return out


def _optimizer(codec: LatentCodec, cfg: StagedConfig) -> tuple[list[Any], Any]:
    import torch

    for name, p in codec.peft_model.named_parameters():
        p.requires_grad_("lora_" in name and (f".{READER}." in name or f".{COMPRESS}." in name))
    code = codec.code
    code.codebook.requires_grad_(False)  # the vocabulary both stages agree on
    heads = [code.ratio_embed, *code.to_z.parameters(), *code.stop.parameters()]
    for p in heads:
        p.requires_grad_(True)
    params = list(_lora(codec, COMPRESS).values()) + list(_lora(codec, READER).values()) + heads
    return params, torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)


def _eval_row(stages: _Stages, codec: LatentCodec, held: Any, cfg: StagedConfig, step: int) -> dict[str, Any]:
    codec.peft_model.eval()
    row = {"kind": "eval", "step": step} | stages.teacher_diagnostics(held)
    if step > cfg.reader_steps:  # the whole inference path, once the writer has trained
        row |= {k: v for k, v in diagnostics(codec, held, cfg.ratios).items() if k != "kind"}
    codec.peft_model.train()
    return row


def _fit_writer(
    codec: LatentCodec, teacher: TokenGroupCode, cfg: StagedConfig, train_rows: Any, out: Path, records: list
) -> None:
    import torch

    t0 = time.time()
    rows = torch.as_tensor(train_rows[: cfg.writer_fit_rows], device=codec.backbone.device)
    r2 = fit_to_z(codec, teacher, rows, cfg.ratios, cfg.max_span)
    log_row(out, {"kind": "writer_fit", "r2": round(r2, 4), "seconds": round(time.time() - t0, 1)}, records)


def _bookkeeping(
    cfg: StagedConfig,
    codec: LatentCodec,
    stages: _Stages,
    opt: Any,
    rng: Any,
    progress: dict[str, Any],
    held: Any,
    row: dict[str, Any],
    records: list[dict[str, Any]],
) -> bool:
    """Log, checkpoint and run the diagnostics when due (and at the end of each stage); True when out of time."""
    out, step = Path(cfg.out), progress["step"]
    stop = out_of_time(cfg, progress)
    last = step == cfg.steps or stop
    if step == 1 or due(step, cfg.log_every, last):
        log_row(out, row | {"seconds": round(progress["seconds"], 1)}, records)
    if due(step, cfg.checkpoint_every, last) or step == cfg.reader_steps:
        state = make_state("staged", step, cfg, _weights(codec), opt, rng, progress)
        save_checkpoint(out / CHECKPOINT_NAME, state)
    if due(step, cfg.eval_every, last) or step == cfg.reader_steps:
        log_row(out, _eval_row(stages, codec, held, cfg, step), records)
    return stop


def train_staged(
    cfg: StagedConfig, *, resume: bool = False, backbone: Any = None, segments: Any = None
) -> tuple[LatentCodec, list[dict[str, Any]]]:
    """Train (or, with ``resume``, go on from ``cfg.out/checkpoint.pt``) the learned code in stages; writes
    ``cfg.out/{checkpoint.pt, log.jsonl, adapters/}``. Returns the codec and the logged rows."""
    import numpy as np
    import torch

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    backbone, codec, _ = _setup(cfg, backbone)
    teacher = TokenGroupCode(backbone.model.get_input_embeddings(), backbone.text_vocab_size, cfg.max_span)
    held, train_rows = _rows(cfg, backbone, segments)
    params, opt = _optimizer(codec, cfg)
    reader_params = {id(p) for p in _lora(codec, READER).values()}
    rng = np.random.default_rng(cfg.seed)
    progress: dict[str, Any] = {"step": 0, "tokens": 0, "seconds": 0.0}
    stages = _Stages(codec, teacher, cfg)
    records: list[dict[str, Any]] = []

    ckpt = out / CHECKPOINT_NAME
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, task="staged")
        _apply(codec, state["trainable"])
        progress = restore(state, opt, rng, progress)
        logger.info("resumed %s at step %d", ckpt, progress["step"])
    else:
        t0 = time.time()
        rows = torch.as_tensor(train_rows[: cfg.kmeans_rows], device=backbone.device)
        seen = init_vocabulary(codec, teacher, rows, cfg.ratios, cfg.max_span, cfg.seed)
        log_row(out, {"kind": "vocabulary", "vectors": seen, "seconds": round(time.time() - t0, 1)}, records)
        log_row(out, _eval_row(stages, codec, held, cfg, 0), records)

    codec.peft_model.train()
    while progress["step"] < cfg.steps:
        t0 = time.time()
        step = progress["step"]
        lr = set_lr(opt, cfg, step)
        seg = torch.as_tensor(
            train_rows[rng.integers(0, len(train_rows), cfg.batch_size)], device=backbone.device
        )
        ratio = curriculum_ratio(cfg, step, rng)
        reading = step < cfg.reader_steps
        if step == cfg.reader_steps and cfg.writer_fit_rows:  # the writer's first step: a least-squares start
            _fit_writer(codec, teacher, cfg, train_rows, out, records)
        loss, parts = stages.reader_step(seg, ratio) if reading else stages.writer_step(seg, ratio)
        loss.backward()
        for p in params:  # only this stage's weights move (peft gives every adapter grads)
            if (id(p) in reader_params) != reading:
                p.grad = None
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        progress["step"] += 1
        progress["tokens"] += seg.numel()
        progress["seconds"] += time.time() - t0
        row = {
            "kind": "train",
            "step": progress["step"],
            "ratio": ratio,
            "loss": round(float(loss.detach()), 4),
        }
        if _bookkeeping(cfg, codec, stages, opt, rng, progress, held, row | {"lr": lr} | parts, records):
            break

    codec.peft_model.eval()
    codec.config.training = {
        "recipe": "learned code in stages: k-means vocabulary, reader on teacher ids, writer of teacher ids"
        " (zcompress train staged)",
        "init_reader": cfg.init_reader,
        "steps": progress["step"],
        "reader_steps": cfg.reader_steps,
        "writer_steps": cfg.writer_steps,
        "batch": cfg.batch_size,
        "ratios": cfg.ratios,
        "tokens_seen": progress["tokens"],
        "wall_s": round(progress["seconds"]),
        "data": [str(d) for d in cfg.data],
    }
    codec.refresh_fingerprint()
    codec.save_pretrained(out / "adapters")
    return codec, records
