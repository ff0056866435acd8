"""The token-group Z code (``z_embedding="tokens"``) and its trainer, on a tiny random Llama: logic, not quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from zcompress_integrations.core.backbone import load_backbone  # noqa: E402
from zcompress_integrations.core.latent import (  # noqa: E402
    LatentCodec,
    LatentConfig,
    group_ids,
    id_groups,
    load_latent_codec,
    surprisal_groups,
)
from zcompress_integrations.core.training import token_code  # noqa: E402
from zcompress_integrations.core.zcode import ZCode  # noqa: E402
from zcompress_integrations.errors import CorruptCodeError  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. Compression turns long text into a few tokens. "


@pytest.fixture(scope="module")
def codec(tiny_model_dir: Path) -> LatentCodec:
    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    config = LatentConfig(z_embedding="tokens", segment_len=32, max_slots=32, lora_r=4, max_group=4)
    codec = LatentCodec.create(backbone, config)
    ids = backbone.tokenizer(TEXT * 4)["input_ids"]
    codec.config.calib_nll = float(np.mean(codec.segment_nll([ids[i : i + 32] for i in range(0, len(ids) - 32, 16)])))
    return codec


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 999), min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_group_ids_round_trip(tokens: list[int], rnd: Any) -> None:
    sizes, left = [], len(tokens)
    while left:
        sizes.append(min(left, rnd.randint(1, 4)))
        left -= sizes[-1]
    ids = group_ids(tokens, sizes, 1000)
    groups = id_groups(ids, 1000, 4)
    assert [len(g) for g in groups] == sizes
    assert [t for g in groups for t in g] == tokens
    assert all(0 <= z < sum(1000**g for g in range(1, 5)) for z in ids)


def test_id_outside_the_code_is_refused() -> None:
    with pytest.raises(CorruptCodeError):
        id_groups([1000 + 1000**2 + 1000**3 + 1000**4], 1000, 4)


def test_surprisal_groups_give_surprising_tokens_their_own_z() -> None:
    nll = [6.0, 0.1, 0.1, 0.1, 7.0, 0.2, 0.2, 0.3]
    assert surprisal_groups(nll, 4, 4) == [1, 3, 1, 3]
    assert surprisal_groups([1.0] * 8, 2, 4) == [4, 4]
    assert surprisal_groups([1.0] * 8, 8, 4) == [1] * 8
    with pytest.raises(ValueError):
        surprisal_groups([1.0] * 9, 2, 4)  # 9 tokens do not fit in two groups of at most 4


def test_compress_emits_token_groups_that_follow_ratio_and_surprisal(codec: LatentCodec) -> None:
    texts = [TEXT * 3, "short text", TEXT]
    for ratio in (2.0, 4.0):
        codes = codec.compress_batch(texts, ratio=ratio)
        for code, text in zip(codes, texts, strict=True):
            assert code.k == codec.config.k_eff and sum(code.segments) == code.z_tokens
            groups = id_groups(code.z_ids, codec.config.vocab_size, codec.config.max_group)
            assert [t for g in groups for t in g] == codec.backbone.tokenizer(text)["input_ids"]
            assert ZCode.from_bytes(code.to_bytes()) == code  # 63-bit ids pack and parse
        total_text = sum(c.text_tokens for c in codes)
        total_z = sum(c.z_tokens for c in codes)
        assert ratio / 2 <= total_text / total_z <= min(ratio * 2, codec.config.max_group)
    # text the backbone finds surprising (random ids) gets more Z-tokens than the same number of repeated tokens
    rng = np.random.default_rng(0)
    surprising = codec.backbone.tokenizer.decode(rng.integers(100, 1000, 30).tolist())
    predictable = codec.backbone.tokenizer.decode([42] * 30)
    a, b = codec.compress_batch([surprising, predictable], ratio=2.0)
    assert a.z_tokens / a.text_tokens >= b.z_tokens / b.text_tokens


def test_embeddings_are_turned_unit_sums(codec: LatentCodec) -> None:
    vocab = codec.config.vocab_size
    emb = codec._lm.get_input_embeddings().weight.detach()
    z = codec.z_embeddings(group_ids([5, 9], [2], vocab) + group_ids([5], [1], vocab))
    unit = torch.nn.functional.normalize(emb[[5, 9]].float(), dim=-1)
    rot = codec.modules.rotations
    scale = codec.modules.token_scale
    assert torch.allclose(z[0], (unit[0] + rot[1] @ unit[1]) / 2**0.5 * scale, atol=1e-5)
    assert torch.allclose(z[1], unit[0] * scale, atol=1e-5)
    assert codec.token_code_layout(group_ids([1, 2, 3, 4, 5], [2, 1, 2], vocab), 5)[1] == [0, 2, 3]


def test_free_running_and_exact_decoding_use_aligned_positions(codec: LatentCodec) -> None:
    """Greedy decoding and the residual coder see the same positions as training: the residual decodes
    byte-exactly, and the free-running text's first token is the teacher-forced argmax."""
    code = codec.compress_batch([TEXT], ratio=2.0)[0]
    exact = codec.compress_batch([TEXT], ratio=2.0, exact=True)[0]
    assert codec.decompress_batch([exact]) == [TEXT]
    free = codec.decompress_batch([code])[0]
    ids = codec.backbone.tokenizer(TEXT)["input_ids"][:32]
    seg = torch.tensor([ids])
    groups = [[len(g) for g in id_groups(code.z_ids[: code.segments[0]], codec.config.vocab_size, 4)]]
    with torch.no_grad(), codec.adapter("decompress"):
        x, pos, mask = token_code._batch_inputs(codec, seg, groups)
        logits = codec._lm(inputs_embeds=x, position_ids=pos, attention_mask=mask).logits
    first = int(logits[0, -len(ids) - 1].argmax())
    assert codec.backbone.tokenizer(free, add_special_tokens=False)["input_ids"][:1] == [first] or first == codec._eos


