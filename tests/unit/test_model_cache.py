"""The converted-model cache: damaged conversions are detected and rebuilt, never loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from zcompress_integrations.core import backbone


@pytest.fixture
def fake_default(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The default model's conversion, played by the tiny model (a GGUF stand-in file and a cache in tmp)."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    monkeypatch.setenv("ZCOMPRESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backbone, "default_gguf_path", lambda: gguf)
    conversions: list[Path] = []

    def convert(path: Path, target: Path) -> None:  # what _convert_default writes, without the 30 s GGUF step
        conversions.append(target)
        tmp = target.with_name(".tmp-test")
        shutil.copytree(tiny_model_dir, tmp)
        backbone.write_manifest(tmp)
        tmp.rename(target)

    monkeypatch.setattr(backbone, "_convert_default", convert)
    return conversions


def _damage(target: Path, how: str) -> None:
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
    elif how == "truncate":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "missing":
        weights.unlink()
    elif how == "no manifest":
        (target / backbone.MANIFEST_NAME).unlink()


@pytest.mark.parametrize("how", ["flip", "truncate", "missing", "no manifest"])
def test_a_damaged_conversion_is_rebuilt_not_loaded(fake_default: list[Path], how: str) -> None:
    target = backbone.default_model_dir()
    assert len(fake_default) == 1 and backbone.manifest_ok(target)
    assert backbone.default_model_dir() == target and len(fake_default) == 1  # a sound cache is reused
    _damage(target, how)
    assert not backbone.manifest_ok(target)
    assert backbone.default_model_dir() == target and len(fake_default) == 2
    assert backbone.manifest_ok(target)
    assert backbone.load_backbone(str(target), device="cpu").text_vocab_size > 0
