"""Train the learned code (``zcompress train compressor``): the backbone writes its own Z-tokens.

Every learned encoder tried here before collapsed: the reader learned to ignore Z. This recipe starts from a reader
that already reads Z (the shipped token-group ``decompress`` adapter) and moves in stages, each logged:

1. **Continuous Z that the reader already reads** (steps < ``vq_start``). The ``compress`` adapter reads a segment
   after a ratio embedding; at the last token of each span the hidden state, through ``to_z``, must be an embedding
   the frozen reader turns back into the span: loss = ``ce_weight`` x reader CE + ``match_weight`` x MSE to the
   span's token-group embedding (spans of <= 4 tokens, what the reader was trained on). The CE can join late
   (``ce_start``): its gradient through a reader reading noise Z kept the match from falling in run 4.
2. **Quantise**: at ``vq_start`` the codebook is initialised by k-means over the Z vectors of recent steps; from
   then on Z goes through residual VQ (straight-through, codebook + commitment losses, unused rows restarted
   from recent vectors), and from ``reader_start`` the reader LoRA trains on quantised inputs too.
3. **Longer spans, higher ratios**: the ratio curriculum (``ratios``) adds 4x, then 8x, ... every
   ``curriculum_every`` steps; spans may hold up to ``max_span`` tokens.

Ignoring Z must cost (run 1 without this learned to read text with any Z): ``contrast_weight`` x
max(0, ``contrast_margin`` - (CE with the next row's Z - CE with the row's own Z)), one more reader pass a step.

Span ends. During training a segment's spans are the surprisal-balanced groups (``surprisal_groups`` over the base
model's NLL, at the ratio's count); the stop head learns to predict them (``stop_weight``) under a length budget
(``budget_weight`` x (mean stop probability - 1 / ratio)^2). At inference the stop head alone decides (``span_ends``).

Answers from Z (``qa_weight`` > 0, from ``reader_start``): each step adds the answer-from-Z loss of ``qa_batch``
examples (``core/training/from_z.py``: HotpotQA / Natural Questions training examples and "repeat the document"
prompts), their contexts written by the current writer at a curriculum ratio; the reader learns to lay out Z for a
base model that answers and summarises (what ``generate`` does), not only for its own reconstruction. Logged as
``answer`` per step and, in ``answers`` rows, the held-apart answer CE at every ratio.

Diagnostics (``log.jsonl`` eval rows, on held-apart segments, with the inference path: the model's own span ends
and quantised ids): reader CE with the true Z vs with another segment's Z (must differ by >= 1 nat/token if Z
carries information), codebook usage perplexity, achieved ratio, and Spearman(Z count, segment NLL) per ratio.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

from zcompress_integrations.core.codes.learned import COMPRESS, quantize
from zcompress_integrations.core.codes.token_groups import TokenGroupCode, group_starts, surprisal_groups
from zcompress_integrations.core.latent import READER, LatentCodec, LatentConfig
from zcompress_integrations.core.training.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    make_state,
    restore,
    save_checkpoint,
)
from zcompress_integrations.core.training.config import CompressorConfig
from zcompress_integrations.core.training.from_z import AnswerLoss, answer_card
from zcompress_integrations.core.training.reader import adapter_dir_weights, log_row
from zcompress_integrations.core.training.schedule import (
    allowed_ratios,
    curriculum_ratio,
    due,
    out_of_time,
    set_lr,
)
from zcompress_integrations.errors import ConfigError

__all__ = [
    "train_compressor",
    "teacher_spans",
    "reader_ce",
    "reader_logits",
    "sampled_inputs",
    "diagnostics",
    "kmeans",
    "init_source",
    "restart_rows",
    "enough_counts",
    "usage_perplexity",
]

logger = logging.getLogger(__name__)

TEACHER_GROUP = 4  # the token-group reader reads groups of at most 4 tokens
KMEANS_ROWS = 256  # training rows whose Z vectors (at every curriculum ratio) initialise the codebook
RESTART_COUNTS_PER_ROW = 2.0  # unused-row restarts wait for this many quantised vectors per codebook row


# ---- pieces of a step --------------------------------------------------------------------------------------
def teacher_spans(codec: LatentCodec, seg: Any, ratio: float, max_span: int) -> list[list[int]]:
    """Span sizes of each row of ``seg [B, n]``: surprisal-balanced groups of 1..``max_span`` tokens, as many as the
    token-group codec would give at ``ratio`` (``slot_count``), with no group-size cap below ``max_span``."""
    rows = seg.tolist()
    out = []
    for toks, nll in zip(rows, codec.token_nll(rows), strict=True):
        n = len(toks)
        count = round(n / ratio * (sum(nll) / n) / max(codec.config.calib_nll, 1e-6))
        count = min(max(count, -(-n // max_span), 1), n)
        out.append(surprisal_groups(nll, count, max_span))
    return out


def reader_ce(codec: LatentCodec, seg: Any, z_rows: list[Any], inputs: Any = None) -> Any:
    """Mean CE (nats/token) of ``seg [B, n]`` plus its end token read after ``[Z rows[b] (m_b x H), sep]``, with Z at
    consecutive positions (the learned code's layout: ``0 .. m-1``, the separator at 0, text token i at i + 1).
    ``inputs [B, n]``: the text tokens the reader reads (default ``seg``; :func:`sampled_inputs` mixes in its own
    predictions); the targets are always ``seg``."""
    import torch

    logits = reader_logits(codec, seg if inputs is None else inputs, z_rows)
    end = torch.full((seg.shape[0], 1), codec.end_token, dtype=seg.dtype, device=seg.device)
    target = torch.cat([seg, end], 1)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def reader_logits(codec: LatentCodec, seg: Any, z_rows: list[Any]) -> Any:
    """``[B, n + 1, V]`` the reader's logits for text token i (and, last, the end token) after
    ``[Z rows[b], sep, seg[b, :i]]``."""
    import torch

    batch, n = seg.shape
    m_max = max(len(z) for z in z_rows)
    weight = codec.lm.get_input_embeddings().weight
    dev = seg.device
    x = torch.zeros(batch, m_max + 1 + n, weight.shape[1], dtype=weight.dtype, device=dev)
    pos = torch.zeros(batch, m_max + 1 + n, dtype=torch.long, device=dev)
    mask = torch.zeros(batch, m_max + 1 + n, dtype=torch.long, device=dev)
    rows = []
    for b, z in enumerate(z_rows):
        m = len(z)
        rows.append(torch.cat([x.new_zeros(m_max - m, x.shape[-1]), codec.decoder_prefix(z.unsqueeze(0))[0]]))
        pos[b, m_max - m : m_max] = torch.arange(m, device=dev)
        mask[b, m_max - m :] = 1
    x = torch.cat([torch.stack(rows), codec.embed(seg)], 1)  # keeps the graph to the Z vectors
    pos[:, m_max + 1 :] = torch.arange(1, n + 1, device=dev)
    hidden = codec.lm.model(inputs_embeds=x, position_ids=pos, attention_mask=mask).last_hidden_state
    return codec.lm.lm_head(hidden[:, -n - 1 :]).float()


def sampled_inputs(codec: LatentCodec, seg: Any, z_rows: list[Any], share: float, generator: Any) -> Any:
    """Scheduled sampling: ``seg [B, n]`` with each token, with probability ``share``, replaced by the reader's
    greedy prediction of it given the true prefix (one pass without gradient). Call under the reader adapter."""
    import torch

    if share <= 0:
        return seg
    with torch.no_grad():
        predicted = reader_logits(codec, seg, [z.detach() for z in z_rows])[:, :-1].argmax(-1)
    swap = torch.rand(seg.shape, generator=generator).to(seg.device) < share
    return torch.where(swap, predicted.to(seg.dtype), seg)


def kmeans(vectors: Any, k: int, iters: int = 10, seed: int = 0) -> Any:
    """``[k, H]`` centres of ``vectors [N, H]`` (Lloyd's algorithm from a random sample; empty clusters keep their
    centre). With fewer vectors than ``k`` the sample repeats with a little noise."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    data = vectors.detach().float().cpu()
    pick = (
        torch.randint(0, len(data), (k,), generator=gen)
        if len(data) < k
        else torch.randperm(len(data), generator=gen)[:k]
    )
    centres = data[pick].clone()
    if len(data) < k:
        centres += 0.01 * data.std() * torch.randn(centres.shape, generator=gen)
    for _ in range(iters):
        assign = torch.cdist(data, centres).argmin(-1)
        sums = torch.zeros_like(centres).index_add_(0, assign, data)
        counts = torch.bincount(assign, minlength=k).unsqueeze(-1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


def restart_rows(codebook: Any, used: Any, vectors: Any) -> int:
    """Set the rows of ``codebook [K, H]`` whose ``used [K]`` count is 0 to recent Z ``vectors [N, H]``, each to a
    different vector while there are enough (run 8 drew them from one step's 256 vectors for ~2,000 rows, so most
    restarted rows repeated each other); returns how many rows restarted."""
    import torch

    dead = (used == 0).nonzero().flatten()
    if not len(dead) or not len(vectors):
        return 0
    pick = torch.randperm(len(vectors))[: len(dead)]
    if len(pick) < len(dead):  # fewer vectors than dead rows: the rest repeat vectors, a little apart
        extra = torch.randint(0, len(vectors), (len(dead) - len(pick),))
        pick = torch.cat([pick, extra])
    rows = vectors[pick].to(codebook)
    rows[len(vectors) :] += 0.01 * vectors.float().std() * torch.randn_like(rows[len(vectors) :])
    with torch.no_grad():
        codebook[dead.to(codebook.device)] = rows
    return len(dead)


def enough_counts(used: Any, per_row: float = RESTART_COUNTS_PER_ROW) -> bool:
    """Whether ``used [K]`` holds enough quantised vectors (``per_row`` x K) to call a row with none unused: with
    fewer, rows in use look dead by chance (a CPU window of 25 steps x 8 segments holds ~6,400 vectors for K = 4,096)."""
    return float(used.sum()) >= per_row * len(used)


def usage_perplexity(rows: list[int]) -> float:
    """exp(entropy) of the codebook rows used (``rows``: one row index per Z), to 0.1; 1.0 for none."""
    import math
    from collections import Counter

    freq = [n / len(rows) for n in Counter(rows).values()]
    return round(math.exp(-sum(f * math.log(f) for f in freq)), 1)


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(a)) < 2 or len(set(b)) < 2:
        return 0.0
    return float(spearmanr(a, b).statistic)


# ---- diagnostics -------------------------------------------------------------------------------------------
def diagnostics(codec: LatentCodec, held: Any, ratios: list[float], batch: int = 8) -> dict[str, Any]:
    """The inference path on held-apart segments ``[N, n]``, per ratio: achieved ratio, reader CE with the true Z
    and with the next segment's Z, codebook usage perplexity, Spearman(Z count, segment NLL)."""
    import torch

    code = codec.code
    rows = held.tolist()
    seg_nll = codec.segment_nll(rows)
    out: dict[str, Any] = {"kind": "eval"}
    for ratio in ratios:
        ids = code.write(codec, rows, ratio, batch, False)
        counts = [len(z) for z in ids]
        ce, ce_other = [], []
        with torch.no_grad(), codec.reading():
            for s in range(0, len(rows), batch):
                seg = held[s : s + batch]
                z = [code.embeddings(ids[i]).float() for i in range(s, s + len(seg))]
                ce.append(float(reader_ce(codec, seg, z)))
                ce_other.append(float(reader_ce(codec, seg, z[1:] + z[:1])))
        tag = f"{ratio:g}x"
        out[f"ratio_{tag}"] = round(held.numel() / max(sum(counts), 1), 3)
        out[f"ce_true_{tag}"] = round(sum(ce) / len(ce), 4)
        out[f"ce_other_{tag}"] = round(sum(ce_other) / len(ce_other), 4)
        out[f"usage_ppl_{tag}"] = usage_perplexity([row[0] for z in ids for row in code.indices_of(z)])
        out[f"spearman_{tag}"] = round(_spearman([float(c) for c in counts], seg_nll), 3)
    return out


# ---- the run -----------------------------------------------------------------------------------------------
def _setup(cfg: CompressorConfig, backbone: Any) -> tuple[Any, LatentCodec, TokenGroupCode]:
    """The backbone, the learned codec (reader from ``cfg.init_reader``, fresh compress adapter and code) and the
    token-group code whose embeddings the continuous Z first matches."""
    import torch

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.codes.learned import LearnedCode
    from zcompress_integrations.core.latent import load_latent_codec

    torch.manual_seed(cfg.seed)
    if backbone is None:
        backbone = load_backbone(cfg.model, device=cfg.device, dtype="float32")
    config = LatentConfig(
        code="learned",
        segment_len=cfg.segment_len,
        max_slots=cfg.segment_len,
        lora_r=cfg.lora_r,
        lora_alpha=2 * cfg.lora_r,
        codebook_size=cfg.codebook_size,
        codebooks=cfg.codebooks,
        max_span=cfg.max_span,
        default_ratio=min(cfg.ratios),
    )
    if cfg.init_reader == "none":
        codec = LatentCodec.create(backbone, config, seed=cfg.seed)
    else:
        start = load_latent_codec(backbone, cfg.init_reader)
        if start.config.code != "token_groups":
            raise ConfigError(
                f"init_reader must hold token-group adapters; {cfg.init_reader} holds {start.config.code!r}"
            )
        if start.config.positions != "consecutive":
            # run 5: the shipped (aligned) reader, given its targets exactly at these positions, reads worse than
            # with zero Z (benchmarks/results/learned_code_run5/ceiling.json)
            logger.warning(
                "init_reader %s reads Z at positions %r; the learned code puts them at consecutive positions, where "
                "such a reader does not read token-group embeddings: start from a reader trained with "
                "--positions consecutive",
                cfg.init_reader,
                start.config.positions,
            )
        peft_model = start.peft_model
        if "infer" in peft_model.peft_config:  # the learned code has no generation in Z space yet
            peft_model.delete_adapter("infer")
        lora = start.config.lora_config()
        lora.r, lora.lora_alpha = cfg.lora_r, 2 * cfg.lora_r
        peft_model.add_adapter(COMPRESS, lora)
        config.vocab_size, config.calib_nll = start.config.vocab_size, start.config.calib_nll
        config.backbone, config.backbone_fingerprint = (
            start.config.backbone,
            start.config.backbone_fingerprint,
        )
        config.lora_r, config.lora_alpha = start.config.lora_r, start.config.lora_alpha
        code = LearnedCode.from_config(config, backbone.model.get_input_embeddings())
        codec = LatentCodec(backbone, config, peft_model, code, start.sep.detach().clone())
    teacher = TokenGroupCode(backbone.model.get_input_embeddings(), backbone.text_vocab_size, TEACHER_GROUP)
    codec.sep.requires_grad_(False)
    return backbone, codec, teacher


def _lora(codec: LatentCodec, adapter: str) -> dict[str, Any]:
    return {n: p for n, p in codec.peft_model.named_parameters() if "lora_" in n and f".{adapter}." in n}


def _weights(codec: LatentCodec) -> dict[str, Any]:
    out = {n: p.detach().cpu().clone() for a in (READER, COMPRESS) for n, p in _lora(codec, a).items()}
    out.update({f"code.{k}": v.detach().cpu().clone() for k, v in codec.code.state_dict().items()})
    return out


def _apply(codec: LatentCodec, weights: dict[str, Any]) -> None:
    import torch

    live = {**_lora(codec, READER), **_lora(codec, COMPRESS)}
    with torch.no_grad():
        for name, value in weights.items():
            if name in live:
                live[name].copy_(value)
    codec.code.load_state_dict({k[5:]: v for k, v in weights.items() if k.startswith("code.")})
    codec.refresh_fingerprint()


def init_source(source: str | Path) -> dict[str, Any]:
    """Weights to start from (``--init-from``), named as :func:`_weights` names them, plus ``"sep"``: a learned-code
    adapters directory or a compressor run's ``checkpoint.pt``. The optimizer starts fresh."""
    from zcompress_integrations.core.latent import CONFIG_NAME

    path = Path(source)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise ConfigError(f"init_from: {path} is not a latent adapters directory (no {CONFIG_NAME})")
        kind = LatentConfig.load(path).code
        if kind != "learned":
            raise ConfigError(
                f"init_from: {path} holds {kind!r} adapters; a compressor run starts from learned-code adapters "
                "(use init_reader for a token-group reader)"
            )
        return adapter_dir_weights(path, (READER, COMPRESS))
    if path.is_file():
        return load_checkpoint(path, task="compressor")["trainable"]
    raise ConfigError(
        f"init_from: {source} is neither a learned-code adapters directory nor a checkpoint file"
    )


def _init_from(codec: LatentCodec, source: str | Path) -> None:
    """Load :func:`init_source` weights into ``codec``, refusing any whose shape differs (another rank, K, ...)."""
    import torch

    weights = init_source(source)
    live = {**_lora(codec, READER), **_lora(codec, COMPRESS)}
    live.update({f"code.{k}": v for k, v in codec.code.state_dict().items()})
    book, have = weights.get("code.codebook"), live["code.codebook"]
    if book is not None and book.shape[0] > have.shape[0] and book.shape[1:] == have.shape[1:]:
        # fewer codebooks than the source: residual VQ's first ones are the coarse code on their own
        logger.info("init_from: the first %d of %d codebooks kept", have.shape[0], book.shape[0])
        weights = {**weights, "code.codebook": book[: have.shape[0]].clone()}
    missing = sorted(set(live) - set(weights))
    wrong = sorted(k for k in live if k in weights and weights[k].shape != live[k].shape)
    if missing or wrong:
        raise ConfigError(
            f"init_from: {source} does not fit this config ({len(missing)} weights missing, shapes differ for "
            f"{wrong[:3]}): give it the lora_r, codebook_size and model it was trained with, and at most its "
            "codebooks"
        )
    _apply(codec, weights)
    if "sep" in weights:  # the separator the reader was trained with
        with torch.no_grad():
            codec.sep.copy_(weights["sep"].to(codec.sep))
        codec.refresh_fingerprint()


def _start(
    codec: LatentCodec,
    ckpt: Path,
    resume: bool,
    init_from: str | Path | None,
    opt: Any,
    rng: Any,
    progress: dict[str, Any],
) -> dict[str, Any]:
    """Resume from ``ckpt`` (weights, optimizer, data stream) or load ``init_from`` weights; the progress to go on
    from."""
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, task="compressor")
        _apply(codec, state["trainable"])
        progress = restore(state, opt, rng, progress)
        logger.info("resumed %s at step %d", ckpt, progress["step"])
    elif init_from:
        _init_from(codec, init_from)
        progress["init_from"] = str(init_from)
        logger.info("initialised from %s", init_from)
    return progress


