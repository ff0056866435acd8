"""Generation in Z space for the token-group code, on a tiny random Llama: the group head, continue_z, training,
save/load. Logic, not quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from zcompress_integrations import ZCode, ZCompressor  # noqa: E402
from zcompress_integrations.core.backbone import load_backbone  # noqa: E402
from zcompress_integrations.core.codes.token_groups import id_groups  # noqa: E402
from zcompress_integrations.core.latent import LatentCodec, LatentConfig, load_latent_codec  # noqa: E402
from zcompress_integrations.core.training import InferConfig, group_infer_loss, train_infer  # noqa: E402
from zcompress_integrations.core.zspace import (  # noqa: E402
    DEFAULT_REPETITION_PENALTY,
    INFER_HEAD_NAME,
    add_infer_adapter,
)
from zcompress_integrations.core.zspace_groups import _pick, add_chain, group_window  # noqa: E402
from zcompress_integrations.errors import ConfigError  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. Compression turns long text into a few tokens. "
L = 32
STEPS = 30


def _windows(codec: LatentCodec, n: int = 40) -> np.ndarray:
    ids = codec.backbone.tokenizer(TEXT * 60)["input_ids"]
    return np.asarray([ids[i : i + 2 * L] for i in range(0, len(ids) - 2 * L, 5)][:n], dtype=np.int64)


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    config = LatentConfig(segment_len=L, max_slots=L, lora_r=4, max_group=4)
    codec = LatentCodec.create(backbone, config)
    ids = backbone.tokenizer(TEXT * 4)["input_ids"]
    codec.config.calib_nll = float(
        np.mean(codec.segment_nll([ids[i : i + L] for i in range(0, len(ids) - L, 16)]))
    )
    fingerprint = codec.fingerprint
    windows = _windows(codec)
    add_infer_adapter(codec, seed=0)
    start = {n: p.detach().clone() for n, p in codec.peft_model.named_parameters() if ".infer." in n}
    before = group_infer_loss(codec, windows[:8])
    cfg = InferConfig(steps=STEPS, batch_size=4, lr=3e-3, lr_head=1e-2, log_every=5, seed=0)
    records = train_infer(codec, windows, cfg)
    after = group_infer_loss(codec, windows[:8])
    out = tmp_path_factory.mktemp("zspace_groups") / "adapters"
    codec.save_pretrained(out)
    return {
        "codec": codec,
        "windows": windows,
        "before": before,
        "after": after,
        "records": records,
        "dir": out,
        "start": start,
        "fingerprint": fingerprint,
        "tiny": tiny_model_dir,
    }


def _random_reader(tiny_model_dir: Path) -> LatentCodec:
    """A tiny token-code codec whose decompress LoRA is not zero, so a copy of it is visible."""
    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    codec = LatentCodec.create(backbone, LatentConfig(segment_len=L, max_slots=L, lora_r=4))
    with torch.no_grad():
        for name, p in codec.peft_model.named_parameters():
            if "lora_B" in name and ".decompress." in name:
                p.normal_(0, 0.02)
    return codec


def test_infer_starts_as_the_backbone_or_the_reader_and_every_offset_as_the_next_token_head(
    tiny_model_dir: Path,
) -> None:
    codec = _random_reader(tiny_model_dir)
    add_infer_adapter(codec, seed=0)
    params = dict(codec.peft_model.named_parameters())
    infer_b = [n for n in params if ".infer." in n and "lora_B" in n]
    assert infer_b and all(
        not params[n].any() for n in infer_b
    )  # zero: the infer adapter starts as the backbone
    reader = _random_reader(tiny_model_dir)
    add_infer_adapter(reader, seed=0, from_reader=True)
    params = dict(reader.peft_model.named_parameters())
    copied = [n for n in params if ".infer." in n]
    assert copied and all(
        torch.equal(params[n], params[n.replace(".infer.", ".decompress.")]) for n in copied
    )
    assert any(params[n].any() for n in copied if "lora_B" in n)
    backbone = codec.backbone
    h = torch.randn(3, backbone.model.config.hidden_size)
    weight = backbone.model.lm_head.weight[: backbone.text_vocab_size]
    logits = codec.infer_head(h, weight)
    assert logits.shape == (3, codec.config.max_group, backbone.text_vocab_size)
    for k in range(codec.config.max_group):
        assert torch.allclose(logits[:, k], h @ weight.T, atol=1e-5)


def test_group_window_targets_are_the_tokens_after_each_group(trained: dict) -> None:
    codec = trained["codec"]
    tokens = list(range(100, 110))
    inputs, positions, targets = group_window(codec, tokens, [2, 1, 4, 3])
    assert inputs.shape[0] == 4 and positions.tolist() == [0, 2, 3, 7]
    assert targets[0].tolist() == [102, 103, 104, 105]
    assert targets[2].tolist() == [107, 108, 109, -100]
    assert targets[3].tolist() == [-100] * 4


def test_training_lowers_the_loss_and_leaves_the_code_alone(trained: dict) -> None:
    before, after = trained["before"], trained["after"]
    assert after["loss"] < before["loss"] - 0.5
    assert after["acc_offset0"] > before["acc_offset0"]
    codec = trained["codec"]
    assert codec.fingerprint == trained["fingerprint"]
    moved = [
        n
        for n, p in codec.peft_model.named_parameters()
        if ".infer." in n and not torch.equal(p, trained["start"][n])
    ]
    assert moved  # the infer LoRA trained
    info = codec.config.training["infer"]
    assert info["steps"] == STEPS and "next token groups" in info["recipe"]


def test_continue_z_writes_whole_segments_of_token_groups(trained: dict) -> None:
    codec = trained["codec"]
    code = codec.compress_batch([TEXT * 3], ratio=2.0)[0]
    groups = id_groups(code.z_ids, codec.config.vocab_size, codec.config.max_group)
    size = round(sum(len(g) for g in groups) / len(groups))
    cont = codec.continue_z(code, 2)
    assert cont.segments == (-(-L // size),) * 2 and cont.params["generated"] == 1
    new = id_groups(cont.z_ids, codec.config.vocab_size, codec.config.max_group)
    assert sum(len(g) for g in new) == 2 * L and all(len(g) <= size for g in new)
    assert codec.end_token not in [t for g in new for t in g]
    four = codec.continue_z(code, 1, z_per_segment=L // 4)
    assert four.segments == (L // 4,) and all(
        len(g) == 4 for g in id_groups(four.z_ids, codec.config.vocab_size, 4)
    )
    assert codec.continue_z(code, 1, z_per_segment=L // 4) == four  # greedy: deterministic
    assert codec.continue_z(code, 1, temperature=1.0, seed=3) == codec.continue_z(
        code, 1, temperature=1.0, seed=3
    )
    text = codec.decompress_batch([ZCode.from_bytes(cont.to_bytes())])[0]
    assert isinstance(text, str)
    assert len(codec.continue_z(cont, 1).segments) == 1  # a continuation continues too
    with pytest.raises(ConfigError, match="z_per_segment"):
        codec.continue_z(code, 1, z_per_segment=0)
    with pytest.raises(ConfigError, match="at least one Z-token"):
        codec.continue_z(code, 1, context_segments=0)


def test_repetition_penalty_and_top_p() -> None:
    logits = torch.tensor([3.0, 2.5, -1.0, 0.5])
    seen = torch.tensor([True, False, True, False])
    assert _pick(logits, seen, 0.0, 1.0, 1.0, None) == 0
    assert _pick(logits, seen, 0.0, 1.0, 1.5, None) == 1  # 3.0 / 1.5 = 2.0 < 2.5
    gen = torch.Generator().manual_seed(0)
    # a tiny top_p keeps only the most likely token, whatever the temperature
    assert {_pick(logits, seen, 5.0, 1e-6, 1.0, gen) for _ in range(20)} == {0}
    # top_p 0.9 at temperature 1: the least likely tokens (together under 10%) never come out
    assert {_pick(logits, seen, 1.0, 0.9, 1.0, gen) for _ in range(200)} <= {0, 1}


def test_continue_z_decoding_options(trained: dict) -> None:
    codec = trained["codec"]
    code = codec.compress_batch([TEXT * 3], ratio=2.0)[0]
    assert DEFAULT_REPETITION_PENALTY > 1  # greedy token-group continuations loop without a penalty
    assert codec.continue_z(code, 1) == codec.continue_z(
        code, 1, repetition_penalty=DEFAULT_REPETITION_PENALTY
    )
    sampled = codec.continue_z(code, 1, temperature=0.8, top_p=0.9, repetition_penalty=1.3, seed=5)
    assert sampled == codec.continue_z(code, 1, temperature=0.8, top_p=0.9, repetition_penalty=1.3, seed=5)
    context = {t for g in id_groups(code.z_ids, codec.config.vocab_size, codec.config.max_group) for t in g}

    def reused(c: ZCode) -> int:
        return sum(
            t in context
            for g in id_groups(c.z_ids, codec.config.vocab_size, codec.config.max_group)
            for t in g
        )

    # a huge penalty pushes the continuation off the context's tokens
    assert reused(codec.continue_z(code, 1, repetition_penalty=1e4)) < reused(codec.continue_z(code, 1))
    for bad in ({"top_p": 0.0}, {"top_p": 1.5}, {"repetition_penalty": 0.0}):
        with pytest.raises(ConfigError):
            codec.continue_z(code, 1, **bad)


def test_save_load_keeps_continue_z_identical(trained: dict) -> None:
    codec, out = trained["codec"], trained["dir"]
    assert (out / "infer" / "adapter_model.safetensors").is_file() and (out / INFER_HEAD_NAME).is_file()
    assert json.loads((out / "zcompress_config.json").read_text())["training"]["infer"]["steps"] == STEPS
    reloaded = load_latent_codec(load_backbone(str(trained["tiny"]), device="cpu"), out)
    assert reloaded.has_infer and reloaded.fingerprint == codec.fingerprint
    code = codec.compress_batch([TEXT * 2], ratio=2.0)[0]
    assert reloaded.continue_z(code, 2) == codec.continue_z(code, 2)
    zc: Any = ZCompressor.from_pretrained(trained["tiny"], adapters=out)
    cont = zc.continue_z(zc.compress(TEXT * 2, mode="latent", ratio=2.0).to_string())
    assert isinstance(zc.decompress(cont), str)


def test_group_probs_must_fit_the_code(trained: dict) -> None:
    with pytest.raises(ConfigError, match="group_probs"):
        train_infer(trained["codec"], trained["windows"], InferConfig(steps=1, group_probs=[0.2] * 5))


def test_heldout_benchmark_runs_on_the_tiny_model(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import infer_heldout

    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"text": TEXT * 12}) + "\n" for _ in range(3)))
    infer_heldout.main(
        [
            "--adapters",
            str(trained["dir"]),
            "--data",
            str(data),
            "--model",
            str(trained["tiny"]),
            "--windows",
            "4",
            "--width",
            "64",
        ]
    )
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["windows"] == 4 and row["infer"]["steps"] == STEPS
    assert row["groups_of_2"]["loss"] < trained["before"]["loss"]  # the trained adapter, not a fresh one
    assert set(row["groups_of_4"]) == {"loss", "acc_offset0", "acc_offset1", "acc_offset2", "acc_offset3"}


@pytest.fixture(scope="module")
def chained(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The trained codec reloaded, its head given a chain, then trained a few steps more."""
    codec = load_latent_codec(load_backbone(str(trained["tiny"]), device="cpu"), trained["dir"])
    windows = trained["windows"]
    code = codec.compress_batch([TEXT * 3], ratio=2.0)[0]
    plain = codec.continue_z(code, 1)
    plain_loss = group_infer_loss(codec, windows[:8])
    add_chain(codec, 8)
    added = {"loss": group_infer_loss(codec, windows[:8]), "cont": codec.continue_z(code, 1)}
    train_infer(
        codec, windows, InferConfig(steps=STEPS, batch_size=4, lr=3e-3, lr_head=1e-2, log_every=5, seed=0)
    )
    out = tmp_path_factory.mktemp("zspace_chain") / "adapters"
    codec.save_pretrained(out)
    return {
        "codec": codec,
        "code": code,
        "plain": plain,
        "plain_loss": plain_loss,
        "added": added,
        "dir": out,
        "after": group_infer_loss(codec, windows[:8]),
        "tiny": trained["tiny"],
    }


