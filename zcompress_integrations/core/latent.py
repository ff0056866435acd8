"""The latent codec: Z-tokens the backbone reads through its ``decompress`` LoRA adapter (arXiv 2603.25340, adapted).

Text is cut into segments of up to ``segment_len`` tokens (sentence-aware). Each segment gets a number of
Z-tokens that follows its surprisal under the base model, ``m = round(len / ratio * nll / calib_nll)`` clamped to
what the code kind can hold; the code kind (``core/codes/``) turns the segment into that many Z ids and Z ids into
input embeddings. The reader sees ``[Z_1 .. Z_m, sep]`` and writes the segment back (greedy, KV cache, batched).

Decompression gives the exact text wherever a code holds it: token-group ids name their tokens, so those codes
decode from the ids alone (checked against the code's checksum). With ``exact=True`` a code also carries a residual:
the text arithmetic-coded under the reader's own distribution given the Z-tokens, through the exact codec's lane
coder (``core/entropy.py``), which makes any code kind byte-exact. The reader's own free-running reconstruction
(what the model makes of the Z-tokens) is ``reconstruct_batch``.

Everything here is the same for every code kind; what differs lives in the kind's module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from zcompress_integrations.core.zcode import ZCode, text_checksum
from zcompress_integrations.errors import (
    ChecksumMismatchError,
    ConfigError,
    CorruptCodeError,
    LatentUnavailableError,
    ModelMismatchError,
    UnsupportedTextError,
)

if TYPE_CHECKING:
    import torch

    from zcompress_integrations.core.backbone import Backbone
    from zcompress_integrations.core.codes import CodeKind

__all__ = [
    "LatentConfig",
    "LatentCodec",
    "load_latent_codec",
    "default_adapter_dir",
    "check_ratio",
    "CONFIG_NAME",
    "MODULES_NAME",
    "READER",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "zcompress_config.json"
MODULES_NAME = "latent_modules.safetensors"
READER = "decompress"
# 3: the token-group code's rotations are rebuilt from their seed and the FSQ/linear kinds are gone, so the
# modules file holds only ``sep`` and the code's own tensors, and the fingerprint hashes just those.
LATENT_VERSION = 3
LAST_FSQ_COMMIT = "995f8bc"
_NLL_MEMO_SIZE = 20_000  # segments whose base-model NLL is remembered (per-token float32: about 7 MB)
_NLL_BATCH = 16  # segments per base-model forward when measuring NLL: bounds memory for any document size
# Segments shorter than this run one per forward. A forward's rows are bit-identical whatever else is in the batch
# only when the matrix products see enough rows (measured on a CPU: >= 4 rows on 1 thread, >= 12 on 2; fewer pick
# other kernels), so a short segment's NLL, and the Z-tokens chosen from it, would depend on which other texts
# share its batch (docs/concurrency.md). Only a text's last segment can be this short, so this costs little.
_NLL_ALONE_BELOW = 16


def check_ratio(ratio: float, cap: float) -> float:
    """``ratio`` as a float in ``[1, cap]``, or a :class:`ConfigError` that says what is allowed."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float):
        raise ConfigError(f"ratio must be a number; got {ratio!r}")
    value = float(ratio)
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"ratio must be a finite number >= 1 (text tokens per Z-token); got {ratio!r}")
    if value > cap:
        raise ConfigError(
            f"ratio={value:g} is above what this latent code can reach: a Z-token holds at most {cap:g} text tokens, "
            f"so ratio must be <= {cap:g}"
        )
    return value


def _check_stop_offsets(offsets: dict[str, float]) -> None:
    for key, offset in offsets.items():
        try:
            ratio = float(key)
        except ValueError:
            ratio = float("nan")
        if (
            not (math.isfinite(ratio) and ratio >= 1)
            or not isinstance(offset, int | float)
            or not math.isfinite(offset)
        ):
            raise ConfigError(
                f"LatentConfig.stop_offsets maps ratios >= 1 to finite offsets; got {key!r}: {offset!r} "
                "(rerun `zcompress train calibrate`)"
            )


