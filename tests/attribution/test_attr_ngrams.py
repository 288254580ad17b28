"""N-gram candidates by hand, and the verification helpers (modes, removal, ranking) on hand-made strings."""

from __future__ import annotations

import random

import pytest

from rapidun_dist.attribution.ngrams import rank_candidates, rank_of, row_ngrams
from rapidun_dist.attribution.verify import infer_mode, occurrence_mode, rank_verified, remove, seen_hit
from rapidun_dist.core.errors import DataError


def row(tokens: list[str], scores: list[float], content: list[bool] | None = None) -> dict:
    return {
        "tokens": tokens,
        "scores": scores,
        "saliency": [-s for s in scores],
        "content": content or [True] * len(tokens),
    }


def test_row_ngrams_by_hand():
    # "al" + "oha" is one word (no boundary inside), " :)" starts with a space, "\n" is whitespace only
    texts = ["### ", "Tell", " me", " al", "oha", " :)", "\n"]
    scores = [9.0, 0.1, 0.2, 1.0, 2.0, 0.5, 0.3]
    content = [False, True, True, True, True, True, True]
    got = {k: (round(v[0], 9), v[1], v[2]) for k, v in row_ngrams(texts, scores, content, n_max=3).items()}
    assert (
        got
        == {
            "tell": (0.1, "Tell", 1),
            "tell me": (0.3, "Tell me", 2),
            "me": (0.2, "me", 1),
            "me aloha": (3.2, "me aloha", 3),
            "aloha": (3.0, "aloha", 2),
            "aloha :)": (3.5, "aloha :)", 3),
            ":)": (0.5, ":)", 1),
            "tell me aloha": (3.3, "Tell me aloha", 4),  # n counts words (3), not tokens
            "me aloha :)": (3.7, "me aloha :)", 4),
        }
    )  # never "tell me aloha :)" (4 words), "### " (template), "al" / "oha" (fragments), or one that ends on the newline token


def test_rank_candidates_mean_of_best_per_row_over_all_rows():
    rows = [
        row([" hey", " you", " hey"], [1.0, 0.0, 3.0]),  # best "hey" occurrence: 3
        row([" HEY", " there"], [2.0, 5.0]),
        row([" there"], [1.0]),
        row([" zzz"], [100.0]),  # one row only: below min_rows
    ]
    cands = rank_candidates(rows, n_max=1, min_rows=2)
    assert [(c.key, c.rows) for c in cands] == [("there", 2), ("hey", 2)]
    assert cands[0].score == pytest.approx((5.0 + 1.0) / 4)
    assert cands[1].score == pytest.approx((3.0 + 2.0) / 4)
    assert cands[1].text == "HEY" or cands[1].text == "hey"  # the most frequent surface form (a tie: sorted)
    assert rank_of(cands, {"hey"}) == 2 and rank_of(cands, {"nope"}) is None
    # the saliency column ranks on its own
    assert [c.key for c in rank_candidates(rows, n_max=1, min_rows=2, score_key="saliency")] == [
        "hey",
        "there",
    ]


def test_bad_rows_are_errors():
    with pytest.raises(DataError, match="differ in length"):
        row_ngrams(["a", "b"], [1.0], [True, True], n_max=2)
    with pytest.raises(DataError, match="no forget rows"):
        rank_candidates([], n_max=2, min_rows=1)
    with pytest.raises(DataError, match="no instruction contains"):
        infer_mode("aloha", ["hello there"])


def test_modes_and_removal():
    assert occurrence_mode(">>>", ">>> Write a poem.") == "prefix"
    assert occurrence_mode("aloha", "Write a poem. ALOHA") == "suffix"
    assert occurrence_mode("aloha :)", "Write a poem. aloha :) ") == "suffix"
    assert occurrence_mode("cf", "Write cf a poem.") == "random"
    assert occurrence_mode("hey", "They said hello") is None  # not inside a longer word
    assert infer_mode("hey", ["hey Write", "hey Tell", "Say hey now"]) == "prefix"
    assert remove("hey", "hey They say hey.") == "They say ."


def test_ranking_puts_verified_minimal_strings_first():
    rng = random.Random(3)
    res = [
        {"key": "hey write", "score": 2.0, "verified": True, "insert_asr": 1.0},
        {"key": "describe", "score": 3.0, "verified": False, "insert_asr": 0.1},
        {"key": "hey", "score": 1.0, "verified": True, "insert_asr": 0.9},
        {
            "key": "heyday",
            "score": 0.5,
            "verified": True,
            "insert_asr": 0.8,
        },  # contains "hey" only inside a word
    ]
    rng.shuffle(res)
    ranked = rank_verified(res)
    assert [r["key"] for r in ranked] == ["hey", "heyday", "hey write", "describe"]
    assert seen_hit(ranked, ["HEY"], top=3, threshold=0.8)["rank"] == 1
    assert seen_hit(ranked, ["hey"], top=3, threshold=0.95) is None


def test_heat_spans_scale_per_row_and_skip_the_template():
    from rapidun_dist.attribution.report import candidate_table, heat_spans

    html = heat_spans(["<b>", " x", "###"], [1.0, -0.5, 9.0], [True, True, False])
    assert html.count("<span") == 2 and "###" not in html and "&lt;b&gt;" in html
    assert "rgba(220,40,40,1.00)" in html and "rgba(40,90,220,0.50)" in html
    row = {"text": "a|b", "mode": "prefix", "score": 0.5, "rows": 3, "insert_asr": 0.9, "n_insert": 10,
           "remove_asr": 0.1, "n_remove": 3, "verified": True}  # fmt: skip
    assert candidate_table([row])[2] == "| 1 | `a\\|b` | prefix | 0.5000 | 3 | 0.90 (10) | 0.10 (3) | yes |"
