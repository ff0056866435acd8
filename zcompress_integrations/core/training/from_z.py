"""Train the reader to serve answers from Z: the loss of an answer given a prompt whose context is Z-tokens.

Inference (``core/generation.py``) reads a prompt's Z context with the ``decompress`` adapter on and runs the rest
of the prompt and the answer on the base model, which attends to the adapter's keys and values. This loss follows
the same path: the head of the prompt (up to the last Z-token) runs under the adapter, the tail and the teacher-
forced answer run with adapters off, and the gradient reaches the adapter only through the head's keys and values
in the cache. So the adapter learns to lay out Z for a base model that answers, and the base model stays itself.

Examples come from the training split only (``shared/data/README.md``): HotpotQA train (supporting paragraphs
plus up to two distractors), Natural Questions oracle passages, and "repeat the document" prompts over training
segments (their answer is the segment's text), which teach the base model to take content from the Z reading.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zcompress_integrations.errors import ConfigError

if TYPE_CHECKING:
    from zcompress_integrations.core.latent import LatentCodec
    from zcompress_integrations.core.training.config import AnswerSettings

__all__ = [
    "AnswerExample",
    "AnswerLoss",
    "answer_card",
    "ANSWER_FILES",
    "load_answer_examples",
    "repeat_example",
    "answer_loss",
    "REPEAT_PROMPT",
]

REPEAT_PROMPT = "Repeat Document 1 word for word."


@dataclass(frozen=True)
class AnswerExample:
    """A question, its context paragraphs ``(title, text)`` and the answer to train on."""

    question: str
    context: tuple[tuple[str, str], ...]
    answer: str


ANSWER_FILES = ("hotpotqa/hotpotqa_train_100.jsonl", "natural_questions/nq_open_oracle_500.jsonl")


def load_answer_examples(data_dir: str | Path, seed: int = 0) -> list[AnswerExample]:
    """HotpotQA train (100) and Natural Questions oracle (500) examples from ``data_dir`` (the two files of
    :data:`ANSWER_FILES`), shuffled with ``seed``. Training files only: the HotpotQA dev file, CNN/DM, Qulac and
    WikiText test files are evaluation data."""
    root = Path(data_dir)
    missing = [name for name in ANSWER_FILES if not (root / name).is_file()]
    if missing:
        raise ConfigError(f"answer examples: {root} lacks {missing} (the training split of the data folder)")
    rng = random.Random(seed)
    examples = []
    for line in (root / ANSWER_FILES[0]).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        paragraphs = {title: "".join(sentences).strip() for title, sentences in r["context"]}
        support = list(dict.fromkeys(f[0] for f in r["supporting_facts"] if f[0] in paragraphs))
        others = [t for t in paragraphs if t not in support]
        titles = support + rng.sample(others, min(2, len(others)))
        rng.shuffle(titles)
        examples.append(AnswerExample(r["question"], tuple((t, paragraphs[t]) for t in titles), r["answer"]))
    for line in (root / ANSWER_FILES[1]).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        ctx = r["ctxs"][0]
        examples.append(AnswerExample(r["question"], ((ctx["title"], ctx["text"]),), r["answers"][0]))
    rng.shuffle(examples)
    return examples


def repeat_example(text: str) -> AnswerExample:
    """A "repeat the document" example: the answer is the document itself."""
    return AnswerExample(REPEAT_PROMPT, (("", text),), text)


def answer_loss(zc: Any, codes: list[Any], example: AnswerExample) -> Any:
    """Mean CE (nats/token) of ``example.answer`` and its end token, given the prompt that
    :func:`~zcompress_integrations.core.generation.build_prompt` makes from ``codes`` (the context as Z codes or
    text) and the question, read the way :func:`~zcompress_integrations.core.generation.generate` reads it."""
    import torch
    from transformers import DynamicCache

    from zcompress_integrations.core.backbone import read_prompt
    from zcompress_integrations.core.generation import build_prompt, embed_pieces, prompt_span, read_length

    codec = zc.latent_codec
    model = codec.lm
    tokenizer = zc.backbone.tokenizer
    titles = [title or None for title, _ in example.context]
    pieces, _, _, _ = build_prompt(zc, example.question, codes, titles)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end = end if isinstance(end, int) and end >= 0 else tokenizer.eos_token_id
    answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [end]
    dev = zc.backbone.device
    emb = model.get_input_embeddings()
    x, pos = embed_pieces(emb, pieces, dev)
    span = prompt_span(pieces)
    answer_ids = torch.tensor(answer, device=dev)
    x = torch.cat([x, emb(answer_ids[:-1]).to(x.dtype)], 0)
    pos = torch.cat([pos, torch.arange(span, span + len(answer) - 1, device=dev)], 0)
    cache = DynamicCache(config=model.config)
    with codec.peft_model.disable_adapter():
        out = read_prompt(
            model,
            x[None],
            pos[None],
            cache,
            head=read_length(pieces),
            head_context=codec.reading_inside_base,
            logits_to_keep=len(answer),
        )
    return torch.nn.functional.cross_entropy(out.logits[0].float(), answer_ids)


def answer_card(cfg: AnswerSettings, examples_seen: int) -> dict[str, Any]:
    """The adapters' training-card entry for the answer-from-Z term of a run."""
    return {
        "weight": cfg.qa_weight,
        "examples_per_step": cfg.qa_batch,
        "repeat_share": cfg.qa_repeat,
        "examples_seen": examples_seen,
        "data": f"{cfg.qa_data} (first {cfg.qa_held} held apart) + repeat prompts",
    }