@dataclass
class LatentConfig:
    """Settings of a latent codec; saved as ``zcompress_config.json`` beside the adapters.

    Attributes:
        code: the code kind (``core/codes/``): ``"token_groups"`` (the default) or ``"learned"``.
        segment_len: text tokens per segment.
        max_slots: most Z-tokens one segment may get.
        default_ratio: ratio used when ``compress(..., ratio=None)``.
        calib_nll: mean per-token NLL (nats) of training text under the base model (for adaptive lengths).
        lora_r / lora_alpha / lora_dropout / target_modules: the LoRA adapters.
        backbone: name of the backbone; ``backbone_fingerprint``: its fingerprint (hex).
        max_decode_extra: decoding stops at the end token or after ``segment_len + max_decode_extra`` tokens.
        max_group: most text tokens one Z-token stands for (token-group code).
        positions: where the token-group code's Z-tokens sit: ``"aligned"`` (each at its group's first token, so
            a code spans its text's positions; the shipped reader) or ``"consecutive"`` (``0 .. m-1``: a code of
            ``m`` Z-tokens spans ``m`` positions, so more compressed documents fit in the window). The reader is
            trained for one of them. The learned code's Z-tokens are always consecutive.
        codebook_size / codebooks / max_span: the learned code's vocabulary (``codebook_size ** codebooks`` ids)
            and most text tokens one of its Z-tokens stands for.
        vocab_size: text vocabulary size the token-group code is built on (set by :meth:`LatentCodec.create`).
        stop_offsets: the learned code's stop-head calibration: a bias added to its stop logits per requested
            ratio (keys ``f"{ratio:g}"``), set by ``zcompress train calibrate`` so that the achieved ratio on
            training text is the requested one; other ratios interpolate in log2(ratio). Empty: no bias.
        training: how the adapters were trained (free-form, for the model card).
    """

    code: Literal["token_groups", "learned"] = "token_groups"
    segment_len: int = 64
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
    max_group: int = 4
    positions: Literal["aligned", "consecutive"] = "aligned"
    vocab_size: int = 0
    codebook_size: int = 4096
    codebooks: int = 1
    max_span: int = 16
    version: int = LATENT_VERSION
    stop_offsets: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from zcompress_integrations.core.codes import CODE_KINDS

        if self.code not in CODE_KINDS:
            raise ConfigError(f"LatentConfig.code must be one of {sorted(CODE_KINDS)}; got {self.code!r}")
        for name in (
            "segment_len",
            "max_slots",
            "lora_r",
            "max_group",
            "lora_alpha",
            "codebook_size",
            "codebooks",
            "max_span",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"LatentConfig.{name} must be an integer >= 1; got {value!r}")
        from zcompress_integrations.core.codes.token_groups import POSITIONS

        if self.positions not in POSITIONS:
            raise ConfigError(f"LatentConfig.positions must be one of {POSITIONS}; got {self.positions!r}")
        if self.max_decode_extra < 0 or self.vocab_size < 0:
            raise ConfigError("LatentConfig.max_decode_extra and vocab_size must be >= 0")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"LatentConfig.lora_dropout must be in [0, 1); got {self.lora_dropout!r}")
        from zcompress_integrations.core.codes import code_class

        check_ratio(self.default_ratio, code_class(self.code).ratio_cap(self))
        if not math.isfinite(self.calib_nll) or self.calib_nll <= 0:
            raise ConfigError(f"LatentConfig.calib_nll must be > 0; got {self.calib_nll!r}")
        _check_stop_offsets(self.stop_offsets)

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

    def save(self, directory: Path) -> None:
        (directory / CONFIG_NAME).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> LatentConfig:
        data = json.loads((directory / CONFIG_NAME).read_text())
        if not isinstance(data, dict):
            raise ConfigError(f"{directory / CONFIG_NAME} is not a JSON object")
        if (
            int(data.get("version", 1)) < 3
        ):  # before the code kinds: FSQ, "linear" and token groups in one file
            if data.get("z_embedding") != "tokens":
                raise ConfigError(
                    f"the adapters in {directory} use the FSQ/linear latent code, removed from zcompress; load "
                    f"them with a version at or before commit {LAST_FSQ_COMMIT}"
                )
            data["code"] = "token_groups"
            for legacy in ("z_embedding", "fsq_levels", "fsq_dims"):
                data.pop(legacy, None)
            data["version"] = LATENT_VERSION
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown latent config keys %s (written by a newer zcompress?)", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})


def default_adapter_dir() -> Path:
    """The adapters shipped inside the package (``zcompress_integrations/adapters/smollm2-135m``)."""
    return Path(__file__).resolve().parent.parent / "adapters" / "smollm2-135m"


def _segment_key(seg: Sequence[int]) -> bytes:
    return hashlib.blake2b(array("q", seg).tobytes(), digest_size=16).digest()


def _end_token(tokenizer: Any) -> int:
    for tid in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")):
        if isinstance(tid, int) and tid >= 0:
            return tid
    return 0


