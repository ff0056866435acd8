"""The latent codec: LoRA adapters that make the backbone write and read Z-tokens (arXiv 2603.25340, adapted).

Text is cut into segments of up to ``segment_len`` tokens. The ``compress`` adapter reads a segment followed by
``m`` learned slot embeddings; the last hidden state at each slot is quantised into one Z-token. The
``decompress`` adapter reads the Z-tokens' embeddings, a separator, and writes the segment back (greedy, KV cache).

Z-tokens. Each Z-token is a code of a factorised vocabulary: finite scalar quantisation (FSQ, Mentzer et al. 2023)
of a ``fsq_dims``-dimensional projection into ``fsq_levels`` levels per dimension, so one Z-token takes one of
``K_eff = fsq_levels ** fsq_dims`` values (32^8 = 2^40 by default) and carries ``log2(K_eff)`` bits. Its embedding
is ``z_up(q)``, a sum of one learned vector per dimension scaled by that digit's level: the "several codebooks per
Z-token, summed embeddings" design. Why FSQ and not a Gumbel-softmax over K new rows: with 12 bits per Z-token a 2x
code must be near-perfectly efficient, and the Gumbel recipe collapsed or went unused in calibration here; FSQ has
no codebook to collapse and needs no auxiliary losses. The backbone's own vocabulary rows are untouched, so exact
codes stay valid with the adapters loaded.

Length. The number of Z-tokens of a segment follows its surprisal under the base model:
``m = round(len / ratio * nll / calib_nll)`` (clamped), where ``calib_nll`` is the mean per-token NLL of training
text. Dense or unpredictable text gets more Z-tokens, predictable text fewer, and the mean ratio tracks ``ratio``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zcompress_integrations.core.zcode import ZCode, text_checksum
from zcompress_integrations.errors import (
    ChecksumMismatchError,
    ConfigError,
    CorruptCodeError,
    LatentUnavailableError,
    ModelMismatchError,
)

__all__ = [
    "LatentConfig",
    "LatentCodec",
    "load_latent_codec",
    "default_adapter_dir",
    "CONFIG_NAME",
    "MODULES_NAME",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "zcompress_config.json"
MODULES_NAME = "latent_modules.safetensors"
ADAPTERS = ("compress", "decompress")
_LATENT_VERSION = 2
_NLL_MEMO_SIZE = 20_000  # segments whose base-model NLL is remembered (per-token float32: about 7 MB)


def _segment_key(seg: Sequence[int]) -> bytes:
    import hashlib
    from array import array

    return hashlib.blake2b(array("q", seg).tobytes(), digest_size=16).digest()


@dataclass
class LatentConfig:
    """Settings of a latent codec; saved as ``zcompress_config.json`` beside the adapters.

    Attributes:
        segment_len: text tokens per segment.
        fsq_levels: quantisation levels per FSQ dimension.
        fsq_dims: FSQ dimensions per Z-token (``K_eff = fsq_levels ** fsq_dims``).
        max_slots: most Z-tokens one segment may get.
        default_ratio: ratio used when ``compress(..., ratio=None)``.
        calib_nll: mean per-token NLL (nats) of training text under the base model (for adaptive lengths).
        lora_r / lora_alpha / lora_dropout / target_modules: the LoRA adapters.
        backbone: name of the backbone; ``backbone_fingerprint``: its fingerprint (hex).
        max_decode_extra: decoding stops at the end token or after ``segment_len + max_decode_extra`` tokens.
        z_embedding: ``"table"`` (one learned vector per dimension and level, summed; read like 8 superposed
            tokens), ``"linear"`` (``up(q)``: all Z embeddings in one 8-dimensional subspace; kept for
            comparison, it trained to no measurable use of Z) or ``"tokens"`` (the token-group code: a Z-token
            is a group of 1..``max_group`` text tokens, embedded as the sum of their turned unit embeddings).
        max_group: most text tokens one Z-token stands for (``"tokens"`` code).
        vocab_size: text vocabulary size the ``"tokens"`` code is built on (set by :meth:`LatentCodec.create`).
    """

    segment_len: int = 64
    fsq_levels: int = 32
    fsq_dims: int = 8
    max_slots: int = 64
    default_ratio: float = 2.0
    calib_nll: float = 2.9
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    backbone: str = ""
    backbone_fingerprint: str = ""
    max_decode_extra: int = 8
    z_embedding: str = "table"
    max_group: int = 4
    vocab_size: int = 0
    version: int = _LATENT_VERSION
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("segment_len", "fsq_levels", "fsq_dims", "max_slots", "lora_r"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"LatentConfig.{name} must be >= 1; got {getattr(self, name)!r}")
        if self.fsq_levels < 2:
            raise ConfigError(f"LatentConfig.fsq_levels must be >= 2; got {self.fsq_levels}")
        if self.z_embedding not in ("table", "linear", "tokens"):
            raise ConfigError(
                f"LatentConfig.z_embedding must be 'table', 'linear' or 'tokens'; got {self.z_embedding!r}"
            )
        if self.max_group < 1:
            raise ConfigError(f"LatentConfig.max_group must be >= 1; got {self.max_group}")
        if self.default_ratio <= 0:
            raise ConfigError(f"LatentConfig.default_ratio must be > 0; got {self.default_ratio}")

    @property
    def token_code(self) -> bool:
        """Whether Z-tokens are token groups (``z_embedding == "tokens"``), not learned FSQ codes."""
        return self.z_embedding == "tokens"

    @property
    def k_eff(self) -> int:
        """Distinct values one Z-token can take."""
        if self.token_code:
            return sum(self.vocab_size**g for g in range(1, self.max_group + 1))
        return self.fsq_levels**self.fsq_dims

    def lora_config(self) -> Any:
        """The peft ``LoraConfig`` every adapter of this codec uses."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.target_modules),
            bias="none",
        )

    @property
    def bits_per_z(self) -> float:
        return math.log2(self.k_eff)

    def save(self, directory: Path) -> None:
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> LatentConfig:
        data = json.loads((directory / CONFIG_NAME).read_text())
        if int(data.get("version", 1)) < 2:
            data.setdefault("z_embedding", "linear")  # version 1 had only the linear Z embedding
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown latent config keys %s (written by a newer zcompress?)", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})


