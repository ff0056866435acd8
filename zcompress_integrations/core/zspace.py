"""Generation in Z space: the ``infer`` adapter continues a sequence of Z-tokens (arXiv 2603.25340, adapted).

The compress adapter turns each segment of ``segment_len`` text tokens into a few Z-tokens. Here a third LoRA
adapter, ``infer``, reads the Z embeddings of earlier segments and writes the Z-tokens of the *next* segment, so a
text can be continued without ever leaving Z space; the decompress adapter renders the result as text.

Sequence layout. Segments are separated by a learned "continue" embedding ``C``; a window of segments reads::

    E(z^1_1) .. E(z^1_m1)  C  E(z^2_1) .. E(z^2_m2)  C  ...

where ``E`` is the codec's own Z embedding (``modules.embed_digits``, frozen: the decompress adapter must keep
reading the same vectors). The hidden state at each position predicts the next Z-token of the following segment:
the hidden state at ``C`` predicts its first Z-token, the one at ``z^j_i`` predicts ``z^j_{i+1}``. A Z-token is a
vector of ``fsq_dims`` FSQ digits, so the head reads ``fsq_dims`` independent ``fsq_levels``-way softmaxes from that
hidden state (``[H] -> [D, levels]``); the argmax digits form the next Z-token, whose embedding is fed back.

Length. The number of Z-tokens of a generated segment is not predicted: it is the mean Z count per segment of the
code being continued (or ``z_per_segment``), since the compressor's count follows the surprisal of text that does
not exist yet.

The infer head is kept out of the codec fingerprint on purpose: continuation codes are read by the decompress
adapter alone, so (re)training ``infer`` never invalidates codes made before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zcompress_integrations.core.zcode import ZCode, text_checksum
from zcompress_integrations.errors import ConfigError, LatentUnavailableError

__all__ = [
    "INFER_ADAPTER",
    "INFER_HEAD_NAME",
    "DEFAULT_REPETITION_PENALTY",
    "build_infer_head",
    "add_infer_adapter",
    "window_inputs",
    "infer_hidden",
    "continue_z",
    "resolve_repetition_penalty",
    "save_infer",
    "load_infer",
]

logger = logging.getLogger(__name__)

INFER_ADAPTER = "infer"
INFER_HEAD_NAME = "infer_head.safetensors"
# chosen on held-apart training-split paragraphs (benchmarks/results/zspace_decoding_chain/): 1.1 keeps the
# step-1500 adapter's greedy continuations from looping (distinct bigrams 0.40 -> 0.87; real text 0.93)
DEFAULT_REPETITION_PENALTY = 1.1
IGNORE = -100  # target value of positions that predict nothing (cross_entropy's ignore_index)


def build_infer_head(fsq_dims: int, fsq_levels: int, hidden: int, embed_std: float) -> Any:
    """The non-LoRA part of ``infer``: the "continue" embedding ``C`` and the Z head ``[.., H] -> [.., D, levels]``.

    Built inside a function so that this module imports without torch.
    """
    import torch
    from torch import nn

    class _InferHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cont = nn.Parameter(torch.randn(hidden) * embed_std)
            self.proj = nn.Linear(hidden, fsq_dims * fsq_levels)
            nn.init.normal_(self.proj.weight, std=hidden**-0.5)  # logits start O(1): near-uniform digits
            nn.init.zeros_(self.proj.bias)

        def forward(self, h: Any) -> Any:
            """h[..., H] -> digit logits [..., D, levels] (fp32 on every device)."""
            return self.proj(h.float()).view(*h.shape[:-1], fsq_dims, fsq_levels)

    return _InferHead()


def add_infer_adapter(codec: Any, seed: int = 0, from_reader: bool = False) -> None:
    """Give ``codec`` a fresh ``infer`` LoRA adapter (same shape as the others) and a fresh head. The LoRA starts
    at zero (the backbone); for the token-group code ``from_reader`` starts it as a copy of ``decompress``
    instead (measured: the zero start was ahead after 12 steps, 7.64 vs 7.86 nats on held-apart windows)."""
    import torch

    if has_infer(codec):
        raise ConfigError("this codec already has an 'infer' adapter; train it further instead")
    cfg = codec.config
    torch.manual_seed(seed)
    lora = cfg.lora_config()
    codec.peft_model.add_adapter(INFER_ADAPTER, lora)
    emb = codec._lm.get_input_embeddings().weight
    if cfg.token_code:
        from zcompress_integrations.core.zspace_groups import build_group_head

        head = build_group_head(cfg.max_group, emb.shape[1])
        if from_reader:
            _copy_reader(codec)
    else:
        head = build_infer_head(cfg.fsq_dims, cfg.fsq_levels, emb.shape[1], float(emb.detach().float().std()))
    codec.infer_head = head.to(emb.device)


def _copy_reader(codec: Any) -> None:
    """Start the token code's ``infer`` LoRA from the ``decompress`` one: it already reads token-group Z
    embeddings at aligned positions, which is half of what continuing them takes."""
    import torch

    params = dict(codec.peft_model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if f".{INFER_ADAPTER}." in name:
                p.copy_(params[name.replace(f".{INFER_ADAPTER}.", ".decompress.")])


def has_infer(codec: Any) -> bool:
    return INFER_ADAPTER in codec.peft_model.peft_config and getattr(codec, "infer_head", None) is not None


def require_infer(codec: Any) -> None:
    if not has_infer(codec):
        raise LatentUnavailableError(
            "generation in Z space needs an 'infer' adapter, and these latent adapters have none: train one with "
            "zcompress_integrations.core.training.infer.train_infer (or `zcompress train --task infer --adapters "
            "DIR`) and load the directory it writes"
        )


# ---- the differentiable pieces (training and inference share them) ---------------------------------------
def window_inputs(codec: Any, windows: Sequence[Sequence[Any]]) -> tuple[Any, Any]:
    """Teacher-forced inputs and digit targets for windows of consecutive segments.

    Args:
        windows: per row, the digits ``[m_j, D]`` (long) of each of its segments, in order.

    Returns:
        ``inputs[B, T, H]`` (``E(z^1) C E(z^2) C .. E(z^k)``, right-padded with zeros) and ``targets[B, T, D]``
        (the digits the hidden state at each position must predict; ``IGNORE`` inside the first segment, at the
        last position and in the padding). Right padding needs no attention mask: causal attention never lets
        a real position see the padding after it.
    """
    import torch

    emb = codec.modules.embed_digits
    cont = codec.infer_head.cont
    dims = codec.config.fsq_dims
    rows, tgts = [], []
    for segs in windows:
        parts, nxt = [], []
        for j, digits in enumerate(segs):
            if j:
                parts.append(cont.view(1, -1))
                nxt.append(digits[:1])  # C predicts the segment's first Z-token
            parts.append(emb(digits).detach())  # the codec's frozen Z embedding
            if j:
                nxt.append(digits[1:])
            else:
                nxt.append(digits.new_full((len(digits) - 1, dims), IGNORE))  # first segment: context only
        nxt.append(segs[0].new_full((1, dims), IGNORE))  # the last position predicts nothing
        rows.append(torch.cat(parts, dim=0))
        tgts.append(torch.cat(nxt, dim=0))
    total = max(r.shape[0] for r in rows)
    inputs = torch.stack([torch.cat([r, r.new_zeros(total - r.shape[0], r.shape[1])]) for r in rows])
    targets = torch.stack([torch.cat([t, t.new_full((total - t.shape[0], dims), IGNORE)]) for t in tgts])
    return inputs, targets


def infer_hidden(codec: Any, inputs: Any) -> Any:
    """inputs[B, T, H] -> last hidden states [B, T, H] (the ``infer`` adapter must be active)."""
    dtype = codec._lm.get_input_embeddings().weight.dtype  # bf16 backbones get bf16 inputs
    return codec._lm.model(inputs_embeds=inputs.to(dtype)).last_hidden_state


def digit_loss(logits: Any, targets: Any) -> Any:
    """Mean cross-entropy over every predicted digit; logits ``[B, T, D, levels]``, targets ``[B, T, D]``."""
    import torch

    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE
    )


# ---- inference -------------------------------------------------------------------------------------------
def resolve_repetition_penalty(codec: Any, repetition_penalty: float | None) -> float:
    """``continue_z``'s penalty: ``None`` is :data:`DEFAULT_REPETITION_PENALTY` for the token-group code, 1 else."""
    if repetition_penalty is not None:
        return repetition_penalty
    return DEFAULT_REPETITION_PENALTY if codec.config.token_code else 1.0


