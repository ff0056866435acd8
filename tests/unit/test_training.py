"""The training package on the tiny random Llama: configs, the lr schedule, checkpoints (atomic, weights-only,
exact resume), the reader and infer loops, the answer-from-Z loss and ``zcompress train <task>``."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zcompress_integrations import ZCompressor  # noqa: E402
from zcompress_integrations.cli import main as zcompress  # noqa: E402
from zcompress_integrations.core.backbone import load_backbone  # noqa: E402
from zcompress_integrations.core.latent import LatentCodec, LatentConfig, load_latent_codec  # noqa: E402
from zcompress_integrations.core.training import (  # noqa: E402
    InferConfig,
    ReaderConfig,
    from_z,
    get_lr,
    infer,
    reader,
    train_infer,
    train_reader,
)
from zcompress_integrations.core.training import checkpoint as ckpt  # noqa: E402
from zcompress_integrations.core.training.config import config_from_dict  # noqa: E402
from zcompress_integrations.errors import ConfigError  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. Compression turns long text into a few tokens. "
L = 16


@pytest.fixture
def backbone(tiny_model_dir: Path) -> Any:
    """A fresh tiny backbone: each codec wraps its backbone with peft, so one backbone serves one codec."""
    torch.set_num_threads(1)
    return load_backbone(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def segments(tiny_model_dir: Path) -> np.ndarray:
    ids = load_backbone(str(tiny_model_dir), device="cpu").tokenizer(TEXT * 40)["input_ids"]
    return np.asarray([ids[i : i + L] for i in range(0, 600, 3)], dtype=np.int64)


def _reader_cfg(out: Path, **kw: Any) -> ReaderConfig:
    base = dict(
        out=str(out),
        segment_len=L,
        lora_r=2,
        batch_size=4,
        lr=1e-2,
        warmup_steps=1,
        held=8,
        log_every=1,
        eval_every=1000,
        checkpoint_every=2,
    )
    return ReaderConfig(**{**base, **kw})


def _train_losses(records: list[dict[str, Any]]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


# ---- config and schedule -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "values", "field"),
    [
        (ReaderConfig, {"lr": -1.0}, "lr"),
        (ReaderConfig, {"lr": float("nan")}, "lr"),
        (ReaderConfig, {"steps": 1.5}, "steps"),
        (ReaderConfig, {"batch_size": 0}, "batch_size"),
        (ReaderConfig, {"device": "tpu"}, "device"),
        (ReaderConfig, {"decay": "step"}, "decay"),
        (ReaderConfig, {"group_probs": [0.2] * 5}, "group_probs"),
        (ReaderConfig, {"group_probs": [0.0, 0.0]}, "group_probs"),
        (ReaderConfig, {"train_sep": "yes"}, "train_sep"),
        (ReaderConfig, {"data": "a.jsonl"}, "data"),
        (ReaderConfig, {"min_lr_frac": 2.0}, "min_lr_frac"),
        (ReaderConfig, {"qa_weight": 1.0}, "qa_data"),
        (InferConfig, {"window_segments": 1}, "window_segments"),
        (InferConfig, {"lr_head": 0.0}, "lr_head"),
        (InferConfig, {"chain_rank": -1}, "chain_rank"),
    ],
)
def test_config_refuses_bad_values_and_names_the_field(cls: type, values: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"{cls.__name__}\.{field}\b"):
        cls(**values)


def test_config_from_dict_names_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="lr_modules"):
        config_from_dict(ReaderConfig, {"lr_modules": 1e-3})
    assert config_from_dict(InferConfig, {"steps": 3}).steps == 3


def test_get_lr_warms_up_then_decays_to_the_floor() -> None:
    kw = dict(lr=1.0, steps=110, warmup_steps=10, min_lr_frac=0.1)
    assert [get_lr(s, **kw) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert get_lr(50, **kw) == 1.0 and get_lr(500, **kw) == 1.0  # constant by default
    assert get_lr(10, decay="cosine", **kw) == pytest.approx(1.0)
    assert get_lr(60, decay="cosine", **kw) == pytest.approx(0.55)  # halfway: (1 + floor) / 2
    assert get_lr(110, decay="cosine", **kw) == pytest.approx(0.1) == get_lr(200, decay="cosine", **kw)
    assert get_lr(60, decay="linear", **kw) == pytest.approx(0.55)
    # decay_start: flat until it, then linear to the floor at ``steps`` (the shipped reader's warm restarts)
    assert get_lr(80, decay="linear", decay_start=90, **kw) == 1.0
    assert get_lr(100, decay="linear", decay_start=90, **kw) == pytest.approx(0.55)
    lrs = [get_lr(s, decay="cosine", **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    with pytest.raises(ValueError, match="decay"):
        get_lr(50, decay="step", **kw)


# ---- checkpoints -------------------------------------------------------------------------------------------
def _state(step: int, size: int = 4) -> dict[str, Any]:
    return {
        "format": ckpt.FORMAT,
        "task": "reader",
        "step": step,
        "config": {"lr": 1.0},
        "trainable": {"w": torch.full((size,), float(step))},
        "optimizer": {},
        "rng": ckpt.rng_state(),
        "data": {"rng": np.random.default_rng(0).bit_generator.state},
    }


def test_checkpoint_round_trips_rng_states_under_weights_only(tmp_path: Path) -> None:
    import random

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    ckpt.save_checkpoint(tmp_path / "c.pt", _state(1))
    expected = (torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random())
    state = ckpt.load_checkpoint(tmp_path / "c.pt", task="reader")
    ckpt.set_rng_state(state["rng"])
    assert (torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random()) == expected
    with pytest.raises(ConfigError, match="'reader' checkpoint, not a 'infer'"):
        ckpt.load_checkpoint(tmp_path / "c.pt", task="infer")


def test_a_failed_or_killed_checkpoint_write_leaves_the_previous_one(
    tmp_path: Path, monkeypatch: Any
) -> None:
    path = tmp_path / ckpt.CHECKPOINT_NAME
    ckpt.save_checkpoint(path, _state(1))

    def crash(*args: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(ckpt.os, "replace", crash)  # the rename never happens
    with pytest.raises(OSError, match="disk gone"):
        ckpt.save_checkpoint(path, _state(2))
    monkeypatch.undo()

    real_save = torch.save

    def half_written(obj: Any, fh: Any) -> None:  # a crash halfway through writing
        real_save(obj, fh)
        fh.truncate(fh.tell() // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, _state(3))
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.CHECKPOINT_NAME]  # no temp files left


def _write_forever(path: str) -> None:
    step = 2
    while True:
        ckpt.save_checkpoint(path, _state(step, size=2_000_000))
        step += 1


def test_a_process_killed_while_writing_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    import multiprocessing
    import signal
    import time

    path = tmp_path / ckpt.CHECKPOINT_NAME
    ckpt.save_checkpoint(path, _state(1))
    child = multiprocessing.get_context("fork").Process(target=_write_forever, args=(str(path),))
    child.start()
    deadline = time.time() + 30
    while not list(tmp_path.glob("*.tmp")) and time.time() < deadline:  # kill it while a temp file is open
        time.sleep(0.001)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    state = ckpt.load_checkpoint(path)
    assert state["step"] >= 1 and float(state["trainable"]["w"][0]) == state["step"]


class _Payload:
    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(_Payload.marker),))

    marker = Path()


def test_a_crafted_pickle_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    _Payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"format": 1, "payload": _Payload()}, protocol=2))
    with pytest.raises(ConfigError, match="not a zcompress training checkpoint"):
        ckpt.load_checkpoint(path)
    with pytest.raises(ConfigError, match="not a zcompress training checkpoint"):
        reader.init_source(path)
    assert not _Payload.marker.exists()
    torch.save({"format": 1}, tmp_path / "other.pt")  # loadable, but not the schema
    with pytest.raises(ConfigError, match="keys"):
        ckpt.load_checkpoint(tmp_path / "other.pt")


# ---- the reader ----------------------------------------------------------------------------------------------
def test_reader_lowers_the_loss_on_a_fixed_batch(backbone: Any, segments: np.ndarray, tmp_path: Path) -> None:
    cfg = _reader_cfg(tmp_path, steps=8, eval_every=8, held=4)
    # 4 rows held apart, 4 trained on
    _, records = train_reader(cfg, backbone=backbone, segments=segments[:8])
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 8]
    assert evals[-1]["held_ce_2x"] < evals[0]["held_ce_2x"] - 0.2
    losses = _train_losses(records)
    assert losses[8] < losses[1]


def test_reader_resume_after_a_crash_reproduces_the_next_steps_exactly(
    tiny_model_dir: Path, segments: np.ndarray, tmp_path: Path, monkeypatch: Any
) -> None:
    def fresh() -> Any:
        return load_backbone(str(tiny_model_dir), device="cpu")

    _, straight = train_reader(_reader_cfg(tmp_path / "a", steps=4), backbone=fresh(), segments=segments)
    calls = {"n": 0}
    real = reader.reconstruction_loss

    def dies_at_step_3(*args: Any, **kw: Any) -> Any:
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("killed")
        return real(*args, **kw)

    monkeypatch.setattr(reader, "reconstruction_loss", dies_at_step_3)
    with pytest.raises(RuntimeError, match="killed"):
        train_reader(_reader_cfg(tmp_path / "b", steps=4), backbone=fresh(), segments=segments)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path / "b" / ckpt.CHECKPOINT_NAME)["step"] == 2
    _, resumed = train_reader(
        _reader_cfg(tmp_path / "b", steps=4), resume=True, backbone=fresh(), segments=segments
    )
    a, b = _train_losses(straight), _train_losses(resumed)
    assert sorted(b) == [3, 4] and b[3] == a[3] and b[4] == a[4]  # exactly: same weights, Adam state and data
    with pytest.raises(ConfigError, match=r"other \['lora_r'\]"):
        train_reader(
            _reader_cfg(tmp_path / "b", steps=5, lora_r=4), resume=True, backbone=fresh(), segments=segments
        )
    with pytest.raises(ConfigError, match="exclude"):
        train_reader(_reader_cfg(tmp_path / "b"), resume=True, init_from="default", backbone=fresh())


def test_init_from_default_maps_the_shipped_names_onto_the_live_parameters(backbone: Any) -> None:
    """peft drops the adapter name when saving; ``--init-from default`` puts it back: every LoRA tensor of a live
    reader (the tiny model has the same layer names as SmolLM2, fewer layers) has a source tensor."""
    source = reader.init_source("default")
    lora = {k: v for k, v in source.items() if "lora_" in k}
    assert lora and all(".decompress.weight" in k for k in lora)
    assert {k.split(".")[-3] for k in lora} == {"lora_A", "lora_B"}
    assert all(v.dtype == torch.float32 for v in lora.values())
    assert source["sep"].shape == (576,) and "code.token_scale" in source
    codec = LatentCodec.create(backbone, LatentConfig(segment_len=L, max_slots=L, lora_r=2))
    live = {n for n, _ in codec.peft_model.named_parameters() if "lora_" in n}
    assert live and live <= set(lora)
    with pytest.raises(ConfigError, match="not a latent adapters directory"):
        reader.init_source(Path(__file__).parent)


def test_answer_from_z_loss_trains_the_reader_through_the_base_models_reading(
    tiny_model_dir: Path, backbone: Any, segments: np.ndarray, tmp_path: Path, answer_data: Path
) -> None:
    """The answer loss reads Z with the adapter and answers on the base model: gradients reach the adapter (only
    through the Z reading), and a reader run with qa_weight logs a held-out answer CE that falls."""
    codec = LatentCodec.create(backbone, LatentConfig(segment_len=32, max_slots=32, lora_r=4))
    zc = ZCompressor.from_codec(codec)
    example = from_z.AnswerExample("Who jumps?", (("Fox", TEXT),), "the quick brown fox")
    codes = codec.compress_batch([TEXT], ratio=2.0)
    with torch.no_grad():
        for name, p in codec.peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a non-zero adapter, so its reading matters
    loss = from_z.answer_loss(zc, codes, example)
    loss.backward()
    grads = [p.grad for n, p in codec.peft_model.named_parameters() if "lora_" in n]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    lora_b = {n: p.detach().clone() for n, p in codec.peft_model.named_parameters() if "lora_B" in n}
    with torch.no_grad():
        plain = float(from_z.answer_loss(zc, [TEXT], example))
        for name, p in codec.peft_model.named_parameters():
            if "lora_B" in name:
                p.zero_()
        identity = float(from_z.answer_loss(zc, codes, example))
        plain_identity = float(from_z.answer_loss(zc, [TEXT], example))
        for name, p in codec.peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(lora_b[name])
    # the adapter's reading changes the answer's loss; with plain-text context no adapter runs at all
    assert identity != pytest.approx(float(loss.detach()), abs=1e-4)
    assert plain == pytest.approx(plain_identity, abs=1e-5)

    cfg = _reader_cfg(
        tmp_path / "run",
        steps=8,
        batch_size=2,
        held=4,
        eval_every=8,
        qa_weight=1.0,
        qa_data=str(answer_data),
        qa_batch=2,
        qa_held=2,
    )
    _, records = train_reader(
        cfg, backbone=load_backbone(str(tiny_model_dir), device="cpu"), segments=segments
    )
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[-1]["held_answer_ce_2x"] < evals[0]["held_answer_ce_2x"]
    card = json.loads((tmp_path / "run" / "adapters" / "zcompress_config.json").read_text())
    assert card["training"]["answer_from_z"]["weight"] == 1.0
    assert card["training"]["answer_from_z"]["examples_seen"] == 16
    with pytest.raises(ConfigError, match="lacks"):
        from_z.load_answer_examples(tmp_path)


# ---- the infer adapter ---------------------------------------------------------------------------------------
def test_infer_resume_after_a_crash_reproduces_the_next_steps_exactly(
    tiny_model_dir: Path, tiny_latent_adapters: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    def codec() -> LatentCodec:
        return load_latent_codec(load_backbone(str(tiny_model_dir), device="cpu"), tiny_latent_adapters)

    first = codec()
    width = 2 * first.config.segment_len
    ids = first.backbone.tokenizer(TEXT * 30)["input_ids"]
    windows = np.asarray([ids[i : i + width] for i in range(0, len(ids) - width, 7)][:24], dtype=np.int64)
    cfg = InferConfig(
        steps=4, batch_size=2, lr=3e-3, lr_head=1e-2, warmup_steps=1, log_every=1, checkpoint_every=2
    )
    straight = train_infer(first, windows, cfg, run_dir=tmp_path / "a")
    calls = {"n": 0}
    real = infer._group_forward

    def dies_at_step_3(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args)

    monkeypatch.setattr(infer, "_group_forward", dies_at_step_3)
    with pytest.raises(RuntimeError, match="killed"):
        train_infer(codec(), windows, cfg, run_dir=tmp_path / "b")
    monkeypatch.undo()
    resumed = train_infer(codec(), windows, cfg, run_dir=tmp_path / "b", resume=True)
    a, b = _train_losses(straight), _train_losses(resumed)
    assert sorted(b) == [3, 4] and b[3] == a[3] and b[4] == a[4]
    assert a[4] < a[1]


# ---- zcompress train <task> ----------------------------------------------------------------------------------
def test_cli_prepares_data_trains_a_reader_and_writes_loadable_adapters(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"text": TEXT * 10}) + "\n" for _ in range(8)))
    npy = tmp_path / "segments.npy"
    prepare = ["train", "prepare", "--data", str(corpus), "--out", str(npy), "--segment-len", str(L)]
    assert zcompress([*prepare, "--model", str(tiny_model_dir)]) == 0
    rows = np.load(npy)
    assert rows.shape[1] == L and rows.dtype == np.uint16 and len(rows) > 40
    (tmp_path / "reader.yaml").write_text(
        f"segment_len: {L}\nlora_r: 2\nbatch_size: 4\nlr: 0.01\nwarmup_steps: 1\n"
    )
    run = tmp_path / "run"
    common = ["--config", str(tmp_path / "reader.yaml"), "--data", str(npy), "--model", str(tiny_model_dir)]
    common += ["--device", "cpu", "--held", "8", "--eval-every", "6", "--checkpoint-every", "3"]
    assert zcompress(["train", "reader", "--out", str(run), "--steps", "6", *common]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evals = [r for r in log if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 6]
    assert {"held_ce_2x", "held_ce_2x_shuffled", "held_ce_4x", "held_ce_4x_shuffled"} <= set(evals[0])
    zc = ZCompressor.from_pretrained(tiny_model_dir, adapters=run / "adapters", window=64)
    code = zc.compress(TEXT, mode="latent", exact=True)
    assert zc.decompress(code) == TEXT
    assert zc.latent_codec.config.training["steps"] == 6

    # a wider reader grown from the checkpoint starts where that run ended; from the (bf16) adapters, close to it
    end = evals[-1]["held_ce_2x"]
    for source, tol in ((run / "checkpoint.pt", 1e-4), (run / "adapters", 0.05)):
        out = tmp_path / f"from_{source.name}"
        grow = ["--steps", "0", "--lora-r", "4", "--init-from", str(source)]
        assert zcompress(["train", "reader", "--out", str(out), *grow, *common]) == 0
        first = json.loads((out / "log.jsonl").read_text().splitlines()[0])
        assert first["held_ce_2x"] == pytest.approx(end, abs=tol)
    assert evals[0]["held_ce_2x"] - end > 0.2  # so matching the trained run is not chance


def test_cli_errors_are_exit_code_2_with_the_reason(
    tiny_model_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    assert zcompress(["train", "reader", "--out", str(tmp_path), "--model", str(tiny_model_dir)]) == 2
    assert "data is required" in capsys.readouterr().err
    assert zcompress(["train", "reader", "--lr", "-1"]) == 2
    assert "ReaderConfig.lr" in capsys.readouterr().err
    assert zcompress(["train", "infer", "--data", "x.jsonl"]) == 2
    assert "InferConfig.adapters" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        zcompress(["train", "reader", "--device", "tpu"])
    (tmp_path / "bad.json").write_text(json.dumps({"lr_modules": 1}))
    assert zcompress(["train", "reader", "--config", str(tmp_path / "bad.json")]) == 2
    assert "lr_modules" in capsys.readouterr().err