def test_a_new_chain_changes_nothing_until_trained(chained: dict) -> None:
    assert chained["added"]["cont"] == chained["plain"]
    assert chained["added"]["loss"]["loss"] == pytest.approx(chained["plain_loss"]["loss"], abs=1e-5)
    assert chained["after"]["loss"] < chained["plain_loss"]["loss"]
    info = chained["codec"].config.training["infer"]
    assert info["chain_rank"] == 8 and info["steps"] == 2 * STEPS


def test_chained_offsets_read_the_token_before_them(chained: dict) -> None:
    codec = chained["codec"]
    head, H = codec.infer_head, codec.backbone.model.config.hidden_size
    weight = codec.backbone.model.lm_head.weight[: codec.backbone.text_vocab_size]
    emb = codec.lm.get_input_embeddings().weight
    h = torch.randn(2, H)
    prev = emb[
        torch.tensor([[5, 6, 7, 8], [5, 6, 9, 8]])
    ]  # the rows differ in the token before offset 2 only
    with torch.no_grad():
        logits = head(h[[0, 0]], weight, prev)
    assert torch.equal(logits[0, :2], logits[1, :2]) and not torch.allclose(logits[0, 2:], logits[1, 2:])
    with torch.no_grad():  # one offset at a time (generation) = all at once (training)
        carry = None
        for k in range(4):
            state, carry = head.offset_state(k, h[0], prev[0, k], carry)
            assert torch.allclose(state @ weight.T, logits[0, k], atol=1e-4)
    with pytest.raises(ValueError, match="chain"):
        head(h, weight)


