"""Generation in Z space for the token-group code: the ``infer`` adapter writes the next token groups.

A token-group Z-token stands for 1..``max_group`` consecutive text tokens (see ``core/codes/token_groups.py``). Continuing a
code in Z space therefore means predicting, from the Z-tokens read so far, the *group* that comes next: one
forward step of the backbone per Z-token, ``g`` text tokens out of it (multi-token prediction), so writing a
continuation at 2x takes half the forward steps of writing its text.

Layout. The context is the code's Z embeddings (the codec's own, frozen: the decompress adapter reads the same
vectors) at aligned position ids (each Z-token where its first token sits in the text), exactly as the
decompress adapter sees them. With the ``infer`` LoRA on, the last hidden state ``h`` of the Z-token for the
group ending at text position ``e`` predicts the tokens at ``e + 1 .. e + max_group``: offset ``k`` reads
``W (h + U_k V_k^T h)``, where ``W`` is the backbone's own (frozen) output embedding and ``U_k V_k^T`` a small
low-rank map per offset (``U_k = 0`` at the start, so offset 0 starts as the backbone's next-token head).
Those offsets are independent guesses: offset 2 does not know what offsets 0 and 1 chose. A *chained* head
(:func:`add_chain`) adds a small MLP per offset that also reads the embedding of the token before it and the
previous offset's state, so a group's tokens are written one after another (teacher-forced in training); it costs
a few ``[2H, r]`` products per token, nothing next to the backbone step.

Group size is not predicted: a continuation is written in groups of ``g`` tokens (default: the mean group size
of the code being continued), so its Z count per segment is ``ceil(segment_len / g)``. The predicted group gives
the Z id (ids name token groups), its embedding is fed back at the next aligned position, and the decompress
adapter renders the result as text like any other code.

The head is kept out of the codec fingerprint: (re)training ``infer`` never invalidates codes made before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from zcompress_integrations.core.codes.token_groups import even_groups, group_ids, group_starts
from zcompress_integrations.core.zcode import ZCode, text_checksum
from zcompress_integrations.core.zspace import IGNORE
from zcompress_integrations.errors import ConfigError

if TYPE_CHECKING:
    from zcompress_integrations.core.latent import LatentCodec

__all__ = ["build_group_head", "add_chain", "group_window", "group_hidden", "group_loss", "continue_groups"]

HEAD_RANK = 64
CHAIN_RANK = 128


def build_group_head(max_group: int, hidden: int, rank: int = HEAD_RANK, chain_rank: int = 0) -> Any:
    """The non-LoRA part of the token-code ``infer`` adapter: a low-rank map per group offset, and with
    ``chain_rank > 0`` a chain that lets each offset read the token before it (see :func:`add_chain`)."""
    import torch
    from torch import nn

    class _GroupHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Parameter(torch.randn(max_group, hidden, rank) * hidden**-0.5)
            self.up = nn.Parameter(
                torch.zeros(max_group, rank, hidden)
            )  # zero: every offset starts as h itself
            self.chain_rank = 0
            if chain_rank:
                self.add_chain(chain_rank)

        def add_chain(self, r: int) -> None:
            """Offset ``k`` also reads ``c_k = up_k silu(down_k [norm(h + c_{k-1}), norm(e(t_{k-1}))])``: the
            embedding of the token before it (for offset 0, the group's own last token) and the previous offset's
            state, so the tokens of a group are predicted one after another instead of independently. Zero
            ``chain_up`` at the start: the head predicts exactly as before until the chain is trained."""
            dev = self.down.device
            self.chain_rank = r
            self.chain_down = nn.Parameter(
                torch.randn(max_group, 2 * hidden, r, device=dev) * (2 * hidden) ** -0.5
            )
            self.chain_up = nn.Parameter(torch.zeros(max_group, r, hidden, device=dev))

        def offset_state(self, k: int, h: Any, prev_embed: Any = None, carry: Any = None) -> tuple[Any, Any]:
            """(pre-logit state ``[..., H]`` of offset ``k``, chain carry for offset ``k + 1``)."""
            h = h.float()
            state = h + (h @ self.down[k]) @ self.up[k]
            if not self.chain_rank:
                return state, None
            if prev_embed is None:
                raise ValueError("this head's chain needs the embedding of the token before each offset")
            carry = torch.zeros_like(h) if carry is None else carry
            norm = torch.nn.functional.rms_norm
            u = torch.cat([norm(h + carry, (h.shape[-1],)), norm(prev_embed.float(), (h.shape[-1],))], -1)
            carry = torch.nn.functional.silu(u @ self.chain_down[k]) @ self.chain_up[k]
            return state + carry, carry

        def forward(self, h: Any, weight: Any, prev_embeds: Any = None) -> Any:
            """h[..., H], output embedding ``weight[V, H]``, teacher-forced ``prev_embeds[..., G, H]`` (the
            embedding of the token before each offset; chained heads only) -> logits [..., G, V] (fp32)."""
            if self.chain_rank:
                states, carry = [], None
                for k in range(max_group):
                    prev = None if prev_embeds is None else prev_embeds[..., k, :]
                    state, carry = self.offset_state(k, h, prev, carry)
                    states.append(state)
                shifted = torch.stack(states, -2)
            else:
                h = h.float()
                shifted = h.unsqueeze(-2) + torch.einsum("...h,ghr,grk->...gk", h, self.down, self.up)
            flat = torch.nn.functional.linear(
                shifted.reshape(-1, h.shape[-1]), weight.float()
            )  # 2-D: 10x faster
            return flat.view(*shifted.shape[:-1], weight.shape[0])

    return _GroupHead()


def add_chain(codec: LatentCodec, rank: int = CHAIN_RANK) -> None:
    """Give ``codec``'s token-group head a chain (no-op when it has one): offsets then read the token before
    them. It starts as a no-op, so an already trained head keeps its predictions until the chain is trained."""
    if not codec.infer_head.chain_rank:
        codec.infer_head.add_chain(rank)


def _text_head(codec: LatentCodec) -> Any:
    """The backbone's output embedding rows of text tokens (frozen)."""
    return codec.lm.lm_head.weight[: codec.backbone.text_vocab_size].detach()


def _embed_tokens(codec: LatentCodec, tokens: Any) -> Any:
    """The backbone's (frozen) input embeddings of text tokens."""
    return codec.lm.get_input_embeddings().weight.detach()[tokens]


def group_window(codec: LatentCodec, tokens: Sequence[int], sizes: Sequence[int]) -> tuple[Any, Any, Any]:
    """Inputs ``[n, H]``, aligned positions ``[n]`` and targets ``[n, G]`` of one window cut into groups.

    Target ``[i, k]`` is the token ``k`` places after group ``i`` ends (``IGNORE`` past the window's end)."""
    import torch

    cfg = codec.config
    starts = group_starts(sizes)
    inputs = codec.code.group_embeddings(
        [list(tokens[s : s + g]) for s, g in zip(starts, sizes, strict=True)]
    )
    targets = torch.full((len(sizes), cfg.max_group), IGNORE, dtype=torch.long)
    for i, (s, g) in enumerate(zip(starts, sizes, strict=True)):
        nxt = tokens[s + g : s + g + cfg.max_group]
        targets[i, : len(nxt)] = torch.as_tensor(list(nxt), dtype=torch.long)
    dev = codec.backbone.device
    return inputs.detach(), torch.as_tensor(starts, device=dev), targets.to(dev)


def group_hidden(codec: LatentCodec, inputs: Any, positions: Any) -> Any:
    """Last hidden states ``[B, T, H]`` of Z embeddings at aligned positions (the ``infer`` adapter active)."""
    dtype = codec.lm.get_input_embeddings().weight.dtype
    return codec.lm.model(inputs_embeds=inputs.to(dtype), position_ids=positions).last_hidden_state


def group_loss(
    codec: LatentCodec, windows: Sequence[Sequence[int]], sizes: Sequence[Sequence[int]]
) -> tuple[Any, Any, Any]:
    """(mean CE over every predicted token, logits ``[B, T, G, V]``, targets ``[B, T, G]``) for a batch of windows,
    right-padded (causal attention never lets a real position see the padding after it)."""
    import torch

    rows = [group_window(codec, w, s) for w, s in zip(windows, sizes, strict=True)]
    t_max = max(r[0].shape[0] for r in rows)
    hid = rows[0][0].shape[1]
    dev = codec.backbone.device
    inputs = torch.zeros(len(rows), t_max, hid, device=dev)
    positions = torch.zeros(len(rows), t_max, dtype=torch.long, device=dev)
    targets = torch.full((len(rows), t_max, codec.config.max_group), IGNORE, dtype=torch.long, device=dev)
    for b, (x, pos, tgt) in enumerate(rows):
        m = x.shape[0]
        inputs[b, :m] = x.float()
        positions[b, :m] = pos
        positions[b, m:] = pos[-1] + 1 + torch.arange(t_max - m, device=dev)
        targets[b, :m] = tgt
    hidden = group_hidden(codec, inputs, positions)
    prev_embeds = None
    if codec.infer_head.chain_rank:  # teacher forcing: offset k reads the true token before it
        last = torch.zeros(len(rows), t_max, 1, dtype=torch.long, device=dev)
        for b, (w, s) in enumerate(zip(windows, sizes, strict=True)):
            ends = list(accumulate(s))
            last[b, : len(ends), 0] = torch.as_tensor([w[e - 1] for e in ends], device=dev)
        prev = torch.cat(
            [last, targets[..., :-1].clamp(min=0)], -1
        )  # past the end: any token (no target there)
        prev_embeds = _embed_tokens(codec, prev)
    logits = codec.infer_head(hidden, _text_head(codec), prev_embeds)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE
    )
    return loss, logits, targets


