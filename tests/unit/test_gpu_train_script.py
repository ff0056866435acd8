"""scripts/gpu_train_compressor.py, the pieces that run before and after training on a lent GPU: the weights digest
that checks the backbone there against the CPU's, and the adapters tar split into parts that come back."""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gpu_train_compressor", ROOT / "scripts/gpu_train_compressor.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weights_digest_sees_any_weight_change(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    script = _script()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    again = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert script.weights_digest(model) == script.weights_digest(again)
    with torch.no_grad():  # one weight, by less than bf16 resolves: the fingerprint would not see it
        weight = next(p for n, p in again.named_parameters() if "layers.1." in n)
        weight.view(-1)[-1] += 1e-6
    assert script.weights_digest(model) != script.weights_digest(again)


def test_adapters_come_back_in_parts_that_rebuild_the_directory(tmp_path: Path, monkeypatch) -> None:
    script = _script()
    src = tmp_path / "adapters"
    (src / "compress").mkdir(parents=True)
    (src / "compress" / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 40)
    (src / "zcompress_config.json").write_text('{"code": "learned"}')
    monkeypatch.setattr(script, "PART_BYTES", 4096)
    out = tmp_path / "out"
    out.mkdir()
    names = script._split_tar(src, out)
    assert len(names) > 2 and all((out / n).stat().st_size <= 4096 for n in names)
    data = b"".join((out / n).read_bytes() for n in sorted(names))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path / "back", filter="data")
    for f in src.rglob("*"):
        if f.is_file():
            assert (tmp_path / "back" / "adapters" / f.relative_to(src)).read_bytes() == f.read_bytes()
