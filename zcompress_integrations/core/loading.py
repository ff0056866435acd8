"""How the backbone is loaded: device, dtype and bitsandbytes quantization, and the arithmetic they imply.

Three steps, each a small function, so that a wrong setting fails before any model file is read:

1. :class:`LoadOptions` checks the values (no torch import): ``dtype`` in :data:`DTYPES`, ``quantization`` in
   :data:`QUANTIZATIONS`, ``device`` ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"``/``"mps"``.
2. :func:`resolve` turns them into a torch device and dtype on this machine, and refuses what the machine cannot do
   (CUDA asked for but absent, quantization without CUDA or without bitsandbytes).
3. :func:`model_load_kwargs` builds the ``AutoModelForCausalLM.from_pretrained`` keyword arguments (a pure
   function: it builds a ``BitsAndBytesConfig`` only when quantization is asked for).

``dtype="auto"`` is bf16 on a CUDA GPU that computes bf16 natively (compute capability 8.0 and up), else fp32:
on a CPU, fp32 is the arithmetic the shipped adapters were trained in and every published figure was measured in,
and fp32 CPU codes are the portable kind (below). Quantized weights compute in bf16 (fp16 on a GPU without native
bf16, or with ``dtype="float16"``).

Exact codes and determinism. The exact codec (and a latent code's residual) decodes only where the model computes
bit-identical probabilities, so a code has to be decoded with the device and dtype it was made with.
:func:`precision_params` names the arithmetic of a loaded backbone as small code parameters (``device``, ``dtype``,
``quant``; each left out when 0, so a CPU fp32 code, and every code made before they existed, reads as that) and
:func:`check_precision` refuses a code made with other arithmetic before decoding starts. The same device kind and
dtype is necessary, not sufficient: another GPU model, driver or library version can still compute other logits,
which the code's checksum catches (:class:`~zcompress_integrations.errors.ChecksumMismatchError`, never wrong text).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from zcompress_integrations.errors import ConfigError, ModelMismatchError

__all__ = [
    "DTYPES",
    "QUANTIZATIONS",
    "GPU_INSTALL",
    "LoadOptions",
    "check_precision",
    "has_bitsandbytes",
    "model_load_kwargs",
    "precision_params",
    "precision_name",
    "resolve",
]

DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = (None, "4bit", "8bit")
GPU_INSTALL = "pip install 'zcompress-integrations[gpu]' (bitsandbytes) with a CUDA build of torch"
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Quantization = Literal["4bit", "8bit"]

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

# Code parameters naming the arithmetic of the backbone that made an exact code (absent: 0, i.e. fp32 on a CPU).
PRECISION_CODES: dict[str, dict[str, int]] = {
    "device": {"cpu": 0, "cuda": 1, "mps": 2},
    "dtype": {"float32": 0, "bfloat16": 1, "float16": 2, "float32+tf32": 3},
    "quant": {"none": 0, "4bit": 1, "8bit": 2},
}
OTHER = 15  # an arithmetic outside these tables (a float64 model, an xpu device): recorded, never checked


@dataclass(frozen=True)
class LoadOptions:
    """The backbone's load settings, checked on creation (no torch import).

    Args:
        device: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``; ``None`` is ``"auto"``.
        dtype: one of :data:`DTYPES` (a ``torch.dtype`` of those names is accepted); ``None`` is ``"auto"``.
        quantization: ``None``, ``"4bit"`` (nf4) or ``"8bit"`` (LLM.int8): bitsandbytes, CUDA only.
    """

    device: str = "auto"
    dtype: str = "auto"
    quantization: str | None = None

    def __post_init__(self) -> None:
        device = "auto" if self.device is None else str(self.device)
        dtype = "auto" if self.dtype is None else str(self.dtype).removeprefix("torch.")
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "dtype", dtype)
        if not _DEVICE.match(device):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {self.device!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES} (or None for 'auto'); got {self.dtype!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"quantization must be one of {QUANTIZATIONS}; got {self.quantization!r}")
        if self.quantization is not None:
            if device in ("cpu", "mps"):
                raise ConfigError(
                    f"quantization={self.quantization!r} runs on CUDA GPUs only (bitsandbytes), but device="
                    f"{device!r}; drop quantization= on a CPU, or use device='cuda'"
                )
            if dtype == "float32":
                raise ConfigError(
                    f"quantization={self.quantization!r} computes in 'bfloat16' or 'float16'; got dtype='float32' "
                    "(use dtype='auto', or drop quantization= for full fp32 weights)"
                )


def resolve(options: LoadOptions) -> tuple[Any, Any]:
    """``(torch.device, torch.dtype)`` of ``options`` on this machine.

    Raises :class:`ConfigError` for what this machine cannot do: CUDA or MPS asked for but absent, quantization
    without a CUDA device or without bitsandbytes installed (the message names the install line).
    """
    import torch

    dev = _resolve_device(options.device)
    if options.quantization is not None:
        if dev.type != "cuda":
            raise ConfigError(
                f"quantization={options.quantization!r} needs a CUDA GPU (bitsandbytes), but this machine runs on "
                f"{dev.type}; drop quantization= here, or on a GPU machine: "
                f"{GPU_INSTALL}"
            )
        if not has_bitsandbytes():
            raise ConfigError(
                f"quantization={options.quantization!r} needs the bitsandbytes package, which is not installed: "
                f"{GPU_INSTALL}"
            )
    if options.dtype != "auto":
        return dev, getattr(torch, options.dtype)
    if dev.type == "cuda" and _native_bf16(dev):
        return dev, torch.bfloat16
    if options.quantization is not None:  # quantized weights never compute in fp32 here
        return dev, torch.float16
    return dev, torch.float32


def has_bitsandbytes() -> bool:
    """Whether bitsandbytes is installed (looked up, not imported)."""
    return importlib.util.find_spec("bitsandbytes") is not None


def _resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={device!r} was requested but CUDA is not available here (torch {torch.__version__}); use "
            "device='cpu' or 'auto', or install a CUDA build of torch"
        )
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(
            f"device={device!r} was requested but MPS is not available here; use 'cpu' or 'auto'"
        )
    return dev


def _native_bf16(dev: Any) -> bool:
    """Whether the CUDA device computes bf16 natively (Ampere and later), not by emulation."""
    import torch

    major, _ = torch.cuda.get_device_capability(dev)
    return major >= 8 or bool(torch.version.hip)


def model_load_kwargs(dtype: Any, device: Any, quantization: str | None = None) -> dict[str, Any]:
    """``AutoModelForCausalLM.from_pretrained`` keyword arguments for a resolved ``dtype`` and ``device``.

    Pure apart from building the config object: ``{"local_files_only": True, "dtype": dtype}``, plus with
    ``quantization`` a ``BitsAndBytesConfig`` (``"4bit"``: nf4 weights computing in ``dtype``; ``"8bit"``:
    LLM.int8) and ``device_map`` placing the whole model on ``device`` (bitsandbytes quantizes while it loads onto
    the GPU, so the model is never moved after). Without quantization the caller moves the model to ``device``.
    """
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    if quantization is None:
        return kwargs
    if quantization not in ("4bit", "8bit"):
        raise ConfigError(f"quantization must be one of {QUANTIZATIONS}; got {quantization!r}")
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=False,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    kwargs["quantization_config"] = config
    kwargs["device_map"] = {"": device.index or 0}
    return kwargs


# ---- the arithmetic an exact code was made with -------------------------------------------------------------
def precision_name(model: Any) -> tuple[str, str, str]:
    """``(device type, dtype, quantization)`` of a loaded model's arithmetic, read from the model itself (so
    ``model_kwargs`` overrides and models wrapped by ``from_model`` count too).

    The dtype is that of the input embeddings (for a bitsandbytes model, the dtype its other modules and its 4-bit
    matmuls compute in), ``"float32+tf32"`` for fp32 on CUDA with TF32 matmuls on; the quantization is ``"none"``,
    ``"4bit"`` or ``"8bit"``."""
    import torch

    weight = model.get_input_embeddings().weight
    device = weight.device.type
    dtype = str(weight.dtype).removeprefix("torch.")
    if dtype == "float32" and device == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        dtype = "float32+tf32"
    quant = getattr(model.config, "quantization_config", None)
    if quant is not None and not isinstance(quant, Mapping):
        quant = quant.to_dict()
    quantization = "none"
    if quant and quant.get("load_in_4bit"):
        quantization = "4bit"
    elif quant and quant.get("load_in_8bit"):
        quantization = "8bit"
    return device, dtype, quantization


def precision_params(model: Any) -> dict[str, int]:
    """The ``device``/``dtype``/``quant`` code parameters of a model's arithmetic, each left out when 0: empty for
    fp32 on a CPU, the arithmetic of every code made before these parameters existed (so those codes, and new CPU
    codes, stay byte-identical)."""
    names = precision_name(model)
    params = {
        key: codes.get(name, OTHER) for (key, codes), name in zip(PRECISION_CODES.items(), names, strict=True)
    }
    return {key: value for key, value in params.items() if value}


def check_precision(params: Mapping[str, int], model: Any) -> None:
    """Raise :class:`ModelMismatchError` when a code's recorded arithmetic is not ``model``'s (before decoding)."""
    here = precision_name(model)
    made = tuple(_name_of(codes, params.get(key, 0)) for key, codes in PRECISION_CODES.items())
    if any(
        m != h and not (m == "other" and h not in codes)
        for m, h, codes in zip(made, here, PRECISION_CODES.values(), strict=True)
    ):
        raise ModelMismatchError(
            f"this code was made with {_describe(*made)}, but this compressor runs {_describe(*here)}: its "
            f"probabilities would differ and decoding would fail. Decode it with {_load_hint(*made)}; an exact "
            "code decodes only with the device kind, dtype and quantization that made it"
        )


def _name_of(codes: Mapping[str, int], value: int) -> str:
    return next((name for name, code in codes.items() if code == value), "other")


def _describe(device: str, dtype: str, quantization: str) -> str:
    if quantization == "none":
        return f"{dtype} on {device}"
    return f"{quantization} weights computing in {dtype} on {device}"


def _load_hint(device: str, dtype: str, quantization: str) -> str:
    args = f"device={device!r}, dtype={dtype.removesuffix('+tf32')!r}"
    if quantization != "none":
        args += f", quantization={quantization!r}"
    tf32 = " with TF32 matmuls on (torch.backends.cuda.matmul.allow_tf32 = True)" if "tf32" in dtype else ""
    return f"ZCompressor.from_pretrained(..., {args}){tf32}"