def _rows(cfg: CompressorConfig, backbone: Any, segments: Any) -> tuple[Any, Any]:
    import numpy as np
    import torch

    from zcompress_integrations.core.training.data import load_rows

    L = cfg.segment_len
    if segments is None:
        segments = load_rows(backbone.tokenizer, cfg.data, L, cfg.max_data_tokens)
    rows = np.asarray(segments)
    if rows.ndim != 2 or rows.shape[1] < L or len(rows) <= cfg.held:
        raise ConfigError(
            f"compressor data: need more than held={cfg.held} rows of >= {L} tokens; got {rows.shape}"
        )
    rows = rows[:, :L].astype(np.int64)
    return torch.as_tensor(rows[: cfg.held], device=backbone.device), rows[cfg.held :]


class _Step:
    """One training step's forward: compress pass, Z vectors (continuous or quantised), losses."""

    def __init__(self, codec: LatentCodec, teacher: TokenGroupCode, cfg: CompressorConfig) -> None:
        self.codec, self.teacher, self.cfg = codec, teacher, cfg
        self.code = codec.code
        # the Z vectors of the steps since the last restart (restarts come with checkpoints)
        self.recent: deque[Any] = deque(maxlen=cfg.checkpoint_every)
        self.used: Any = None

    def __call__(
        self,
        seg: Any,
        ratio: float,
        quantised: bool,
        ce_weight: float = 1.0,
        sampling: float = 0.0,
        generator: Any = None,
    ) -> tuple[Any, dict[str, float]]:
        import torch
        import torch.nn.functional as F

        codec, code, cfg = self.codec, self.code, self.cfg
        spans = teacher_spans(codec, seg, ratio, cfg.max_span)  # [B] lists of sizes
        with codec.adapter(COMPRESS, train=True):
            hidden = code.compress_hidden(codec, seg, ratio)  # [B, n, H]
        stops = code.stop(hidden).squeeze(-1)  # [B, n]
        target = torch.zeros_like(stops)
        for b, sizes in enumerate(spans):
            target[b, [s + g - 1 for s, g in zip(group_starts(sizes), sizes, strict=True)]] = 1.0
        stop_loss = F.binary_cross_entropy_with_logits(stops, target)
        budget = (torch.sigmoid(stops).mean() - 1.0 / ratio) ** 2
        z_rows, match, vq = [], [], []
        step_vectors = []
        tokens = seg.tolist()  # one device-to-host copy, not one per span (GPU)
        for b, sizes in enumerate(spans):
            starts = group_starts(sizes)
            ends = [s + g - 1 for s, g in zip(starts, sizes, strict=True)]
            e = code.to_z(hidden[b, ends])  # [m, H]
            step_vectors.append(e.detach().cpu())  # unused codebook rows restart from recent vectors
            short = [j for j, g in enumerate(sizes) if g <= TEACHER_GROUP]
            if short and cfg.match_weight > 0:
                groups = [tokens[b][starts[j] : starts[j] + sizes[j]] for j in short]
                goal = self.teacher.group_embeddings(groups).float()
                match.append(F.mse_loss(e[short], goal) / goal.pow(2).mean())
            if quantised:
                q, idx = quantize(e, code.codebook)
                vq.append(F.mse_loss(q, e.detach()) + cfg.commit_weight * F.mse_loss(e, q.detach()))
                self._count(idx[:, 0])
                e = e + (q - e).detach()  # straight-through
            z_rows.append(e)
        self.recent.append(torch.cat(step_vectors))
        with codec.adapter(READER, train=True):
            inputs = sampled_inputs(codec, seg, z_rows, sampling, generator)
            ce = reader_ce(codec, seg, z_rows, inputs)
            gap = self._contrast(seg, z_rows, ce, inputs)
        parts = {
            "ce": ce_weight * ce,
            "contrast": cfg.contrast_weight * torch.relu(cfg.contrast_margin - gap)
            if gap is not None
            else 0 * ce,
            "stop": cfg.stop_weight * stop_loss,
            "budget": cfg.budget_weight * budget,
            "match": cfg.match_weight * torch.stack(match).mean() if match else ce.new_zeros(()),
            "vq": torch.stack(vq).mean() if vq else ce.new_zeros(()),
        }
        loss = sum(parts.values())
        return loss, {k: round(float(v.detach()), 4) for k, v in parts.items()} | {
            "ce": round(float(ce.detach()), 4),  # the reader's CE itself, whatever its weight in the loss
            "z_per_seg": sum(map(len, spans)) / len(spans),
            "ce_gap": round(float(gap.detach()), 4) if gap is not None else None,
            "sampled": round(float((inputs != seg).float().mean()), 4),  # share of inputs not the true token
        }

    def _contrast(self, seg: Any, z_rows: list[Any], ce: Any, inputs: Any) -> Any:
        """CE with the next row's Z minus CE with the row's own (``None`` when off or the batch has one row)."""
        if self.cfg.contrast_weight <= 0 or len(z_rows) < 2:
            return None
        return reader_ce(self.codec, seg, z_rows[1:] + z_rows[:1], inputs) - ce

    def _count(self, idx: Any) -> None:
        import torch

        if self.used is None:
            self.used = torch.zeros(self.code.codebook_size)
        self.used += torch.bincount(idx.cpu(), minlength=self.code.codebook_size).float()

    def init_codebook(self, rows: Any, seed: int) -> None:
        """k-means over the Z vectors of fixed training ``rows [N, n]`` at every curriculum ratio, codebook by
        codebook (each on what the previous left). Deterministic from the weights, so a resumed run repeats it."""
        import torch

        codec, code = self.codec, self.code
        vectors = []
        with torch.no_grad(), codec.adapter(COMPRESS):
            for ratio in self.cfg.ratios:
                for s in range(0, len(rows), 16):
                    seg = rows[s : s + 16]
                    hidden = code.compress_hidden(codec, seg, ratio)
                    for b, sizes in enumerate(teacher_spans(codec, seg, ratio, self.cfg.max_span)):
                        ends = [a + g - 1 for a, g in zip(group_starts(sizes), sizes, strict=True)]
                        vectors.append(code.to_z(hidden[b, ends]).cpu())
        data = torch.cat(vectors)
        with torch.no_grad():
            for c in range(code.codebooks):
                centres = kmeans(data, code.codebook_size, seed=seed + c)
                code.codebook[c].copy_(centres.to(code.codebook))
                data = data - centres[torch.cdist(data, centres).argmin(-1)]
        logger.info("codebook initialised by k-means over %d Z vectors", len(data))

    def restart_unused(self) -> int:
        """Rows of codebook 1 unused since the last call take recent Z vectors; returns how many. A window
        without :func:`enough_counts` restarts nothing. Either way a new window starts (as after a resume)."""
        import torch

        if self.used is None or not self.recent:
            return 0
        restarted = 0
        if enough_counts(self.used):
            restarted = restart_rows(self.code.codebook[0], self.used, torch.cat(list(self.recent)))
        self.used = None
        self.recent.clear()
        return restarted


