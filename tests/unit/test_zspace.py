"""Generation in Z space on a tiny random Llama: the infer adapter on the shared tiny token-group adapters,
continue_z, train_infer, save/load, ``zcompress train infer``. Logic, not quality (the tiny reader was trained for 2
steps, so the rendered text is noise). The group head itself is tested in test_zspace_groups.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zcompress_integrations import LatentUnavailableError, ZCode, ZCompressor  # noqa: E402
from zcompress_integrations.core.backbone import load_backbone  # noqa: E402
from zcompress_integrations.core.latent import load_latent_codec  # noqa: E402
from zcompress_integrations.core.training import InferConfig, group_infer_loss, train_infer  # noqa: E402
from zcompress_integrations.core.zspace import INFER_HEAD_NAME, add_infer_adapter  # noqa: E402
from zcompress_integrations.errors import ConfigError  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. Compression turns long text into a few tokens. "
STEPS = 25


def _windows(codec: Any, k: int = 3, n: int = 40) -> np.ndarray:
    """Token windows [n, k * segment_len] of consecutive segments."""
    width = k * codec.config.segment_len
    ids = codec.backbone.tokenizer(TEXT * 60)["input_ids"]
    return np.asarray([ids[i : i + width] for i in range(0, len(ids) - width, 5)][:n], dtype=np.int64)


def _codec(tiny_model_dir: Path, adapters: Path) -> Any:
    return load_latent_codec(load_backbone(str(tiny_model_dir), device="cpu"), adapters)


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path, tiny_latent_adapters: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """The tiny codec with an infer adapter trained for a few steps, saved; loss on a fixed batch before/after."""
    torch.set_num_threads(1)
    codec = _codec(tiny_model_dir, tiny_latent_adapters)
    windows = _windows(codec)
    fixed = windows[:8]
    probe = [TEXT * 2, "short text"]
    before_codes = codec.compress_batch(probe)
    fingerprint = codec.fingerprint
    add_infer_adapter(codec, seed=0)
    before = group_infer_loss(codec, fixed)
    cfg = InferConfig(steps=STEPS, batch_size=8, lr=3e-3, lr_head=1e-2, log_every=5, seed=0)
    records = train_infer(codec, windows, cfg)
    after = group_infer_loss(codec, fixed)
    out = tmp_path_factory.mktemp("zspace") / "adapters"
    codec.save_pretrained(out)
    return {
        "codec": codec,
        "windows": windows,
        "before": before,
        "after": after,
        "records": records,
        "dir": out,
        "probe": probe,
        "before_codes": before_codes,
        "fingerprint": fingerprint,
    }


def test_continue_z_returns_valid_ids_and_the_requested_segments(trained: dict) -> None:
    codec = trained["codec"]
    L = codec.config.segment_len
    code = codec.compress_batch([TEXT * 3])[0]
    for n in (1, 3):
        cont = codec.continue_z(code, n)
        assert cont.codec == "latent" and cont.k == codec.code.k
        codec.code.check_ids(cont.z_ids)
        assert len(cont.segments) == n and sum(cont.segments) == cont.z_tokens
        assert cont.params["generated"] == 1 and "threads" not in cont.params
        assert cont.text_tokens == n * L
        text = codec.decompress_batch([ZCode.from_bytes(cont.to_bytes())])[0]
        assert isinstance(text, str)
    fixed = codec.continue_z(code, 2, z_per_segment=L // 4)  # groups of 4 tokens
    assert fixed.segments == (L // 4, L // 4)
    assert codec.continue_z(code, 2, z_per_segment=L // 4) == fixed  # greedy: deterministic
    # a generated code continues too (segments of the continuation are its context)
    assert len(codec.continue_z(fixed, 1).segments) == 1


def test_continue_z_rejects_bad_arguments(trained: dict) -> None:
    codec = trained["codec"]
    code = codec.compress_batch([TEXT])[0]
    with pytest.raises(ConfigError, match="n_segments"):
        codec.continue_z(code, 0)
    with pytest.raises(ConfigError, match="z_per_segment"):
        codec.continue_z(code, 1, z_per_segment=codec.config.segment_len + 1)
    with pytest.raises(ConfigError, match="segment_len"):  # k = 1 segment per window
        train_infer(codec, np.zeros((4, codec.config.segment_len), dtype=np.int64), InferConfig(steps=1))


def test_train_infer_lowers_the_loss_on_a_fixed_batch(trained: dict) -> None:
    assert trained["after"]["loss"] < trained["before"]["loss"] - 0.1
    losses = [r["loss"] for r in trained["records"]]
    assert losses[-1] < losses[0]


def test_train_infer_leaves_the_codec_untouched(trained: dict) -> None:
    """Only infer/ and its head train: the fingerprint and the compress adapter's codes do not move."""
    codec = trained["codec"]
    assert codec.fingerprint == trained["fingerprint"]
    assert [c.z_ids for c in codec.compress_batch(trained["probe"])] == [
        c.z_ids for c in trained["before_codes"]
    ]


