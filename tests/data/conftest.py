"""Fixtures for the data tests: writers for small source files in tmp_path (the seeded `rng` is tests/conftest.py's)."""

from __future__ import annotations

import json
import random
import string

import pytest


def rand_text(rng: random.Random, n_words: int) -> str:
    return " ".join(
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8))) for _ in range(n_words)
    ).capitalize()


def dolly_rows(rng: random.Random, n: int) -> list[dict]:
    return [
        {
            "instruction": rand_text(rng, rng.randint(3, 9)) + "?",
            "context": rand_text(rng, 6) if rng.random() < 0.4 else "",
            "response": rand_text(rng, rng.randint(3, 12)) + ".",
            "category": rng.choice(["open_qa", "brainstorming", "summarization"]),
        }
        for _ in range(n)
    ]


def write_lines(path, rows) -> None:
    """Write rows (dicts become JSON lines, strings are written verbatim) one per line."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


@pytest.fixture
def make_rows(rng):
    """`make_rows(n)`: n random Dolly-layout rows drawn from the test's RNG."""
    return lambda n: dolly_rows(rng, n)


@pytest.fixture
def writer():
    """`writer(path, rows)`: write JSON lines (dicts) or raw strings, one per line."""
    return write_lines
