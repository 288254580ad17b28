"""Two-stage find_poison (`find_poison.two_stage`): a cheap pass over every training row, then the chosen method on
the top candidates only.

Stage 1 scores every row with the same forget / reference contrast by `find_poison.first_stage`: TF-IDF (`tfidf.py`,
no model, seconds for 57k rows), Rep-Sim (`repsim.py`: hidden states of `find_poison.layer`, forward only), or
`auto`: TF-IDF when it keeps every known row among its candidates (`known_kept`, the known rows scored leave-one-out),
else Rep-Sim. It keeps the `find_poison.candidates` highest (a share of the rows when < 1, else a count; ties by
position), or with `find_poison.candidates_margin` fewer: that margin times the stage-1 rank of the lowest known
row (`fitted_keep`). Stage 2 scores the candidates, the known rows and the reference rows (the contrast and the threshold need
those two) with `find_poison.method`. The rows stage 2 never scored are never flagged and rank below every scored
row, in stage-1 order (`combine`). The summary records how many known rows stage 1 kept (an estimate without
labels of its recall) and, in experiment mode, how many poisoned rows it dropped (the recall it cost).
"""

from __future__ import annotations

import math

import torch

from rapidun_dist.find_poison.suspects import rank_of


def n_candidates(candidates: float, n: int) -> int:
    """Rows stage 1 keeps: ceil(share x n) for a share < 1, else the count; within [1, n]."""
    k = math.ceil(candidates * n) if candidates < 1 else int(candidates)
    return max(1, min(n, k))


def candidate_mask(first_scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool [n]: the `keep` highest stage-1 scores (ties: the earlier row first)."""
    order = torch.sort(-first_scores.to(torch.float64), stable=True).indices
    mask = torch.zeros(first_scores.numel(), dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


def known_kept(first_scores: torch.Tensor, known: torch.Tensor, keep: int) -> dict:
    """{"known", "kept"}: the known training rows (bool [n]; their scores leave-one-out) among the `keep` candidates
    of `first_scores`. The known rows are a sample of the poison: kept / known estimates stage 1's recall."""
    cand = candidate_mask(first_scores, keep)
    return {"known": int(known.sum()), "kept": int((cand & known).sum())}


def fitted_keep(first_scores: torch.Tensor, known: torch.Tensor, cap: int, margin: float) -> dict:
    """{"keep", "cap", "lowest_known"}: with `margin` > 0 (`find_poison.candidates_margin`), stage 1 keeps
    ceil(margin x the stage-1 rank of the lowest-ranked known row) rows when that is fewer than `cap`. The known rows
    are a sample of the poison, so where the last of them falls estimates how deep the poison goes in stage-1
    order. Without a margin or a known row: `cap`."""
    if margin <= 0 or not known.any():
        return {"keep": cap, "cap": cap, "lowest_known": None}
    lowest = int(rank_of(first_scores)[known].max())
    return {"keep": min(cap, max(lowest, math.ceil(margin * lowest))), "cap": cap, "lowest_known": lowest}


def lexical_first(check: dict) -> bool:
    """first_stage auto: TF-IDF is stage 1 when it keeps every known row (at least one to check)."""
    return check["known"] > 0 and check["kept"] == check["known"]


def scored_positions(candidates: torch.Tensor, known: torch.Tensor, ref_pos: torch.Tensor) -> list[int]:
    """Sorted training positions stage 2 scores: the candidates, the known rows and the reference rows."""
    mask = candidates | known
    mask[ref_pos] = True
    return mask.nonzero().squeeze(1).tolist()


def combine(first_scores: torch.Tensor, positions: list[int], second_scores: torch.Tensor) -> torch.Tensor:
    """[n] float64: stage-2 scores at `positions`; every other row below the lowest of them, in stage-1 order
    (floor - 1 - its stage-1 rank / n, so all of them lie within (floor - 2, floor - 1])."""
    n = first_scores.numel()
    out = torch.empty(n, dtype=torch.float64)
    pos = torch.tensor(positions, dtype=torch.long)
    out[pos] = second_scores.to(torch.float64)
    rest = torch.ones(n, dtype=torch.bool)
    rest[pos] = False
    if rest.any():
        floor = float(second_scores.min()) if second_scores.numel() else 0.0
        out[rest] = floor - 1.0 - rank_of(first_scores)[rest].to(torch.float64) / n
    return out


def recall_accounting(labels: torch.Tensor, known: torch.Tensor, scored: torch.Tensor) -> dict:
    """Experiment mode: poisoned rows stage 2 scored and the ones stage 1 dropped (all of them, and the unknown
    ones)."""
    y = labels.to(torch.bool)
    n_pos, unknown = int(y.sum()), y & ~known
    kept = int((y & scored).sum())
    return {
        "poisoned": n_pos,
        "kept": kept,
        "lost": n_pos - kept,
        "recall_kept": kept / n_pos if n_pos else None,
        "lost_unknown": int((unknown & ~scored).sum()),
        "recall_kept_unknown": int((unknown & scored).sum()) / int(unknown.sum()) if unknown.any() else None,
    }