def _bookkeeping(
    cfg: CompressorConfig,
    codec: LatentCodec,
    step_fn: _Step,
    opt: Any,
    rng: Any,
    progress: dict[str, Any],
    held: Any,
    row: dict[str, Any],
    records: list[dict[str, Any]],
    answers: AnswerLoss | None,
) -> bool:
    """Log, restart unused codebook rows, checkpoint and run the diagnostics (and the held-apart answer CE) when
    due; True when out of time."""
    out, step = Path(cfg.out), progress["step"]
    stop = out_of_time(cfg, progress)
    last = step == cfg.steps or stop
    if step == 1 or due(step, cfg.log_every, last):
        log_row(out, row | {"seconds": round(progress["seconds"], 1)}, records)
    if due(step, cfg.checkpoint_every, last):
        # restarts keep to the schedule: an early stop's last step has one step of counts (run 9 restarted 3,088
        # rows that way at its final step, and its held-apart CE rose from 1.71 to 1.91)
        if step > cfg.vq_start and step % cfg.checkpoint_every == 0:
            logger.info("step %d: %d unused codebook rows restarted", step, step_fn.restart_unused())
        state = make_state("compressor", step, cfg, _weights(codec), opt, rng, progress)
        save_checkpoint(out / CHECKPOINT_NAME, state)
    if due(step, cfg.eval_every, last) and len(held):
        codec.peft_model.eval()
        log_row(out, diagnostics(codec, held, cfg.ratios) | {"step": step}, records)
        codec.peft_model.train()
    if answers is not None and due(step, cfg.eval_every, last):
        log_row(out, answer_row(codec, answers, cfg.ratios, step), records)
    return stop


