"""The benchmark suites behind ``zcompress eval``: each returns a plain dict of figures and table rows.

Suites (all on the offline ``shared/data`` sets, ``limit`` records each, chosen with ``seed``):

* ``reconstruction``: WikiText-2 paragraphs and CNN/DM articles. The exact codec (ratio, bits/char, exactness,
  bound ``log2(K)/H`` with ``H`` the backbone's cross-entropy in bits/token of the same text), the latent codec at
  each ratio (achieved ratio, BLEU-4 and exact match of what the model reads back from Z, ``reconstruct``; exact
  match of ``decompress``; bound ``log2(K_eff)/H``) and byte compressors (bits/char).
* ``qa``: HotpotQA dev. Answer EM/F1 and prompt tokens with the full context, the latent Z context at each ratio,
  plain truncation and LLMLingua at the same token budget, and no context.
* ``summarization``: CNN/DM. ROUGE-1/2/L of a summary from the full article vs from its latent Z context.
* ``queries``: Qulac-style long queries. Exact and latent ratios, bits/char, round-trip exactness (latent: of the
  model's reading).
* ``speed``: tokens/s and peak memory of compress and decompress at several text lengths.

Latent rows read ``"unavailable"`` (with the reason) when no trained adapters are found, so the exact rows and the
baselines still run. Quality figures are deterministic: fixed selection seeds, greedy decoding, and the exact
codec's fixed computation path. Timings vary between runs.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zcompress_integrations.errors import LatentUnavailableError

__all__ = [
    "SUITES",
    "SUITE_ORDER",
    "SuiteConfig",
    "EvalContext",
    "cross_entropy_bits",
    "run_reconstruction",
    "run_qa",
    "run_summarization",
    "run_queries",
    "run_speed",
]

logger = logging.getLogger(__name__)

UNAVAILABLE = "unavailable"
SUMMARY_PROMPT = "Summarize the article in 3 sentences."


@dataclass
class SuiteConfig:
    """What the suites run on.

    Attributes:
        model: Backbone path or name; ``None`` for the embedded default.
        adapters: Latent adapter directory (``"default"`` for the shipped one, ``None`` for none).
        limit: Records per data set.
        seed: Selection seed.
        ratios: Latent compression ratios (and truncation/LLMLingua budgets in ``qa``).
        device: Torch device for the compressor.
        data_dir: Data folder (default: found by :func:`..datasets.resolve_data_dir`).
        show_progress: Draw tqdm bars on stderr.
        max_tokens: Every input text (paragraph, article, query, QA paragraph) is cut to its first this many
            tokens, so a CPU run stays short (one exact-codec window of 256 tokens); 0 keeps texts whole.
        qa_paragraphs: HotpotQA context paragraphs per question: the gold ones first chosen, then distractors, in
            the original order; 0 keeps all 10.
        llmlingua: Run the LLMLingua baseline in ``qa``.
        speed_lengths: Text lengths in tokens for ``speed``.
        qa_max_new_tokens: Answer length cap.
        qa_shard: ``(i, n)``: answer only questions i, i+n, i+2n, ... of the ``limit`` selected, so a long QA run
            can be split across processes or sessions and merged (``zcompress eval --merge``).
        summary_max_new_tokens: Summary length cap.
    """

    model: str | None = None
    adapters: str | None = "default"
    limit: int = 20
    seed: int = 0
    ratios: tuple[float, ...] = (2.0, 4.0)
    device: str = "auto"
    data_dir: str | None = None
    show_progress: bool = True
    max_tokens: int = 256
    qa_paragraphs: int = 4
    llmlingua: bool = True
    speed_lengths: tuple[int, ...] = (128, 1024)
    qa_max_new_tokens: int = 16
    qa_shard: tuple[int, int] = (0, 1)
    summary_max_new_tokens: int = 60
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}.")
        if not self.ratios or any(r <= 0 for r in self.ratios):
            raise ValueError(f"ratios must be positive numbers, got {self.ratios}.")
        if any(n < 1 for n in self.speed_lengths):
            raise ValueError(f"speed_lengths must be >= 1, got {self.speed_lengths}.")
        i, n = self.qa_shard
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"qa_shard must be (i, n) with 0 <= i < n, got {self.qa_shard}.")


class EvalContext:
    """One compressor (and LLMLingua baseline) shared by all suites of a run, loaded on first use."""

    def __init__(self, config: SuiteConfig) -> None:
        self.config = config
        self._zc: Any = None
        self._llmlingua: Any = None
        self.latent_error: str | None = None
        self.last_failure: str | None = None

    @property
    def zc(self) -> Any:
        if self._zc is None:
            from zcompress_integrations.core.compressor import ZCompressor

            self._zc = ZCompressor.from_pretrained(
                self.config.model, adapters=self.config.adapters, device=self.config.device
            )
        return self._zc

    @property
    def tokenizer(self) -> Any:
        return self.zc.backbone.tokenizer

    def model_dir(self) -> Path:
        """Local folder of the backbone (LLMLingua loads its own copy from it)."""
        if self.config.model is None:
            from zcompress_integrations.core.backbone import default_model_dir

            return default_model_dir()
        return Path(self.config.model)

    def llmlingua(self) -> Any:
        if self._llmlingua is None:
            from zcompress_integrations.eval.baselines import LLMLinguaBaseline

            device = str(self.zc.backbone.device)
            self._llmlingua = LLMLinguaBaseline(self.model_dir(), device=device)
        return self._llmlingua

    def latent(self, fn: Callable[[], Any]) -> Any:
        """Run a latent-codec step; ``None`` when it cannot run, with the reason kept for :meth:`unavailable`.

        No adapters (:class:`LatentUnavailableError`) turns every later latent step off. Any other failure is
        logged and recorded for this row only (status ``"error"``), so one broken step does not lose the run.
        """
        if self.latent_error is not None:
            return None
        self.last_failure = None
        try:
            return fn()
        except LatentUnavailableError as err:
            self.latent_error = str(err)
            logger.warning("latent codec unavailable: %s", err)
        except Exception as err:  # noqa: BLE001 - recorded in the report, not swallowed
            logger.exception("latent step failed")
            self.last_failure = f"{type(err).__name__}: {err}"
        return None

    def unavailable(self) -> dict[str, Any]:
        """The row recorded for a latent step that did not run."""
        if self.latent_error is None and self.last_failure is not None:
            return {"status": "error", "reason": self.last_failure}
        return {"status": UNAVAILABLE, "reason": self.latent_error}

    def cut(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return text
        from zcompress_integrations.eval.baselines import truncate_to_tokens

        return truncate_to_tokens(text, max_tokens, self.tokenizer)

    def bar(self, total: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=total, desc=desc, unit="step", disable=not self.config.show_progress, file=sys.stderr
        )


# -------------------------------------------------------------------------------------------- cross-entropy


def cross_entropy_bits(
    zc: Any, codes: Sequence[Any], texts: Sequence[str], *, batch_size: int = 4
) -> list[float]:
    """Backbone cross-entropy ``H`` in bits per text token of each text, as the exact codec sees it.

    Each text is cut into the same windows its exact code used (``params["window"]``), each window after the
    code's start token, and one parallel forward per batch of windows scores every token. The exact codec's
    bits per token approach this value, so ``log2(K) / H`` is the ratio it can reach.

    Args:
        zc: The compressor.
        codes: Exact codes of ``texts`` (for the window and start token).
        texts: The texts.
        batch_size: Windows per forward pass.

    Returns:
        ``H`` per text (``nan`` for an empty text).
    """
    import torch

    backbone = zc.backbone
    tokenizer, model, vocab = backbone.tokenizer, backbone.model, backbone.text_vocab_size
    windows: list[tuple[int, list[int]]] = []
    for owner, (code, text) in enumerate(zip(codes, texts, strict=True)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        step, start = int(code.params["window"]), int(code.params["start"])
        windows += [(owner, [start, *ids[s : s + step]]) for s in range(0, len(ids), step)]
    nats = [0.0] * len(texts)
    counts = [0] * len(texts)
    pad = tokenizer.pad_token_id or 0
    # The latent codec's LoRA layers (if loaded) must not score the text: H is the base model's.
    with zc.base_model(), torch.inference_mode():
        for s in range(0, len(windows), batch_size):
            chunk = windows[s : s + batch_size]
            width = max(len(ids) for _, ids in chunk)
            x = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (_, ids) in enumerate(chunk):
                x[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            logits = model(input_ids=x.to(backbone.device), attention_mask=mask.to(backbone.device)).logits
            logits = logits[:, :-1, :vocab].float()
            loss = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), x[:, 1:].to(logits.device), reduction="none"
            ).cpu()
            valid = mask[:, 1:].bool()
            for row, (owner, _) in enumerate(chunk):
                nats[owner] += float(loss[row][valid[row]].sum())
                counts[owner] += int(valid[row].sum())
    return [n / c / math.log(2) if c else math.nan for n, c in zip(nats, counts, strict=True)]


def _bits_per_char(codes: list[Any], chars: int) -> dict[str, float]:
    """What a code costs per character: the whole stored container (``to_bytes()``: header, lengths, fingerprint,
    checksums) and its payload alone (Z ids times log2(k), plus any residual)."""
    return {
        "bits_per_char": 8 * sum(len(c.to_bytes()) for c in codes) / chars,
        "payload_bits_per_char": sum(c.bits for c in codes) / chars,
    }


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


# ----------------------------------------------------------------------------------------- reconstruction


def _latent_round_trip(zc: Any, texts: list[str], ratio: float) -> tuple[list[Any], list[str]]:
    """Latent codes of the texts and what the model reads back from their Z-tokens (``reconstruct``: the reader's
    free-running text, not the tokens the ids may name; ``decompress`` gives those)."""
    codes = zc.compress_batch(texts, mode="latent", ratio=ratio)
    return codes, [str(t) for t in zc.reconstruct_batch(codes)]


def _reconstruction_set(ctx: EvalContext, name: str, texts: list[str], bar: Any) -> dict[str, Any]:
    from zcompress_integrations.eval import baselines, metrics

    zc, cfg = ctx.zc, ctx.config
    out: dict[str, Any] = {"n": len(texts), "chars": sum(map(len, texts))}
    bar.set_description(f"reconstruction/{name}: exact compress")
    codes = zc.compress_batch(texts, mode="exact")
    bar.update(1)
    bar.set_description(f"reconstruction/{name}: exact decompress")
    decoded = zc.decompress_batch(codes)
    bar.update(1)
    bar.set_description(f"reconstruction/{name}: cross-entropy")
    h = cross_entropy_bits(zc, codes, texts)
    bar.update(1)
    text_tokens = sum(c.text_tokens for c in codes)
    # Token-weighted, like the ratio (total text tokens / total Z-tokens) it bounds.
    scored = [(x, c.text_tokens) for x, c in zip(h, codes, strict=True) if math.isfinite(x)]
    h_mean = sum(x * n for x, n in scored) / sum(n for _, n in scored) if scored else math.nan
    out["text_tokens"] = text_tokens
    out["cross_entropy_bits_per_token"] = h_mean
    out["exact"] = {
        "k": zc.k,
        "ratio": metrics.compression_ratio(text_tokens, sum(c.z_tokens for c in codes)),
        "mean_ratio": _mean([c.ratio for c in codes]),
        **_bits_per_char(codes, out["chars"]),
        "bits_per_token": sum(c.bits for c in codes) / max(text_tokens, 1),
        "exactness": metrics.exact_match_rate(decoded, texts),
        "bound": metrics.exact_reconstruction_bound(zc.k, h_mean) if h_mean > 0 else math.nan,
    }
    latent: dict[str, Any] = {}
    for ratio in cfg.ratios:
        bar.set_description(f"reconstruction/{name}: latent x{ratio:g}")
        pair = ctx.latent(lambda r=ratio: _latent_round_trip(zc, texts, r))
        if pair is None:
            latent[f"{ratio:g}"] = ctx.unavailable()
            bar.update(1)
            continue
        lcodes, hyps = pair
        k_eff = zc.latent_codec.code.k
        latent[f"{ratio:g}"] = {
            "status": "ok",
            "target_ratio": ratio,
            "k_eff": k_eff,
            "ratio": metrics.compression_ratio(text_tokens, sum(c.z_tokens for c in lcodes)),
            "mean_ratio": _mean([c.ratio for c in lcodes]),
            **_bits_per_char(lcodes, out["chars"]),
            "bleu": metrics.bleu(hyps, texts),
            "exact_match": metrics.exact_match_rate(hyps, texts),
            # what decompress gives back (exact where the code holds the text; else the same reading)
            "decompress_exact_match": metrics.exact_match_rate(
                [str(t) for t in zc.decompress_batch(lcodes)], texts
            ),
            "bound": metrics.exact_reconstruction_bound(k_eff, h_mean) if h_mean > 0 else math.nan,
        }
        bar.update(1)
    out["latent"] = latent
    bar.set_description(f"reconstruction/{name}: byte baselines")
    byte_rows: dict[str, Any] = {}
    for method in baselines.DEFAULT_BYTE_METHODS:
        results = [baselines.byte_compress(t, method) for t in texts]
        byte_rows[method] = {
            "bits_per_char": 8 * sum(r.compressed_bytes for r in results) / out["chars"],
            "ratio_bytes": sum(r.original_bytes for r in results) / sum(r.compressed_bytes for r in results),
        }
    out["bytes"] = byte_rows
    bar.update(1)
    return out


def run_reconstruction(ctx: EvalContext) -> dict[str, Any]:
    """Exact and latent codecs, and byte compressors, on WikiText-2 paragraphs and CNN/DM articles."""
    from zcompress_integrations.eval import datasets

    cfg = ctx.config
    paragraphs = datasets.load_wikitext_paragraphs(cfg.limit, cfg.seed, min_chars=1, data_dir=cfg.data_dir)
    articles = datasets.load_cnndm(cfg.limit, cfg.seed, data_dir=cfg.data_dir)
    sets = {
        "wikitext": [ctx.cut(p.text_detok, cfg.max_tokens) for p in paragraphs],
        "cnndm": [ctx.cut(a.article, cfg.max_tokens) for a in articles],
    }
    result: dict[str, Any] = {"max_tokens": cfg.max_tokens}
    with ctx.bar(len(sets) * (4 + len(cfg.ratios)), "reconstruction") as bar:
        for name, texts in sets.items():
            result[name] = _reconstruction_set(ctx, name, texts, bar)
    return result


# ------------------------------------------------------------------------------------------------------- QA


def _qa_context(example: Any, paragraphs: int) -> list[tuple[str, str]]:
    if paragraphs <= 0 or len(example.context) <= paragraphs:
        return list(example.context)
    gold = [i for i, (title, _) in enumerate(example.context) if title in example.supporting_titles]
    rest = [i for i in range(len(example.context)) if i not in gold]
    keep = sorted((gold + rest)[:paragraphs])
    return [example.context[i] for i in keep]


def _answer(text: str) -> str:
    return text.strip().split("\n")[0].strip()


QARequest = tuple[str, str, list[Any], "list[str] | None"]


def _qa_requests(
    ctx: EvalContext,
    question: str,
    context: list[tuple[str, str]],
    latent_codes: dict[float, list[Any] | None],
    pos: int,
    methods: dict[str, dict[str, Any]],
    plain: list[QARequest],
    latent: list[QARequest],
    bar: Any,
) -> None:
    """Queue one question's requests: full text, none, and per ratio the Z codes (``latent_codes[ratio][pos:]``,
    the question's paragraphs) and truncation / LLMLingua at the Z context's token budget."""
    cfg, zc = ctx.config, ctx.zc
    titles = [t for t, _ in context]
    texts = [p for _, p in context]
    joined = "\n\n".join(f"{t}: {p}" for t, p in context)
    full_tokens = zc.count_tokens(joined)
    plain.append(("full", question, texts, titles))
    plain.append(("none", question, [], None))
    for ratio in cfg.ratios:
        codes = latent_codes[ratio]
        tag = f"x{ratio:g}"
        if codes is not None:
            mine = codes[pos : pos + len(texts)]
            budget = sum(c.z_tokens for c in mine)
            latent.append((f"latent {tag}", question, mine, titles))
        else:
            budget = max(1, round(full_tokens / ratio))
            methods[f"latent {tag}"] = ctx.unavailable()
        plain.append((f"truncation {tag}", question, [ctx.cut(joined, budget)], None))
        bar.update(1)
        if cfg.llmlingua:
            bar.set_description(f"qa: llmlingua {tag}")
            try:
                squeezed = ctx.llmlingua().compress(texts, rate=min(1.0, budget / max(full_tokens, 1)))
            except ImportError as err:
                methods[f"llmlingua {tag}"] = {"status": UNAVAILABLE, "reason": str(err)}
            else:
                plain.append((f"llmlingua {tag}", question, [squeezed.compressed_prompt], None))
            bar.update(1)


def run_qa(ctx: EvalContext) -> dict[str, Any]:
    """HotpotQA answer EM/F1 and prompt tokens per context method.

    Prompts are built per question and method first; then all answers are decoded together with
    :meth:`ZCompressor.generate_batch` (one batch family on the base model, one with the Z-reading adapter).
    """
    from zcompress_integrations.eval import datasets

    cfg, zc = ctx.config, ctx.zc
    examples = datasets.load_hotpotqa(cfg.limit, cfg.seed, min_paragraphs=2, data_dir=cfg.data_dir)
    examples = examples[cfg.qa_shard[0] :: cfg.qa_shard[1]]
    contexts = [
        [(t, ctx.cut(p, cfg.max_tokens)) for t, p in _qa_context(ex, cfg.qa_paragraphs)] for ex in examples
    ]
    golds = [ex.answer for ex in examples]
    methods: dict[str, dict[str, Any]] = {}
    # (method, question, context items, titles) in question order; latent requests kept apart.
    plain: list[QARequest] = []
    latent: list[QARequest] = []

    n_steps = len(cfg.ratios) * (1 + int(cfg.llmlingua)) * len(examples) + 2
    with ctx.bar(n_steps, "qa") as bar:
        # Latent codes of every paragraph, once per ratio (one batch each).
        bar.set_description("qa: latent compress")
        flat = [text for context in contexts for _, text in context]
        latent_codes: dict[float, list[Any] | None] = {}
        for ratio in cfg.ratios:
            latent_codes[ratio] = ctx.latent(lambda r=ratio: zc.compress_batch(flat, mode="latent", ratio=r))
        budgets_source = "latent" if all(v is not None for v in latent_codes.values()) else "nominal"
        pos = 0
        for ex, context in zip(examples, contexts, strict=True):
            _qa_requests(ctx, ex.question, context, latent_codes, pos, methods, plain, latent, bar)
            pos += len(context)

        def answer(requests: list[QARequest]) -> None:
            results = zc.generate_batch(
                [q for _, q, _, _ in requests],
                contexts=[c for _, _, c, _ in requests],
                titles=[t for _, _, _, t in requests],
                max_new_tokens=cfg.qa_max_new_tokens,
                stop=["\n"],
            )
            for (method, _, _, _), res in zip(requests, results, strict=True):
                row = methods.setdefault(method, {"predictions": [], "prompt_tokens": []})
                row["predictions"].append(_answer(res.text))
                row["prompt_tokens"].append(res.prompt_tokens)

        bar.set_description("qa: answers (text contexts)")
        answer(plain)
        bar.update(1)
        bar.set_description("qa: answers (Z contexts)")
        if latent and ctx.latent(lambda: answer(latent) or True) is None:
            for method, *_ in latent:
                methods[method] = ctx.unavailable()
        bar.update(1)
    order = ["full", "none"] + [
        f"{kind} x{r:g}" for r in cfg.ratios for kind in ("latent", "truncation", "llmlingua")
    ]
    summary = {m: qa_summary(methods[m], golds) for m in sorted(methods, key=order.index)}
    return {
        "n": len(examples),
        "max_tokens": cfg.max_tokens,
        "paragraphs_per_question": cfg.qa_paragraphs,
        "shard": list(cfg.qa_shard),
        "budget_source": budgets_source,
        "golds": golds,
        "methods": summary,
    }


def qa_summary(row: dict[str, Any], golds: list[str]) -> dict[str, Any]:
    """EM, F1, answer accuracy and mean prompt tokens of one method's ``predictions`` and ``prompt_tokens``."""
    from zcompress_integrations.eval import metrics

    if "predictions" not in row:
        return row
    scores = metrics.qa_scores(row["predictions"], golds[: len(row["predictions"])])
    return {
        "status": "ok",
        "em": scores["em"],
        "f1": scores["f1"],
        "contains": scores["contains"],
        "n": scores["n"],
        "prompt_tokens": _mean(row["prompt_tokens"]),
        "predictions": row["predictions"],
    }


