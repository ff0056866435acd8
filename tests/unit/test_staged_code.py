"""The staged recipe of the learned code (core/training/staged.py) on tiny random models of three architectures:
each stage moves only its own weights, the writer's loss ranks ids as ``quantize`` picks them, the adapters it
writes load through the facade, and a cut run resumes exactly. Plumbing, not quality."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import _CORPUS, build_tiny_model

TEXT = "The quick brown fox jumps over the lazy dog. Compression turns long text into a few tokens."


def _segments(backbone: Any, length: int = 32) -> Any:
    ids = backbone.tokenizer(_CORPUS * 10)["input_ids"]
    return np.asarray([ids[i : i + length] for i in range(0, len(ids) - length, 3)][:48])


def _config(out: Path, **over: Any) -> Any:
    from zcompress_integrations.core.training import StagedConfig

    values = dict(
        out=str(out),
        init_reader="none",
        segment_len=32,
        lora_r=2,
        codebook_size=16,
        codebooks=2,
        max_span=8,
        ratios=[2.0, 4.0],
        curriculum_every=2,
        kmeans_rows=16,
        reader_steps=3,
        writer_steps=3,
        batch_size=4,
        held=8,
        eval_every=3,
        checkpoint_every=2,
        log_every=1,
        lr=1e-2,
    )
    values.update(over)
    return StagedConfig(**values)


@pytest.fixture(scope="module", params=["llama", "qwen3", "gemma3"])
def trained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, list, dict]:
    """A 3 + 3 step run, with snapshots of the reader and writer weights at steps 0, 3 and 6."""
    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.training import staged

    model_dir = build_tiny_model(tmp_path_factory.mktemp(f"tiny_{request.param}"), arch=request.param)
    backbone = load_backbone(str(model_dir), device="cpu")
    out = tmp_path_factory.mktemp(f"staged_{request.param}")
    snapshots: dict[int, dict[str, Any]] = {}
    real_eval = staged._eval_row

    def spy(stages: Any, codec: Any, held: Any, cfg: Any, step: int) -> dict[str, Any]:
        snapshots[step] = staged._weights(codec)
        return real_eval(stages, codec, held, cfg, step)

    staged._eval_row = spy
    try:
        _, records = staged.train_staged(_config(out), backbone=backbone, segments=_segments(backbone))
    finally:
        staged._eval_row = real_eval
    return str(model_dir), out, records, snapshots


def _changed(before: dict[str, Any], after: dict[str, Any], part: str) -> bool:
    import torch

    names = [n for n in before if part in n]
    assert names
    return any(not torch.equal(before[n], after[n]) for n in names)


def test_each_stage_moves_only_its_weights(trained: tuple[str, Path, list, dict]) -> None:
    _, _, records, snap = trained
    assert sorted(snap) == [0, 3, 6]
    # stage 1 (reader): reader LoRA moves; compress LoRA, to_z, stop head and codebook stay
    assert _changed(snap[0], snap[3], ".decompress.")
    for part in (".compress.", "code.to_z", "code.stop", "code.codebook"):
        assert not _changed(snap[0], snap[3], part), part
    # stage 2 (writer): compress LoRA and heads move; reader and codebook stay
    for part in (".compress.", "code.to_z", "code.stop"):
        assert _changed(snap[3], snap[6], part), part
    for part in (".decompress.", "code.codebook"):
        assert not _changed(snap[3], snap[6], part), part
    train = [r for r in records if r["kind"] == "train"]
    assert [r["stage"] for r in train] == ["reader"] * 3 + ["writer"] * 3
    assert all(math.isfinite(r["loss"]) for r in train)
    assert all(0 <= r["id_exact"] <= 1 for r in train[3:])


def test_diagnostics_cover_teacher_and_inference_paths(trained: tuple[str, Path, list, dict]) -> None:
    _, _, records, _ = trained
    (vocab,) = [r for r in records if r["kind"] == "vocabulary"]
    assert vocab["vectors"] > 16  # more span vectors than codebook rows
    (fit,) = [r for r in records if r["kind"] == "writer_fit"]  # once, at the writer's first step
    at = records.index(fit)
    assert (records[at - 1]["kind"], records[at - 1]["step"]) == ("eval", 3)  # the reader stage's last row
    assert (records[at + 1]["stage"], records[at + 1]["step"]) == ("writer", 4)
    assert math.isfinite(fit["r2"]) and fit["r2"] <= 1
    evals = {r["step"]: r for r in records if r["kind"] == "eval"}
    assert sorted(evals) == [0, 3, 6]
    for r in evals.values():
        for key in (
            "teacher_ce_true_2x",
            "teacher_ce_other_4x",
            "teacher_usage_ppl_2x",
            "writer_id_exact_4x",
        ):
            assert key in r
        assert 1 <= r["teacher_usage_ppl_2x"] <= 16
    # the inference path (the writer's own spans and ids) only once the writer has trained
    assert "ce_true_2x" not in evals[3] and "ce_true_2x" in evals[6]
    # the reader is frozen in stage 2: its teacher-path CE is unchanged
    assert evals[6]["teacher_ce_true_2x"] == evals[3]["teacher_ce_true_2x"]


def test_writer_loss_ranks_ids_as_quantize_picks_them() -> None:
    """Logits ``2 z.B - |B|^2`` peak at the nearest row: a Z vector sitting on the teacher's rows has low loss and
    is counted exact; moving it to other rows raises the loss and it no longer counts."""
    import torch

    from zcompress_integrations.core.codes.learned import quantize
    from zcompress_integrations.core.training.staged import writer_loss

    gen = torch.Generator().manual_seed(0)
    book = torch.randn(2, 32, 8, generator=gen)
    book[1] *= 0.1  # a residual codebook is finer than the first: greedy residual VQ recovers the pair
    target = torch.stack([torch.randint(0, 32, (20,), generator=gen) for _ in range(2)], -1)
    on = book[0][target[:, 0]] + book[1][target[:, 1]]
    assert torch.equal(quantize(on, book)[1], target)
    loss_on, exact_on = writer_loss(on, target, book)
    off = book[0][(target[:, 0] + 1) % 32] + book[1][(target[:, 1] + 1) % 32]
    loss_off, exact_off = writer_loss(off, target, book)
    assert exact_on == 1.0 and exact_off < 0.5 and loss_on < loss_off


def test_teacher_ids_match_the_vocabulary(tiny_model_dir: Path) -> None:
    """The teacher ids are the residual-VQ rows of the spans' token-group embeddings."""
    import torch

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.codes.learned import quantize
    from zcompress_integrations.core.codes.token_groups import TokenGroupCode
    from zcompress_integrations.core.training.staged import span_embeddings, teacher_ids

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    teacher = TokenGroupCode(backbone.model.get_input_embeddings(), backbone.text_vocab_size, 8)
    seg = torch.as_tensor(_segments(backbone)[:2])
    spans = [[2] * 16, [1, 3, 4, 8, 8, 8]]
    emb = span_embeddings(teacher, seg, spans)
    assert [e.shape[0] for e in emb] == [16, 6]
    first = teacher.group_embeddings([seg[0, :2].tolist()]).float()
    torch.testing.assert_close(emb[0][0], first[0])
    book = torch.randn(2, 16, emb[0].shape[1])
    ids = teacher_ids(book, emb)
    assert torch.equal(ids[1], quantize(emb[1], book)[1])