def test_a_chained_head_saves_loads_and_continues_identically(chained: dict) -> None:
    codec, out = chained["codec"], chained["dir"]
    reloaded = load_latent_codec(load_backbone(str(chained["tiny"]), device="cpu"), out)
    assert reloaded.infer_head.chain_rank == 8
    code = chained["code"]
    assert reloaded.continue_z(code, 2) == codec.continue_z(code, 2)
    assert reloaded.continue_z(code, 1, temperature=0.9, seed=1) == codec.continue_z(
        code, 1, temperature=0.9, seed=1
    )


def test_continuation_benchmark_reads_a_jsonl_and_uses_the_default_penalty(
    chained: dict, tmp_path: Path
) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import zspace_continuation

    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps({"text": f"{i} " + TEXT * 12}) + "\n" for i in range(3)))
    out = tmp_path / "bench"
    zspace_continuation.main(
        [
            "--model",
            str(chained["tiny"]),
            "--adapters",
            str(chained["dir"]),
            "--limit",
            "2",
            "--data",
            str(data),
            "--skip-greedy",
            "--out",
            str(out),
        ]
    )
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["meta"]["data"] == str(data) and result["meta"]["paragraphs"] == 2
    assert result["meta"]["decoding"]["repetition_penalty"] == DEFAULT_REPETITION_PENALTY
    assert str(data) in (tmp_path / "bench.md").read_text()