def continue_z(
    codec: Any,
    code: ZCode,
    n_segments: int = 1,
    *,
    z_per_segment: int | None = None,
    context_segments: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float | None = None,
) -> ZCode:
    """The Z-tokens of the ``n_segments`` segments that follow ``code``, as a new latent code.

    Args:
        code: a latent code made by this codec (its segments are the context).
        n_segments: segments to generate.
        z_per_segment: Z-tokens per generated segment; default the mean count per segment of ``code``.
        context_segments: read only the last this many segments of ``code`` (``None``: all of them).
        temperature: 0 for greedy digits, else digits are sampled at this temperature (seeded by ``seed``).
        top_p: token-group code only: sample from the smallest set of tokens holding this much probability.
        repetition_penalty: token-group code only: as in ``transformers``' ``generate`` (1 = off), over the
            tokens of the context and of the continuation so far. ``None``: :data:`DEFAULT_REPETITION_PENALTY`
            for the token-group code (greedy continuations loop without it), 1 for learned codes.

    Returns:
        A latent code holding only the continuation: ``segments`` are the new segments' Z counts,
        ``text_tokens`` is the estimate ``n_segments * segment_len`` and ``params["generated"] == 1``; its
        checksum is that of empty text (there is no original), which free-running decompression never checks.
    """
    import torch
    from transformers import DynamicCache

    from zcompress_integrations.core.backbone import cache_kwargs
    from zcompress_integrations.core.latent import digits_to_ids, ids_to_digits

    require_infer(codec)
    codec.check_compatible(code)
    cfg = codec.config
    if n_segments < 1:
        raise ConfigError(f"n_segments must be >= 1; got {n_segments}")
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0; got {temperature}")
    if context_segments is not None and context_segments < 0:
        raise ConfigError(f"context_segments must be >= 0 or None; got {context_segments}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1]; got {top_p}")
    repetition_penalty = resolve_repetition_penalty(codec, repetition_penalty)
    if repetition_penalty <= 0:
        raise ConfigError(f"repetition_penalty must be > 0; got {repetition_penalty}")
    if not cfg.token_code and (top_p != 1 or repetition_penalty != 1):
        raise ConfigError("top_p and repetition_penalty apply to the token-group code only; leave them at 1")
    if cfg.token_code:
        from zcompress_integrations.core.zspace_groups import continue_groups

        return continue_groups(
            codec, code, n_segments, z_per_segment=z_per_segment, context_segments=context_segments,
            temperature=temperature, seed=seed, top_p=top_p, repetition_penalty=repetition_penalty,
        )
    if z_per_segment is None:
        mean = len(code.z_ids) / len(code.segments) if code.segments else cfg.segment_len / cfg.default_ratio
        z_per_segment = round(mean)
    if not 1 <= z_per_segment <= cfg.max_slots:
        raise ConfigError(f"z_per_segment must be in [1, {cfg.max_slots}]; got {z_per_segment}")

    dev = codec.backbone.device
    counts = list(code.segments)
    keep = len(counts) if context_segments is None else min(context_segments, len(counts))
    first = sum(counts[: len(counts) - keep])
    head = codec.infer_head
    lm = codec._lm
    dtype = lm.get_input_embeddings().weight.dtype
    gen = torch.Generator(device=dev).manual_seed(seed) if temperature > 0 else None
    new_ids: list[int] = []
    with codec.adapter(INFER_ADAPTER), torch.inference_mode():
        # 1. the context: every kept segment's Z embeddings, each followed by C
        parts, pos = [], first
        for count in counts[len(counts) - keep :]:
            digits = ids_to_digits(code.z_ids[pos : pos + count], cfg.fsq_levels, cfg.fsq_dims)
            z = codec.modules.embed_digits(torch.tensor(digits, device=dev).view(-1, cfg.fsq_dims))
            parts += [z, head.cont.view(1, -1)]
            pos += count
        x = torch.cat(parts or [head.cont.view(1, -1)], dim=0).unsqueeze(0)
        # 2. one Z-token at a time: digits from the last hidden state, their embedding fed back (KV cache)
        cache = DynamicCache(config=lm.config)
        ckw = cache_kwargs(lm.model, cache)
        for s in range(n_segments):
            for i in range(z_per_segment):
                hidden = lm.model(inputs_embeds=x.to(dtype), use_cache=True, **ckw).last_hidden_state[:, -1]
                logits = head(hidden)[0]  # [D, levels]
                if gen is None:
                    digits = logits.argmax(-1)
                else:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    digits = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
                new_ids += digits_to_ids(digits.view(1, -1), cfg.fsq_levels)
                x = codec.modules.embed_digits(digits.view(1, -1))
                if i == z_per_segment - 1 and s < n_segments - 1:
                    x = torch.cat([x, head.cont.view(1, -1).to(x.dtype)], dim=0)  # the next segment begins
                x = x.unsqueeze(0)
    return ZCode(
        z_ids=tuple(new_ids),
        codec="latent",
        k=cfg.k_eff,
        text_tokens=n_segments * cfg.segment_len,
        text_chars=0,
        checksum=text_checksum(b""),
        fingerprint=codec.fingerprint,
        segments=(z_per_segment,) * n_segments,
        params={"segment_len": cfg.segment_len, "generated": 1},
    )


