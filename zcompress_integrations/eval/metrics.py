"""Evaluation metrics: reconstruction (exact match, BLEU-4), QA (EM/F1), summaries (ROUGE), ratios, bound.

Pure functions over strings and numbers. BLEU uses ``sacrebleu`` and ROUGE uses ``rouge-score``; both are
imported when first used (``pip install zcompress-integrations[eval]``).

Scales: BLEU is 0-100 (sacrebleu's convention, and the paper's "BLEU-4 99.3"); everything else is 0-1.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "exact_match_rate",
    "bleu",
    "sentence_bleu",
    "normalize_answer",
    "qa_exact_match",
    "qa_f1",
    "qa_contains",
    "qa_scores",
    "rouge",
    "compression_ratio",
    "bits_per_char",
    "bits_per_token",
    "exact_reconstruction_bound",
    "rank",
    "spearman",
]


def _install_hint(package: str) -> ImportError:
    return ImportError(
        f"{package} is needed for this metric; install it with `pip install zcompress-integrations[eval]` "
        f"(or `pip install {package}`)."
    )


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses and references must be sequences of strings, not a single str.")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references differ in length: {len(hypotheses)} vs {len(references)}."
        )


# ---------------------------------------------------------------------------------------- reconstruction


def exact_match_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of hypotheses that equal their reference character for character.

    Args:
        hypotheses: Decoded texts.
        references: Original texts, same length.

    Returns:
        A value in [0, 1]; 0.0 for empty input.
    """
    _check_pairs(hypotheses, references)
    if not references:
        return 0.0
    return sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(references)


def bleu(hypotheses: Sequence[str], references: Sequence[str], *, tokenize: str = "13a") -> float:
    """Corpus BLEU-4 (sacrebleu), 0-100.

    Args:
        hypotheses: Decoded texts.
        references: One reference per hypothesis.
        tokenize: sacrebleu tokenizer (``"13a"`` is its default).

    Returns:
        The corpus BLEU score; 100.0 when every hypothesis equals its reference.
    """
    _check_pairs(hypotheses, references)
    try:
        from sacrebleu.metrics import BLEU
    except ImportError as err:
        raise _install_hint("sacrebleu") from err
    if not references:
        return 0.0
    return float(BLEU(tokenize=tokenize).corpus_score(list(hypotheses), [list(references)]).score)


def sentence_bleu(hypothesis: str, reference: str, *, tokenize: str = "13a") -> float:
    """Sentence BLEU-4 (sacrebleu, ``effective_order=True`` so short texts do not score 0), 0-100.

    Args:
        hypothesis: One decoded text.
        reference: Its reference.
        tokenize: sacrebleu tokenizer.

    Returns:
        The sentence BLEU score.
    """
    try:
        from sacrebleu.metrics import BLEU
    except ImportError as err:
        raise _install_hint("sacrebleu") from err
    return float(BLEU(tokenize=tokenize, effective_order=True).sentence_score(hypothesis, [reference]).score)