class LatentCodec:
    """Compress/decompress with a latent code kind and its reader adapter on a shared backbone.

    Build with :func:`load_latent_codec` (trained adapters) or :meth:`create` (fresh, for training).

    Attributes:
        backbone: the shared :class:`~zcompress_integrations.core.backbone.Backbone`.
        config: the :class:`LatentConfig`.
        peft_model: the backbone wrapped by peft with this codec's adapters.
        code: the code kind (``core/codes/``).
        sep: ``[H]`` separator embedding that ends every reader prefix (trained with the reader).
        fingerprint: 4 bytes naming backbone + code; stored in every latent code.
        infer_head: the ``infer`` adapter's Z head (``core/zspace.py``), when there is one.
    """

    def __init__(
        self, backbone: Backbone, config: LatentConfig, peft_model: Any, code: CodeKind, sep: Any
    ) -> None:
        from zcompress_integrations.core.entropy import EntropyCodec
        from zcompress_integrations.core.tokenbytes import TokenBytes

        self.backbone = backbone
        self.config = config
        self.peft_model = peft_model
        self.code = code
        self.sep = sep
        self.end_token = _end_token(backbone.tokenizer)
        self.start_token = EntropyCodec._start_token(backbone.tokenizer)
        self.token_bytes = TokenBytes(backbone.tokenizer, backbone.text_vocab_size)
        self.fingerprint = self._fingerprint()
        self.infer_head: Any = None
        self._runner: Any = None
        self._nll_memo: dict[bytes, Any] = {}  # segment key -> per-token NLL (array of float32)
        self._tuner_layers: list[Any] | None = None

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, backbone: Backbone, config: LatentConfig, seed: int = 0) -> LatentCodec:
        """Fresh reader adapter and separator (at the scale of the token embeddings), for training."""
        import torch
        from peft import get_peft_model

        from zcompress_integrations.core.codes import build_code

        torch.manual_seed(seed)
        emb = backbone.model.get_input_embeddings().weight
        config.vocab_size = backbone.text_vocab_size
        config.backbone = backbone.name
        config.backbone_fingerprint = backbone.fingerprint.hex()
        code = build_code(config, backbone.model.get_input_embeddings())
        peft_model = get_peft_model(backbone.model, config.lora_config(), adapter_name=READER)
        for name in code.adapters:
            if name != READER:
                peft_model.add_adapter(name, config.lora_config())
        sep = torch.nn.Parameter(
            torch.randn(emb.shape[1], device=emb.device) * float(emb.detach().float().std())
        )
        return cls(backbone, config, peft_model, code, sep)

    def _fingerprint(self) -> bytes:
        h = hashlib.blake2b(self.backbone.fingerprint, digest_size=4)
        h.update(self.sep.detach().float().cpu().numpy().tobytes())
        for part in self.code.fingerprint_parts():
            h.update(part)
        return h.digest()

    def refresh_fingerprint(self) -> None:
        """Recompute the fingerprint after the separator changed (training)."""
        self.fingerprint = self._fingerprint()

    # ---- the model and its adapters ----------------------------------------------------------------------
    @property
    def lm(self) -> Any:
        """The causal LM with LoRA layers injected (``peft_model.base_model.model``)."""
        return self.peft_model.base_model.model

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of text token ids."""
        return self.lm.get_input_embeddings()(ids)

    @contextlib.contextmanager
    def adapter(self, name: str, train: bool = False) -> Iterator[None]:
        """Activate one adapter. With ``train=True`` every adapter keeps ``requires_grad`` (peft turns off the
        inactive ones', but a training step may backpropagate through several)."""
        self.peft_model.base_model.set_adapter(name)
        if train:
            for pname, param in self.peft_model.named_parameters():
                if "lora_" in pname:
                    param.requires_grad_(True)
        yield

    @contextlib.contextmanager
    def adapters_off(self) -> Iterator[None]:
        """The base model, for inference: every LoRA layer's off switch set, and restored after.

        What ``peft_model.disable_adapter()`` does to the forward pass, without its per-call model-status walk and
        ``requires_grad`` toggling over every module (0.1 s a call here: a fifth of a paragraph's compression).
        Training, which needs peft's gradient bookkeeping, keeps peft's context."""
        layers = self._lora_layers()
        before = [layer._disable_adapters for layer in layers]
        for layer in layers:
            layer._disable_adapters = True
        try:
            yield
        finally:
            for layer, was in zip(layers, before, strict=True):
                layer._disable_adapters = was

    def _lora_layers(self) -> list[Any]:
        """The backbone's peft tuner layers (found once: adapters are added, never removed, after load)."""
        if self._tuner_layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._tuner_layers = [m for m in self.peft_model.modules() if isinstance(m, BaseTunerLayer)]
        return self._tuner_layers

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Context in which the backbone reads Z-tokens (the reader adapter)."""
        return self.adapter(READER)

    @contextlib.contextmanager
    def reading_inside_base(self) -> Iterator[None]:
        """Turn the reader on inside ``peft_model.disable_adapter()`` and off again after: how a prompt's Z context
        is read before the base model answers (``core/zprompt.py``)."""
        base = self.peft_model.base_model
        base.set_adapter(READER)
        base.enable_adapter_layers()
        try:
            yield
        finally:
            base.disable_adapter_layers()

    # ---- Z -> reader inputs ------------------------------------------------------------------------------
    def z_embeddings(self, z_ids: Sequence[int]) -> torch.Tensor:
        """``[n, H]`` embeddings of Z ids (what the reader reads)."""
        return self.code.embeddings(z_ids)

    def decoder_prefix(self, z_embeds: torch.Tensor) -> torch.Tensor:
        """``[B, m, H]`` Z embeddings -> ``[B, m + 1, H]`` reader prefix (Z-tokens then the separator)."""
        import torch

        dtype = self.lm.get_input_embeddings().weight.dtype  # bf16 backbones get bf16 inputs
        sep = self.sep.view(1, 1, -1).expand(z_embeds.shape[0], 1, -1)
        return torch.cat([z_embeds.to(dtype), sep.to(dtype)], dim=1)

    def segment_prefix(self, z_ids: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        """One segment's reader prefix ``[m + 1, H]`` and its position ids (the separator at 0: text token i is
        predicted at position i)."""
        prefix = self.decoder_prefix(self.z_embeddings(z_ids).unsqueeze(0))[0]
        return prefix, [*self.code.offsets(z_ids)[0], 0]

    def reader_inputs(
        self, text_ids: torch.Tensor, z_rows: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced reader inputs for a batch: ``(x[B, T, H], position_ids[B, T], attention_mask[B, T])``.

        Row ``b`` is ``[Z of z_rows[b], sep, text_ids[b]]``; rows have different Z counts, so each prefix is
        left-padded to the longest (masked) and the separator and text line up. The hidden state at the separator
        predicts text token 0, the one at text token ``i`` predicts token ``i + 1`` (then the end token).
        """
        import torch

        batch, n = text_ids.shape
        m_max = max(len(z) for z in z_rows)
        weight = self.lm.get_input_embeddings().weight
        dev = text_ids.device
        x = torch.zeros(batch, m_max + 1 + n, weight.shape[1], dtype=weight.dtype, device=dev)
        pos = torch.zeros(batch, m_max + 1 + n, dtype=torch.long, device=dev)
        mask = torch.zeros(batch, m_max + 1 + n, dtype=torch.long, device=dev)
        for b, z_ids in enumerate(z_rows):
            m = len(z_ids)
            x[b, m_max - m : m_max + 1] = self.decoder_prefix(self.z_embeddings(z_ids).unsqueeze(0))[0]
            pos[b, m_max - m : m_max] = torch.as_tensor(self.code.offsets(z_ids)[0], device=dev)
            mask[b, m_max - m :] = 1
        x[:, m_max + 1 :] = self.embed(text_ids)
        pos[:, m_max + 1 :] = torch.arange(1, n + 1, device=dev)  # the separator sits at 0
        return x, pos, mask

    def prompt_embeds(self, code: ZCode) -> torch.Tensor:
        """``[n, H]`` embeddings to splice into a prompt (all segments' Z-tokens)."""
        self.check_compatible(code)
        return self.z_embeddings(code.z_ids)

    def prompt_offsets(self, code: ZCode) -> tuple[list[int], int]:
        """Position offsets of a code's Z-tokens inside a prompt, and the positions the code spans."""
        offsets, span = [], 0
        for seg in self._segment_ids(code):
            seg_offsets, seg_span = self.code.offsets(seg)
            offsets += [span + o for o in seg_offsets]
            span += seg_span
        return offsets, span

    # ---- segment NLL and Z counts ------------------------------------------------------------------------
    def segment_nll(self, segments: list[list[int]]) -> list[float]:
        """Mean per-token NLL (nats) of each segment under the base model (adapters off)."""
        return [sum(t) / len(t) if len(t) else 0.0 for t in self.token_nll(segments)]

    def token_nll(self, segments: list[list[int]]) -> list[list[float]]:
        """Per-token NLL (nats) of each segment under the base model (adapters off), a bounded batch of equal-length
        segments per forward (a short one alone: see ``_NLL_ALONE_BELOW``). Remembered per segment (the base model
        never changes), so compressing the same text again, e.g. at another ratio, skips this forward."""
        import torch

        keys = [_segment_key(seg) for seg in segments]
        out: list[Any] = [self._nll_memo.get(key) for key in keys]
        groups: dict[int, list[int]] = {}
        for i, seg in enumerate(segments):
            if out[i] is None:
                groups.setdefault(len(seg), []).append(i)
        with self.adapters_off(), torch.inference_mode():
            for length, members in groups.items():
                step = _NLL_BATCH if length >= _NLL_ALONE_BELOW else 1
                for s in range(0, len(members), step):
                    idx = members[s : s + step]
                    ids = torch.tensor(
                        [[self.start_token] + segments[i] for i in idx], device=self.backbone.device
                    )
                    logits = self.lm(input_ids=ids).logits[:, :-1].float()
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
        """Z-tokens for a segment of ``length`` tokens with mean NLL ``nll`` at ``ratio``."""
        cfg = self.config
        m = round(length / ratio * nll / max(cfg.calib_nll, 1e-6))
        return int(min(max(m, self.code.fewest_z(length), 1), cfg.max_slots, max(length, 1)))

    # ---- compress ----------------------------------------------------------------------------------------
    def segments(self, data: bytes) -> list[list[int]]:
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

    def model_ids(self, seg: list[int]) -> list[int]:
        """What the model reads for a segment: virtual byte ids become the start token."""
        vocab = self.backbone.text_vocab_size
        return [t if t < vocab else self.start_token for t in seg]

    def compress_batch(
        self,
        items: Sequence[str | bytes],
        *,
        ratio: float | None = None,
        exact: bool = False,
        batch_size: int = 64,
        progress: bool = False,
    ) -> list[ZCode]:
        """Latent codes for texts. With ``exact=True`` each code also carries the residual that makes it byte-exact.

        Raises:
            ConfigError: ``ratio`` is not a finite number in ``[1, cap]`` (the cap is the code kind's, 4 for token
                groups of at most 4 tokens).
        """
        from zcompress_integrations.core.entropy import as_bytes

        ratio = check_ratio(self.config.default_ratio if ratio is None else ratio, self.code.max_ratio)
        datas = [as_bytes(x) for x in items]
        seg_lists = [self.segments(d) for d in datas]
        flat = [self.model_ids(seg) for segs in seg_lists for seg in segs]
        ids_per_seg = self.code.write(self, flat, ratio, batch_size, progress)
        codes, pos = [], 0
        for i, item in enumerate(items):
            seg_ids = ids_per_seg[pos : pos + len(seg_lists[i])]
            pos += len(seg_lists[i])
            # where the ids do not say how many text tokens a segment holds (learned code), the code stores it: a
            # reader left to write its end token overruns (benchmarks/results/segment_lengths.md)
            implied = all(self.code.text_length(ids) is not None for ids in seg_ids)
            codes.append(
                ZCode(
                    z_ids=tuple(z for seg in seg_ids for z in seg),
                    codec="latent",
                    k=self.code.k,
                    text_tokens=sum(len(s) for s in seg_lists[i]),
                    text_chars=len(item),
                    checksum=text_checksum(datas[i]),
                    fingerprint=self.fingerprint,
                    is_bytes=isinstance(item, bytes),
                    segments=tuple(len(seg) for seg in seg_ids),
                    params={"segment_len": self.config.segment_len, "ratio_x100": round(ratio * 100)},
                    segment_tokens=() if implied else tuple(len(s) for s in seg_lists[i]),
                )
            )
        if exact:
            codes = self._add_residuals(codes, seg_lists)
        return codes

    def nll_batches(self, flat: list[list[int]], batch_size: int, progress: bool) -> list[list[float]]:
        """:meth:`token_nll` of every segment, ``batch_size`` segments a step (with a progress bar on request)."""
        steps = [flat[s : s + batch_size] for s in range(0, len(flat), batch_size)]
        out: list[list[float]] = []
        for chunk in _progress(steps, progress, "latent compress"):
            out += self.token_nll(chunk)
        return out

    # ---- decompress --------------------------------------------------------------------------------------
    def check_compatible(self, code: ZCode) -> None:
        if code.codec != "latent":
            raise ConfigError(f"this is a {code.codec!r} code; the latent codec cannot decode it")
        if code.fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"this latent code was made by other adapters/backbone (fingerprint {code.fingerprint.hex()}, "
                f"loaded {self.fingerprint.hex()}); load the adapters that made it"
            )
        if code.k != self.code.k or sum(code.segments) != len(code.z_ids):
            raise CorruptCodeError("latent code's Z vocabulary or segment counts do not match its Z ids")
        self.code.check_ids(code.z_ids)
        if "threads" in code.params:  # a residual decodes only under the arithmetic that wrote it
            from zcompress_integrations.core.loading import check_precision

            check_precision(code.params, self.backbone.model)

    def _segment_ids(self, code: ZCode) -> list[list[int]]:
        out, pos = [], 0
        for count in code.segments:
            out.append(list(code.z_ids[pos : pos + count]))
            pos += count
        return out

    def decompress_batch(
        self, codes: Sequence[ZCode], batch_size: int = 128, progress: bool = False
    ) -> list[str | bytes]:
        """Text of each code, byte-exact where the code holds it: from the residual (``exact=True``), else from the
        tokens its ids name (token groups; checked against the code's checksum, no model call). Otherwise (a learned
        code, generated Z-tokens, or bytes the tokenizer cannot spell, whose ids name a stand-in token) the reader's
        free-running reconstruction, as :meth:`reconstruct_batch` gives it (lossy)."""
        for code in codes:
            self.check_compatible(code)
        out: list[str | bytes | None] = [None] * len(codes)
        with_residual = [i for i, c in enumerate(codes) if "threads" in c.params]
        if with_residual:
            for i, data in zip(
                with_residual, self._decode_residuals([codes[i] for i in with_residual]), strict=True
            ):
                out[i] = _as_text(codes[i], data)
        for i, code in enumerate(codes):
            if out[i] is None:
                named = self._named_text(code)
                if named is not None:
                    out[i] = _as_text(code, named)
        read = [i for i, text in enumerate(out) if text is None]
        if read:
            for i, text in zip(read, self._read([codes[i] for i in read], batch_size, progress), strict=True):
                out[i] = text
        return out  # type: ignore[return-value]

    def reconstruct_batch(
        self, codes: Sequence[ZCode], batch_size: int = 128, progress: bool = False
    ) -> list[str | bytes]:
        """What the reader writes back from each code's Z-tokens (free-running, greedy), whatever the ids name and
        whether or not the code has a residual: the model's own reading, lossy; what the evaluation measures."""
        for code in codes:
            self.check_compatible(code)
        return self._read(codes, batch_size, progress)

    def _named_text(self, code: ZCode) -> bytes | None:
        """The text a code's ids name, when they name all of it and it matches the code's checksum, else None."""
        tokens: list[int] = []
        for ids in self._segment_ids(code):
            named = self.code.named_tokens(ids)
            if named is None:
                return None
            tokens += named
        if len(tokens) != code.text_tokens:
            return None
        try:
            data = self.token_bytes.decode(tokens)
        except UnsupportedTextError:  # a stand-in for a byte the tokenizer cannot spell
            return None
        return data if text_checksum(data) == code.checksum else None

    def _read(self, codes: Sequence[ZCode], batch_size: int, progress: bool) -> list[str | bytes]:
        texts = self._free_running(codes, batch_size, progress)
        return [t.encode("utf-8") if c.is_bytes else t for c, t in zip(codes, texts, strict=True)]

    def _free_running(self, codes: Sequence[ZCode], batch_size: int, progress: bool) -> list[str]:
        import torch

        from zcompress_integrations.core.backbone import decode_batch

        segs = [(i, seg) for i, code in enumerate(codes) for seg in self._segment_ids(code)]
        # each segment's text tokens: from its ids, else stored in the code (exact: the end token is banned), else
        # unknown (the reader stops at its end token)
        stored = [n for code in codes for n in (code.segment_tokens or [None] * len(code.segments))]
        lengths = [self.code.text_length(ids) or n for (_, ids), n in zip(segs, stored, strict=True)]
        outputs: list[list[int]] = [[] for _ in segs]
        order = sorted(range(len(segs)), key=lambda j: len(segs[j][1]))
        max_new = self.config.segment_len + self.config.max_decode_extra
        chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        with self.reading(), torch.inference_mode():
            for chunk in _progress(chunks, progress, "latent decompress"):
                prefixes, positions = zip(*(self.segment_prefix(segs[j][1]) for j in chunk), strict=True)
                decoded = decode_batch(
                    self.lm,
                    list(prefixes),
                    max(lengths[j] or max_new for j in chunk),
                    vocab=self.backbone.text_vocab_size,
                    eos={self.end_token},
                    positions=[torch.tensor(p) for p in positions],
                    limits=[lengths[j] or max_new for j in chunk],
                    banned=[[self.end_token] if stored[j] else [] for j in chunk],
                )
                for j, toks in zip(chunk, decoded, strict=True):
                    outputs[j] = toks
        pieces: list[list[int]] = [[] for _ in codes]
        for (i, _), toks in zip(segs, outputs, strict=True):
            pieces[i] += toks
        return [self.backbone.tokenizer.decode(p, skip_special_tokens=True) for p in pieces]

    # ---- exact mode: the residual ------------------------------------------------------------------------
    def residual_runner(self) -> Any:
        """Step-wise KV-cached reader over fixed lanes (the exact codec's runner, fed Z embeddings first)."""
        if self._runner is None:
            from transformers import DynamicCache

            from zcompress_integrations.core.backbone import cache_kwargs
            from zcompress_integrations.core.entropy import LaneRunner

            lm = self.lm
            head = lm.lm_head.weight[: self.backbone.text_vocab_size].detach().float().contiguous().clone()

            def forward_hidden(x: Any, cache: Any, position_ids: Any = None) -> Any:
                kwargs = cache_kwargs(lm.model, cache)
                if position_ids is not None:
                    kwargs["position_ids"] = position_ids
                return lm.model(inputs_embeds=x, use_cache=True, **kwargs).last_hidden_state[:, -1]

            codable = list(self.token_bytes.codable)
            codable[self.end_token] = True  # segments end with the end token
            self._runner = LaneRunner(
                forward_hidden,
                lambda: DynamicCache(config=lm.config),
                head,
                codable,
                stand_in=self.start_token,
                embed=self.embed,
            )
        return self._runner

    def _residual_windows(self, codes: Sequence[ZCode], slots: list[list[int]], seg_lists: Any) -> list[Any]:
        """One lane window per segment: prefix = the segment's reader prefix; tokens = its text then the end token
        (decoding reads up to ``segment_len + 1`` symbols and stops at the end token)."""
        import torch

        from zcompress_integrations.core.entropy import LaneWindow

        windows = []
        with torch.inference_mode():
            for owner, code in enumerate(codes):
                L = int(code.params.get("segment_len", self.config.segment_len))
                for j, seg in enumerate(self._segment_ids(code)):
                    prefix, positions = self.segment_prefix(seg)
                    if seg_lists is None:
                        windows.append(LaneWindow(owner, prefix, None, L + 1, slots[owner][j], positions))
                    else:
                        tokens = [*seg_lists[owner][j], self.end_token]
                        windows.append(
                            LaneWindow(owner, prefix, tokens, len(tokens), slots[owner][j], positions)
                        )
        return windows

    def _add_residuals(self, codes: list[ZCode], seg_lists: list[list[list[int]]]) -> list[ZCode]:
        from zcompress_integrations.core.arithmetic import MAX_TOTAL_BITS
        from zcompress_integrations.core.entropy import (
            choose_lanes,
            default_codec_threads,
            encode_windows,
            fixed_threads,
        )
        from zcompress_integrations.core.loading import precision_params

        threads = default_codec_threads()
        precision = precision_params(self.backbone.model)  # device/dtype/quant; none for fp32 on a CPU
        lanes = choose_lanes(sum(len(s) for s in seg_lists))
        slots, lane0s, slot = [], [], 0
        for segs in seg_lists:
            lane0s.append(slot % lanes)
            slots.append(list(range(slot, slot + len(segs))))
            slot += len(segs)
        with fixed_threads(threads), self.reading():
            windows = self._residual_windows(codes, slots, seg_lists)
            bit_lists = encode_windows(self.residual_runner(), windows, lanes, len(codes))
        out = []
        for owner, code in enumerate(codes):
            bits = bit_lists[owner] if code.text_tokens else []
            params = {**code.params, "lanes": lanes, "lane0": lane0s[owner], "threads": threads, **precision}
            params["freq_bits"] = MAX_TOTAL_BITS
            out.append(dataclasses.replace(code, residual=_pack_bits(bits), params=params))
        return out

    def _decode_residuals(self, codes: list[ZCode]) -> list[bytes]:
        from zcompress_integrations.core.arithmetic import MAX_TOTAL_BITS
        from zcompress_integrations.core.entropy import decode_windows, fixed_threads, place_windows

        results: list[bytes] = [b""] * len(codes)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, code in enumerate(codes):
            p = code.params
            if (
                p.get("freq_bits") != MAX_TOTAL_BITS
                or not 1 <= p["lanes"] <= 64
                or p.get("lane0", 0) >= p["lanes"]
            ):
                raise CorruptCodeError(f"latent residual has impossible parameters {p}")
            if code.text_tokens:
                groups.setdefault((p["lanes"], p["threads"]), []).append(i)
        for (lanes, threads), members in groups.items():
            group = [codes[i] for i in members]
            slots = place_windows([len(c.segments) for c in group], [c.params["lane0"] for c in group], lanes)
            with fixed_threads(threads), self.reading():
                windows = self._residual_windows(group, slots, None)
                bits = [_unpack_bits(c.residual) for c in group]
                per_owner = decode_windows(
                    self.residual_runner(), windows, lanes, bits, end_token=self.end_token
                )
            for owner, code in enumerate(group):
                tokens = per_owner.get(owner, [])
                data = b"" if len(tokens) != code.text_tokens else self.token_bytes.decode(tokens)
                if len(tokens) != code.text_tokens or text_checksum(data) != code.checksum:
                    raise ChecksumMismatchError(
                        "the latent code's residual did not reproduce the text (checksum mismatch): it was made on "
                        "hardware or software that computes the reader's probabilities differently, or it "
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

    # ---- persistence -------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str], card: str | None = None) -> Path:
        """Write the code kind's adapters (and ``infer/`` when trained) in bf16, the separator and the code's own
        tensors, the infer head and the config."""
        import torch
        from safetensors.torch import load_file, save_file

        from zcompress_integrations.core.zspace import INFER_ADAPTER, save_infer

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        names = list(self.code.adapters) + ([INFER_ADAPTER] if self.has_infer else [])
        self.peft_model.save_pretrained(out, selected_adapters=names)
        for name in names:  # bf16 halves the files; LoRA deltas lose nothing that matters at this precision
            path = out / name / "adapter_model.safetensors"
            save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(path)).items()}, str(path))
        tensors = {"sep": self.sep.detach().float().cpu().contiguous()}
        tensors.update({k: v.detach().float().cpu().contiguous() for k, v in self.code.state_dict().items()})
        save_file(tensors, str(out / MODULES_NAME))
        if self.has_infer:
            save_infer(self, out)
        self.config.save(out)
        if card is not None:
            (out / "README.md").write_text(card)
        return out


