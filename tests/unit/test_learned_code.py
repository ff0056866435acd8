"""The learned code (core/codes/learned.py) and its trainer (core/training/compressor.py) on tiny random models of
three architectures: plumbing and contracts (finite vocabulary, model-chosen lengths, consecutive positions, exact
round trips, resumable training), not quality."""

from __future__ import annotations

import json
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
    from zcompress_integrations.core.training import CompressorConfig

    values = dict(
        out=str(out),
        init_reader="none",
        segment_len=32,
        lora_r=2,
        codebook_size=16,
        max_span=8,
        ratios=[2.0, 4.0],
        curriculum_every=2,
        vq_start=2,
        reader_start=1,
        steps=4,
        batch_size=4,
        held=8,
        eval_every=4,
        checkpoint_every=2,
        log_every=1,
    )
    values.update(over)
    return CompressorConfig(**values)


@pytest.fixture(scope="module", params=["llama", "qwen3", "gemma3"])
def trained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, list]:
    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.training.compressor import train_compressor

    model_dir = build_tiny_model(tmp_path_factory.mktemp(f"tiny_{request.param}"), arch=request.param)
    backbone = load_backbone(str(model_dir), device="cpu")
    out = tmp_path_factory.mktemp(f"learned_{request.param}")
    _, records = train_compressor(_config(out), backbone=backbone, segments=_segments(backbone))
    return str(model_dir), out, records


def test_training_logs_losses_and_diagnostics(trained: tuple[str, Path, list]) -> None:
    _, out, records = trained
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["vq"] >= 0 for r in train)
    assert train[0]["vq"] == 0 and train[-1]["vq"] > 0  # quantised from vq_start=2 on
    for (
        r
    ) in train:  # the contrast term: own Z must beat the next row's Z by the margin (1 nat), else it costs
        assert math.isfinite(r["ce_gap"]) and r["contrast"] == pytest.approx(
            max(0.0, 1.0 - r["ce_gap"]), abs=2e-4
        )
    (diag,) = [r for r in records if r["kind"] == "eval"]
    for key in ("ratio_2x", "ce_true_2x", "ce_other_4x", "usage_ppl_2x", "spearman_4x"):
        assert key in diag
    assert 1 <= diag["usage_ppl_2x"] <= 16
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged == records


def test_codes_are_finite_vocabulary_and_round_trip(trained: tuple[str, Path, list]) -> None:
    from zcompress_integrations import ZCompressor

    model_dir, out, _ = trained
    zc = ZCompressor.from_pretrained(model_dir, adapters=out / "adapters", window=64)
    assert zc.latent_codec.config.code == "learned"
    code = zc.compress(TEXT, mode="latent", ratio=2.0)
    assert code.k == 16 and all(0 <= z < 16 for z in code.z_ids)
    # 4 bits per Z-token in the stored ids, whatever the text
    assert code.z_ids and sum(code.segments) == len(code.z_ids)
    assert isinstance(zc.decompress(code), str)
    exact = zc.compress(TEXT, mode="latent", ratio=4.0, exact=True)
    assert zc.decompress(exact) == TEXT
    restored = type(code).from_bytes(exact.to_bytes())
    assert zc.decompress(restored) == TEXT