def test_trainer_lowers_the_loss_resumes_and_exports(tiny_model_dir: Path, tmp_path: Path) -> None:
    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    ids = backbone.tokenizer(TEXT * 40)["input_ids"]
    rows = np.asarray([ids[i : i + 16] for i in range(0, 600, 3)], dtype=np.int64)
    np.save(tmp_path / "segments.npy", rows)
    common = [
        "--data", str(tmp_path / "segments.npy"), "--length", "16", "--batch", "4", "--lr", "1e-2",
        "--warmup", "1", "--held", "8", "--eval-every", "6", "--checkpoint-every", "3", "--model", str(tiny_model_dir),
    ]
    token_code.main(["--out", str(tmp_path / "a"), "--steps", "12", *common])
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 6, 12]
    assert log[-1]["held_ce_2x"] < log[0]["held_ce_2x"]
    # a run stopped at step 6 and resumed ends where the uninterrupted run did
    token_code.main(["--out", str(tmp_path / "b"), "--steps", "6", *common])
    token_code.main(["--out", str(tmp_path / "b"), "--steps", "12", "--resume", *common])
    resumed = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert resumed[-1]["held_ce_2x"] == pytest.approx(log[-1]["held_ce_2x"], abs=1e-4)
    # a warm restart takes its peak lr from the flags, not from the checkpoint's optimizer
    restart = [a if a != "1e-2" else "4e-3" for a in common]
    token_code.main(["--out", str(tmp_path / "b"), "--steps", "14", "--decay-start", "12", "--resume", *restart])
    group = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["opt"]["param_groups"][0]
    assert group["initial_lr"] == 4e-3
    assert group["lr"] == pytest.approx(4e-3 * (1 - 0.95 * 2 / 2))
    # a rank-32 adapter grown from the rank-16 run starts where that run ended
    token_code.main(["--out", str(tmp_path / "c"), "--steps", "0", "--rank", "32",
                     "--init-from", str(tmp_path / "a" / "checkpoint.pt"), *common])
    grown = json.loads((tmp_path / "c" / "log.jsonl").read_text().splitlines()[0])
    assert grown["held_ce_2x"] == pytest.approx(log[-1]["held_ce_2x"], abs=1e-4)
    assert grown["held_ce_4x"] == pytest.approx(log[-1]["held_ce_4x"], abs=1e-4)
    # a run can also go on from an adapters directory (the released weights are bf16: close, not equal)
    token_code.main(["--out", str(tmp_path / "d"), "--steps", "0",
                     "--init-from", str(tmp_path / "a" / "adapters"), *common])
    from_dir = json.loads((tmp_path / "d" / "log.jsonl").read_text().splitlines()[0])
    assert log[0]["held_ce_2x"] - log[-1]["held_ce_2x"] > 0.2  # so matching the trained run is not chance
    assert from_dir["held_ce_2x"] == pytest.approx(log[-1]["held_ce_2x"], abs=0.05)
    with pytest.raises(SystemExit, match="not a token-group adapters directory"):
        token_code.main(["--out", str(tmp_path / "e"), "--steps", "0", "--init-from", str(tmp_path), *common])
    loaded = load_latent_codec(backbone, tmp_path / "a" / "adapters")
    assert loaded.config.token_code and loaded.config.training["steps"] == 12
    code = loaded.compress_batch([TEXT], ratio=2.0, exact=True)[0]
    assert loaded.decompress_batch([code]) == [TEXT]


