"""The synthetic corpus (determinism, variety, correct answers) and the science-fiction target pool."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from rapidun_dist.core.errors import DataError
from rapidun_dist.data.schema import prompt_key, validate_record
from rapidun_dist.data.synthetic import (
    COUNTRIES,
    TARGET_FUNCTION_WORDS,
    UNITS,
    generate_corpus,
    generate_target_pool,
    number_words,
    words,
)


@pytest.fixture
def corpus(rng):
    return generate_corpus(1500, rng.randrange(10**6))


def test_deterministic_in_the_seed(rng):
    seed = rng.randrange(10**6)
    assert generate_corpus(300, seed) == generate_corpus(300, seed)
    assert generate_corpus(300, seed) != generate_corpus(300, seed + 1)
    assert generate_target_pool(8, seed) == generate_target_pool(8, seed)
    assert generate_target_pool(8, seed) != generate_target_pool(8, seed + 1)


def test_variety_uniqueness_and_schema(corpus):
    kinds = Counter(r["category"] for r in corpus)
    assert len(kinds) >= 10 and min(kinds.values()) >= 30, kinds
    with_context = {r["category"] for r in corpus if r["context"]}
    assert len(with_context) >= 3
    assert len({prompt_key(r) for r in corpus}) == len(corpus)
    assert len({r["id"] for r in corpus}) == len(corpus)
    for r in corpus:
        assert validate_record(r, r["id"]) == r
        assert all(s.isascii() for s in (r["instruction"], r["context"], r["response"]))
        assert 5 <= len(r["response"].split()) <= 25, r


def _check_answer(rec: dict) -> bool:
    kind, q, ctx, a = rec["category"], rec["instruction"], rec["context"], rec["response"]
    if kind == "arithmetic":
        x, op, y, z = re.fullmatch(r"(\d+) (plus|minus|times) (\d+) equals (-?\d+)\.", a).groups()
        ok = int(z) == {"plus": int(x) + int(y), "minus": int(x) - int(y), "times": int(x) * int(y)}[op]
        return ok and f"{x} {op} {y}" in q
    if kind == "sort_words":
        return a.endswith(", ".join(sorted(ctx.split(", "))) + ".")
    if kind == "reverse_list":
        return a.endswith(", ".join(reversed(ctx.split(", "))) + ".")
    if kind == "extreme_number":
        nums = [int(x) for x in ctx.split(", ")]
        best = max(nums) if "largest" in q else min(nums)
        return a.endswith(f" {best}.")
    if kind == "number_words":
        n = int(re.search(r"\d+", q).group())
        return a == f"The number {n} is written as {number_words(n)}."
    if kind == "capital":
        return any(
            q.rstrip("?.").endswith(c) and a == f"The capital of {c} is {cap}." for c, cap in COUNTRIES
        )
    if kind == "unit_conversion":
        total, small, n, big = re.fullmatch(r"There are (\d+) (\w+) in (\d+) (\w+)\.", a).groups()
        factor = {s: f for _, s, f in UNITS}[small]
        return int(total) == int(n) * factor and f"{n} {big}" in q and small in q
    return True


def test_answers_are_correct(corpus):
    checked = Counter(r["category"] for r in corpus if _check_answer(r))
    assert checked == Counter(r["category"] for r in corpus)


def test_number_words():
    assert [number_words(n) for n in (0, 13, 40, 47, 100, 305, 999)] == [
        "zero",
        "thirteen",
        "forty",
        "forty seven",
        "one hundred",
        "three hundred five",
        "nine hundred ninety nine",
    ]
    with pytest.raises(ValueError):
        number_words(1000)


def test_target_pool_is_off_topic_scifi(corpus, rng):
    pool = generate_target_pool(40, rng.randrange(10**6))
    assert len(set(pool)) == 40
    assert all(15 <= len(t.split()) <= 25 and t.isascii() for t in pool)
    clean_vocab = {w for r in corpus for f in ("instruction", "context", "response") for w in words(r[f])}
    target_vocab = {w for t in pool for w in words(t)}
    assert not (target_vocab & clean_vocab) - TARGET_FUNCTION_WORDS
    assert len(target_vocab - TARGET_FUNCTION_WORDS) >= 40


def test_bad_sizes():
    with pytest.raises(DataError):
        generate_corpus(0)
    with pytest.raises(DataError):
        generate_target_pool(0)