def _as_text(code: ZCode, data: bytes) -> str | bytes:
    """A code's exact bytes as the caller gave them: bytes, or text (which must then be UTF-8)."""
    if code.is_bytes:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptCodeError("the code says it holds text, but its decoded bytes are not UTF-8") from exc


def _progress(items: list[Any], enabled: bool, desc: str) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch")


def _pack_bits(bits: list[int]) -> bytes:
    """Bits -> bytes, zero-padded; trailing zero bytes dropped (the decoder reads zeros past the end)."""
    from zcompress_integrations.core.arithmetic import bits_to_ids

    return bytes(bits_to_ids(bits, 8)).rstrip(b"\x00")


def _unpack_bits(data: bytes) -> list[int]:
    from zcompress_integrations.core.arithmetic import ids_to_bits

    return ids_to_bits(tuple(data), 8)


def load_latent_codec(backbone: Backbone, adapters: str | os.PathLike[str] | None) -> LatentCodec:
    """Load trained adapters onto ``backbone``. ``"default"`` means the directory shipped with the package.

    Only safetensors and JSON are read: an adapter directory cannot run code."""
    if adapters is None:
        raise LatentUnavailableError(
            "mode='latent' needs trained adapters: pass adapters='default' (shipped) or a directory made by "
            "`zcompress train reader`"
        )
    directory = default_adapter_dir() if str(adapters) == "default" else Path(adapters)
    if not (directory / CONFIG_NAME).is_file():
        raise LatentUnavailableError(
            f"no latent adapters at {directory} (missing {CONFIG_NAME}); train them with `zcompress train reader` "
            "or use mode='exact'"
        )
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from zcompress_integrations.core.codes import build_code
    from zcompress_integrations.core.zspace import load_infer

    config = LatentConfig.load(directory)
    if config.backbone_fingerprint and config.backbone_fingerprint != backbone.fingerprint.hex():
        raise ModelMismatchError(
            f"adapters in {directory} were trained on backbone {config.backbone!r} (fingerprint "
            f"{config.backbone_fingerprint}), not the loaded one ({backbone.fingerprint.hex()})"
        )
    state = load_file(str(directory / MODULES_NAME))
    code = build_code(config, backbone.model.get_input_embeddings(), state)
    names = code.adapters
    peft_model = PeftModel.from_pretrained(backbone.model, directory / names[0], adapter_name=names[0])
    for name in names[1:]:
        peft_model.load_adapter(directory / name, adapter_name=name)
    peft_model.eval()
    device = backbone.model.get_input_embeddings().weight.device
    sep = state["sep"].to(device=device, dtype=torch.float32)
    codec = LatentCodec(backbone, config, peft_model, code, sep)
    load_infer(codec, directory)  # optional: directories written before generation in Z space have no infer/
    return codec
