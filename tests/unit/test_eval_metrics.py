"""Metrics on hand-computed cases (tolerances: 1e-9 unless stated)."""

from __future__ import annotations

import math

import pytest

from zcompress_integrations.eval import metrics as m


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   Apple, a day ", "apple day"),
        ("Theatre", "theatre"),  # 'the' inside a word stays
        ("U.S.A.", "usa"),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert m.normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("prediction", "gold", "em"),
    [
        ("The Eiffel Tower", "eiffel tower.", 1.0),
        ("an apple", "Apple", 1.0),
        ("apples", "apple", 0.0),
        ("yes", ["no", "Yes"], 1.0),
        ("Paris", [], 0.0),
    ],
)
def test_qa_exact_match(prediction: str, gold: str | list[str], em: float) -> None:
    assert m.qa_exact_match(prediction, gold) == em


def test_qa_f1_hand_computed() -> None:
    # pred tokens [cat, sat], gold [cat, sat, on, mat]: P = 1, R = 1/2, F1 = 2/3.
    assert m.qa_f1("the cat sat", "a cat sat on the mat") == pytest.approx(2 / 3)
    # pred [barack, obama, jr], gold [barack, obama]: P = 2/3, R = 1, F1 = 0.8.
    assert m.qa_f1("Barack Obama Jr.", "Barack Obama") == pytest.approx(0.8)
    assert m.qa_f1("red", "blue") == 0.0
    assert m.qa_f1("red", ["blue", "red"]) == 1.0
    # Both normalise to empty: a match (SQuAD v2 convention); one empty: no match.
    assert m.qa_f1("the", "a") == 1.0
    assert m.qa_f1("the", "cat") == 0.0


def test_qa_f1_counts_repeated_tokens_once_per_occurrence() -> None:
    # pred [cat, cat], gold [cat]: overlap 1, P = 1/2, R = 1, F1 = 2/3.
    assert m.qa_f1("cat cat", "cat") == pytest.approx(2 / 3)


def test_qa_scores_means() -> None:
    scores = m.qa_scores(["Paris", "the cat sat"], ["paris", "cat sat on mat"])
    assert scores["n"] == 2
    assert scores["em"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert scores["contains"] == pytest.approx(0.5)
    assert m.qa_scores([], []) == {"em": 0.0, "f1": 0.0, "contains": 0.0, "n": 0}


def test_qa_contains_credits_an_answer_said_in_a_sentence_but_not_part_of_a_word() -> None:
    assert m.qa_contains("The final was played at Stadio Olimpico in Rome.", "Stadio Olimpico") == 1.0
    assert m.qa_contains("It was in Boston, Massachusetts", ["Paris", "boston"]) == 1.0
    assert m.qa_contains("Bostonian", "Boston") == 0.0  # whole words only
    assert m.qa_contains("a video game", "the video game") == 1.0  # articles and case are normalised
    assert m.qa_contains("anything", "") == 0.0
    assert m.qa_contains("", "Boston") == 0.0


def test_exact_match_rate() -> None:
    assert m.exact_match_rate(["a b", "c", "d "], ["a b", "c", "d"]) == pytest.approx(2 / 3)
    assert m.exact_match_rate([], []) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        m.exact_match_rate(["a"], [])
    with pytest.raises(TypeError):
        m.exact_match_rate("abc", "abc")


def test_bleu_identical_is_100_and_disjoint_is_0() -> None:
    refs = ["The quick brown fox jumps over the lazy dog.", "A second sentence, with a comma and more words."]
    assert m.bleu(refs, refs) == pytest.approx(100.0)
    assert m.bleu(["zzz yyy xxx www vvv"] * 2, refs) == pytest.approx(0.0)
    assert m.sentence_bleu(refs[0], refs[0]) == pytest.approx(100.0)
    assert 0.0 < m.sentence_bleu("The quick brown fox jumps over a dog.", refs[0]) < 100.0


def test_rouge_identical_and_hand_computed() -> None:
    scores = m.rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert scores == {
        "rouge1": pytest.approx(1.0),
        "rouge2": pytest.approx(1.0),
        "rougeL": pytest.approx(1.0),
    }
    # hyp [the, cat], ref [the, cat, sat, on, the, mat]: P = 1, R = 1/3, F = 0.5; bigram 'the cat' 1/1 and 1/5.
    scores = m.rouge(["the cat"], ["the cat sat on the mat"])
    assert scores["rouge1"] == pytest.approx(0.5)
    assert scores["rouge2"] == pytest.approx(2 * (1 * 0.2) / 1.2)
    # The stemmer makes 'running' match 'runs'.
    assert m.rouge(["dogs running"], ["dog runs"], types=("rouge1",))["rouge1"] == pytest.approx(1.0)


def test_ratio_helpers() -> None:
    assert m.compression_ratio(100, 25) == 4.0
    assert m.compression_ratio(5, 0) == math.inf
    assert m.compression_ratio(0, 0) == 0.0
    with pytest.raises(ValueError):
        m.compression_ratio(-1, 2)
    assert m.bits_per_char(3, "abcdef") == 4.0
    assert math.isnan(m.bits_per_char(3, ""))
    assert m.bits_per_token(120, 40) == 3.0


def test_exact_reconstruction_bound() -> None:
    # Design note: K = 4096, H = 4.2 bits/token -> about 2.9x.
    assert m.exact_reconstruction_bound(4096, 4.2) == pytest.approx(12 / 4.2)
    assert m.exact_reconstruction_bound(2, 1.0) == 1.0
    with pytest.raises(ValueError, match="vocab_size"):
        m.exact_reconstruction_bound(1, 4.0)
    with pytest.raises(ValueError, match="bits_per_text_token"):
        m.exact_reconstruction_bound(4096, 0.0)


def test_rank_averages_ties() -> None:
    assert m.rank([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]
    assert m.rank([3, 1, 2]) == [3.0, 1.0, 2.0]
    assert m.rank([7, 7, 7]) == [2.0, 2.0, 2.0]
    assert m.rank([]) == []


def test_spearman_known_values() -> None:
    assert m.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert m.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # y ranks with a tie: [1, 2, 3.5, 5, 3.5]; cov 8, var_x 10, var_y 9.5 -> 8 / sqrt(95).
    assert m.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert math.isnan(m.spearman([1, 2, 3], [5, 5, 5]))
    assert math.isnan(m.spearman([1], [2]))
    with pytest.raises(ValueError):
        m.spearman([1, 2], [1])


def test_spearman_matches_scipy() -> None:
    from scipy import stats

    x = [3.1, 2.0, 2.0, 5.5, 1.0, 4.4, 2.0, 9.0]
    y = [1.0, 1.0, 2.0, 3.0, 0.5, 3.0, 2.5, 8.0]
    assert m.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
