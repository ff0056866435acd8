"""Device / dtype / quantization settings: checked values, machine checks before any load, the kwargs handed to
``from_pretrained``, bf16 and fp16 backbones on the tiny model, and the arithmetic an exact code records.

No GPU and no bitsandbytes are needed: the quantized path is checked through the pure function that builds the
``from_pretrained`` arguments and through the errors raised before a model would load.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from zcompress_integrations import ZCompressor
from zcompress_integrations.core import loading
from zcompress_integrations.core.loading import (
    LoadOptions,
    check_precision,
    model_load_kwargs,
    precision_name,
    precision_params,
    resolve,
)
from zcompress_integrations.errors import ConfigError, ModelMismatchError

TEXT = "The quick brown fox jumps over the lazy dog. Compression turns long text into a few tokens."


# ---- values ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"dtype": "float64"}, "dtype", "'float32', 'bfloat16', 'float16'"),
        ({"dtype": "bf16"}, "dtype", "'bfloat16'"),
        ({"quantization": "2bit"}, "quantization", "'4bit', '8bit'"),
        ({"quantization": True}, "quantization", "'4bit', '8bit'"),
        ({"device": "gpu"}, "device", "'cuda:N'"),
        ({"device": "cuda:x"}, "device", "'cuda'"),
    ],
)
def test_bad_values_name_the_field_and_the_allowed_values(
    kwargs: dict[str, Any], field: str, allowed: str
) -> None:
    for build in (
        lambda: LoadOptions(**kwargs),
        lambda: ZCompressor.from_pretrained("/no/such/model", **kwargs),
    ):
        with pytest.raises(ConfigError) as err:
            build()
        message = str(err.value)
        assert (
            message.startswith(field) and allowed in message and repr(next(iter(kwargs.values()))) in message
        )


@pytest.mark.parametrize(
    ("kwargs", "hint"),
    [
        ({"quantization": "4bit", "device": "cpu"}, "device='cuda'"),
        ({"quantization": "8bit", "device": "mps"}, "device='cuda'"),
        ({"quantization": "4bit", "dtype": "float32"}, "dtype='auto'"),
    ],
)
def test_conflicting_settings_fail_at_construction(kwargs: dict[str, Any], hint: str) -> None:
    with pytest.raises(ConfigError, match="quantization='(4|8)bit'") as err:
        ZCompressor.from_pretrained("/no/such/model", **kwargs)
    assert hint in str(err.value)


@pytest.mark.parametrize(
    ("given", "device", "dtype"),
    [
        ({}, "auto", "auto"),
        ({"device": None, "dtype": None}, "auto", "auto"),
        ({"dtype": "float16"}, "auto", "float16"),
        ({"device": "cuda:1", "dtype": "bfloat16", "quantization": "4bit"}, "cuda:1", "bfloat16"),
    ],
)
def test_good_values_are_kept_normalised(given: dict[str, Any], device: str, dtype: str) -> None:
    zc = ZCompressor.from_pretrained("/no/such/model", **given)  # nothing loads yet
    assert (zc.settings["device"], zc.settings["dtype"]) == (device, dtype)
    assert zc.settings["quantization"] == given.get("quantization")
    assert pickle.loads(pickle.dumps(zc)).settings == zc.settings


def test_checking_settings_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom zcompress_integrations import ZCompressor\n"
        "ZCompressor.from_pretrained(device='cuda', dtype='bfloat16', quantization='4bit')\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_a_torch_dtype_is_accepted_by_name() -> None:
    import torch

    assert LoadOptions(dtype=torch.bfloat16).dtype == "bfloat16"


# ---- machine checks, before any model file is read ----------------------------------------------------------
def test_quantization_without_cuda_is_refused_before_loading() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    zc = ZCompressor.from_pretrained("/no/such/model", quantization="4bit")  # device='auto': the CPU here
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as err:
        zc.backbone  # noqa: B018 - a load attempt would raise BackboneLoadError for the missing path
    assert "zcompress-integrations[gpu]" in str(err.value) and "drop quantization=" in str(err.value)


def test_quantization_without_bitsandbytes_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(loading, "has_bitsandbytes", lambda: False)
    zc = ZCompressor.from_pretrained("/no/such/model", quantization="8bit", device="cuda")
    with pytest.raises(ConfigError, match="bitsandbytes package, which is not installed") as err:
        zc.backbone  # noqa: B018
    assert "pip install 'zcompress-integrations[gpu]'" in str(err.value)


def test_cuda_asked_for_without_cuda_is_refused() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        ZCompressor.from_pretrained("/no/such/model", device="cuda").backbone  # noqa: B018


@pytest.mark.parametrize(
    ("capability", "quantization", "expected"),
    [
        ((9, 0), None, "bfloat16"),
        ((8, 0), "4bit", "bfloat16"),
        ((7, 5), None, "float32"),
        ((7, 5), "4bit", "float16"),
    ],
)
def test_auto_dtype_on_cuda(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], quantization: str | None, expected: str
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(loading, "has_bitsandbytes", lambda: True)
    dev, dtype = resolve(LoadOptions(device="cuda", quantization=quantization))
    assert dev.type == "cuda" and dtype == getattr(torch, expected)


def test_auto_dtype_on_cpu_is_fp32() -> None:
    import torch

    assert resolve(LoadOptions(device="cpu")) == (torch.device("cpu"), torch.float32)
    assert resolve(LoadOptions(device="cpu", dtype="bfloat16"))[1] == torch.bfloat16


# ---- what from_pretrained receives ----------------------------------------------------------------------------
def test_load_kwargs_without_quantization() -> None:
    import torch

    kwargs = model_load_kwargs(torch.bfloat16, torch.device("cuda"))
    assert kwargs == {"local_files_only": True, "dtype": torch.bfloat16}


def test_load_kwargs_4bit_is_nf4_computing_in_bf16() -> None:
    import torch
    from transformers import BitsAndBytesConfig

    kwargs = model_load_kwargs(torch.bfloat16, torch.device("cuda:1"), "4bit")
    config = kwargs["quantization_config"]
    assert isinstance(config, BitsAndBytesConfig)
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.quantization_method() == "nf4"
    assert kwargs["device_map"] == {"": 1} and kwargs["dtype"] == torch.bfloat16
    assert kwargs["local_files_only"] is True


def test_load_kwargs_8bit() -> None:
    import torch

    kwargs = model_load_kwargs(torch.float16, torch.device("cuda"), "8bit")
    config = kwargs["quantization_config"]
    assert config.load_in_8bit and not config.load_in_4bit and config.quantization_method() == "llm_int8"
    assert kwargs["device_map"] == {"": 0} and kwargs["dtype"] == torch.float16


# ---- bf16 / fp16 backbones on the tiny model ----------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_compressor(tiny_model_dir: Path, tiny_latent_adapters: Path) -> ZCompressor:
    return ZCompressor.from_pretrained(
        tiny_model_dir, adapters=tiny_latent_adapters, window=64, device="cpu", dtype="bfloat16"
    )


def test_bf16_backbone_carries_fp32_lora_adapters(bf16_compressor: ZCompressor) -> None:
    import torch

    codec = bf16_compressor.latent_codec
    assert codec.backbone.model.get_input_embeddings().weight.dtype == torch.bfloat16
    lora = {p.dtype for n, p in codec.peft_model.named_parameters() if "lora_" in n}
    assert lora == {torch.float32}  # peft upcasts the bf16-saved adapters; their outputs are cast back
    assert bf16_compressor.info()["dtype"] == "bfloat16"


def test_bf16_latent_round_trip(bf16_compressor: ZCompressor) -> None:
    latent = bf16_compressor.compress(TEXT, mode="latent", ratio=2.0)
    assert latent.z_tokens > 0 and isinstance(bf16_compressor.decompress(latent), str)
    exact = bf16_compressor.compress(TEXT, mode="latent", ratio=2.0, exact=True)
    assert bf16_compressor.decompress(exact) == TEXT
    answer = bf16_compressor.generate("What is this about?", context=[latent], max_new_tokens=4)
    assert isinstance(answer.text, str)


def test_bf16_exact_code_records_its_arithmetic(
    bf16_compressor: ZCompressor, tiny_compressor: ZCompressor
) -> None:
    code = bf16_compressor.compress(TEXT)
    assert code.params["dtype"] == 1 and "device" not in code.params and "quant" not in code.params
    assert bf16_compressor.decompress(code.to_bytes()) == TEXT
    with pytest.raises(ModelMismatchError, match=r"bfloat16 on cpu.*float32 on cpu.*dtype='bfloat16'"):
        tiny_compressor.decompress(code)  # the fp32 compressor refuses before decoding


def test_fp32_cpu_codes_record_nothing_new(tiny_compressor: ZCompressor) -> None:
    code = tiny_compressor.compress(TEXT)
    assert not {"device", "dtype", "quant"} & set(code.params)  # byte-identical to codes made before
    assert tiny_compressor.decompress(code) == TEXT


def test_fp16_backbone_round_trips_exact(tiny_model_dir: Path) -> None:
    import torch

    zc = ZCompressor.from_pretrained(tiny_model_dir, adapters=None, window=64, device="cpu", dtype="float16")
    assert zc.backbone.model.get_input_embeddings().weight.dtype == torch.float16
    code = zc.compress(TEXT)
    assert code.params["dtype"] == 2 and zc.decompress(code) == TEXT


# ---- the recorded arithmetic ------------------------------------------------------------------------------------
def test_precision_of_a_quantized_model_and_the_check(tiny_model_dir: Path) -> None:
    from transformers import BitsAndBytesConfig

    from zcompress_integrations.core.backbone import load_backbone

    model = load_backbone(str(tiny_model_dir), device="cpu").model
    assert precision_name(model) == ("cpu", "float32", "none") and precision_params(model) == {}
    model.config.quantization_config = BitsAndBytesConfig(load_in_4bit=True)  # as a bitsandbytes load sets it
    assert precision_name(model) == ("cpu", "float32", "4bit") and precision_params(model) == {"quant": 1}
    check_precision({"quant": 1}, model)
    with pytest.raises(
        ModelMismatchError, match=r"made with float32 on cpu.*runs 4bit weights computing in float32"
    ):
        check_precision({}, model)  # a plain code on a quantized model
    plain = load_backbone(str(tiny_model_dir), device="cpu").model
    with pytest.raises(ModelMismatchError, match=r"quantization='4bit'"):
        check_precision({"quant": 1}, plain)  # a quantized model's code on a plain model
    with pytest.raises(ModelMismatchError, match=r"bfloat16 on cuda.*device='cuda', dtype='bfloat16'"):
        check_precision({"device": 1, "dtype": 1}, model)


def test_unknown_arithmetic_is_recorded_but_not_checked(tiny_model_dir: Path) -> None:
    import torch

    from zcompress_integrations.core.backbone import load_backbone

    model = load_backbone(str(tiny_model_dir), device="cpu", model_kwargs={"dtype": torch.float64}).model
    assert precision_params(model) == {"dtype": loading.OTHER}
    check_precision({"dtype": loading.OTHER}, model)


def test_bf16_latent_residual_records_its_arithmetic(
    bf16_compressor: ZCompressor, tiny_latent_compressor: ZCompressor
) -> None:
    code = bf16_compressor.compress(TEXT, mode="latent", ratio=2.0, exact=True)
    assert code.params["dtype"] == 1
    with pytest.raises(ModelMismatchError, match=r"bfloat16 on cpu.*float32 on cpu"):
        tiny_latent_compressor.decompress(code)  # refused before the residual is decoded
    plain = tiny_latent_compressor.compress(TEXT, mode="latent", ratio=2.0, exact=True)
    assert not {"device", "dtype", "quant"} & set(plain.params)