def test_the_reader_writes_each_segments_stored_length(
    trained: tuple[str, Path, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Learned Z ids do not say how many text tokens a segment holds, so the code stores it, and the reader writes
    exactly that many, its end token banned; the old container (no counts) still decodes, stopping at the end
    token. Token-group codes store nothing more (their ids give the lengths)."""
    import dataclasses

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.core import backbone as backbone_mod

    model_dir, out, _ = trained
    zc = ZCompressor.from_pretrained(model_dir, adapters=out / "adapters", window=64)
    codec = zc.latent_codec
    text = TEXT * 4
    code = zc.compress(text, mode="latent", ratio=2.0)
    assert code.segment_tokens == tuple(len(s) for s in codec.segments(text.encode()))
    assert len(code.segment_tokens) == len(code.segments) > 1
    calls: list[dict] = []
    real = backbone_mod.decode_batch

    def spy(*args: object, **kwargs: object) -> list[list[int]]:
        out = real(*args, **kwargs)
        calls.append(
            {"limits": kwargs["limits"], "banned": kwargs["banned"], "written": [len(t) for t in out]}
        )
        return out

    monkeypatch.setattr(backbone_mod, "decode_batch", spy)
    zc.decompress(type(code).from_bytes(code.to_bytes()))
    assert sorted(n for c in calls for n in c["written"]) == sorted(code.segment_tokens)
    assert all(b == [codec.end_token] for c in calls for b in c["banned"])
    calls.clear()
    old = dataclasses.replace(code, segment_tokens=())
    assert len(old.to_bytes()) == len(code.to_bytes()) - len(code.segments)
    assert isinstance(zc.decompress(type(code).from_bytes(old.to_bytes())), str)
    assert all(b == [] for c in calls for b in c["banned"])


def test_only_a_learned_code_is_calibrated(tiny_latent_compressor: Any) -> None:
    import torch

    from zcompress_integrations.core.training.calibrate import stop_offsets
    from zcompress_integrations.errors import ConfigError

    with pytest.raises(ConfigError, match="only a learned code has a stop head"):
        stop_offsets(tiny_latent_compressor.latent_codec, torch.zeros(2, 8, dtype=torch.long), [2.0])


def test_token_group_codes_store_no_segment_lengths(tiny_latent_compressor: Any) -> None:
    code = tiny_latent_compressor.compress(TEXT * 4, mode="latent", ratio=2.0)
    assert len(code.segments) > 1 and code.segment_tokens == ()
    assert code.to_bytes()[3] & 4 == 0  # the container's flags: no per-segment counts


def test_z_positions_are_consecutive(trained: tuple[str, Path, list]) -> None:
    from zcompress_integrations import ZCompressor

    model_dir, out, _ = trained
    zc = ZCompressor.from_pretrained(model_dir, adapters=out / "adapters", window=64)
    code = zc.compress(TEXT * 3, mode="latent", ratio=2.0)
    offsets, span = zc.latent_codec.prompt_offsets(code)
    assert offsets == list(range(len(code.z_ids))) and span == len(code.z_ids)


def test_lengths_are_the_models_choice(trained: tuple[str, Path, list]) -> None:
    """The stop head, not a formula, sets the Z count: a stop head pushed to always stop gives one Z per token, one
    pushed never to stop gives one per ``max_span`` tokens."""
    import torch

    from zcompress_integrations import ZCompressor

    model_dir, out, _ = trained
    zc = ZCompressor.from_pretrained(model_dir, adapters=out / "adapters", window=64)
    code = zc.latent_codec.code
    tokens = zc.latent_codec.segments(TEXT.encode())[0]
    with torch.no_grad():
        code.stop.bias.fill_(50.0)
        always = code.write(zc.latent_codec, [tokens], 2.0, 8, False)[0]
        code.stop.bias.fill_(-50.0)
        code.stop.weight.zero_()
        never = code.write(zc.latent_codec, [tokens], 2.0, 8, False)[0]
    assert len(always) == len(tokens)
    assert len(never) == -(-len(tokens) // 8)


def test_calibration_sets_the_mean_length_and_keeps_old_codes_valid(
    trained: tuple[str, Path, list], tmp_path: Path
) -> None:
    """``zcompress train calibrate`` biases the stop head per ratio so that training segments come out at the
    requested ratio through the shipped write path; the adapters' files (and so the fingerprint, and the codes made
    before) stay as they were, and the source directory is left alone."""
    from zcompress_integrations import ZCompressor
    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.training.calibrate import calibrate
    from zcompress_integrations.core.training.cli import main
    from zcompress_integrations.core.training.config import CalibrateConfig

    model_dir, out, _ = trained
    backbone = load_backbone(model_dir, device="cpu")
    rows = _segments(backbone)
    before = ZCompressor.from_pretrained(model_dir, adapters=out / "adapters", window=64)
    old_code = before.compress(TEXT * 3, mode="latent", ratio=2.0)
    cfg = CalibrateConfig(
        adapters=str(out / "adapters"), out=str(tmp_path / "cal"), ratios=[2.0, 4.0], skip=8
    )
    written = calibrate(cfg, backbone=backbone, segments=rows)
    config = json.loads((written / "zcompress_config.json").read_text())
    assert set(config["stop_offsets"]) == {"2", "4"}
    assert not json.loads((out / "adapters" / "zcompress_config.json").read_text()).get("stop_offsets")
    zc = ZCompressor.from_pretrained(model_dir, adapters=written, window=64)
    codec = zc.latent_codec
    assert codec.fingerprint == before.latent_codec.fingerprint
    assert zc.decompress(old_code) == before.decompress(old_code)
    calibrated_rows = [list(map(int, r)) for r in rows[8 : 8 + cfg.rows]]
    for ratio in (2.0, 4.0):
        ids = codec.code.write(codec, calibrated_rows, ratio, 8, False)
        achieved = sum(map(len, calibrated_rows)) / sum(map(len, ids))
        assert abs(achieved / ratio - 1) < 0.1, (ratio, achieved)
    # jsonl data: paragraphs cut as compress cuts them (a short last segment each), so that texts like them come
    # out at the requested ratio through compress itself
    sentences = _CORPUS.split(". ")
    paragraphs = [". ".join(sentences[i % 4 :] + sentences[: i % 4]) * (1 + i % 3) for i in range(12)]
    data = tmp_path / "train.jsonl"
    data.write_text(
        "".join(json.dumps({"text": "\n".join(paragraphs[i : i + 3])}) + "\n" for i in (0, 3, 6, 9))
    )
    cut = CalibrateConfig(
        adapters=str(out / "adapters"), data=[str(data)], out=str(tmp_path / "cut"), ratios=[2.0], skip=0
    )
    zc_cut = ZCompressor.from_pretrained(model_dir, adapters=calibrate(cut, backbone=backbone), window=64)
    recorded = json.loads((tmp_path / "cut" / "zcompress_config.json").read_text())["training"]
    # every segment of every paragraph, as compress cuts them (not the records packed into full rows)
    cut_segments = sum(len(zc_cut.latent_codec.segments(p.encode())) for p in paragraphs)
    assert recorded["stop_calibration"] == {
        "segments": cut_segments,
        "cut": "paragraphs",
        "data": [str(data)],
    }
    codes = zc_cut.compress_batch(paragraphs, mode="latent", ratio=2.0)
    assert any(len(c.segments) > 1 for c in codes)  # more than one segment per paragraph: the cut matters
    achieved = sum(c.text_tokens for c in codes) / sum(c.z_tokens for c in codes)
    assert abs(achieved / 2.0 - 1) < 0.1, achieved
    # between calibrated ratios the bias interpolates in log2(ratio); outside, the nearest one holds
    low, high = config["stop_offsets"]["2"], config["stop_offsets"]["4"]
    assert codec.code.stop_offset(2.0 * 2**0.5) == pytest.approx((low + high) / 2)
    assert codec.code.stop_offset(1.5) == pytest.approx(low) and codec.code.stop_offset(
        16.0
    ) == pytest.approx(high)
    # bad settings and bad offsets in a config are refused with what to do
    assert main(["calibrate", "--adapters", str(out / "adapters"), "--ratios", "0.5"]) == 2
    from zcompress_integrations.core.latent import LatentConfig
    from zcompress_integrations.errors import ConfigError

    with pytest.raises(ConfigError, match="calibrate"):
        LatentConfig(code="learned", stop_offsets={"fast": 1.0})


@pytest.mark.parametrize(("sampling", "qa_weight"), [(0.0, 0.0), (0.5, 0.0), (0.0, 1.0)])
def test_resume_is_exact(
    tmp_path: Path, tiny_model_dir: Path, answer_data: Path, sampling: float, qa_weight: float
) -> None:
    """A run cut at step 2 and resumed ends where the uncut run ends (same weights, same log), with scheduled
    sampling's draws and the answer examples' draws too."""
    import torch
    from safetensors.torch import load_file

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.training.compressor import train_compressor

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    rows = _segments(backbone)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    over = dict(eval_every=100, sampling=sampling, qa_weight=qa_weight, qa_data=str(answer_data), qa_held=1)
    train_compressor(_config(whole, **over), backbone=backbone, segments=rows)
    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    train_compressor(_config(cut, steps=2, **over), backbone=backbone, segments=rows)
    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    train_compressor(_config(cut, **over), resume=True, backbone=backbone, segments=rows)
    a = load_file(str(whole / "adapters" / "latent_modules.safetensors"))
    b = load_file(str(cut / "adapters" / "latent_modules.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_answer_from_z_term_trains_the_reader_on_the_writers_codes(
    tmp_path: Path, tiny_model_dir: Path, answer_data: Path
) -> None:
    """With ``qa_weight`` each step from ``reader_start`` adds the answer-from-Z loss over contexts the current
    writer codes: logged per step, its held-apart CE at every curriculum ratio before and after, on the card."""
    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.training.compressor import train_compressor

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    cfg = _config(
        tmp_path / "qa",
        steps=6,
        lr=3e-3,
        eval_every=6,
        qa_weight=1.0,
        qa_data=str(answer_data),
        qa_batch=2,
        qa_held=2,
    )
    _, records = train_compressor(cfg, backbone=backbone, segments=_segments(backbone))
    train = [r for r in records if r["kind"] == "train"]
    assert "answer" not in train[0] and all(r["answer"] > 0 for r in train[1:])  # from reader_start = 1
    rows = [r for r in records if r["kind"] == "answers"]
    assert [r["step"] for r in rows] == [0, 6]
    assert set(rows[0]) == {"kind", "step", "held_answer_ce_2x", "held_answer_ce_4x"}
    assert rows[-1]["held_answer_ce_2x"] < rows[0]["held_answer_ce_2x"]
    card = json.loads((tmp_path / "qa" / "adapters" / "zcompress_config.json").read_text())
    assert card["training"]["answer_from_z"]["examples_seen"] == 2 * 5


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    from zcompress_integrations.errors import ConfigError

    with pytest.raises(ConfigError, match="ratios"):
        _config(tmp_path, ratios=[32.0])
    with pytest.raises(ConfigError, match="codebook_size"):
        _config(tmp_path, codebook_size=1)
    with pytest.raises(ConfigError, match="contrast_weight"):
        _config(tmp_path, contrast_weight=-1.0)
    with pytest.raises(ConfigError, match="sampling"):
        _config(tmp_path, sampling=1.5)
    with pytest.raises(ConfigError, match="CompressorConfig.qa_data"):
        _config(tmp_path, qa_weight=1.0)


def test_scheduled_sampling_feeds_the_readers_own_predictions(tmp_path: Path, tiny_model_dir: Path) -> None:
    """With share 1 every input text token is the reader's greedy prediction of it from the true prefix; with 0 the
    true text; training logs the share of inputs that are not the true token, growing over the ramp."""
    import torch

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.codes.learned import COMPRESS
    from zcompress_integrations.core.latent import READER
    from zcompress_integrations.core.training.compressor import (
        reader_logits,
        sampled_inputs,
        train_compressor,
    )

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    cfg = _config(tmp_path / "ss", steps=4, sampling=1.0, sampling_ramp=4, eval_every=100)
    codec, records = train_compressor(cfg, backbone=backbone, segments=_segments(backbone))
    shares = [r["sampled"] for r in records if r["kind"] == "train"]
    assert shares[0] < shares[-1] and 0 < shares[-1] <= 1  # ramp: 1/4 of the tokens at step 0, all at step 3
    seg = torch.as_tensor(_segments(backbone)[:3])
    with torch.no_grad(), codec.adapter(COMPRESS):
        hidden = codec.code.compress_hidden(codec, seg, 2.0)
    z_rows = [codec.code.to_z(hidden[b, 1::2]) for b in range(3)]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad(), codec.adapter(READER):
        greedy = reader_logits(codec, seg, z_rows)[:, :-1].argmax(-1)
        assert torch.equal(sampled_inputs(codec, seg, z_rows, 1.0, gen), greedy)
        assert torch.equal(sampled_inputs(codec, seg, z_rows, 0.0, gen), seg)
        half = sampled_inputs(codec, seg, z_rows, 0.5, gen)
    assert bool(((half == seg) | (half == greedy)).all())
    assert not torch.equal(greedy, seg)  # a random reader does not already predict the text


def test_compressed_documents_fit_where_their_text_does_not(trained: tuple[str, Path, list]) -> None:
    """Documents whose text overflows the backbone's window (1,024 positions) fit as learned codes at >= 4x: a
    code of n Z-tokens takes n positions. The same documents as text are refused before any forward pass."""
    import torch

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.errors import ConfigError

    model_dir, out, _ = trained
    zc = ZCompressor.from_pretrained(model_dir, adapters=out / "adapters", window=64)
    window = zc.backbone.model.config.max_position_embeddings
    docs = [f"Document {i}. " + _CORPUS * 2 for i in range(12)]
    assert sum(zc.count_tokens(d) for d in docs) > window
    with pytest.raises(ConfigError, match="context"):
        zc.generate("What are these about?", context=docs, max_new_tokens=4)
    with (
        torch.no_grad()
    ):  # long spans, whatever the 4-step stop head learned: this tests positions, not quality
        zc.latent_codec.code.stop.bias.fill_(-50.0)
        zc.latent_codec.code.stop.weight.zero_()
    codes = zc.compress_batch(docs, mode="latent", ratio=4.0)
    assert sum(c.text_tokens for c in codes) / sum(c.z_tokens for c in codes) >= 4
    assert sum(zc.latent_codec.prompt_offsets(c)[1] for c in codes) < window
    answer = zc.generate("What are these about?", context=codes, max_new_tokens=4)
    assert isinstance(answer.text, str)


def test_span_count_is_the_stop_heads_expected_count() -> None:
    """A segment gets round(sum of stop probabilities) spans, at the highest-scoring tokens, never longer than
    max_span: a head whose probabilities average 1/ratio gives the requested ratio even when none passes 0.5."""
    import math

    from zcompress_integrations.core.codes.learned import span_ends

    quarter = math.log(0.25 / 0.75)  # every token: stop probability 0.25
    ends = span_ends([quarter] * 64, 64, 16)
    assert len(ends) == 16 and ends[-1] == 63
    assert all(0 < b - a <= 16 for a, b in zip([-1, *ends], ends, strict=False))
    # where the head scores highest, spans end there
    logits = [-4.0] * 32
    for t in (5, 12, 20, 31):  # expected count round(4 x 0.98 + 28 x 0.018) = 4
        logits[t] = 4.0
    assert span_ends(logits, 32, 16) == [5, 12, 20, 31]
    # max_span wins over the scores: one high score in 40 tokens still needs 3 spans of <= 16
    logits = [-9.0] * 40
    logits[2] = 9.0
    ends = span_ends(logits, 40, 16)
    assert len(ends) == 3 and all(0 < b - a <= 16 for a, b in zip([-1, *ends], ends, strict=False))
    assert span_ends([], 0, 16) == []
    # a count asked for: the highest-scoring places for that many ends, still within 1..length and max_span
    logits = [-4.0] * 32
    for t, score in ((5, 3.0), (12, 4.0), (20, 2.0), (31, 4.0)):
        logits[t] = score
    assert span_ends(logits, 32, 16, count=3) == [12, 20, 31]
    assert span_ends(logits, 32, 16, count=2) == [15, 31]  # an end at 12 would leave a 19-token span
    assert len(span_ends(logits, 32, 16, count=1)) == 2  # no span over 16 tokens
    assert len(span_ends(logits, 32, 16, count=99)) == 32


def test_reader_ce_joins_the_loss_at_ce_start(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Before ``ce_start`` the loss is the writer's terms alone (stage a: learn the embeddings the reader reads);
    the reader's CE is logged on every row, and counts in the loss from ``ce_start`` on."""
    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.training.compressor import train_compressor
    from zcompress_integrations.errors import ConfigError

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    cfg = _config(tmp_path / "late_ce", ce_start=2, vq_start=100, eval_every=100)
    _, records = train_compressor(cfg, backbone=backbone, segments=_segments(backbone))
    train = [r for r in records if r["kind"] == "train"]
    others = ("contrast", "stop", "budget", "match", "vq")
    for r in train:
        assert math.isfinite(r["ce"]) and r["ce"] > 0
        # the row of step s logs optimizer step s - 1
        ce_in_loss = r["ce"] if r["step"] > cfg.ce_start else 0.0
        assert r["loss"] == pytest.approx(ce_in_loss + sum(r[k] for k in others), abs=1e-3)
    with pytest.raises(ConfigError, match="ce_weight"):
        _config(tmp_path, ce_weight=-1.0)


def test_init_from_starts_from_another_runs_weights(
    tmp_path: Path, tiny_model_dir: Path, tiny_latent_adapters: Path
) -> None:
    """``init_from`` (an adapters directory or a checkpoint) loads the other run's weights, codebook included:
    a run of 0 steps from them exports what it loaded, and no k-means overwrites the codebook at ``vq_start`` 0."""
    import torch
    from safetensors.torch import load_file

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.training.compressor import train_compressor
    from zcompress_integrations.errors import ConfigError

    def load(out: Path) -> dict[str, Any]:
        found = load_file(str(out / "adapters" / "latent_modules.safetensors"))
        for adapter in ("compress", "decompress"):
            found |= load_file(str(out / "adapters" / adapter / "adapter_model.safetensors"))
        return found

    rows = _segments(load_backbone(str(tiny_model_dir), device="cpu"))
    first = tmp_path / "first"
    train_compressor(
        _config(first, eval_every=100),
        backbone=load_backbone(str(tiny_model_dir), device="cpu"),
        segments=rows,
    )
    source = load(first)
    for start in (first / "adapters", first / "checkpoint.pt"):
        out = tmp_path / start.name
        cfg = _config(out, steps=0, vq_start=0, eval_every=100)
        train_compressor(
            cfg, init_from=start, backbone=load_backbone(str(tiny_model_dir), device="cpu"), segments=rows
        )
        loaded = load(out)
        recorded = json.loads((out / "adapters" / "zcompress_config.json").read_text())["training"]
        assert recorded["init_from"] == str(start)  # the adapters say which run they went on from
        if start.name == "adapters":  # and still do after a resumed continuation (run 14's card lost it)
            went_on = tmp_path / "went_on"
            for steps, how in ((1, {"init_from": start}), (2, {"resume": True})):
                train_compressor(
                    _config(went_on, steps=steps, vq_start=0, eval_every=100, checkpoint_every=1),
                    backbone=load_backbone(str(tiny_model_dir), device="cpu"),
                    segments=rows,
                    **how,
                )
            resumed = json.loads((went_on / "adapters" / "zcompress_config.json").read_text())["training"]
            assert resumed["init_from"] == str(start) and resumed["steps"] == 2
        assert loaded.keys() == source.keys()
        for key in source:
            torch.testing.assert_close(loaded[key], source[key], rtol=0, atol=0, msg=f"{start}: {key}")

    # fewer codebooks than the source: the first ones kept (residual VQ's coarse code), and the continuation logs
    # where it starts from at step 0; more codebooks than the source are refused
    two = tmp_path / "two"
    train_compressor(
        _config(two, codebooks=2, steps=1, vq_start=0, eval_every=100),
        backbone=load_backbone(str(tiny_model_dir), device="cpu"),
        segments=rows,
    )
    _, records = train_compressor(
        _config(tmp_path / "one", codebooks=1, steps=0, vq_start=0, eval_every=100),
        init_from=two / "adapters",
        backbone=load_backbone(str(tiny_model_dir), device="cpu"),
        segments=rows,
    )
    torch.testing.assert_close(load(tmp_path / "one")["codebook"], load(two)["codebook"][:1], rtol=0, atol=0)
    start_rows = [r for r in records if r["kind"] == "eval" and r["step"] == 0]
    assert len(start_rows) == 1 and math.isfinite(start_rows[0]["ce_true_2x"])
    with pytest.raises(ConfigError, match="does not fit"):
        train_compressor(
            _config(tmp_path / "three", codebooks=3, steps=0),
            init_from=two / "adapters",
            backbone=load_backbone(str(tiny_model_dir), device="cpu"),
            segments=rows,
        )
    with pytest.raises(ConfigError, match="does not fit"):
        train_compressor(
            _config(tmp_path / "k32", codebook_size=32, steps=0),
            init_from=first / "adapters",
            backbone=load_backbone(str(tiny_model_dir), device="cpu"),
            segments=rows,
        )
    with pytest.raises(ConfigError, match="learned-code adapters"):
        train_compressor(
            _config(tmp_path / "tg", steps=0),
            init_from=tiny_latent_adapters,
            backbone=load_backbone(str(tiny_model_dir), device="cpu"),
            segments=rows,
        )
    with pytest.raises(ConfigError, match="exclude each other"):
        train_compressor(_config(tmp_path / "both"), resume=True, init_from=first / "adapters")


def test_unused_rows_restart_from_distinct_recent_vectors() -> None:
    """Dead codebook rows take different recent vectors while there are enough (run 8 drew ~2,000 rows from 256
    vectors, so most repeated each other); with fewer vectors than dead rows, the repeats are not exact copies."""
    import torch

    from zcompress_integrations.core.training.compressor import restart_rows

    gen = torch.Generator().manual_seed(0)
    codebook = torch.nn.Parameter(torch.zeros(8, 4))
    used = torch.tensor([1.0, 0, 0, 0, 0, 0, 2, 0])
    vectors = torch.randn(6, 4, generator=gen)
    assert restart_rows(codebook, used, vectors) == 6
    dead = codebook.detach()[used == 0]
    assert len({tuple(r.tolist()) for r in dead}) == 6  # all different
    assert all(any(torch.equal(r, v) for v in vectors) for r in dead)  # each one of the recent vectors
    assert codebook.detach()[used > 0].abs().sum() == 0  # used rows untouched

    few = torch.randn(2, 4, generator=gen)
    codebook = torch.nn.Parameter(torch.zeros(8, 4))
    assert restart_rows(codebook, used, few) == 6
    assert len({tuple(r.tolist()) for r in codebook.detach()[used == 0]}) == 6
    assert restart_rows(codebook, torch.ones(8), few) == 0


def test_restarts_keep_to_the_schedule_and_wait_for_counts(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unused rows restart only at scheduled checkpoints (run 9's time-limited stop restarted 3,088 rows on one
    step's counts), and only when the window holds enough quantised vectors to call a row unused."""
    import logging

    import torch

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.training.compressor import enough_counts, train_compressor

    assert not enough_counts(torch.ones(16))  # 16 vectors for 16 rows: a zero count says little
    assert enough_counts(torch.full((16,), 2.0))
    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    cfg = _config(tmp_path / "restarts", steps=3, vq_start=0, checkpoint_every=2, eval_every=100)
    with caplog.at_level(logging.INFO, logger="zcompress_integrations.core.training.compressor"):
        train_compressor(cfg, backbone=backbone, segments=_segments(backbone))
    restarts = [r.getMessage() for r in caplog.records if "unused codebook rows restarted" in r.getMessage()]
    assert [m.split(":")[0] for m in restarts] == ["step 2"]  # not at step 3, the last (unscheduled) one


def test_usage_perplexity_counts_the_rows_in_use() -> None:
    from zcompress_integrations.core.training.compressor import usage_perplexity

    assert usage_perplexity([0, 1, 2, 3] * 5) == 4.0
    assert usage_perplexity([7] * 9) == 1.0
    assert usage_perplexity([]) == 1.0
    assert 1.0 < usage_perplexity([0, 0, 0, 1]) < 2.0


def test_decode_batch_never_writes_a_banned_token(tiny_model_dir: Path) -> None:
    import torch

    from zcompress_integrations.core.backbone import decode_batch, load_backbone

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    ids = torch.tensor(backbone.tokenizer("The quick brown fox")["input_ids"])
    prefix = backbone.model.get_input_embeddings()(ids).detach()
    vocab = backbone.text_vocab_size

    def run(banned: list[list[int]] | None) -> list[list[int]]:
        with torch.inference_mode():
            return decode_batch(backbone.model, [prefix, prefix], 12, vocab=vocab, eos=set(), banned=banned)

    free = run(None)
    favourite = max(set(free[0]), key=free[0].count)
    held = run([[favourite], []])
    assert favourite not in held[0] and len(held[0]) == 12
    assert held[1] == free[1]  # the other row is untouched


def test_decode_batch_logits_hook_rewrites_every_steps_logits(tiny_model_dir: Path) -> None:
    """The hook sees each step's ``[B, V]`` logits; rows that take one combined row decode in lockstep (how
    ``benchmarks/context_decoding_probe.py`` decodes with and without Z)."""
    import torch

    from zcompress_integrations.core.backbone import decode_batch, load_backbone

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    embed = backbone.model.get_input_embeddings()
    a = embed(torch.tensor(backbone.tokenizer("The quick brown fox")["input_ids"])).detach()
    b = embed(torch.tensor(backbone.tokenizer("Compression")["input_ids"])).detach()
    vocab = backbone.text_vocab_size
    with torch.inference_mode():
        apart = decode_batch(backbone.model, [a, b], 8, vocab=vocab, eos=set())
        shared = decode_batch(
            backbone.model, [a, b], 8, vocab=vocab, eos=set(), logits_hook=lambda x: x[:1].expand_as(x)
        )
    assert shared[0] == shared[1] == apart[0]  # both rows took row 0's choices
    assert apart[1] != apart[0]