def continue_groups(
    codec: LatentCodec,
    code: ZCode,
    n_segments: int = 1,
    *,
    z_per_segment: int | None = None,
    context_segments: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
) -> ZCode:
    """The token-group Z-tokens of the ``n_segments`` segments that follow ``code`` (see the module docstring).

    ``z_per_segment`` sets the group size ``g = ceil(segment_len / z_per_segment)`` (capped at ``max_group``);
    by default ``g`` is the code's own mean group size, rounded. Other arguments as :func:`.zspace.continue_z`.
    """
    import torch
    from transformers import DynamicCache

    from zcompress_integrations.core.backbone import cache_kwargs
    from zcompress_integrations.core.zspace import INFER_ADAPTER

    cfg = codec.config
    L, G = cfg.segment_len, cfg.max_group
    groups = codec.code.groups(code.z_ids)
    if z_per_segment is None:
        size = round(sum(len(g) for g in groups) / len(groups)) if groups else round(cfg.default_ratio)
    else:
        if not 1 <= z_per_segment <= L:
            raise ConfigError(f"z_per_segment must be in [1, {L}]; got {z_per_segment}")
        size = math.ceil(L / z_per_segment)
    size = max(1, min(G, size))
    counts = list(code.segments)
    keep = len(counts) if context_segments is None else min(context_segments, len(counts))
    first = sum(counts[: len(counts) - keep])
    context = groups[first:]
    if not context:
        raise ConfigError(
            "continue_z needs a code with at least one Z-token to continue (context_segments >= 1)"
        )
    max_ctx = getattr(codec.lm.config, "max_position_embeddings", None)
    span = sum(len(g) for g in context) + n_segments * L
    if max_ctx and span > max_ctx:  # checked before any forward pass
        raise ConfigError(
            f"continuing {sum(len(g) for g in context)} context positions by n_segments={n_segments} segments of "
            f"{L} tokens spans {span} positions, more than the model's context of {max_ctx}; pass fewer segments "
            "or a smaller context_segments"
        )
    dev = codec.backbone.device
    lm = codec.lm
    weight = _text_head(codec)
    blocked = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
    blocked[codec.end_token] = (
        True  # a continuation does not end inside a segment: the end token is never written
    )
    gen = torch.Generator(device=dev).manual_seed(seed) if temperature > 0 else None
    seen = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)  # for the repetition penalty
    seen[[t for g in context for t in g]] = True
    per_segment = even_groups(L, size)
    head, last_token = codec.infer_head, context[-1][-1]
    new_groups: list[list[int]] = []
    with codec.adapter(INFER_ADAPTER), torch.inference_mode():
        x = codec.code.group_embeddings(context).unsqueeze(0)
        position_ids = torch.tensor([group_starts([len(g) for g in context])], device=dev)
        start = sum(len(g) for g in context)
        dtype = lm.get_input_embeddings().weight.dtype
        cache = DynamicCache(config=lm.config)
        ckw = cache_kwargs(lm.model, cache)
        for _ in range(n_segments):
            for g in per_segment:
                hidden = lm.model(inputs_embeds=x.to(dtype), position_ids=position_ids, use_cache=True, **ckw)
                h = hidden.last_hidden_state[0, -1]
                group, carry = [], None
                for k in range(
                    g
                ):  # offsets in order: the chain and the penalty see this group's earlier tokens
                    prev_embed = (
                        _embed_tokens(codec, group[-1] if group else last_token) if head.chain_rank else None
                    )
                    state, carry = head.offset_state(k, h, prev_embed, carry)
                    row = torch.nn.functional.linear(state, weight.float()).masked_fill(
                        blocked, float("-inf")
                    )
                    tok = _pick(row, seen, temperature, top_p, repetition_penalty, gen)
                    seen[tok] = True
                    group.append(tok)
                last_token = group[-1]
                new_groups.append(group)
                x = codec.code.group_embeddings([group]).unsqueeze(0)
                position_ids = torch.tensor([[start]], device=dev)
                start += g
    ids = group_ids([t for grp in new_groups for t in grp], [len(grp) for grp in new_groups], cfg.vocab_size)
    return ZCode(
        z_ids=tuple(ids),
        codec="latent",
        k=codec.code.k,
        text_tokens=n_segments * L,
        text_chars=0,
        checksum=text_checksum(b""),
        fingerprint=codec.fingerprint,
        segments=(len(per_segment),) * n_segments,
        params={"segment_len": L, "generated": 1},
    )


def _pick(
    logits: Any, seen: Any, temperature: float, top_p: float, repetition_penalty: float, gen: Any
) -> int:
    """One token from one offset's logits: repetition penalty (``transformers``' rule: seen tokens' logits
    divided by it when positive, multiplied when negative), then argmax or top-p sampling."""
    import torch

    if repetition_penalty != 1:
        logits = torch.where(
            seen, torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty), logits
        )
    if gen is None:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        drop = (
            sorted_probs.cumsum(-1) - sorted_probs >= top_p
        )  # keep up to and including the one crossing top_p
        probs = probs.scatter(0, order[drop], 0.0)
    return int(torch.multinomial(probs, 1, generator=gen))
