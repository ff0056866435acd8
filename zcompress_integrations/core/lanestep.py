"""One KV-cached model step over a batch of lanes: the body of the exact codec's path 2.

The exact codec calls the model once per coded token, for ``B`` lanes (rows) at a time, ``steps`` times in a run.
Two implementations share one small protocol (:class:`LaneStep`):

* :class:`LlamaLaneStep`, for Llama-architecture models with plain ``nn.Linear`` weights (the default
  SmolLM2-135M): the decoder layers written out with plain torch ops over a key/value cache allocated once per run
  (``[B, kv_heads, steps, head_dim]`` per layer, written in place): no cache object that concatenates its tensors
  at every step, no mask building, and attention runs on the key/value heads directly (the ``n_heads / kv_heads``
  query heads that share a key/value head are its "queries", so keys are never repeated). LoRA layers that peft
  injected are read through their ``base_layer``: the step always runs the base model.
* :class:`HFLaneStep`, for every other model: the model's own forward with a ``DynamicCache``.

Which one a model gets is a pure function of the model (:func:`lane_step_for`), so an encoder and a decoder that
load the same model take the same one. Their logits differ from each other (and from a parallel forward) in the
last bits of float32, which moves a code's size by far less than a bit; what matters is that one implementation
computes the same numbers every time for the same lane layout and thread count, and it does: every op works row by
row, and a row's result depends on its position in the batch, ``B`` and the step index, never on the other rows'
contents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["HFLaneStep", "LaneStep", "LlamaLaneStep", "decoder_of", "lane_step_for"]

_ROPE_TYPES = ("default", "linear", "llama3")


class LaneStep(Protocol):
    """``start(lanes, steps)`` returns a fresh per-run state; ``step(ids[B, 1], state)`` feeds one token per lane
    and returns the final hidden states ``[B, H]`` (after the model's last norm)."""

    def start(self, lanes: int, steps: int) -> Any: ...

    def step(self, ids: Any, state: Any) -> Any: ...


def decoder_of(model: Any) -> Any:
    """The model body (embeddings, layers, final norm) of a causal LM."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def _base(module: Any) -> Any:
    """The layer under a peft LoRA wrapper (``base_layer``), or the layer itself."""
    return getattr(module, "base_layer", module)


class HFLaneStep:
    """Any causal LM: its own forward over a ``DynamicCache`` (grown by concatenation at every step)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def start(self, lanes: int, steps: int) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def step(self, ids: Any, state: Any) -> Any:
        from zcompress_integrations.core.backbone import cache_kwargs

        body = decoder_of(self.model)
        out = body(input_ids=ids, use_cache=True, **cache_kwargs(body, state))
        return out.last_hidden_state[:, -1]


@dataclass
class _LayerWeights:
    norm1: Any
    eps1: float
    q: tuple[Any, Any]  # (weight, bias or None)
    k: tuple[Any, Any]
    v: tuple[Any, Any]
    o: tuple[Any, Any]
    norm2: Any
    eps2: float
    gate: tuple[Any, Any]
    up: tuple[Any, Any]
    down: tuple[Any, Any]


@dataclass
class _LlamaRun:
    """One run's state: the pre-allocated cache and the step index."""

    layers: list[_LayerWeights]
    keys: list[Any]  # per layer [B, kv_heads, steps, head_dim]
    values: list[Any]
    t: int = 0


def _linear_parts(module: Any) -> tuple[Any, Any]:
    base = _base(module)
    return base.weight, base.bias


class LlamaLaneStep:
    """The Llama decoder step over a pre-allocated cache (see the module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.group = self.n_heads // self.kv_heads
        self.scale = self.head_dim**-0.5

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether ``model`` is a Llama this step reproduces: silu MLP, no tensor-parallel split, a RoPE kind
        that depends on the position only, plain ``nn.Linear`` projections (not quantized), no extra norms."""
        import torch

        cfg = getattr(model, "config", None)
        if getattr(cfg, "model_type", None) != "llama" or getattr(cfg, "hidden_act", "silu") != "silu":
            return False
        if getattr(cfg, "pretraining_tp", 1) != 1:
            return False
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        if rope.get("rope_type", rope.get("type", "default")) not in _ROPE_TYPES:
            return False
        try:
            body = decoder_of(model)
            layers = list(body.layers)
            modules = [body.rotary_emb, body.norm, _base(body.embed_tokens)]
        except AttributeError:
            return False
        if not layers or not isinstance(modules[2], torch.nn.Embedding):
            return False
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            projections = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")] + [
                getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")
            ]
            if any(p is None or type(_base(p)) is not torch.nn.Linear for p in projections):
                return False
            if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
                return False
        return True

    def _weights(self) -> list[_LayerWeights]:
        # read at every run start: cheap, and always the model's current (base) tensors
        layers = []
        for layer in decoder_of(self.model).layers:
            attn, mlp = layer.self_attn, layer.mlp
            layers.append(
                _LayerWeights(
                    norm1=layer.input_layernorm.weight,
                    eps1=float(layer.input_layernorm.variance_epsilon),
                    q=_linear_parts(attn.q_proj),
                    k=_linear_parts(attn.k_proj),
                    v=_linear_parts(attn.v_proj),
                    o=_linear_parts(attn.o_proj),
                    norm2=layer.post_attention_layernorm.weight,
                    eps2=float(layer.post_attention_layernorm.variance_epsilon),
                    gate=_linear_parts(mlp.gate_proj),
                    up=_linear_parts(mlp.up_proj),
                    down=_linear_parts(mlp.down_proj),
                )
            )
        return layers

    def start(self, lanes: int, steps: int) -> _LlamaRun:
        import torch

        layers = self._weights()
        w = layers[0].q[0]
        shape = (lanes, self.kv_heads, max(1, steps), self.head_dim)
        keys = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in layers]
        values = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in layers]
        return _LlamaRun(layers, keys, values)

    @staticmethod
    def _norm(x: Any, weight: Any, eps: float) -> Any:
        # LlamaRMSNorm: in float32, back to the input dtype before the weight
        import torch

        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)

    @staticmethod
    def _rope(x: Any, cos: Any, sin: Any) -> Any:
        import torch

        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def step(self, ids: Any, state: _LlamaRun) -> Any:
        import torch
        import torch.nn.functional as F

        body = decoder_of(self.model)
        t = state.t
        lanes = ids.shape[0]
        x = F.embedding(ids[:, 0], _base(body.embed_tokens).weight)  # [B, H]
        # RoPE of this one position, computed alone at every step (never as part of a longer table, whose
        # vectorised tail could round differently)
        pos = torch.full((1, 1), t, dtype=torch.long, device=x.device)
        cos, sin = body.rotary_emb(x, pos)
        cos, sin = cos[0], sin[0]  # [1, head_dim]
        for i, lw in enumerate(state.layers):
            h = self._norm(x, lw.norm1, lw.eps1)
            q = F.linear(h, *lw.q).view(lanes, self.kv_heads, self.group, self.head_dim)
            k = F.linear(h, *lw.k).view(lanes, self.kv_heads, self.head_dim)
            v = F.linear(h, *lw.v).view(lanes, self.kv_heads, self.head_dim)
            state.keys[i][:, :, t] = self._rope(k, cos, sin)
            state.values[i][:, :, t] = v
            keys = state.keys[i][:, :, : t + 1]  # [B, kv_heads, t + 1, head_dim]
            values = state.values[i][:, :, : t + 1]
            # the group's query heads stand in the query-length slot: [B, kv_heads, group, head_dim]
            o = F.scaled_dot_product_attention(self._rope(q, cos, sin), keys, values, scale=self.scale)
            x = x + F.linear(o.reshape(lanes, -1), *lw.o)
            h = self._norm(x, lw.norm2, lw.eps2)
            x = x + F.linear(F.silu(F.linear(h, *lw.gate)) * F.linear(h, *lw.up), *lw.down)
        state.t = t + 1
        return self._norm(x, body.norm.weight, float(body.norm.variance_epsilon))


def lane_step_for(model: Any) -> LaneStep:
    """The step implementation for ``model``: :class:`LlamaLaneStep` where it applies, else :class:`HFLaneStep`."""
    return LlamaLaneStep(model) if LlamaLaneStep.supports(model) else HFLaneStep(model)