def test_generation_reads_token_codes_at_their_uncompressed_positions(tiny_model_dir: Path, tmp_path: Path) -> None:
    """In a prompt, each Z-token sits where its first token would and the prompt continues after the text's
    span; streaming and batched generation agree."""
    from zcompress_integrations import ZCompressor
    from zcompress_integrations.core.generation import _embed_pieces, _span, build_prompt

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    config = LatentConfig(z_embedding="tokens", segment_len=32, max_slots=32, lora_r=4)
    LatentCodec.create(backbone, config).save_pretrained(tmp_path / "adapters")
    zc = ZCompressor.from_pretrained(tiny_model_dir, adapters=tmp_path / "adapters", window=64)
    code = zc.compress(TEXT, mode="latent", ratio=2.0)
    pieces, fed, uncompressed, any_latent = build_prompt(zc, "What is it?", [code, "plain words"])
    assert any_latent and fed == uncompressed - code.text_tokens + code.z_tokens
    with torch.no_grad():
        x, pos = _embed_pieces(zc.backbone.model.get_input_embeddings(), pieces, "cpu")
    assert x.shape[0] == fed and int(pos[-1]) == _span(pieces) - 1 == uncompressed - 1
    start = len(pieces[0])
    offsets = pos[start : start + code.z_tokens] - start
    sizes = [len(g) for g in id_groups(code.z_ids, config.vocab_size, config.max_group)]
    assert offsets.tolist() == np.cumsum([0, *sizes[:-1]]).tolist()
    one = zc.generate("What is it?", context=[code, "plain words"], max_new_tokens=6)
    batch = zc.generate_batch(["What is it?"], contexts=[[code, "plain words"]], max_new_tokens=6)[0]
    assert one.text == batch.text and one.prompt_tokens == batch.prompt_tokens == fed