# ------------------------------------------------------------------------------------------------------ QA

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lower-case, drop punctuation, drop articles a/an/the, collapse spaces.

    Args:
        text: An answer string.

    Returns:
        The normalised string.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_list(gold: str | Sequence[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else list(gold)


def qa_exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD exact match after :func:`normalize_answer`; the best over several gold answers.

    Args:
        prediction: Predicted answer.
        gold: One gold answer or a list of accepted answers.

    Returns:
        1.0 or 0.0.
    """
    answers = _as_list(gold)
    return max((float(normalize_answer(prediction) == normalize_answer(g)) for g in answers), default=0.0)


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        # SQuAD v2 convention: both empty is a match, one empty is not.
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD token F1 after :func:`normalize_answer`; the best over several gold answers.

    Args:
        prediction: Predicted answer.
        gold: One gold answer or a list of accepted answers.

    Returns:
        A value in [0, 1].
    """
    return max((_f1(prediction, g) for g in _as_list(gold)), default=0.0)


def qa_contains(prediction: str, gold: str | Sequence[str]) -> float:
    """Answer accuracy as LongLLMLingua reports it: 1.0 when a normalised gold answer occurs in the normalised
    prediction (as whole words), else 0.0. Unlike EM and F1 it does not punish a correct answer said in a sentence.

    Args:
        prediction: Predicted answer.
        gold: One gold answer or a list of accepted answers.

    Returns:
        1.0 or 0.0.
    """
    pred = f" {normalize_answer(prediction)} "
    return max(
        (float(bool(g) and f" {g} " in pred) for g in map(normalize_answer, _as_list(gold))), default=0.0
    )


def qa_scores(predictions: Sequence[str], golds: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Mean SQuAD EM and F1, and answer-in-prediction accuracy (:func:`qa_contains`), over a set of questions.

    Args:
        predictions: Predicted answers.
        golds: For each question, one gold answer or a list of accepted answers.

    Returns:
        ``{"em": ..., "f1": ..., "contains": ..., "n": ...}`` with the scores in [0, 1].
    """
    if isinstance(predictions, str) or len(predictions) != len(golds):
        raise ValueError("predictions and golds must be sequences of the same length.")
    n = len(predictions)
    if n == 0:
        return {"em": 0.0, "f1": 0.0, "contains": 0.0, "n": 0}
    pairs = list(zip(predictions, golds, strict=True))
    em = sum(qa_exact_match(p, g) for p, g in pairs) / n
    f1 = sum(qa_f1(p, g) for p, g in pairs) / n
    contains = sum(qa_contains(p, g) for p, g in pairs) / n
    return {"em": em, "f1": f1, "contains": contains, "n": n}


# --------------------------------------------------------------------------------------------------- ROUGE


def rouge(
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    types: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
    use_stemmer: bool = True,
) -> dict[str, float]:
    """Mean ROUGE F-measure (``rouge-score``, Porter stemmer by default), 0-1.

    Args:
        hypotheses: Generated texts.
        references: One reference per hypothesis.
        types: ROUGE variants (``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``).
        use_stemmer: Stem tokens before matching.

    Returns:
        ``{type: mean F-measure}``; identical texts give 1.0.
    """
    _check_pairs(hypotheses, references)
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:
        raise _install_hint("rouge-score") from err
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=use_stemmer)
    totals = dict.fromkeys(types, 0.0)
    for hyp, ref in zip(hypotheses, references, strict=True):
        scores = scorer.score(ref, hyp)  # rouge-score takes (target, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    n = len(references)
    return {t: (totals[t] / n if n else 0.0) for t in types}


# ------------------------------------------------------------------------------------- ratios and the bound


def compression_ratio(original: float, compressed: float) -> float:
    """``original / compressed`` (e.g. text tokens per Z-token, or bytes in per byte out).

    Args:
        original: Size before compression (tokens, bytes, ...).
        compressed: Size after, in the same or a comparable unit.

    Returns:
        The ratio; ``inf`` when ``compressed`` is 0 and ``original`` is not.

    Raises:
        ValueError: A size is negative.
    """
    if original < 0 or compressed < 0:
        raise ValueError(f"sizes must be >= 0, got original={original}, compressed={compressed}.")
    if compressed == 0:
        return math.inf if original else 0.0
    return original / compressed


def bits_per_char(num_bytes: int, text: str) -> float:
    """Compressed size in bits per character of the original text.

    Args:
        num_bytes: Compressed size in bytes.
        text: The original text.

    Returns:
        ``8 * num_bytes / len(text)``; ``nan`` for an empty text.
    """
    return 8 * num_bytes / len(text) if text else math.nan


def bits_per_token(num_bits: float, num_tokens: int) -> float:
    """Bits per text token (``nan`` when there are no tokens).

    Args:
        num_bits: Total bits.
        num_tokens: Number of text tokens.

    Returns:
        ``num_bits / num_tokens``.
    """
    return num_bits / num_tokens if num_tokens else math.nan


def exact_reconstruction_bound(vocab_size: int, bits_per_text_token: float) -> float:
    """Highest text-tokens-per-Z-token ratio that exact reconstruction allows: ``log2(K) / H``.

    One Z-token from K symbols carries at most ``log2(K)`` bits; a text needs at least its information
    content, estimated as the backbone's cross-entropy ``H`` bits per text token. Above this ratio
    reconstruction must be lossy (K = 4096, H = 4.2 gives about 2.86).

    Args:
        vocab_size: Z vocabulary size K (at least 2).
        bits_per_text_token: Cross-entropy H of the text under the backbone, bits per token (> 0).

    Returns:
        The bound ``log2(K) / H``.

    Raises:
        ValueError: ``vocab_size < 2`` or ``bits_per_text_token <= 0``.
    """
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}.")
    if not bits_per_text_token > 0:
        raise ValueError(f"bits_per_text_token must be > 0, got {bits_per_text_token}.")
    return math.log2(vocab_size) / bits_per_text_token


# ------------------------------------------------------------------------------------------------ Spearman


def rank(values: Sequence[float]) -> list[float]:
    """Ranks starting at 1; tied values share the mean of their ranks (``scipy.stats.rankdata`` "average").

    Args:
        values: Numbers.

    Returns:
        One rank per value.
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mean_rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mean_rank
        i = j + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    vx = sum((a - mx) ** 2 for a in x)
    vy = sum((b - my) ** 2 for b in y)
    if vx == 0 or vy == 0:
        return math.nan
    return cov / math.sqrt(vx * vy)


def spearman(x: Sequence[Any], y: Sequence[Any]) -> float:
    """Spearman rank correlation: Pearson correlation of the ranks, ties averaged (as ``scipy.stats``).

    Args:
        x: First variable.
        y: Second variable, same length.

    Returns:
        A value in [-1, 1]; ``nan`` when either side is constant or there are fewer than 2 pairs.

    Raises:
        ValueError: The lengths differ.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}.")
    if len(x) < 2:
        return math.nan
    return _pearson(rank([float(v) for v in x]), rank([float(v) for v in y]))
