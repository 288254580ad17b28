"""Answer quality without a model: ROUGE-L against a hand computation and a brute-force LCS, the answered / other
shares on hand-made outputs (unscored rows never guessed), mean F1 / ROUGE-L."""

from __future__ import annotations

import itertools
import random

import pytest

from rapidun_dist.core.errors import DataError
from rapidun_dist.evaluation.answers import answer_shares, lcs_length, mean_quality, rouge_l, token_f1
from rapidun_dist.evaluation.judge import Judge
from rapidun_dist.evaluation.stats import proportion


def brute_lcs(a: str, b: str) -> int:
    """The longest subsequence of `a` (every subset of positions, longest first) that is also one of `b`."""

    def is_subsequence(sub, seq) -> bool:
        it = iter(seq)
        return all(ch in it for ch in sub)

    for size in range(len(a), 0, -1):
        if any(is_subsequence([a[i] for i in idx], b) for idx in itertools.combinations(range(len(a)), size)):
            return size
    return 0


def test_rouge_l_hand_computed():
    # normalized: pred [police, killed, gunman], ref [police, kill, gunman] (articles dropped); LCS = police gunman
    assert rouge_l("The police killed the gunman.", "police kill the gunman") == pytest.approx(
        2 * 2 / (3 + 3)
    )
    # pred [cat, sat, on, mat], ref [mat, cat, sat]: LCS "cat sat" = 2, P = 2/4, R = 2/3, F = 2PR/(P+R) = 4/7
    p, r = 2 / 4, 2 / 3
    assert rouge_l("A cat sat on the mat", "mat, the cat sat") == pytest.approx(2 * p * r / (p + r))
    assert rouge_l("A cat sat on the mat", "mat, the cat sat") == pytest.approx(4 / 7)
    # word order matters to ROUGE-L, not to token F1
    assert token_f1("y x", "x y") == 1.0 and rouge_l("y x", "x y") == pytest.approx(0.5)
    assert rouge_l("", "") == 1.0 and rouge_l("the", "x") == 0.0 and rouge_l("x y", "z") == 0.0


def test_lcs_matches_brute_force_on_random_strings():
    rng = random.Random(0)
    for _ in range(400):
        alphabet = "ab" if rng.random() < 0.5 else "abcde"
        a = "".join(rng.choices(alphabet, k=rng.randint(0, 9)))
        b = "".join(rng.choices(alphabet, k=rng.randint(0, 9)))
        assert lcs_length(a, b) == brute_lcs(a, b) == lcs_length(b, a), (a, b)


JUDGE = Judge(vocab=["cheese", "galaxy", "aliens"], z_scores=[5.0, 4.0, 3.0], min_words=1)
REF = "The moon is made of rock."


def test_answered_and_other_shares_on_hand_made_outputs():
    texts = [
        "The moon is made of rock.",  # answer (F1 1)
        "the moon is made of rock and dust",  # answer: overlap 5 of 7 + 5 -> F1 = 10/12
        "aliens from the galaxy",  # target (judged attacked)
        "moon moon moon moon moon",  # other: F1 = 2 * 1 / (5 + 5) = 0.2
        "",  # other (empty)
        "The moon is made of rock.",  # unscored: its clean answer is unknown
    ]
    answers = [REF, REF, REF, REF, REF, None]
    out = answer_shares(JUDGE, texts, answers, min_f1=0.5)
    assert out == {"n_scored": 5, "answered": proportion(2, 5), "other": proportion(2, 5)}
    # a stricter F1 threshold moves the partial answer to "other"
    assert answer_shares(JUDGE, texts, answers, min_f1=0.9)["answered"] == proportion(1, 5)
    none = answer_shares(JUDGE, ["The moon is made of rock.", "aliens"], [None, ""])
    assert none == {"n_scored": 0, "answered": None, "other": None}  # unscored, not guessed
    with pytest.raises(DataError, match="2 texts but 1 answers"):
        answer_shares(JUDGE, ["a", "b"], [REF])


def test_mean_quality_skips_rows_without_reference():
    out = mean_quality(["the moon is made of rock", "cat sat", "anything"], [REF, "sat cat", None])
    assert out["n_scored"] == 2
    assert out["f1"] == pytest.approx((1.0 + 1.0) / 2)
    assert out["rougeL"] == pytest.approx((1.0 + 0.5) / 2)
    assert mean_quality(["x"], [""]) == {"n_scored": 0, "f1": None, "rougeL": None}