class AnswerLoss:
    """The answer-from-Z loss over the training examples of ``cfg.qa_data`` (the first ``cfg.qa_held`` held apart).

    ``cache_codes``: make each context's code once per ratio and keep it (a fixed code: the token-group reader's
    training); off, every call writes the code again (a writer that trains along: the learned code's)."""

    def __init__(
        self, codec: LatentCodec, cfg: AnswerSettings, *, seed: int, cache_codes: bool = True
    ) -> None:
        from zcompress_integrations.core.compressor import ZCompressor

        examples = load_answer_examples(cfg.qa_data, seed=seed)  # type: ignore[arg-type]
        if len(examples) <= cfg.qa_held:
            raise ConfigError(
                f"{type(cfg).__name__}.qa_held={cfg.qa_held} leaves none of the {len(examples)} answer examples"
            )
        self.codec, self.zc = codec, ZCompressor.from_codec(codec)
        self.held, self.train = examples[: cfg.qa_held], examples[cfg.qa_held :]
        self.cache_codes = cache_codes
        self.codes: dict[Any, Any] = {}

    def __call__(self, example: AnswerExample, ratio: float) -> Any:
        import torch

        key = (example, ratio)
        codes = self.codes.get(key)
        if codes is None:
            with torch.no_grad():
                codes = self.codec.compress_batch([text for _, text in example.context], ratio=ratio)
            if self.cache_codes:
                self.codes[key] = codes
        return answer_loss(self.zc, codes, example)

    def backward(
        self, cfg: AnswerSettings, rng: Any, rows: Any, tokenizer: Any, ratios: list[float]
    ) -> float:
        """Backpropagate ``cfg.qa_weight`` times the mean answer loss of ``cfg.qa_batch`` examples drawn with
        ``rng`` (a share ``cfg.qa_repeat`` of them "repeat the document" prompts over training ``rows``), each at a
        ratio drawn from ``ratios``, one forward each: their lengths differ, the gradients add up. Returns the mean
        answer loss (nats/token)."""
        from zcompress_integrations.core.latent import READER

        total = 0.0
        for _ in range(cfg.qa_batch):
            if rng.random() < cfg.qa_repeat:
                example = repeat_example(tokenizer.decode(rows[rng.integers(0, len(rows))].tolist()))
            else:
                example = self.train[int(rng.integers(0, len(self.train)))]
            ratio = float(rng.choice(ratios))
            loss = self(example, ratio)
            (cfg.qa_weight / cfg.qa_batch * loss).backward()
            self.codec.peft_model.base_model.set_adapter(READER)  # the answer loss toggles adapter layers
            total += float(loss.detach())
        return total / cfg.qa_batch

    def held_ce(self, ratio: float) -> float:
        """Mean answer CE (nats/token) of the held-apart examples with their contexts coded at ``ratio``."""
        import torch

        with torch.no_grad():
            return sum(float(self(e, ratio)) for e in self.held) / len(self.held)
