"""The token-group code with consecutive positions (``LatentConfig.positions``): Z-tokens at ``0 .. m-1``, so a code
takes as many positions as it has Z-tokens. On a tiny random Llama: training and decoding build the same reader
inputs, the setting is saved, checked and kept on resume, and compressed documents fit where their text does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tests.conftest import _CORPUS  # noqa: E402
from zcompress_integrations.core.backbone import load_backbone  # noqa: E402
from zcompress_integrations.core.codes.token_groups import group_ids, group_starts  # noqa: E402
from zcompress_integrations.core.latent import LatentCodec, LatentConfig  # noqa: E402
from zcompress_integrations.core.training import ReaderConfig, reader, train_reader  # noqa: E402
from zcompress_integrations.errors import ConfigError  # noqa: E402

L = 16


def _codec(model_dir: Path, positions: str) -> LatentCodec:
    backbone = load_backbone(str(model_dir), device="cpu")
    return LatentCodec.create(
        backbone, LatentConfig(segment_len=L, max_slots=L, lora_r=2, positions=positions)
    )


def _segments(model_dir: Path, text: str = _CORPUS) -> np.ndarray:
    ids = load_backbone(str(model_dir), device="cpu").tokenizer(text * 10)["input_ids"]
    return np.asarray([ids[i : i + L] for i in range(0, 300, 3)], dtype=np.int64)


def test_unknown_layout_is_refused_with_its_name() -> None:
    with pytest.raises(ConfigError, match=r"LatentConfig\.positions"):
        LatentConfig(positions="diagonal")
    with pytest.raises(ConfigError, match=r"ReaderConfig\.positions"):
        ReaderConfig(positions="diagonal")


@pytest.mark.parametrize("positions", ["aligned", "consecutive"])
def test_training_and_decoding_build_the_same_reader_inputs(tiny_model_dir: Path, positions: str) -> None:
    """The trainer's batch (token groups) and the decoder's (the same groups as Z ids) are equal, embeddings and
    position ids; Z-tokens sit at their groups' starts (aligned) or at 0 .. m-1 (consecutive)."""
    codec = _codec(tiny_model_dir, positions)
    seg = torch.as_tensor(_segments(tiny_model_dir)[:2])
    groups = [[2, 1, 4, 3, 2, 4], [1] * 4 + [4, 4, 4]]
    z_rows = [group_ids(seg[b].tolist(), groups[b], codec.config.vocab_size) for b in range(2)]
    with torch.no_grad():
        train_x, train_pos, train_mask = reader.batch_inputs(codec, seg, groups)
        x, pos, mask = codec.reader_inputs(seg, z_rows)
    assert torch.equal(train_x, x) and torch.equal(train_pos, pos) and torch.equal(train_mask, mask)
    m = len(groups[1])  # the longest prefix: row 1 is not padded
    expected = group_starts(groups[1]) if positions == "aligned" else list(range(m))
    assert pos[1].tolist() == [*expected, 0, *range(1, L + 1)]
    assert codec.code.offsets(z_rows[1]) == (expected, L if positions == "aligned" else m)


def test_the_layout_is_part_of_the_fingerprint_only_when_consecutive(tiny_model_dir: Path) -> None:
    """Same weights, other layout: other fingerprint, so a code names the reader that reads it; the aligned
    fingerprint has no new part, so codes written before the setting existed still load."""
    aligned, consecutive = _codec(tiny_model_dir, "aligned"), _codec(tiny_model_dir, "consecutive")
    assert aligned.fingerprint != consecutive.fingerprint
    assert b"consecutive" not in aligned.code.fingerprint_parts()