def answer_row(codec: LatentCodec, answers: AnswerLoss, ratios: list[float], step: int) -> dict[str, Any]:
    """The held-apart answer CE (nats/token) with each context written by the current writer at each ratio."""
    codec.peft_model.eval()
    row: dict[str, Any] = {"kind": "answers", "step": step}
    for ratio in ratios:
        row[f"held_answer_ce_{ratio:g}x"] = round(answers.held_ce(ratio), 4)
    codec.peft_model.train()
    codec.peft_model.base_model.set_adapter(READER)
    return row


def _optimizer(codec: LatentCodec, cfg: CompressorConfig) -> tuple[list[Any], Any]:
    import torch

    for name, p in codec.peft_model.named_parameters():
        p.requires_grad_("lora_" in name and (f".{READER}." in name or f".{COMPRESS}." in name))
    params = (
        list(_lora(codec, COMPRESS).values()) + list(_lora(codec, READER).values()) + codec.code.parameters()
    )
    for p in codec.code.parameters():
        p.requires_grad_(True)
    return params, torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)


def train_compressor(
    cfg: CompressorConfig,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    backbone: Any = None,
    segments: Any = None,
) -> tuple[LatentCodec, list[dict[str, Any]]]:
    """Train (or, with ``resume``, go on from ``cfg.out/checkpoint.pt``) the learned code; writes
    ``cfg.out/{checkpoint.pt, log.jsonl, adapters/}``. Returns the codec and the logged rows.

    ``init_from``: start from another run's weights (:func:`init_source`), codebook included, with a fresh optimizer
    and step 0: the k-means initialisation then runs only at a ``vq_start`` above 0."""
    import numpy as np
    import torch

    if resume and init_from:
        raise ConfigError(
            "resume and init_from exclude each other: resume goes on from this run's own checkpoint"
        )

    # 1. run folder, backbone, codec (reader from init_reader, fresh compress adapter and code)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    backbone, codec, teacher = _setup(cfg, backbone)

    # 2. data: rows [N, L]; the first cfg.held rows are held apart for the diagnostics
    held, train_rows = _rows(cfg, backbone, segments)
    kmeans_rows = torch.as_tensor(train_rows[:KMEANS_ROWS], device=backbone.device)

    # 3. what trains and the optimizer; the data stream
    params, opt = _optimizer(codec, cfg)
    rng = np.random.default_rng(cfg.seed)
    # init_from is kept in the checkpoint: a resumed run's card still names the run it went on from
    progress = {"step": 0, "tokens": 0, "seconds": 0.0, "qa_seen": 0, "init_from": None}
    step_fn = _Step(codec, teacher, cfg)

    # 4. resume from this run's checkpoint, or start from another run's weights
    progress = {"qa_seen": 0} | _start(codec, out / CHECKPOINT_NAME, resume, init_from, opt, rng, progress)
    records: list[dict[str, Any]] = []
    if init_from and progress["step"] == 0 and len(held):
        # where the continuation starts, as its own diagnostics see it (another config may read the weights
        # differently from the run they came from: fewer codebooks, other ratios)
        codec.peft_model.eval()
        log_row(out, diagnostics(codec, held, cfg.ratios) | {"step": 0}, records)
    answers = _answers(codec, cfg, progress, records)

    # 5. the loop
    codec.peft_model.train()
    if cfg.vq_start == 0 and progress["step"] == 0 and not init_from:
        step_fn.init_codebook(kmeans_rows, cfg.seed)
    while progress["step"] < cfg.steps:
        t0 = time.time()
        step = progress["step"]
        lr = set_lr(opt, cfg, step)
        # 5a. a batch and a ratio from the curriculum
        seg = torch.as_tensor(
            train_rows[rng.integers(0, len(train_rows), cfg.batch_size)], device=backbone.device
        )
        ratio = curriculum_ratio(cfg, step, rng)
        # 5b. forward (quantised from vq_start), backward (the reader from reader_start), clip, step
        ce_weight = cfg.ce_weight if step >= cfg.ce_start else 0.0
        sampling = _sampling_share(cfg, step)
        # a generator per step, so a resumed run draws what it would have drawn
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        loss, parts = step_fn(seg, ratio, step >= cfg.vq_start, ce_weight, sampling, gen)
        loss.backward()
        if step < cfg.reader_start:  # the reader stays as it was (peft turns every adapter's grads on)
            for p in _lora(codec, READER).values():
                p.grad = None
        elif answers is not None:  # reads ids the writer made without gradient: trains the reader (and rows)
            parts["answer"] = round(
                answers.backward(cfg, rng, train_rows, backbone.tokenizer, allowed_ratios(cfg, step)), 4
            )
            progress["qa_seen"] += cfg.qa_batch
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        progress["step"] += 1
        progress["tokens"] += seg.numel()
        progress["seconds"] += time.time() - t0
        # 5c. the codebook's k-means init right after the last continuous step; log, checkpoint, diagnostics
        if progress["step"] == cfg.vq_start:
            step_fn.init_codebook(kmeans_rows, cfg.seed)
        row = {
            "kind": "train",
            "step": progress["step"],
            "ratio": ratio,
            "loss": round(float(loss.detach()), 4),
            "lr": lr,
        }
        if _bookkeeping(cfg, codec, step_fn, opt, rng, progress, held, row | parts, records, answers):
            break

    # 6. the adapters directory
    _export(codec, cfg, progress["init_from"], progress, answers)
    return codec, records


