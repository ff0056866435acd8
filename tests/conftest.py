"""Shared fixtures: a tiny random Llama (fast, offline, for logic) and the real default model (for truth)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Compression turns long text into a few tokens. "
    "LangChain and LlamaIndex retrieve documents; the model answers questions about them. "
    "Wikipedia paragraphs, news articles and agent memories are all plain English prose. 0123456789 "
)
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def build_tiny_model(
    folder: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0, arch: str = "llama"
) -> Path:
    """Save a random causal LM (``arch``: ``"llama"``, ``"qwen3"`` or ``"gemma3"``) with a byte-level BPE tokenizer
    (all 256 bytes + merges) to ``folder``."""
    import tokenizers
    import torch
    import transformers

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator([_CORPUS] * 20, vocab_size=512, min_frequency=1, special_tokens=["<s>", "</s>"])
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>"
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
    }[arch]
    extra = {"head_dim": hidden // 4} if arch != "llama" else {}
    config = config_cls(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
        **extra,
    )
    model = model_cls(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama (hidden 64) with a byte-level BPE tokenizer, saved once per test run."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_compressor(tiny_model_dir: Path) -> Any:
    """A ZCompressor over the tiny random model (no adapters), shared by the whole run."""
    from zcompress_integrations import ZCompressor

    return ZCompressor.from_pretrained(tiny_model_dir, adapters=None, window=64)


class LoopWatch:
    """Makes ``compress_batch`` wait until the event loop has ticked: a call run on the loop's own thread can never
    see a tick, times out its wait and fails :meth:`check` (no timing assumptions about how fast the model is)."""

    def __init__(self, compressor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ticks = 0
        self.ticks_during_calls: list[int] = []
        self.call_threads: list[int] = []
        self._ticked = threading.Event()
        real = compressor.compress_batch

        def compress_batch(texts: Any, **kwargs: Any) -> Any:
            self.call_threads.append(threading.get_ident())
            start = self.ticks
            self._ticked.clear()
            self._ticked.wait(timeout=10)
            self.ticks_during_calls.append(self.ticks - start)
            return real(texts, **kwargs)

        monkeypatch.setattr(compressor, "compress_batch", compress_batch)

    async def run(self, awaitable: Any) -> Any:
        """Await ``awaitable`` while a ticker task counts the loop's turns."""
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                self.ticks += 1
                self._ticked.set()
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        try:
            return await awaitable
        finally:
            stop.set()
            await task

    def check(self) -> None:
        assert self.call_threads and threading.get_ident() not in self.call_threads
        assert min(self.ticks_during_calls) >= 1  # the loop ran while the compress call was in progress


@pytest.fixture
def loop_watch(tiny_compressor: Any, monkeypatch: pytest.MonkeyPatch) -> LoopWatch:
    """A :class:`LoopWatch` on the shared tiny compressor."""
    return LoopWatch(tiny_compressor, monkeypatch)


@pytest.fixture(scope="session")
def default_compressor() -> Any:
    """The real embedded default (SmolLM2-135M). Use only in tests marked ``slow``."""
    from zcompress_integrations import ZCompressor

    return ZCompressor.from_pretrained()


@pytest.fixture
def answer_data(tmp_path: Path) -> Path:
    """A folder shaped like the training split's answer files (``core/training/from_z.py``): one HotpotQA example
    (a supporting paragraph and a distractor) and three Natural Questions ones."""
    import json

    data = tmp_path / "qa"
    (data / "hotpotqa").mkdir(parents=True)
    (data / "natural_questions").mkdir()
    hp = {
        "question": "Who jumps?",
        "answer": "the fox",
        "supporting_facts": [["Fox", [0], ["x"]]],
        "context": [["Fox", ["The quick brown fox jumps."]], ["Dog", ["The lazy dog sleeps."]]],
    }
    nq = {
        "question": "What sleeps?",
        "answers": ["the dog"],
        "ctxs": [{"title": "Dog", "text": "The lazy dog sleeps."}],
    }
    (data / "hotpotqa" / "hotpotqa_train_100.jsonl").write_text(json.dumps(hp) + "\n")
    (data / "natural_questions" / "nq_open_oracle_500.jsonl").write_text((json.dumps(nq) + "\n") * 3)
    return data


@pytest.fixture(scope="session")
def tiny_latent_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token-group adapters (the shipped code kind) for the tiny model, trained for 2 steps by the real reader
    trainer (plumbing, not quality)."""
    import numpy as np

    from zcompress_integrations.core.backbone import load_backbone
    from zcompress_integrations.core.training import ReaderConfig, train_reader

    backbone = load_backbone(str(tiny_model_dir), device="cpu")
    ids = backbone.tokenizer(_CORPUS * 10)["input_ids"]
    segments = np.asarray([ids[i : i + 32] for i in range(0, len(ids) - 32, 4)][:64])
    out = tmp_path_factory.mktemp("tiny_latent")
    cfg = ReaderConfig(out=str(out), segment_len=32, lora_r=2, steps=2, batch_size=4, held=8, eval_every=1000)
    train_reader(cfg, backbone=backbone, segments=segments)
    return out / "adapters"


@pytest.fixture(scope="session")
def tiny_latent_compressor(tiny_model_dir: Path, tiny_latent_adapters: Path) -> Any:
    """A ZCompressor over the tiny model with (barely) trained latent adapters: latent code paths run for real."""
    from zcompress_integrations import ZCompressor

    return ZCompressor.from_pretrained(tiny_model_dir, adapters=tiny_latent_adapters, window=64)