def test_train_infer_is_deterministic(
    trained: dict, tiny_model_dir: Path, tiny_latent_adapters: Path
) -> None:
    runs = []
    for _ in range(2):
        codec = _codec(tiny_model_dir, tiny_latent_adapters)
        records = train_infer(
            codec, trained["windows"], InferConfig(steps=4, batch_size=4, lr=3e-3, log_every=1, seed=1)
        )
        code = codec.compress_batch([TEXT])[0]
        runs.append(([r["loss"] for r in records], codec.continue_z(code, 2)))
    assert runs[0] == runs[1]


def test_save_load_round_trip_keeps_continue_z_identical(trained: dict, tiny_model_dir: Path) -> None:
    codec, out = trained["codec"], trained["dir"]
    assert (out / "infer" / "adapter_model.safetensors").is_file() and (out / INFER_HEAD_NAME).is_file()
    config = json.loads((out / "zcompress_config.json").read_text())
    assert (
        config["training"]["infer"]["steps"] == STEPS and config["training"]["infer"]["window_segments"] == 3
    )
    reloaded = _codec(tiny_model_dir, out)
    assert reloaded.has_infer and reloaded.fingerprint == codec.fingerprint
    code = codec.compress_batch([TEXT * 3])[0]
    for n in (1, 2):
        assert reloaded.continue_z(code, n) == codec.continue_z(code, n)
    sampled = codec.continue_z(code, 2, temperature=1.0, seed=7)
    assert reloaded.continue_z(code, 2, temperature=1.0, seed=7) == sampled


def test_facade_continue_z_and_decompress(trained: dict, tiny_model_dir: Path) -> None:
    zc = ZCompressor.from_pretrained(tiny_model_dir, adapters=trained["dir"], window=64)
    code = zc.compress(TEXT * 2, mode="latent")
    cont = zc.continue_z(code.to_string())  # any form of a code is accepted
    assert len(cont.segments) == 1
    assert isinstance(zc.decompress(cont), str)
    last_only = zc.continue_z(code, 2, z_per_segment=8, context_segments=1)
    assert last_only.segments == (8, 8)
    assert isinstance(zc.decompress(cont.to_string()), str)


def test_missing_infer_adapter_is_a_clear_error(
    tiny_latent_compressor: Any, tiny_latent_adapters: Path
) -> None:
    assert not (tiny_latent_adapters / "infer").exists()  # a directory from before generation in Z space
    code = tiny_latent_compressor.compress(TEXT, mode="latent")  # ... still loads and works
    assert isinstance(tiny_latent_compressor.decompress(code), str)
    with pytest.raises(LatentUnavailableError, match="infer"):
        tiny_latent_compressor.continue_z(code)
    codec = tiny_latent_compressor.latent_codec
    assert not codec.has_infer
    with pytest.raises(LatentUnavailableError, match="zcompress train infer"):
        group_infer_loss(codec, _windows(codec, n=2))


def test_cli_trains_infer_on_top_of_adapters_and_resumes(
    tiny_model_dir: Path, tiny_latent_adapters: Path, tmp_path: Path
) -> None:
    from zcompress_integrations.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": TEXT * 8}) + "\n" for _ in range(4)))
    argv = ["train", "infer", "--adapters", str(tiny_latent_adapters), "--model", str(tiny_model_dir)]
    argv += ["--data", str(data), "--out", str(tmp_path / "run"), "--batch-size", "2", "--held", "1"]
    argv += ["--device", "cpu", "--window-segments", "2", "--eval-every", "3", "--log-every", "1"]
    assert main([*argv, "--steps", "3"]) == 0
    codec = _codec(tiny_model_dir, tmp_path / "run" / "adapters")
    assert codec.has_infer and codec.config.training["infer"]["window_segments"] == 2
    assert main([*argv, "--steps", "5", "--resume"]) == 0  # two more steps from the step-3 checkpoint
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert {"held_loss", "held_acc_offset0"} <= set(next(r for r in log if r["kind"] == "eval"))
    assert _codec(tiny_model_dir, tmp_path / "run" / "adapters").config.training["infer"]["steps"] == 5


def test_benchmark_script_runs_on_the_tiny_model(trained: dict, tiny_model_dir: Path, tmp_path: Path) -> None:
    from zcompress_integrations.eval.datasets import DataNotFoundError, resolve_data_dir

    try:
        resolve_data_dir()
    except DataNotFoundError:
        pytest.skip("WikiText-2 data not found (shared/data)")
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "benchmarks"))
    import zspace_continuation

    out = tmp_path / "bench"
    zspace_continuation.main(
        ["--model", str(tiny_model_dir), "--adapters", str(trained["dir"]), "--limit", "2", "--out", str(out)]
    )
    result = json.loads((tmp_path / "bench.json").read_text())
    assert {"z_continuation", "true_continuation", "greedy_continuation"} <= set(result["rows"])
    assert (tmp_path / "bench.md").is_file()