def _answers(
    codec: LatentCodec, cfg: CompressorConfig, progress: dict[str, Any], records: list[dict[str, Any]]
) -> AnswerLoss | None:
    """The answer-from-Z term when ``cfg.qa_weight`` > 0 (contexts written afresh each time: the writer trains
    along), with a first held-apart row on a run at step 0."""
    if cfg.qa_weight <= 0:
        return None
    answers = AnswerLoss(codec, cfg, seed=cfg.seed, cache_codes=False)
    if progress["step"] == 0:
        log_row(Path(cfg.out), answer_row(codec, answers, cfg.ratios, 0), records)
    return answers


def _sampling_share(cfg: CompressorConfig, step: int) -> float:
    """Scheduled sampling's share at ``step``: ``cfg.sampling``, reached linearly over ``cfg.sampling_ramp`` steps."""
    return cfg.sampling * min(1.0, (step + 1) / cfg.sampling_ramp) if cfg.sampling_ramp else cfg.sampling


def _export(
    codec: LatentCodec,
    cfg: CompressorConfig,
    init_from: str | Path | None,
    progress: dict[str, Any],
    answers: AnswerLoss | None,
) -> None:
    """Write ``cfg.out/adapters`` with the run's training card."""
    codec.peft_model.eval()
    codec.config.training = {
        "recipe": "learned code bootstrapped from the token-group reader (zcompress train compressor)",
        "init_reader": cfg.init_reader,
        "init_from": str(init_from) if init_from else None,  # the steps below came after that run's
        "steps": progress["step"],
        "batch": cfg.batch_size,
        "ratios": cfg.ratios,
        "tokens_seen": progress["tokens"],
        "wall_s": round(progress["seconds"]),
        "data": [str(d) for d in cfg.data],
    }
    if answers is not None:
        codec.config.training["answer_from_z"] = answer_card(cfg, progress["qa_seen"])
    codec.refresh_fingerprint()
    codec.save_pretrained(Path(cfg.out) / "adapters")