def default_adapter_dir() -> Path:
    """The adapters shipped inside the package (``zcompress_integrations/adapters/smollm2-135m``)."""
    return Path(__file__).resolve().parent.parent / "adapters" / "smollm2-135m"


def build_latent_modules(config: LatentConfig, hidden: int, embed_std: float, token_embeddings: Any = None) -> Any:
    """The small non-LoRA parts: slot embeddings, separator, FSQ projection down, Z embedding.

    ``token_embeddings`` (the backbone's input embedding matrix) seeds the Z embedding table with sums of real
    token embeddings, so the backbone starts out seeing Z-tokens as token-like inputs.
    Built inside a function so that this module imports without torch.
    """
    import torch
    from torch import nn

    levels, dims = config.fsq_levels, config.fsq_dims
    half = (levels - 1) / 2

    class _Modules(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.slots = nn.Parameter(torch.randn(config.max_slots, hidden) * embed_std)
            self.sep = nn.Parameter(torch.randn(hidden) * embed_std)
            self.down = nn.Linear(hidden, dims)
            # Version 2: normalise the slot state and start the projection at unit scale, so tanh starts in its
            # linear range; a run without this saturated tanh and collapsed to a few dozen codes per batch.
            self.norm = nn.LayerNorm(hidden) if config.version >= 2 else nn.Identity()
            if config.version >= 2:
                nn.init.normal_(self.down.weight, std=1 / math.sqrt(hidden))
                nn.init.zeros_(self.down.bias)
            if config.z_embedding == "table":
                # Start smooth in the level (a line per dimension, like the linear embedding, so the encoder's
                # gradient - the step between adjacent levels - starts small) plus a token-like offset per
                # dimension drawn from real token embeddings and a little per-level noise, so every digit is
                # distinguishable from step 0.
                scale = embed_std / math.sqrt(dims)
                ramp = torch.linspace(-1, 1, levels).view(1, levels, 1)
                direction = torch.randn(dims, 1, hidden) * scale
                if token_embeddings is not None:
                    pick = torch.randint(0, token_embeddings.shape[0], (dims,))
                    base = token_embeddings.detach().float().cpu()[pick].unsqueeze(1) / math.sqrt(dims)
                else:
                    base = torch.randn(dims, 1, hidden) * scale
                noise = torch.randn(dims, levels, hidden) * scale * 0.25
                self.table = nn.Parameter(base + ramp * direction + noise)
            else:
                self.up = nn.Linear(dims, hidden)
                nn.init.normal_(self.up.weight, std=embed_std)
                nn.init.zeros_(self.up.bias)
            if config.token_code:
                # token k of a group is turned by rotations[k] (the first by the identity) so order is in the
                # code; the scale is the backbone's mean token-embedding norm (Z-tokens look token-sized)
                gen = torch.Generator().manual_seed(1234)
                turns = [torch.linalg.qr(torch.randn(hidden, hidden, generator=gen))[0] for _ in range(config.max_group - 1)]
                self.register_buffer("rotations", torch.stack([torch.eye(hidden), *turns]))
                norm = 1.0 if token_embeddings is None else float(token_embeddings.detach().float().norm(dim=1).mean())
                self.register_buffer("token_scale", torch.tensor(norm))

        # ---- FSQ: h[..., H] -> (digits[..., D] long, q[..., D] in [-1, 1] with straight-through) -------
        def quantize(self, h: Any) -> tuple[Any, Any]:
            with torch.autocast(device_type=h.device.type, enabled=False):  # round in fp32 on every device
                bounded = torch.tanh(self.down(self.norm(h.float()))) * half  # in (-half, half)
                level = torch.round(bounded + half)  # in {0, ..., levels - 1}: one digit per dimension
                q = bounded + (level - half - bounded).detach()  # straight-through rounding
                digits = level.long()
            return digits, q / half

        def embed(self, q: Any) -> Any:
            """Differentiable Z embedding of straight-through ``q`` (equals ``embed_digits`` in the forward pass).

            The table is read by linear interpolation between neighbouring levels, so the encoder's gradient
            is the difference between the embeddings of adjacent levels.
            """
            if config.z_embedding == "linear":
                return self.up(q)
            v = ((q.float() + 1) * half).clamp(0, levels - 1)
            lo = v.detach().floor().clamp(max=levels - 2)
            frac = (v - lo).unsqueeze(-1)
            lo = lo.long()
            dim_idx = torch.arange(dims, device=q.device).expand_as(lo)
            low, high = self.table[dim_idx, lo], self.table[dim_idx, lo + 1]
            return ((1 - frac) * low + frac * high).sum(-2)

        def embed_digits(self, digits: Any) -> Any:
            if config.z_embedding == "linear":
                return self.up((digits.float() - half) / half)
            dim_idx = torch.arange(dims, device=digits.device).expand_as(digits)
            return self.table[dim_idx, digits].sum(-2)

    return _Modules()


def group_ids(tokens: Sequence[int], sizes: Sequence[int], vocab: int) -> list[int]:
    """Z ids of the token-group code: consecutive groups of ``sizes`` tokens; a group of g tokens has id
    ``sum(V**h for h < g) + sum(t_k * V**k)`` (``V = vocab``), so every id names one group of one size."""
    if sum(sizes) != len(tokens):
        raise ValueError(f"group sizes sum to {sum(sizes)}, not the {len(tokens)} tokens")
    ids, start = [], 0
    for g in sizes:
        offset = sum(vocab**h for h in range(1, g))
        ids.append(offset + sum(int(t) * vocab**k for k, t in enumerate(tokens[start : start + g])))
        start += g
    return ids


def id_groups(z_ids: Sequence[int], vocab: int, max_group: int) -> list[list[int]]:
    """Inverse of :func:`group_ids`: the token group each Z id stands for."""
    out = []
    for z in z_ids:
        g, offset = 1, 0
        while z >= offset + vocab**g:
            offset += vocab**g
            g += 1
            if g > max_group:
                raise CorruptCodeError(f"Z id {z} is outside the token-group code (groups of at most {max_group})")
        x = z - offset
        out.append([(x // vocab**k) % vocab for k in range(g)])
    return out


def even_groups(length: int, size: int) -> list[int]:
    """Sizes of ``length`` tokens cut into groups of ``size`` (the last one shorter when it does not divide)."""
    return [size] * (length // size) + ([length % size] if length % size else [])


def surprisal_groups(nll: Sequence[float], count: int, max_group: int) -> list[int]:
    """Sizes of ``count`` consecutive groups (1..``max_group`` tokens each) covering tokens with these NLLs, chosen
    to even out the NLL per group (least sum of squared group NLL, by dynamic programming): surprising tokens get
    a Z-token to themselves, predictable runs share one."""
    n = len(nll)
    if not -(-n // max_group) <= count <= n:
        raise ValueError(f"{n} tokens cannot make {count} groups of 1..{max_group}")
    prefix = [0.0]
    for x in nll:
        prefix.append(prefix[-1] + max(float(x), 0.0) + 1e-3)  # + a little per token: ties favour even sizes
    inf = float("inf")
    # best[j][i]: least cost of splitting the first i tokens into j groups; back[j][i]: the last group's size
    best = [[inf] * (n + 1) for _ in range(count + 1)]
    back = [[0] * (n + 1) for _ in range(count + 1)]
    best[0][0] = 0.0
    for j in range(1, count + 1):
        lo, hi = j, min(n, j * max_group)
        for i in range(lo, hi + 1):
            for g in range(1, min(max_group, i) + 1):
                prev = best[j - 1][i - g]
                if prev < inf:
                    cost = prev + (prefix[i] - prefix[i - g]) ** 2
                    if cost < best[j][i]:
                        best[j][i], back[j][i] = cost, g
    sizes, i = [], n
    for j in range(count, 0, -1):
        sizes.append(back[j][i])
        i -= back[j][i]
    return sizes[::-1]


def digits_to_ids(digits: Any, levels: int) -> list[int]:
    """[n, D] digits -> n combined Z ids (little-endian base ``levels``)."""
    rows = digits.tolist()
    return [sum(d * levels**i for i, d in enumerate(row)) for row in rows]


def ids_to_digits(ids: Sequence[int], levels: int, dims: int) -> list[list[int]]:
    return [[(z // levels**i) % levels for i in range(dims)] for z in ids]


class LatentCodec:
    """Compress/decompress with the ``compress``/``decompress`` adapters on a shared backbone.

    Build with :func:`load_latent_codec` (trained adapters) or :meth:`create` (fresh, for training).
    """

    def __init__(
        self, backbone: Any, config: LatentConfig, peft_model: Any, modules: Any, fingerprint: bytes
    ):
        self.backbone = backbone
        self.config = config
        self.peft_model = peft_model
        self.modules = modules
        self.fingerprint = fingerprint
        self._eos = self._end_token(backbone.tokenizer)
        from zcompress_integrations.core.entropy import EntropyCodec
        from zcompress_integrations.core.tokenbytes import TokenBytes

        self.token_bytes = TokenBytes(backbone.tokenizer, backbone.text_vocab_size)
        self._start = EntropyCodec._start_token(backbone.tokenizer)
        self._runner: Any = None
        self._nll_memo: dict[bytes, Any] = {}  # segment key -> per-token NLL (array of float32)
        self.infer_head: Any = None  # the ``infer`` adapter's Z head (core/zspace.py), when there is one

    # ---- construction ------------------------------------------------------------------------------------
    @staticmethod
    def _end_token(tokenizer: Any) -> int:
        for tid in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")):
            if isinstance(tid, int) and tid >= 0:
                return tid
        return 0

    @classmethod
    def create(cls, backbone: Any, config: LatentConfig, seed: int = 0) -> LatentCodec:
        """Fresh adapters + modules (slot/sep embeddings at the scale of the token embeddings)."""
        import torch
        from peft import get_peft_model

        torch.manual_seed(seed)
        model = backbone.model
        emb = model.get_input_embeddings().weight
        lora = config.lora_config()
        if config.token_code:  # no encoder to train: the reader only
            peft_model = get_peft_model(model, lora, adapter_name="decompress")
        else:
            peft_model = get_peft_model(model, lora, adapter_name="compress")
            peft_model.add_adapter("decompress", lora)
        modules = build_latent_modules(config, emb.shape[1], float(emb.detach().float().std()), emb)
        modules.to(emb.device)
        if config.token_code:
            config.vocab_size = backbone.text_vocab_size
        config.backbone = backbone.name
        config.backbone_fingerprint = backbone.fingerprint.hex()
        return cls(backbone, config, peft_model, modules, _latent_fingerprint(backbone.fingerprint, modules))

    def refresh_fingerprint(self) -> None:
        """Recompute the fingerprint after the modules changed (training)."""
        self.fingerprint = _latent_fingerprint(self.backbone.fingerprint, self.modules)

    # ---- adapter switching -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def adapter(self, name: str, train: bool = False) -> Iterator[None]:
        """Activate one adapter. With ``train=True`` both adapters keep ``requires_grad`` (peft turns off the
        inactive one's, but a training step backpropagates through both)."""
        self.peft_model.base_model.set_adapter(name)
        if train:
            for pname, param in self.peft_model.named_parameters():
                if "lora_" in pname:
                    param.requires_grad_(True)
        yield

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Context in which the backbone reads Z-tokens (the ``decompress`` adapter)."""
        return self.adapter("decompress")

    @contextlib.contextmanager
    def reading_inside_base(self) -> Iterator[None]:
        """Turn the ``decompress`` adapter on inside ``peft_model.disable_adapter()`` and off again after: how a
        prompt's Z context is read before the base model answers (core/generation.py)."""
        base = self.peft_model.base_model
        base.set_adapter("decompress")
        base.enable_adapter_layers()
        try:
            yield
        finally:
            base.disable_adapter_layers()

    @property
    def _lm(self) -> Any:
        return self.peft_model.base_model.model  # LlamaForCausalLM with LoRA layers injected

    def _embed(self, ids: Any) -> Any:
        return self._lm.get_input_embeddings()(ids)

    # ---- differentiable pieces (training and inference share them) ---------------------------------------
    def encode_hidden(self, text_ids: Any, m: int) -> Any:
        """text_ids[B, L] -> slot hidden states [B, m, H] (compress adapter must be active)."""
        import torch

        batch = text_ids.shape[0]
        slots = (
            self.modules.slots[:m].to(self._embed(text_ids[:, :1]).dtype).unsqueeze(0).expand(batch, -1, -1)
        )
        x = torch.cat([self._embed(text_ids), slots], dim=1)
        hidden = self._lm.model(inputs_embeds=x).last_hidden_state
        return hidden[:, text_ids.shape[1] :]

    def decoder_prefix(self, z_embeds: Any) -> Any:
        """[B, m, H] Z embeddings -> [B, m + 1, H] decoder prefix (Z-tokens then the separator)."""
        import torch

        dtype = self._lm.get_input_embeddings().weight.dtype  # bf16 backbones get bf16 inputs
        sep = self.modules.sep.view(1, 1, -1).expand(z_embeds.shape[0], 1, -1)
        return torch.cat([z_embeds.to(dtype), sep.to(dtype)], dim=1)

    def reconstruction_logits(self, z_embeds: Any, text_ids: Any) -> Any:
        """Teacher-forced logits [B, L + 1, V] for ``text_ids`` then the end token (decompress active)."""
        import torch

        prefix = self.decoder_prefix(z_embeds)
        x = torch.cat([prefix, self._embed(text_ids).to(prefix.dtype)], dim=1)
        hidden = self._lm.model(inputs_embeds=x).last_hidden_state[:, prefix.shape[1] - 1 :]
        return self._lm.lm_head(hidden)

    # ---- slot counts -------------------------------------------------------------------------------------
    def segment_nll(self, segments: list[list[int]]) -> list[float]:
        """Mean per-token NLL (nats) of each segment under the base model (adapters off)."""
        return [sum(t) / len(t) if len(t) else 0.0 for t in self.token_nll(segments)]

    def token_nll(self, segments: list[list[int]]) -> list[list[float]]:
        """Per-token NLL (nats) of each segment under the base model (adapters off), one forward per group of
        equal length. Remembered per segment (the base model never changes), so compressing the same text
        again, e.g. at another ratio, skips this forward."""
        from array import array

        import torch

        keys = [_segment_key(seg) for seg in segments]
        out: list[Any] = [self._nll_memo.get(key) for key in keys]
        groups: dict[int, list[int]] = {}
        for i, seg in enumerate(segments):
            if out[i] is None:
                groups.setdefault(len(seg), []).append(i)
        start = self._start  # the same start token as the exact codec
        with self.peft_model.disable_adapter(), torch.inference_mode():
            for length, idx in groups.items():
                ids = torch.tensor([[start] + segments[i] for i in idx], device=self.backbone.device)
                logits = self._lm(input_ids=ids).logits[:, :-1].float()
                nll = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
                ).view(len(idx), length)
                for j, i in enumerate(idx):
                    out[i] = array("f", nll[j].tolist())
        if len(self._nll_memo) > _NLL_MEMO_SIZE:
            self._nll_memo.clear()
        self._nll_memo.update(zip(keys, out, strict=True))
        return [list(x) for x in out]

    def slot_count(self, length: int, nll: float, ratio: float) -> int:
        cfg = self.config
        m = round(length / ratio * nll / max(cfg.calib_nll, 1e-6))
        least = -(-length // cfg.max_group) if cfg.token_code else 1  # a Z-token holds at most max_group tokens
        return int(min(max(m, least, 1), cfg.max_slots, max(length, 1)))

    # ---- inference -----------------------------------------------------------------------------------------
    def _segments(self, data: bytes) -> list[list[int]]:
        """Token ids of the text cut into segments of at most ``segment_len`` tokens (exact for any bytes: may hold
        virtual byte ids). Sentence aware: a segment ends after the last sentence end (``.``, ``!``, ``?`` or a
        newline) in its second half when there is one, so Z-tokens rarely straddle two sentences."""
        ids = self.token_bytes.encode(data)
        L = self.config.segment_len
        table = self.token_bytes.table
        segments, start = [], 0
        while start < len(ids):
            end = min(start + L, len(ids))
            if end < len(ids):
                for cut in range(end, start + max(1, L // 2), -1):
                    raw = (table[ids[cut - 1]] or b"").rstrip(b" ")
                    if raw.endswith((b".", b"!", b"?", b"\n")):
                        end = cut
                        break
            segments.append(ids[start:end])
            start = end
        return segments

    def _model_ids(self, seg: list[int]) -> list[int]:
        """What the model reads for a segment: virtual byte ids become the start token."""
        vocab = self.backbone.text_vocab_size
        return [t if t < vocab else self._start for t in seg]

    def compress_batch(
        self,
        items: Sequence[str | bytes],
        *,
        ratio: float | None = None,
        exact: bool = False,
        batch_size: int = 64,
        progress: bool = False,
    ) -> list[ZCode]:
        """Latent codes for texts: segments of all texts are compressed together, left-padded in batches.

        With ``exact=True`` each code also carries a residual: the text arithmetic-coded under the decompressor's
        own distribution given the Z-tokens, so decoding is byte-exact (the residual is small when Z says a lot).
        """

        from zcompress_integrations.core.entropy import as_bytes

        ratio = float(ratio or self.config.default_ratio)
        if ratio <= 0:
            raise ConfigError(f"ratio must be > 0; got {ratio}")
        datas = [as_bytes(x) for x in items]
        seg_lists = [self._segments(d) for d in datas]
        flat = [self._model_ids(seg) for segs in seg_lists for seg in segs]
        token_nlls = self.token_nll(flat) if flat else []
        nlls = [sum(t) / len(t) for t in token_nlls]
        counts = [self.slot_count(len(seg), nll, ratio) for seg, nll in zip(flat, nlls, strict=True)]
        ids_per_seg: list[list[int]] = [[] for _ in flat]
        if self.config.token_code:  # no encoder: the Z-tokens are the segment's tokens in surprisal-even groups
            vocab, most = self.config.vocab_size, self.config.max_group
            for j, seg in enumerate(flat):
                ids_per_seg[j] = group_ids(seg, surprisal_groups(token_nlls[j], counts[j], most), vocab)
        else:
            self._encode_all(flat, counts, ids_per_seg, batch_size, progress)
        codes = []
        pos = 0
        for i, item in enumerate(items):
            segs = seg_lists[i]
            z_ids: list[int] = []
            seg_counts = []
            for _ in segs:
                z_ids += ids_per_seg[pos]
                seg_counts.append(len(ids_per_seg[pos]))
                pos += 1
            codes.append(
                ZCode(
                    z_ids=tuple(z_ids),
                    codec="latent",
                    k=self.config.k_eff,
                    text_tokens=sum(len(s) for s in segs),
                    text_chars=len(item),
                    checksum=text_checksum(datas[i]),
                    fingerprint=self.fingerprint,
                    is_bytes=isinstance(item, bytes),
                    segments=tuple(seg_counts),
                    params={"segment_len": self.config.segment_len, "ratio_x100": round(ratio * 100)},
                )
            )
        if exact:
            codes = self._add_residuals(codes, seg_lists)
        return codes

    def _encode_all(
        self, flat: list[list[int]], counts: list[int], ids_per_seg: list[list[int]], batch_size: int, progress: bool
    ) -> None:
        """FSQ Z ids of every segment (``compress`` adapter), similar lengths batched together."""
        import torch

        order = sorted(range(len(flat)), key=lambda j: len(flat[j]) + counts[j])
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="latent compress", unit="batch")
        with self.adapter("compress"), torch.inference_mode():
            for chunk in batches:
                hidden = self._encode_padded([flat[j] for j in chunk], [counts[j] for j in chunk])
                for j, h in zip(chunk, hidden, strict=True):
                    digits, _ = self.modules.quantize(h)
                    ids_per_seg[j] = digits_to_ids(digits, self.config.fsq_levels)

    def _encode_padded(self, segs: list[list[int]], counts: list[int]) -> list[Any]:
        """Slot hidden states for segments of different lengths and Z counts, left-padded into one batch.

        Positions restart at 0 after the padding (explicit ``position_ids``), exactly as in training.
        """
        import torch

        dev = self.backbone.device
        emb_layer = self._lm.get_input_embeddings()
        rows, total = [], max(len(s) + m for s, m in zip(segs, counts, strict=True))
        mask = torch.zeros(len(segs), total, dtype=torch.long, device=dev)
        for b, (seg, m) in enumerate(zip(segs, counts, strict=True)):
            text = emb_layer(torch.tensor(seg, device=dev))
            row = torch.cat([text, self.modules.slots[:m].to(text.dtype)], dim=0)
            pad = total - row.shape[0]
            rows.append(torch.cat([row.new_zeros(pad, row.shape[1]), row], dim=0))
            mask[b, pad:] = 1
        x = torch.stack(rows)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        hidden = self._lm.model(
            inputs_embeds=x, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        return [hidden[b, total - m :] for b, m in enumerate(counts)]

    def check_compatible(self, code: ZCode) -> None:
        if code.codec != "latent":
            raise ConfigError("not a latent code")
        if code.fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"this latent code was made by other adapters/backbone (fingerprint {code.fingerprint.hex()}, "
                f"loaded {self.fingerprint.hex()}); load the adapters that made it"
            )
        if code.k != self.config.k_eff or sum(code.segments) != len(code.z_ids):
            raise CorruptCodeError("latent code's Z vocabulary or segment counts do not match its Z ids")

    def z_embeddings(self, z_ids: Sequence[int]) -> Any:
        """[n, H] embeddings of Z ids (what the decompress adapter reads)."""
        import torch

        if self.config.token_code:
            return self._token_group_embeddings(id_groups(z_ids, self.config.vocab_size, self.config.max_group))

        digits = torch.tensor(
            ids_to_digits(z_ids, self.config.fsq_levels, self.config.fsq_dims), device=self.backbone.device
        ).view(-1, self.config.fsq_dims)
        return self.modules.embed_digits(digits)

    def _token_group_embeddings(self, groups: list[list[int]]) -> Any:
        """Sum of the groups' unit token embeddings, token k turned by ``rotations[k]``, at token scale."""
        import torch

        dev = self.backbone.device
        size = max((len(g) for g in groups), default=1)
        tok = torch.tensor([g + [0] * (size - len(g)) for g in groups], device=dev).view(-1, size)
        present = torch.tensor([[1.0] * len(g) + [0.0] * (size - len(g)) for g in groups], device=dev).view(-1, size)
        emb = self._lm.get_input_embeddings().weight
        unit = torch.nn.functional.normalize(emb[tok].float(), dim=-1)  # [n, G, H]
        turned = torch.einsum("ngh,gkh->ngk", unit, self.modules.rotations[:size].float())
        total = (turned * present.unsqueeze(-1)).sum(1) / present.sum(1, keepdim=True).sqrt()
        return (total * self.modules.token_scale).to(emb.dtype)

    def token_code_layout(self, z_ids: Sequence[int], n: int) -> tuple[list[int], list[int]]:
        """Z ids and their aligned position ids: a Z-token sits where its first token is predicted (the separator
        at 0, text token i at i + 1), so the decoder finds the Z it needs at a small fixed offset."""
        groups = id_groups(z_ids, self.config.vocab_size, self.config.max_group)
        positions, start = [], 0
        for g in groups:
            positions.append(start)
            start += len(g)
        return list(z_ids), positions

    def decompress_batch(self, codes: Sequence[ZCode], batch_size: int = 128) -> list[str | bytes]:
        """Text of each code: byte-exact from the residual when the code has one (``exact=True``), else the
        free-running greedy reconstruction of every segment, left-padded into shared batches."""
        for code in codes:
            self.check_compatible(code)
        out: list[str | bytes | None] = [None] * len(codes)
        with_residual = [i for i, c in enumerate(codes) if "threads" in c.params]
        free = [i for i, c in enumerate(codes) if "threads" not in c.params]
        if with_residual:
            for i, data in zip(with_residual, self._decode_residuals([codes[i] for i in with_residual]), strict=True):
                out[i] = data if codes[i].is_bytes else data.decode("utf-8")
        if free:
            for i, text in zip(free, self._free_running([codes[i] for i in free], batch_size), strict=True):
                out[i] = text.encode("utf-8") if codes[i].is_bytes else text
        return out  # type: ignore[return-value]

    def _free_running(self, codes: Sequence[ZCode], batch_size: int) -> list[str]:
        import torch

        segs: list[tuple[int, list[int]]] = []
        for i, code in enumerate(codes):
            pos = 0
            for count in code.segments:
                segs.append((i, list(code.z_ids[pos : pos + count])))
                pos += count
        outputs: list[list[int]] = [[] for _ in segs]
        order = sorted(range(len(segs)), key=lambda j: len(segs[j][1]))
        max_new = self.config.segment_len + self.config.max_decode_extra
        with self.adapter("decompress"), torch.inference_mode():
            for s in range(0, len(order), batch_size):
                chunk = order[s : s + batch_size]
                prefixes, positions = zip(*(self.segment_prefix(segs[j][1]) for j in chunk), strict=True)
                limits = [self.segment_length(segs[j][1]) for j in chunk] if self.config.token_code else None
                for j, toks in zip(chunk, self._greedy(list(prefixes), max_new, positions, limits), strict=True):
                    outputs[j] = toks
        pieces: list[list[int]] = [[] for _ in codes]
        for (i, _), toks in zip(segs, outputs, strict=True):
            pieces[i] += toks
        return [self.backbone.tokenizer.decode(p, skip_special_tokens=True) for p in pieces]

    def segment_prefix(self, z_ids: Sequence[int]) -> tuple[Any, list[int] | None]:
        """One segment's decoder prefix ``[m + 1, H]`` (its Z-tokens, then the separator) and the prefix's position
        ids: aligned for the token-group code (see :meth:`token_code_layout`), ``None`` (sequential) otherwise."""
        prefix = self.decoder_prefix(self.z_embeddings(z_ids).unsqueeze(0))[0]
        if not self.config.token_code:
            return prefix, None
        return prefix, [*self.token_code_layout(z_ids, 0)[1], 0]

    def segment_length(self, z_ids: Sequence[int]) -> int:
        """Text tokens a token-group segment holds (its Z-tokens' positions say so; the reader stops there)."""
        return sum(len(g) for g in id_groups(z_ids, self.config.vocab_size, self.config.max_group))

    def _greedy(
        self, prefixes: list[Any], max_new: int, positions: Sequence[Any] = (), limits: list[int] | None = None
    ) -> list[list[int]]:
        """Greedy decoding after left-padded embedding prefixes ``[P_b, H]``, KV-cached, batched."""
        import torch

        from zcompress_integrations.core.backbone import greedy_batch

        pos = None
        if any(p is not None for p in positions):
            pos = [torch.tensor(p if p is not None else range(len(x))) for p, x in zip(positions, prefixes, strict=True)]
        return greedy_batch(
            self._lm,
            prefixes,
            max_new,
            vocab=self.backbone.text_vocab_size,
            eos={self._eos},
            positions=pos,
            limits=limits,
        )

    # ---- exact mode: the residual ------------------------------------------------------------------------
    def _residual_runner(self) -> Any:
        """Step-wise KV-cached decompressor over fixed lanes (the exact codec's path, fed Z embeddings first)."""
        if self._runner is None:
            from transformers import DynamicCache

            from zcompress_integrations.core.backbone import cache_kwargs
            from zcompress_integrations.core.entropy import LaneRunner

            lm = self._lm
            head = lm.lm_head.weight[: self.backbone.text_vocab_size].detach().float().contiguous().clone()

            def forward_hidden(x: Any, cache: Any, position_ids: Any = None) -> Any:
                kwargs = cache_kwargs(lm.model, cache)
                if position_ids is not None:
                    kwargs["position_ids"] = position_ids
                return lm.model(inputs_embeds=x, use_cache=True, **kwargs).last_hidden_state[:, -1]

            codable = list(self.token_bytes.codable)
            codable[self._eos] = True  # segments end with the end token
            self._runner = LaneRunner(
                forward_hidden,
                lambda: DynamicCache(config=lm.config),
                head,
                codable,
                stand_in=self._start,
                embed=self._embed,
            )
        return self._runner

    def _residual_windows(self, codes: Sequence[ZCode], slots: list[list[int]], seg_lists: Any) -> list[Any]:
        """One lane window per segment: prefix = the segment's Z embeddings + separator; tokens = its text then
        the end token (segments have different lengths, so the end is coded; decoding reads up to
        ``segment_len + 1`` symbols and stops at the end token)."""
        import torch

        from zcompress_integrations.core.entropy import _Window

        windows = []
        with torch.inference_mode():
            for owner, code in enumerate(codes):
                L = int(code.params.get("segment_len", self.config.segment_len))
                pos = 0
                for j, count in enumerate(code.segments):
                    prefix, positions = self.segment_prefix(code.z_ids[pos : pos + count])
                    pos += count
                    if seg_lists is None:
                        windows.append(_Window(owner, prefix, None, L + 1, slots[owner][j], positions))
                    else:
                        tokens = [*seg_lists[owner][j], self._eos]
                        windows.append(_Window(owner, prefix, tokens, len(tokens), slots[owner][j], positions))
        return windows

    def _add_residuals(self, codes: list[ZCode], seg_lists: list[list[list[int]]]) -> list[ZCode]:
        import dataclasses

        from zcompress_integrations.core.arithmetic import MAX_TOTAL_BITS, ArithmeticEncoder
        from zcompress_integrations.core.entropy import choose_lanes, default_codec_threads, fixed_threads

        threads = default_codec_threads()
        lanes = choose_lanes(sum(len(s) for s in seg_lists))
        slots, lane0s, slot = [], [], 0
        for segs in seg_lists:
            lane0s.append(slot % lanes)
            slots.append(list(range(slot, slot + len(segs))))
            slot += len(segs)
        encoders = [ArithmeticEncoder() for _ in codes]

        def on_step(w: Any, cum: Any, i: int) -> int:
            sym = w.tokens[i]
            encoders[w.owner].encode(int(cum[sym - 1]) if sym else 0, int(cum[sym]), int(cum[-1]))
            return sym

        with fixed_threads(threads), self.adapter("decompress"):
            windows = self._residual_windows(codes, slots, seg_lists)
            self._residual_runner().run(windows, lanes, on_step)
        out = []
        for owner, code in enumerate(codes):
            bits = encoders[owner].finish() if code.text_tokens else []
            params = {**code.params, "lanes": lanes, "lane0": lane0s[owner], "threads": threads}
            params["freq_bits"] = MAX_TOTAL_BITS
            out.append(dataclasses.replace(code, residual=_pack_bits(bits), params=params))
        return out

    def _decode_residuals(self, codes: list[ZCode]) -> list[bytes]:
        from zcompress_integrations.core.arithmetic import MAX_TOTAL_BITS, ArithmeticDecoder
        from zcompress_integrations.core.entropy import fixed_threads, place_windows

        results: list[bytes] = [b""] * len(codes)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, code in enumerate(codes):
            p = code.params
            if p.get("freq_bits") != MAX_TOTAL_BITS or not 1 <= p["lanes"] <= 64 or p.get("lane0", 0) >= p["lanes"]:
                raise CorruptCodeError(f"latent residual has impossible parameters {p}")
            if code.text_tokens:
                groups.setdefault((p["lanes"], p["threads"]), []).append(i)
        for (lanes, threads), members in groups.items():
            group = [codes[i] for i in members]
            slots = place_windows([len(c.segments) for c in group], [c.params["lane0"] for c in group], lanes)
            decoders = [ArithmeticDecoder(_unpack_bits(c.residual)) for c in group]

            ended: set[int] = set()

            def on_step(w: Any, cum: Any, i: int, decoders: list[Any] = decoders, ended: set[int] = ended) -> int:
                import torch

                if w.slot in ended:
                    return self._eos  # this segment is complete; the lane idles until the run ends
                dec = decoders[w.owner]
                total = int(cum[-1])
                sym = int(torch.searchsorted(cum, torch.tensor([dec.target(total)]), right=True)[0])
                if sym >= len(cum):
                    raise CorruptCodeError("the residual points outside the model's distribution: it is damaged")
                dec.consume(int(cum[sym - 1]) if sym else 0, int(cum[sym]), total)
                if sym == self._eos:
                    ended.add(w.slot)
                else:
                    w.tokens.append(sym)
                return sym

            with fixed_threads(threads), self.adapter("decompress"):
                windows = self._residual_windows(group, slots, None)
                self._residual_runner().run(windows, lanes, on_step)
            per_owner: dict[int, list[int]] = {}
            for w in sorted(windows, key=lambda w: (w.owner, w.slot)):
                per_owner.setdefault(w.owner, []).extend(w.tokens or [])
            for owner, code in enumerate(group):
                tokens = per_owner.get(owner, [])
                data = b"" if len(tokens) != code.text_tokens else self.token_bytes.decode(tokens)
                if len(tokens) != code.text_tokens or text_checksum(data) != code.checksum:
                    raise ChecksumMismatchError(
                        "the latent code's residual did not reproduce the text (checksum mismatch): it was made on "
                        "hardware or software that computes the decompressor's probabilities differently, or it "
                        f"is damaged. Decode it where it was made, with {code.params.get('threads')} threads."
                    )
                results[members[owner]] = data
        return results

    # ---- generation in Z space (core/zspace.py) ----------------------------------------------------------
    @property
    def has_infer(self) -> bool:
        """Whether an ``infer`` adapter (and its Z head) is loaded, i.e. :meth:`continue_z` works."""
        from zcompress_integrations.core.zspace import has_infer

        return has_infer(self)

    def continue_z(self, code: ZCode, n_segments: int = 1, **kwargs: Any) -> ZCode:
        """A new latent code with the Z-tokens of the ``n_segments`` segments that follow ``code``.

        Raises :class:`LatentUnavailableError` without an ``infer`` adapter; see :func:`.zspace.continue_z`.
        """
        from zcompress_integrations.core.zspace import continue_z

        return continue_z(self, code, n_segments, **kwargs)

    def prompt_embeds(self, code: ZCode) -> Any:
        """[n, H] embeddings to splice into a prompt (all segments' Z-tokens; used by generation)."""
        self.check_compatible(code)
        return self.z_embeddings(code.z_ids)

    def prompt_offsets(self, code: ZCode) -> tuple[list[int], int]:
        """Position offsets of a code's Z-tokens inside a prompt, and the positions the code spans.

        Token-group code: each Z-token sits where its first token would (the layout the decoder was trained
        on), and the prompt continues after the full text's span, so positions are those of the uncompressed
        prompt. Learned codes: consecutive positions."""
        if not self.config.token_code:
            return list(range(code.z_tokens)), code.z_tokens
        return self.token_code_layout(code.z_ids, code.text_tokens)[1], self.segment_length(code.z_ids)

    # ---- persistence -------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str], card: str | None = None) -> Path:
        """Write the peft adapters (``compress/``, ``decompress/``, ``infer/`` when trained), the latent modules,
        the infer head and the config."""
        from safetensors.torch import save_file

        from zcompress_integrations.core.zspace import INFER_ADAPTER, save_infer

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        names = ["decompress"] if self.config.token_code else list(ADAPTERS)  # the token code has no encoder
        if self.has_infer:
            names.append(INFER_ADAPTER)
        self.peft_model.save_pretrained(out, selected_adapters=names)
        import torch
        from safetensors.torch import load_file

        for name in names:  # bf16 halves the files; LoRA deltas lose nothing that matters at this precision
            path = out / name / "adapter_model.safetensors"
            save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(path)).items()}, str(path))
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.modules.state_dict().items()}
        save_file(tensors, str(out / MODULES_NAME))
        if self.has_infer:
            save_infer(self, out)
        self.config.save(out)
        if card is not None:
            (out / "README.md").write_text(card)
        return out


def _pack_bits(bits: list[int]) -> bytes:
    """Bits -> bytes, zero-padded; trailing zero bytes dropped (the decoder reads zeros past the end)."""
    from zcompress_integrations.core.arithmetic import bits_to_ids

    return bytes(bits_to_ids(bits, 8)).rstrip(b"\x00")


def _unpack_bits(data: bytes) -> list[int]:
    from zcompress_integrations.core.arithmetic import ids_to_bits

    return ids_to_bits(tuple(data), 8)


def _latent_fingerprint(backbone_fp: bytes, modules: Any) -> bytes:
    import hashlib

    h = hashlib.blake2b(backbone_fp, digest_size=4)
    for key, value in sorted(modules.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().float().cpu().flatten()[:2048].numpy().tobytes())
    return h.digest()


def load_latent_codec(backbone: Any, adapters: str | os.PathLike[str] | None) -> LatentCodec:
    """Load trained adapters onto ``backbone``. ``"default"`` means the directory shipped with the package."""
    if adapters is None:
        raise LatentUnavailableError(
            "mode='latent' needs trained adapters: pass adapters='default' (shipped) or a directory made by "
            "`zcompress train`"
        )
    directory = default_adapter_dir() if str(adapters) == "default" else Path(adapters)
    if not (directory / CONFIG_NAME).is_file():
        raise LatentUnavailableError(
            f"no latent adapters at {directory} (missing {CONFIG_NAME}); train them with `zcompress train` or "
            "use mode='exact'"
        )
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    config = LatentConfig.load(directory)
    if config.backbone_fingerprint and config.backbone_fingerprint != backbone.fingerprint.hex():
        raise ModelMismatchError(
            f"adapters in {directory} were trained on backbone {config.backbone!r} (fingerprint "
            f"{config.backbone_fingerprint}), not the loaded one ({backbone.fingerprint.hex()})"
        )
    if config.token_code:  # Z-tokens are token groups: only the reader is trained
        peft_model = PeftModel.from_pretrained(backbone.model, directory / "decompress", adapter_name="decompress")
    else:
        peft_model = PeftModel.from_pretrained(backbone.model, directory / "compress", adapter_name="compress")
        peft_model.load_adapter(directory / "decompress", adapter_name="decompress")
    peft_model.eval()
    emb = backbone.model.get_input_embeddings().weight
    modules = build_latent_modules(config, emb.shape[1], 0.0)
    modules.load_state_dict(load_file(str(directory / MODULES_NAME)))
    modules.to(device=emb.device, dtype=torch.float32)
    modules.eval()
    codec = LatentCodec(backbone, config, peft_model, modules, _latent_fingerprint(backbone.fingerprint, modules))
    from zcompress_integrations.core.zspace import load_infer

    load_infer(codec, directory)  # optional: directories written before generation in Z space have no infer/
    return codec