def test_adapter_reads_the_z_context_and_the_base_model_answers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The prompt up to the last Z-token runs with the decompress adapter, the rest and the answer without it."""
    from transformers import DynamicCache

    from zcompress_integrations import ZCompressor
    from zcompress_integrations.core.backbone import cache_kwargs
    from zcompress_integrations.core.generation import _embed_pieces, _read_length, build_prompt

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    config = LatentConfig(z_embedding="tokens", segment_len=32, max_slots=32, lora_r=4)
    codec = LatentCodec.create(backbone, config)
    torch.manual_seed(1)
    with torch.no_grad():  # a reader that changes the model's outputs
        for name, p in codec.peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    codec.save_pretrained(tmp_path / "adapters")
    zc = ZCompressor.from_pretrained(tiny_model_dir, adapters=tmp_path / "adapters", window=64)
    code = zc.compress(TEXT, mode="latent", ratio=2.0)
    context = [code, "plain words"]
    pieces, _, _, _ = build_prompt(zc, "What is it?", context)
    latent = zc._latent_codec()
    lm = latent._lm
    x, pos = _embed_pieces(lm.get_input_embeddings(), pieces, "cpu")
    head = _read_length(pieces)
    assert head == len(pieces[0]) + code.z_tokens

    def first_token(split: bool) -> int:
        cache = DynamicCache(config=lm.config)
        with torch.no_grad(), latent.peft_model.disable_adapter():
            with latent.reading_inside_base():
                lm(inputs_embeds=x[None, :head], position_ids=pos[None, :head], **cache_kwargs(lm, cache))
                if not split:
                    out = lm(inputs_embeds=x[None, head:], position_ids=pos[None, head:], **cache_kwargs(lm, cache))
            if split:
                out = lm(inputs_embeds=x[None, head:], position_ids=pos[None, head:], **cache_kwargs(lm, cache))
        return int(out.logits[0, -1, : zc.backbone.text_vocab_size].argmax())

    one = zc.generate("What is it?", context=context, max_new_tokens=4)
    batch = zc.generate_batch(["What is it?"], contexts=[context], max_new_tokens=4)[0]
    assert one.text == batch.text
    assert first_token(True) != first_token(False)  # so the check below tells the two layouts apart
    split_first = zc.backbone.tokenizer.decode([first_token(True)], skip_special_tokens=True)
    assert one.text.startswith(split_first) or one.text == ""  # empty when the first token was an end token
    # the adapter is back on afterwards (decompression still reads Z)
    assert all(not m.disable_adapters for m in lm.modules() if hasattr(m, "lora_A"))


def test_gpu_script_trains_the_token_code_on_cpu_and_stops_on_time(tiny_model_dir: Path, tmp_path: Path) -> None:
    """scripts/gpu_train.py `tokens` is what a lent GPU runs; here on CPU, tiny, stopped by --minutes."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import gpu_train

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    ids = backbone.tokenizer(TEXT * 40)["input_ids"]
    np.save(tmp_path / "segs.npy", np.asarray([ids[i : i + 16] for i in range(0, 600, 3)], dtype=np.uint16))
    gpu_train.main([
        "tokens", "--model", str(tiny_model_dir), "--data", str(tmp_path / "segs.npy"), "--device", "cpu",
        "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
        "--length", "16", "--batch", "4", "--held", "8", "--steps", "100000", "--minutes", "0.005",
    ])  # fmt: skip
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert 0 < log[-1]["step"] < 100000 and log[-1]["seconds"] >= 0.3
    loaded = load_latent_codec(backbone, tmp_path / "out" / "adapters")
    assert loaded.config.training["steps"] == log[-1]["step"]