def test_reader_trains_in_the_consecutive_layout_and_saves_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A few steps lower the held-out CE; the adapters say ``consecutive``; a resume cannot change the layout,
    and a checkpoint written before the setting existed resumes as aligned."""
    from zcompress_integrations.core.training import checkpoint as ckpt

    segments = _segments(tiny_model_dir, "The quick brown fox jumps over the lazy dog. " * 4)
    cfg = dict(out=str(tmp_path / "run"), segment_len=L, lora_r=2, batch_size=4, lr=1e-2, warmup_steps=1)
    cfg.update(held=4, log_every=1, eval_every=8, checkpoint_every=2, positions="consecutive", steps=8)
    codec, records = train_reader(
        ReaderConfig(**cfg), backbone=load_backbone(str(tiny_model_dir), device="cpu"), segments=segments[:8]
    )
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[-1]["held_ce_2x"] < evals[0]["held_ce_2x"] - 0.2
    assert LatentConfig.load(tmp_path / "run" / "adapters").positions == "consecutive"
    with pytest.raises(ConfigError, match=r"other \['positions'\]"):
        train_reader(
            ReaderConfig(**{**cfg, "positions": "aligned", "steps": 9}),
            resume=True,
            backbone=load_backbone(str(tiny_model_dir), device="cpu"),
            segments=segments[:8],
        )
    path = tmp_path / "run" / ckpt.CHECKPOINT_NAME
    state = ckpt.load_checkpoint(path, task="reader")
    del state["config"]["positions"]  # as written before the setting
    ckpt.save_checkpoint(path, state)
    _, resumed = train_reader(
        ReaderConfig(**{**cfg, "positions": "aligned", "steps": 9}),
        resume=True,
        backbone=load_backbone(str(tiny_model_dir), device="cpu"),
        segments=segments[:8],
    )
    assert [r["step"] for r in resumed if r["kind"] == "train"] == [9]


def test_infer_training_refuses_consecutive_adapters(tiny_model_dir: Path) -> None:
    """Z-space continuation predicts the groups at aligned positions; it is not trained on another layout."""
    from zcompress_integrations.core.training import InferConfig, train_infer

    codec = _codec(tiny_model_dir, "consecutive")
    windows = np.zeros((4, 2 * L), dtype=np.int64)
    with pytest.raises(ConfigError, match="aligned"):
        train_infer(codec, windows, InferConfig(steps=1))


def test_compressed_documents_fit_where_their_text_does_not(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Documents whose text overflows the backbone's window (1,024 positions) are refused as text and as an
    aligned code (which spans its text), and fit as a consecutive code at 4x, which spans its Z count."""
    from zcompress_integrations import ZCompressor

    docs = [f"Document {i}. " + _CORPUS * 2 for i in range(12)]
    spans = {}
    for positions in ("aligned", "consecutive"):
        codec = _codec(tiny_model_dir, positions)
        # Z counts follow surprisal relative to calib_nll: measure it on this text, as training does
        codec.config.calib_nll = float(np.mean(codec.segment_nll(_segments(tiny_model_dir).tolist())))
        codec.save_pretrained(tmp_path / positions)
        zc = ZCompressor.from_pretrained(tiny_model_dir, adapters=tmp_path / positions, window=64)
        window = zc.backbone.model.config.max_position_embeddings
        assert sum(zc.count_tokens(d) for d in docs) > window
        codes = zc.compress_batch(docs, mode="latent", ratio=4.0)
        assert sum(c.text_tokens for c in codes) / sum(c.z_tokens for c in codes) >= 3
        spans[positions] = sum(zc.latent_codec.prompt_offsets(c)[1] for c in codes)
        if positions == "aligned":
            assert spans[positions] == sum(c.text_tokens for c in codes)
            with pytest.raises(ConfigError, match="context"):
                zc.generate("What are these about?", context=codes, max_new_tokens=4)
        else:
            assert spans[positions] == sum(c.z_tokens for c in codes) < window
            answer = zc.generate("What are these about?", context=codes, max_new_tokens=4)
            assert isinstance(answer.text, str) and answer.prompt_tokens < window
    assert spans["consecutive"] * 3 <= spans["aligned"]


def test_answer_prompt_places_consecutive_codes_after_each_other(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """In a prompt, a consecutive code's Z-tokens take one position each and the prompt goes on right after."""
    from zcompress_integrations import ZCompressor
    from zcompress_integrations.core.generation import build_prompt, embed_pieces, prompt_span

    _codec(tiny_model_dir, "consecutive").save_pretrained(tmp_path / "adapters")
    zc = ZCompressor.from_pretrained(tiny_model_dir, adapters=tmp_path / "adapters", window=64)
    code = zc.compress(_CORPUS, mode="latent", ratio=2.0)
    pieces, fed, uncompressed, _ = build_prompt(zc, "What is it?", [code, "plain words"])
    with torch.no_grad():
        x, pos = embed_pieces(zc.backbone.model.get_input_embeddings(), pieces, "cpu")
    assert x.shape[0] == fed and int(pos[-1]) == prompt_span(pieces) - 1 == fed - 1
    start = len(pieces[0])
    assert (pos[start : start + code.z_tokens] - start).tolist() == list(range(code.z_tokens))


def test_learned_code_training_warns_when_its_reader_reads_aligned_positions(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The learned code reads Z at consecutive positions: starting it from an aligned reader is allowed (run 5
    measured what that gives) but said; from a consecutive one it is quiet."""
    from zcompress_integrations.core.training import CompressorConfig
    from zcompress_integrations.core.training.compressor import _setup

    for positions in ("aligned", "consecutive"):
        _codec(tiny_model_dir, positions).save_pretrained(tmp_path / positions)
        caplog.clear()
        cfg = CompressorConfig(
            init_reader=str(tmp_path / positions), segment_len=L, lora_r=2, codebook_size=16
        )
        with caplog.at_level("WARNING"):
            _setup(cfg, load_backbone(str(tiny_model_dir), device="cpu"))
        warned = [r for r in caplog.records if "consecutive positions" in r.getMessage()]
        assert len(warned) == (1 if positions == "aligned" else 0)