# ------------------------------------------------------------------------------------------- summarization


def run_summarization(ctx: EvalContext) -> dict[str, Any]:
    """CNN/DM ROUGE-1/2/L of summaries written from the full article, from its latent Z context, and from no
    context at all (``none``: what the prompt alone scores, the floor a context has to beat)."""
    from zcompress_integrations.eval import datasets, metrics

    cfg, zc = ctx.config, ctx.zc
    examples = datasets.load_cnndm(cfg.limit, cfg.seed, data_dir=cfg.data_dir)
    articles = [ctx.cut(ex.article, cfg.max_tokens) for ex in examples]
    refs = [ex.highlights for ex in examples]
    methods: dict[str, Any] = {}

    def summarize(method: str, contexts: Sequence[Sequence[Any]]) -> None:
        results = zc.generate_batch(
            [SUMMARY_PROMPT] * len(contexts),
            contexts=contexts,
            max_new_tokens=cfg.summary_max_new_tokens,
        )
        outs = [res.text.strip() for res in results]
        methods[method] = {
            "status": "ok",
            **metrics.rouge(outs, refs),
            "prompt_tokens": _mean([res.prompt_tokens for res in results]),
            "summaries": outs,
        }

    with ctx.bar(2 + 2 * len(cfg.ratios), "summarization") as bar:
        bar.set_description("summarization: full text")
        summarize("full", [[a] for a in articles])
        bar.update(1)
        bar.set_description("summarization: no context")
        summarize("none", [[] for _ in articles])
        bar.update(1)
        for ratio in cfg.ratios:
            tag = f"latent x{ratio:g}"
            bar.set_description(f"summarization: {tag}")
            codes = ctx.latent(lambda r=ratio: zc.compress_batch(articles, mode="latent", ratio=r))
            bar.update(1)
            if (
                codes is None
                or ctx.latent(lambda t=tag, c=codes: summarize(t, [[x] for x in c]) or True) is None
            ):
                methods[tag] = ctx.unavailable()
            bar.update(1)
    return {"n": len(articles), "max_tokens": cfg.max_tokens, "prompt": SUMMARY_PROMPT, "methods": methods}