# ---- persistence -----------------------------------------------------------------------------------------
def save_infer(codec: Any, directory: Path) -> None:
    """Write the head beside ``infer/`` (the LoRA weights are saved by peft with the other adapters)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in codec.infer_head.state_dict().items()}
    save_file(tensors, str(directory / INFER_HEAD_NAME))


def load_infer(codec: Any, directory: str | os.PathLike[str]) -> bool:
    """Load ``infer/`` and the head from ``directory`` when both are there; return whether they were."""
    import torch
    from safetensors.torch import load_file

    directory = Path(directory)
    lora_dir, head_file = directory / INFER_ADAPTER, directory / INFER_HEAD_NAME
    if not (lora_dir / "adapter_config.json").is_file() and not head_file.is_file():
        return False
    if not (lora_dir / "adapter_config.json").is_file() or not head_file.is_file():
        logger.warning("ignoring a partial infer adapter in %s (it needs infer/ and the head)", directory)
        return False
    codec.peft_model.load_adapter(lora_dir, adapter_name=INFER_ADAPTER)
    state = load_file(str(head_file))
    if codec.config.token_code:
        from zcompress_integrations.core.zspace_groups import build_group_head

        chain = state["chain_down"].shape[2] if "chain_down" in state else 0
        head = build_group_head(codec.config.max_group, state["down"].shape[1], state["down"].shape[2], chain)
    else:
        head = build_infer_head(codec.config.fsq_dims, codec.config.fsq_levels, state["cont"].shape[0], 0.0)
    head.load_state_dict(state)
    emb = codec._lm.get_input_embeddings().weight
    codec.infer_head = head.to(device=emb.device, dtype=torch.float32).eval()
    return True
