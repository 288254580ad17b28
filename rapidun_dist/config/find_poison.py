"""The `find_poison` section: rank every training row by its influence with the forget set and flag the likely
poisoned ones without labels (docs/DESIGN.md section 11)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from rapidun_dist.config.checks import check, check_literal

FindPoisonAgg = Literal["mean", "trimmed_mean", "median_topk", "topk_mean"]
FindPoisonThreshold = Literal["z", "fdr"]


@dataclass(kw_only=True)
class FindPoisonConfig:
    """The find_poison stage (docs/DESIGN.md section 11): rank every training row by its influence with the forget
    set, flag the likely poisoned ones without labels, and optionally unlearn them too (`expand`)."""

    enabled: bool = True
    """Run the stage whenever there is a training set (experiment mode; clean mode with data.train_path)."""
    agg: FindPoisonAgg = "mean"
    """How a row's similarities to a group are aggregated (docs/DESIGN.md section 6; topk_mean = mean of the k
    largest). score = agg over the forget rows - agg over the reference rows (the retain pack)."""
    topk: int = 10
    """agg median_topk / topk_mean: the k of the aggregation (>= 1)."""
    trim: float = 0.1
    """agg trimmed_mean: share of the values dropped at each end, in [0, 0.5)."""
    threshold: FindPoisonThreshold = "z"
    """How rows are flagged without labels (rapidun_dist.find_poison.suspects): `z`, a robust z against the reference
    rows' scores above `z` (assumes a unimodal clean null); `fdr`, conformal p-values against the reference rows and
    Benjamini-Hochberg at `fdr` (no shape assumed, but a p-value is never below 1 / (reference rows + 1), so it
    needs a reference large enough for the number of rows it should flag)."""
    z: float = 3.09
    """Flag a row when its robust z against the reference rows' own scores exceeds this (3.09: a 0.1% false-positive
    rate under a normal null)."""
    fdr: float = 0.1
    """The false-discovery rate of the `fdr` rule."""
    unit_size: int = 64
    """Training rows per work unit (one feature shard; ranks claim units dynamically, a kill resumes per unit)."""
    baselines: bool = True
    """Also score the rows by exact trigger-string match (grep) and TF-IDF similarity, with the same threshold rule."""
    expand: bool = False
    """Unlearn the flagged rows too: they join the forget pack (their train responses as the poisoned answers), the
    retain pack is drawn from unflagged rows, and the `retrain` baseline leaves them out."""

    def __post_init__(self):
        check_literal(self, "find_poison")
        check(self.topk >= 1, "find_poison.topk", f"expected >= 1, found {self.topk}")
        check(0.0 <= self.trim < 0.5, "find_poison.trim", f"expected in [0, 0.5), found {self.trim}")
        check(
            math.isfinite(self.z) and self.z > 0, "find_poison.z", f"expected a finite z > 0, found {self.z}"
        )
        check(self.unit_size >= 1, "find_poison.unit_size", f"expected >= 1, found {self.unit_size}")
        check(0.0 < self.fdr < 1.0, "find_poison.fdr", f"expected in (0, 1), found {self.fdr}")