# ------------------------------------------------------------------------------------------------- queries


def run_queries(ctx: EvalContext) -> dict[str, Any]:
    """Exact and latent codes of long Qulac-style queries: ratio, bits/char, round-trip exactness."""
    from zcompress_integrations.eval import datasets, metrics

    cfg, zc = ctx.config, ctx.zc
    queries = datasets.load_qulac_queries(cfg.limit, cfg.seed, data_dir=cfg.data_dir)
    texts = [ctx.cut(q.text, cfg.max_tokens) for q in queries]
    chars = sum(map(len, texts))
    rows: dict[str, Any] = {}
    with ctx.bar(2 + len(cfg.ratios), "queries") as bar:
        bar.set_description("queries: exact")
        codes = zc.compress_batch(texts, mode="exact")
        decoded = zc.decompress_batch(codes)
        text_tokens = sum(c.text_tokens for c in codes)
        rows["exact"] = {
            "status": "ok",
            "ratio": metrics.compression_ratio(text_tokens, sum(c.z_tokens for c in codes)),
            "mean_ratio": _mean([c.ratio for c in codes]),
            **_bits_per_char(codes, chars),
            "exactness": metrics.exact_match_rate(decoded, texts),
        }
        bar.update(2)
        for ratio in cfg.ratios:
            tag = f"latent x{ratio:g}"
            bar.set_description(f"queries: {tag}")
            pair = ctx.latent(lambda r=ratio: _latent_round_trip(zc, texts, r))
            if pair is None:
                rows[tag] = ctx.unavailable()
            else:
                lcodes, hyps = pair
                rows[tag] = {
                    "status": "ok",
                    "ratio": metrics.compression_ratio(text_tokens, sum(c.z_tokens for c in lcodes)),
                    "mean_ratio": _mean([c.ratio for c in lcodes]),
                    **_bits_per_char(lcodes, chars),
                    "exactness": metrics.exact_match_rate(hyps, texts),
                    "bleu": metrics.bleu(hyps, texts),
                }
            bar.update(1)
    n = max(len(texts), 1)
    return {"n": len(texts), "mean_chars": chars / n, "mean_tokens": text_tokens / n, "methods": rows}


