"""Baselines: byte compressors, truncation, tiktoken offline, and LLMLingua on a tiny random Llama."""

from __future__ import annotations

import hashlib
import inspect
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest

from zcompress_integrations.eval import baselines as bl

TEXT = (
    "Robert Boulter is an English film, television and theatre actor. He had a guest-starring role on the "
    "television series The Bill in 2000. This was followed by a starring role in the play Herons written by "
    "Simon Stephens, which was performed in 2001 at the Royal Court Theatre. Ünïcödé: 東京, emoji 🙂. "
) * 4


# ---------------------------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("method", sorted(bl.BYTE_COMPRESSORS))
def test_byte_compressors_round_trip_and_sizes(method: str) -> None:
    result = bl.byte_compress(TEXT, method)  # verify=True decompresses and compares
    assert result.method == method
    assert result.num_chars == len(TEXT)
    assert result.original_bytes == len(TEXT.encode("utf-8")) > result.num_chars  # non-ASCII present
    assert 0 < result.compressed_bytes < result.original_bytes / 3  # 4 repeats compress well
    assert result.bits_per_char == pytest.approx(8 * result.compressed_bytes / len(TEXT))
    assert result.ratio == pytest.approx(result.original_bytes / result.compressed_bytes)


def test_byte_compress_all_defaults_and_determinism() -> None:
    results = bl.byte_compress_all(TEXT)
    assert list(results) == ["gzip-9", "xz-9", "zstd-19", "brotli-11"]
    assert bl.byte_compress_all(TEXT) == results  # gzip header has mtime=0
    empty = bl.byte_compress("", "gzip-9")
    assert empty.original_bytes == 0 and empty.compressed_bytes > 0
    with pytest.raises(ValueError, match="not one of"):
        bl.byte_compress(TEXT, "bzip2")


# ------------------------------------------------------------------------------------------- truncation


class WordTokenizer:
    """Whitespace tokenizer without keyword arguments (like a minimal custom tokenizer)."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        inverse = {i: w for w, i in self.vocab.items()}
        return " ".join(inverse[i] for i in ids)


class HFLikeTokenizer(WordTokenizer):
    """Adds a BOS id unless add_special_tokens=False, as Hugging Face tokenizers do."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:  # type: ignore[override]
        return ([-1] if add_special_tokens else []) + super().encode(text)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:  # type: ignore[override]
        return super().decode([i for i in ids if i >= 0 or not skip_special_tokens])


@pytest.mark.parametrize("tokenizer_cls", [WordTokenizer, HFLikeTokenizer])
def test_truncate_to_tokens(tokenizer_cls: type[WordTokenizer]) -> None:
    tok = tokenizer_cls()
    assert bl.truncate_to_tokens("one two three four five", 3, tok) == "one two three"
    assert bl.truncate_to_tokens("one  two", 5, tok) == "one  two"  # fits: returned unchanged
    assert bl.truncate_to_tokens("one two", 0, tok) == ""
    assert bl.count_tokens("one two three", tok) == 3  # no special tokens counted
    with pytest.raises(ValueError, match="budget"):
        bl.truncate_to_tokens("x", -1, tok)


def test_count_tokens_with_a_callable() -> None:
    assert bl.count_tokens("a b c d", lambda text: len(text.split())) == 4


# ------------------------------------------------------------------------------------- tiktoken offline


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import tiktoken.load

    real = tiktoken.load.read_file

    def read_file(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise AssertionError(f"tiktoken tried to download {blobpath}")
        return real(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", read_file)


def test_ensure_tiktoken_offline_loads_cl100k_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path))  # tiktoken's second choice of cache dir
    target = bl.ensure_tiktoken_offline()
    assert target.parent == tmp_path
    assert target.name == hashlib.sha1(bl.CL100K_URL.encode()).hexdigest()
    assert bl.ensure_tiktoken_offline() == target  # idempotent
    ranks = load_tiktoken_bpe(bl.CL100K_URL, expected_hash=bl.CL100K_SHA256)  # read from the cache
    assert len(ranks) == 100256
    assert tiktoken.encoding_for_model("gpt-3.5-turbo").encode("hello world") == [15339, 1917]


def test_ensure_tiktoken_offline_refuses_disabled_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    with pytest.raises(RuntimeError, match="disabled"):
        bl.ensure_tiktoken_offline()


# ------------------------------------------------------------------------------------------- LLMLingua


def _tiny_llama(vocab_size: int, **kwargs: int) -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        **kwargs,
    )
    return transformers.LlamaForCausalLM(config).eval()


def test_cache_conversion_keeps_the_prefix() -> None:
    """LLMLingua's list-of-pairs cache, converted back, gives the logits of one full pass (tol 1e-5)."""
    import torch

    model = _tiny_llama(100)
    cache_kwarg = (
        "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    )
    ids = torch.randint(0, 100, (1, 20))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = model(ids).logits
        first = model(ids[:, :12], use_cache=True)
        pairs = bl._to_pairs(getattr(first, "cache", None) or first.past_key_values)
        assert len(pairs) == 2 and pairs[0][0].shape[2] == 12
        mask = torch.ones(1, 20, dtype=torch.long)
        rest = model(ids[:, 12:], attention_mask=mask, **{cache_kwarg: bl._to_cache(pairs)})
    assert torch.allclose(rest.logits, full[:, 12:], atol=1e-5)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama with a byte-level BPE tokenizer trained in the test (about 1 s)."""
    import tokenizers
    import transformers

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT] * 20, vocab_size=400, min_frequency=1, special_tokens=["<s>", "</s>"])
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>"
    )
    folder = tmp_path_factory.mktemp("tiny_llama")
    model = _tiny_llama(len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_llmlingua_compresses_offline(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    baseline = bl.LLMLinguaBaseline(tiny_model_dir, tiktoken_cache_dir=tmp_path / "tiktoken")
    long_text = TEXT * 3
    # Several of LLMLingua's 200-token windows, so its KV-cache path runs (the part patched for transformers 5).
    assert len(baseline.compressor.tokenizer(long_text)["input_ids"]) > 3 * 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = baseline.compress(long_text, rate=0.4)
        assert 0 < result.compressed_tokens < result.origin_tokens
        assert result.ratio == pytest.approx(result.origin_tokens / result.compressed_tokens)
        assert isinstance(result.compressed_prompt, str) and result.compressed_prompt
        with_question = baseline.compress([TEXT, TEXT], rate=0.5, question="Who is Robert Boulter?")
    assert with_question.compressed_prompt.rstrip().endswith("Who is Robert Boulter?")
    clone = pickle.loads(pickle.dumps(baseline))
    assert clone.model_path == baseline.model_path and clone._compressor is None


def test_llmlingua_refuses_hub_ids() -> None:
    with pytest.raises(ValueError, match="local folder"):
        bl.LLMLinguaBaseline("NousResearch/Llama-2-7b-hf")
