"""Generation in Z space: the ``infer`` adapter continues a code's Z-tokens (arXiv 2603.25340, adapted).

A third LoRA adapter, ``infer``, reads the Z embeddings of a code (the codec's own, frozen: the reader must keep
reading the same vectors) and writes the Z-tokens that follow, so a text can be continued without leaving Z space;
the reader renders the result as text like any other code. The token-group code's head and continuation loop are
in ``core/zspace_groups.py``; this module holds the adapter plumbing: adding, finding, saving and loading it.

The infer head is kept out of the codec fingerprint on purpose: continuation codes are read by the reader alone,
so (re)training ``infer`` never invalidates codes made before.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from zcompress_integrations.errors import ConfigError, LatentUnavailableError

if TYPE_CHECKING:
    from zcompress_integrations.core.latent import LatentCodec
    from zcompress_integrations.core.zcode import ZCode

__all__ = [
    "INFER_ADAPTER",
    "INFER_HEAD_NAME",
    "DEFAULT_REPETITION_PENALTY",
    "IGNORE",
    "add_infer_adapter",
    "has_infer",
    "require_infer",
    "continue_z",
    "resolve_repetition_penalty",
    "save_infer",
    "load_infer",
]

logger = logging.getLogger(__name__)

INFER_ADAPTER = "infer"
INFER_HEAD_NAME = "infer_head.safetensors"
# chosen on held-apart training-split paragraphs (benchmarks/results/zspace_decoding_chain/): 1.1 keeps the
# greedy continuations from looping (distinct bigrams 0.40 -> 0.87; real text 0.93)
DEFAULT_REPETITION_PENALTY = 1.1
IGNORE = -100  # target value of positions that predict nothing (cross_entropy's ignore_index)


def add_infer_adapter(codec: LatentCodec, seed: int = 0, from_reader: bool = False) -> None:
    """Give ``codec`` a fresh ``infer`` LoRA adapter (same shape as the reader) and a fresh head. The LoRA starts
    at zero (the backbone), or with ``from_reader`` as a copy of the reader (measured: the zero start was ahead
    after 12 steps, 7.64 vs 7.86 nats on held-apart windows)."""
    import torch

    from zcompress_integrations.core.zspace_groups import build_group_head

    if has_infer(codec):
        raise ConfigError("this codec already has an 'infer' adapter; train it further instead")
    torch.manual_seed(seed)
    codec.peft_model.add_adapter(INFER_ADAPTER, codec.config.lora_config())
    emb = codec.lm.get_input_embeddings().weight
    head = build_group_head(codec.config.max_group, emb.shape[1])
    if from_reader:
        _copy_reader(codec)
    codec.infer_head = head.to(emb.device)


def _copy_reader(codec: LatentCodec) -> None:
    """Start the ``infer`` LoRA from the reader: it already reads Z embeddings at their positions."""
    import torch

    params = dict(codec.peft_model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            if f".{INFER_ADAPTER}." in name:
                p.copy_(params[name.replace(f".{INFER_ADAPTER}.", ".decompress.")])


def has_infer(codec: LatentCodec) -> bool:
    return INFER_ADAPTER in codec.peft_model.peft_config and getattr(codec, "infer_head", None) is not None


def require_infer(codec: LatentCodec) -> None:
    if not has_infer(codec):
        raise LatentUnavailableError(
            "generation in Z space needs an 'infer' adapter, and these latent adapters have none: train one with "
            "`zcompress train infer --adapters DIR` and load the directory it writes"
        )


def resolve_repetition_penalty(repetition_penalty: float | None) -> float:
    """``continue_z``'s penalty: ``None`` means :data:`DEFAULT_REPETITION_PENALTY`."""
    return DEFAULT_REPETITION_PENALTY if repetition_penalty is None else repetition_penalty


def continue_z(
    codec: LatentCodec,
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
        z_per_segment: Z-tokens per generated segment; default: as dense as ``code``.
        context_segments: read only the last this many segments of ``code`` (``None``: all of them).
        temperature: 0 for greedy, else sampled at this temperature (seeded by ``seed``).
        top_p: sample from the smallest set of tokens holding this much probability.
        repetition_penalty: as in ``transformers``' ``generate`` (1 = off), over the tokens of the context and
            of the continuation so far. ``None``: :data:`DEFAULT_REPETITION_PENALTY` (greedy continuations loop
            without it).

    Returns:
        A latent code holding only the continuation: ``segments`` are the new segments' Z counts,
        ``text_tokens`` is the estimate ``n_segments * segment_len`` and ``params["generated"] == 1``; its
        checksum is that of empty text (there is no original), which free-running decompression never checks.
    """
    import math

    from zcompress_integrations.core.generation import check_seed, check_temperature
    from zcompress_integrations.core.zspace_groups import continue_groups

    require_infer(codec)
    codec.check_compatible(code)
    if not _is_int(n_segments) or n_segments < 1:
        raise ConfigError(f"n_segments must be an integer >= 1; got {n_segments!r}")
    check_temperature(temperature)
    check_seed(seed)
    if context_segments is not None and (not _is_int(context_segments) or context_segments < 0):
        raise ConfigError(f"context_segments must be an integer >= 0 or None; got {context_segments!r}")
    if z_per_segment is not None and not _is_int(z_per_segment):
        raise ConfigError(f"z_per_segment must be an integer or None; got {z_per_segment!r}")
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1]; got {top_p!r}")
    repetition_penalty = resolve_repetition_penalty(repetition_penalty)
    if not _is_number(repetition_penalty) or not math.isfinite(repetition_penalty) or repetition_penalty <= 0:
        raise ConfigError(f"repetition_penalty must be a finite number > 0; got {repetition_penalty!r}")
    return continue_groups(
        codec,
        code,
        n_segments,
        z_per_segment=z_per_segment,
        context_segments=context_segments,
        temperature=temperature,
        seed=seed,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---- persistence -----------------------------------------------------------------------------------------
def save_infer(codec: LatentCodec, directory: Path) -> None:
    """Write the head beside ``infer/`` (the LoRA weights are saved by peft with the other adapters)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in codec.infer_head.state_dict().items()}
    save_file(tensors, str(directory / INFER_HEAD_NAME))


def load_infer(codec: LatentCodec, directory: str | os.PathLike[str]) -> bool:
    """Load ``infer/`` and the head from ``directory`` when both are there; return whether they were."""
    import torch
    from safetensors.torch import load_file

    from zcompress_integrations.core.zspace_groups import build_group_head

    directory = Path(directory)
    lora_dir, head_file = directory / INFER_ADAPTER, directory / INFER_HEAD_NAME
    if not (lora_dir / "adapter_config.json").is_file() and not head_file.is_file():
        return False
    if not (lora_dir / "adapter_config.json").is_file() or not head_file.is_file():
        logger.warning("ignoring a partial infer adapter in %s (it needs infer/ and the head)", directory)
        return False
    codec.peft_model.load_adapter(lora_dir, adapter_name=INFER_ADAPTER)
    state = load_file(str(head_file))
    chain = state["chain_down"].shape[2] if "chain_down" in state else 0
    head = build_group_head(codec.config.max_group, state["down"].shape[1], state["down"].shape[2], chain)
    head.load_state_dict(state)
    emb = codec.lm.get_input_embeddings().weight
    codec.infer_head = head.to(device=emb.device, dtype=torch.float32).eval()
    return True
