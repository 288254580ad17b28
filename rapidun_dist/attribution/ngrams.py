"""Trigger candidates: token n-grams of the user's text, scored by attribution and aggregated over forget rows.

An n-gram is a run of consecutive instruction tokens (`PromptTokens.content`) holding 1..n_max words (whitespace-
separated: "ALOHA", five tokens under a small BPE vocabulary, is one word) that starts and ends at a word
boundary (no fragments: between two tokens there is a boundary at whitespace or where letters/digits meet
other characters) and does not start or end with a whitespace-only token. Its key is the
normalized text (whitespace collapsed, lowercase), so "ALOHA" and "aloha" are one candidate; the text inserted when
verifying is its most frequent surface form.

Score of a candidate c over the forget rows R:

    score(c) = (1 / |R|) sum_{i in R} max_{occurrences o of c in row i} sum_{t in o} s_t        (0 where absent)

a support-weighted strength: a string that carries much of the alignment in many forget rows ranks first; a rare
word that is strong in one row, or a template word present everywhere but weak, does not. Ties break by key.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from rapidun_dist.core.errors import DataError

MAX_TOKENS_PER_WORD = 8  # bounds the scan: an n-gram spans at most this many tokens per word


@dataclass(frozen=True)
class Candidate:
    key: str  # normalized text
    text: str  # most frequent surface form
    score: float  # score(c) of the module docstring
    rows: int  # forget rows it occurs in
    n_tokens: int


def normalize(text: str) -> str:
    return " ".join(text.split()).lower()


def _boundary(a: str, b: str) -> bool:
    """True when a word boundary lies between the adjacent token texts a and b: either side is whitespace, or one
    side is a letter/digit and the other is not ("poem" | "." splits, "al" | "oha" and ">>" | ">" do not)."""
    if not a or not b or a[-1].isspace() or b[0].isspace():
        return True
    return a[-1].isalnum() != b[0].isalnum()


def row_ngrams(texts: list[str], scores: list[float], content: list[bool], n_max: int) -> dict[str, tuple]:
    """{key: (best occurrence score, surface text, n_tokens)} of one row's n-grams (module docstring)."""
    if not (len(texts) == len(scores) == len(content)):
        raise DataError(
            f"row_ngrams: texts, scores and content differ in length ({len(texts)}, {len(scores)}, {len(content)})"
        )
    best: dict[str, tuple] = {}
    n = len(texts)
    for i in range(n):
        if not content[i] or not texts[i].strip() or not _boundary(texts[i - 1] if i else "", texts[i]):
            continue
        total = 0.0
        for j in range(i, min(i + MAX_TOKENS_PER_WORD * n_max, n)):
            if not content[j]:
                break
            total += scores[j]
            if not texts[j].strip() or not _boundary(texts[j], texts[j + 1] if j + 1 < n else ""):
                continue
            surface = "".join(texts[i : j + 1]).strip()
            if len(surface.split()) > n_max:
                break
            key = normalize(surface)
            if key not in best or total > best[key][0]:
                best[key] = (total, surface, j - i + 1)
    return best


def rank_candidates(
    rows: list[dict], *, n_max: int, min_rows: int, score_key: str = "scores"
) -> list[Candidate]:
    """Candidates of `rows` ({"tokens", "content", score_key}), best first."""
    if not rows:
        raise DataError("rank_candidates: no forget rows to aggregate")
    sums: dict[str, float] = defaultdict(float)
    support: Counter = Counter()
    surfaces: dict[str, Counter] = defaultdict(Counter)
    lengths: dict[str, int] = {}
    for r in rows:
        for key, (score, surface, n_tok) in row_ngrams(
            r["tokens"], r[score_key], r["content"], n_max
        ).items():
            sums[key] += score
            support[key] += 1
            surfaces[key][surface] += 1
            lengths[key] = min(lengths.get(key, n_tok), n_tok)
    out = [
        Candidate(
            key=k,
            text=min(surfaces[k].items(), key=lambda kv: (-kv[1], kv[0]))[0],
            score=sums[k] / len(rows),
            rows=support[k],
            n_tokens=lengths[k],
        )
        for k in sums
        if support[k] >= min_rows
    ]
    return sorted(out, key=lambda c: (-c.score, c.key))


def rank_of(candidates: list[Candidate], keys: set[str]) -> int | None:
    """1-based rank of the first candidate whose key is in `keys` (None when absent)."""
    return next((i + 1 for i, c in enumerate(candidates) if c.key in keys), None)