def test_fit_to_z_writes_the_least_squares_map(tiny_model_dir: Path) -> None:
    """After the fit, ``to_z`` of the span-end hidden states reproduces the R^2 the fit reports, and no other map
    the regression could pick (here: the fitted one nudged) fits better."""
    import torch

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.codes.token_groups import TokenGroupCode, group_starts
    from zcompress_integrations.core.training import staged

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    backbone, codec, _ = staged._setup(_config(Path("unused")), backbone)
    teacher = TokenGroupCode(backbone.model.get_input_embeddings(), backbone.text_vocab_size, 8)
    rows = torch.as_tensor(_segments(backbone)[:16])
    staged.init_vocabulary(codec, teacher, rows, [2.0], 8, 0)
    r2 = staged.fit_to_z(codec, teacher, rows, [2.0], 8)
    code = codec.code

    def r_squared() -> float:
        spans = staged.teacher_spans(codec, rows, 2.0, 8)
        ids = staged.teacher_ids(code.codebook, staged.span_embeddings(teacher, rows, spans))
        with torch.no_grad(), codec.adapter(staged.COMPRESS):
            hidden = code.compress_hidden(codec, rows, 2.0)
            ends = [[a + g - 1 for a, g in zip(group_starts(s), s, strict=True)] for s in spans]
            pred = torch.cat([code.to_z(hidden[b, e]) for b, e in enumerate(ends)]).double()
        y = torch.cat([code.embeddings(code.ids_of(i)) for i in ids]).double()
        return float(1 - (y - pred).pow(2).sum() / (y - y.mean(0)).pow(2).sum())

    assert r_squared() == pytest.approx(r2, abs=1e-3) and r2 > 0
    with torch.no_grad():
        code.to_z.bias.add_(0.05)
    assert r_squared() < r2


def test_adapters_load_and_round_trip(trained: tuple[str, Path, list, dict]) -> None:
    from zcompress_integrations import ZCompressor

    model_dir, out, _, _ = trained
    zc = ZCompressor.from_pretrained(model_dir, adapters=out / "adapters", window=64)
    assert zc.latent_codec.config.code == "learned"
    code = zc.compress(TEXT, mode="latent", ratio=2.0)
    assert code.k == 16**2 and all(0 <= z < 256 for z in code.z_ids)
    assert isinstance(zc.decompress(code), str)
    exact = zc.compress(TEXT, mode="latent", ratio=4.0, exact=True)
    assert zc.decompress(type(exact).from_bytes(exact.to_bytes())) == TEXT


def test_resume_is_exact(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A run cut inside stage 1 and resumed ends where the uncut run ends (both stages)."""
    import torch
    from safetensors.torch import load_file

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.training.staged import train_staged

    rows = _segments(load_backbone(str(tiny_model_dir), device="cpu"))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train_staged(_config(whole, eval_every=100), backbone=load_backbone(str(tiny_model_dir)), segments=rows)
    train_staged(
        _config(cut, reader_steps=2, writer_steps=0, eval_every=100),
        backbone=load_backbone(str(tiny_model_dir)),
        segments=rows,
    )
    train_staged(
        _config(cut, eval_every=100), resume=True, backbone=load_backbone(str(tiny_model_dir)), segments=rows
    )
    a = load_file(str(whole / "adapters" / "latent_modules.safetensors"))
    b = load_file(str(cut / "adapters" / "latent_modules.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    from zcompress_integrations.errors import ConfigError

    with pytest.raises(ConfigError, match="ratios"):
        _config(tmp_path, ratios=[32.0])
    with pytest.raises(ConfigError, match="kmeans_rows"):
        _config(tmp_path, kmeans_rows=0)
    with pytest.raises(ConfigError, match="writer_steps"):
        _config(tmp_path, writer_steps=-1)