# --------------------------------------------------------------------------------------------------- speed


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


def _timed(zc: Any, fn: Callable[[], Any]) -> tuple[Any, float, float | None]:
    import torch

    cuda = zc.backbone.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    value = fn()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return value, dt, gpu


def run_speed(ctx: EvalContext) -> dict[str, Any]:
    """Throughput (text tokens/s) and peak memory of compress and decompress at several text lengths."""
    from zcompress_integrations.eval import datasets

    cfg, zc = ctx.config, ctx.zc
    articles = datasets.load_wikitext_articles(None, cfg.seed, data_dir=cfg.data_dir)
    source = "\n".join(a.text_detok for a in articles[:8])
    modes: list[tuple[str, float | None]] = [("exact", None), *[("latent", r) for r in cfg.ratios[:1]]]
    rows = []
    # load both codecs before timing anything (the latent one may be unavailable: recorded in its rows)
    zc.compress("warm up", mode="exact")
    ctx.latent(lambda: zc.compress("warm up", mode="latent", ratio=cfg.ratios[0]))
    with ctx.bar(len(cfg.speed_lengths) * len(modes), "speed") as bar:
        for length in cfg.speed_lengths:
            text = ctx.cut(source, length)
            for mode, ratio in modes:
                name = "exact" if ratio is None else f"latent x{ratio:g}"
                bar.set_description(f"speed: {name} @ {length} tokens")
                row: dict[str, Any] = {"method": name, "length": length}
                timed = ctx.latent if mode == "latent" else (lambda fn: fn())
                run = functools.partial(
                    _timed, zc, lambda m=mode, r=ratio, t=text: zc.compress(t, mode=m, ratio=r)
                )
                result = timed(run)
                if result is None:  # latent codec unavailable or failed: recorded, the run goes on
                    rows.append({**row, **ctx.unavailable()})
                    bar.update(1)
                    continue
                code, t_c, gpu_c = result
                rss_c = _peak_rss_mb()
                back, t_d, gpu_d = _timed(zc, lambda c=code: zc.decompress(c))
                rss_d = _peak_rss_mb()
                rows.append(
                    {
                        **row,
                        "status": "ok",
                        "text_tokens": code.text_tokens,
                        "z_tokens": code.z_tokens,
                        "compress_s": t_c,
                        "decompress_s": t_d,
                        "compress_tokens_per_s": code.text_tokens / t_c,
                        "decompress_tokens_per_s": code.text_tokens / t_d,
                        "peak_rss_mb_after_compress": rss_c,
                        "peak_rss_mb_after_decompress": rss_d,
                        "cuda_peak_mb_compress": gpu_c,
                        "cuda_peak_mb_decompress": gpu_d,
                        "round_trip": back == text,
                    }
                )
                bar.update(1)
    return {"rows": rows, "note": "peak RSS is the process high-water mark (ru_maxrss) so far"}


#: Suite name -> runner, in the order ``all`` runs them (reconstruction first: it scores H with the base model).
SUITES: dict[str, Callable[[EvalContext], dict[str, Any]]] = {
    "reconstruction": run_reconstruction,
    "qa": run_qa,
    "summarization": run_summarization,
    "queries": run_queries,
    "speed": run_speed,
}
SUITE_ORDER = tuple(SUITES)


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, torch threads, library versions, load average and GPU (if any)."""
    import platform

    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info