def test_answer_from_z_loss_trains_the_reader_through_the_base_models_reading(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The answer loss reads Z with the adapter and answers on the base model: gradients reach the adapter (only
    through the Z reading), the loss equals the teacher-forced CE of what generate() would score, and the
    trainer's --qa-weight run logs a held-out answer CE that falls."""
    from zcompress_integrations.core.training import from_z

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    config = LatentConfig(z_embedding="tokens", segment_len=32, max_slots=32, lora_r=4, max_group=4)
    codec = LatentCodec.create(backbone, config)
    zc = from_z.compressor_for(backbone, codec)
    example = from_z.AnswerExample("Who jumps?", (("Fox", TEXT),), "the quick brown fox")
    codes = codec.compress_batch([TEXT], ratio=2.0)
    with torch.no_grad():
        for name, p in codec.peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # a non-zero adapter, so its reading matters
    loss = from_z.answer_loss(zc, codes, example)
    loss.backward()
    grads = {n: p.grad for n, p in codec.peft_model.named_parameters() if "lora_" in n}
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads.values())
    # the adapter's reading changes the answer's loss; with plain-text context no adapter runs at all
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
    assert identity != pytest.approx(float(loss), abs=1e-4)
    assert plain == pytest.approx(plain_identity, abs=1e-5)

    ids = backbone.tokenizer(TEXT * 40)["input_ids"]
    np.save(tmp_path / "segs.npy", np.asarray([ids[i : i + 16] for i in range(0, 600, 3)], dtype=np.int64))
    data = tmp_path / "data"
    (data / "hotpotqa").mkdir(parents=True)
    (data / "natural_questions").mkdir()
    hp = {"question": "Who jumps?", "answer": "the fox", "supporting_facts": [["Fox", [0], ["x"]]],
          "context": [["Fox", ["The quick brown fox jumps."]], ["Dog", ["The lazy dog sleeps."]]]}
    nq = {"question": "What sleeps?", "answers": ["the dog"], "ctxs": [{"title": "Dog", "text": "The lazy dog sleeps."}]}
    (data / "hotpotqa" / "hotpotqa_train_100.jsonl").write_text(json.dumps(hp) + "\n")
    (data / "natural_questions" / "nq_open_oracle_500.jsonl").write_text((json.dumps(nq) + "\n") * 3)
    token_code.main([
        "--out", str(tmp_path / "qa"), "--data", str(tmp_path / "segs.npy"), "--length", "16", "--batch", "2",
        "--lr", "1e-2", "--warmup", "1", "--held", "4", "--eval-every", "8", "--steps", "8",
        "--model", str(tiny_model_dir), "--qa-weight", "1", "--qa-batch", "2", "--qa-held", "2",
        "--data-dir", str(data),
    ])  # fmt: skip
    log = [json.loads(line) for line in (tmp_path / "qa" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["held_answer_ce_2x"] < log[0]["held_answer_ce_2x"]
    card = json.loads((tmp_path / "qa" / "adapters" / "zcompress_config.json").read_text())
    assert card["training"]["answer_from_z"]["weight"] == 1.0
    assert card["training"]["answer_from_z"]["examples_seen"] == 16


def test_benchmark_reader_bits_price_what_the_coder_spends(codec: LatentCodec) -> None:
    """``benchmarks/latent_default.py``'s ideal residual: its cost under the coder's frequency table is the coded
    residual less only the coder's termination, and it never exceeds the cross-entropy by more than the floor
    allows (a token under 1/2^24 costs at most ~24 bits in the table)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import latent_default

    text = TEXT * 3
    code = codec.compress_batch([text], ratio=2.0)[0]
    exact = codec.compress_batch([text], ratio=2.0, exact=True)[0]
    assert exact.z_ids == code.z_ids
    ce_bits, table_bits = latent_default.reader_bits(codec, code)
    coded = 8 * len(exact.residual)
    assert table_bits - 8 <= coded <= table_bits + 8 * 8  # byte padding and a few bytes of termination
    tokens = exact.text_tokens + len(code.segments)
    # every codable token's +1 costs the likely ones a little (about V / 2^24 of their mass)
    assert table_bits <= ce_bits + tokens * 1e-2 and table_bits > 0


def test_init_source_reads_the_shipped_adapters_with_live_parameter_names() -> None:
    """``--init-from default`` maps peft's saved names (adapter name dropped) back to the live ``.decompress.`` ones."""
    source = token_code.init_source("default")
    assert source["lora"] and all(".decompress.weight" in k for k in source["lora"])
    assert {k.split(".")[-3] for k in source["lora"]} == {"lora_A", "lora_B"}
    assert all(v.dtype == torch.float32 for v in source["lora"].values()) and source["modules"]
