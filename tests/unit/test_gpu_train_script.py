"""scripts/gpu_train_compressor.py and scripts/gpu_bundle.py, the pieces that run before and after training on a lent
GPU: the bundles that carry the files there, the weights digest that checks the backbone there against the CPU's,
and the adapters tar split into parts that come back."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str = "gpu_train_compressor") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / f"scripts/{name}.py")
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


def test_bundles_stay_under_the_limit_and_rebuild_every_file(tmp_path: Path) -> None:
    script = _script("gpu_bundle")
    rng = random.Random(0)
    src = tmp_path / "src"
    (src / "reader").mkdir(parents=True)
    sizes = {"model.gguf": 2500, "segments.npy": 700, "reader/a.safetensors": 1000, "reader/b.json": 0}
    for name, size in sizes.items():
        (src / name).write_bytes(bytes(rng.randrange(256) for _ in range(size)))
    items = [(src / "model.gguf", "site/pkg/model.gguf"), (src / "segments.npy", "data/segments.npy")]
    items += script._files(src / "reader", "reader")
    bundles = script.pack(items, {"steps": 3}, tmp_path / "bundles", limit=1024)
    assert len(bundles) == 5  # 4,200 bytes in bundles of 1,024
    for b in bundles:
        assert sum(p.stat().st_size for p in b.iterdir() if p.name.startswith("part")) <= 1024
    remote = tmp_path / "remote"
    for b in bundles[1:]:
        script.unpack(b, remote)
    with pytest.raises(ValueError, match="has not arrived"):  # bundle 1 never came
        script.assemble(remote, install_wheels=False)
    script.unpack(bundles[0], remote)
    assert sorted(script.assemble(remote, install_wheels=False)) == sorted(d for _, d in items)
    for local, dest in items:
        assert (remote / dest).read_bytes() == local.read_bytes()
    assert json.loads((remote / "config.json").read_text()) == {"steps": 3}
    (remote / "parts" / "part0001").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="sha256"):
        script.assemble(remote, install_wheels=False)


def test_hide_takes_big_tracked_files_out_of_the_tree_and_restore_brings_them_back(
    tmp_path, monkeypatch
) -> None:
    import subprocess

    script = _script("gpu_bundle")
    monkeypatch.chdir(tmp_path)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("/.gpu/\n")
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters/big.bin").write_bytes(b"x" * 5000)
    (tmp_path / "small.txt").write_text("small")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert script.hide(4096) == ["adapters/big.bin"]
    assert not (tmp_path / "adapters/big.bin").exists()
    assert git("ls-files").split() == [".gitignore", "small.txt"]
    assert script.restore() == ["adapters/big.bin"]
    assert (tmp_path / "adapters/big.bin").read_bytes() == b"x" * 5000
    assert git("status", "--porcelain") == ""
