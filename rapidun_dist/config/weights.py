"""The `weights` section: directional scores, their fusion and the robust per-row weights (docs/DESIGN.md section
6). The block keys (agg, topk, trim, include_self, topk_frac, shrink) are used by the influence stage, the rest by
the weights stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rapidun_dist.config.checks import check, check_literal


@dataclass(kw_only=True)
class WeightsConfig:
    """From the Gram blocks FF, FR, RR, RF of the packs' features to one weight per forget and retain row, read by
    the influence-weighted methods (rapidun, self_only, rapidun_placebo)."""

    agg: Literal["mean", "trimmed_mean", "median_topk"] = "mean"
    """How a row's cosines to a group are aggregated into one directional score (docs/DESIGN.md section 6)."""
    topk: int = 40
    """agg median_topk: each block column keeps its top-k rows before the median (>= 1); replaced by topk_frac
    when that is set."""
    trim: float = 0.1
    """agg trimmed_mean: share of the values dropped at each end (floor(trim x m) each side), in [0, 0.5)."""
    include_self: bool = False
    """Count a row's cosine with itself in FF and RR; off: the self pair is left out (the RapidIn reference import
    includes it)."""
    alpha: float = 1.0
    """Fusion: weight of FF in the forget score S_f = alpha FF - beta FR."""
    beta: float = 1.0
    """Fusion: weight of FR (a forget row's similarity to the retain pack) in S_f; the self-only ablation sets it
    to 0."""
    gamma: float = 1.0
    """Fusion, retain_score typical: weight of RR in the retain score S_r = gamma RR - delta RF."""
    delta: float = 1.0
    """Fusion: weight of RF (a retain row's similarity to the forget pack) in S_r (typical: subtracted; at_risk:
    S_r = delta RF); the self-only ablation sets it to 0."""
    tau_f: float = 0.7
    """Temperature of the forget weights (> 0): w = exp(clip(z / tau_f, ln w_min, ln w_max)), z the robust z of
    S_f, then scaled to mean 1; smaller spreads the weights more."""
    tau_r: float = 1.2
    """Temperature of the retain weights (> 0), as tau_f for S_r."""
    w_min: float = 0.2
    """Lowest weight before the mean-one rescaling (0 < w_min <= 1)."""
    w_max: float = 3.0
    """Highest weight before the mean-one rescaling (>= 1)."""
    topk_frac: float | None = None
    """median_topk: keep ceil(topk_frac x rows of the block) per column instead of a fixed `topk` (scales with the
    pack size; null: the fixed `topk`)."""
    shrink: bool = False
    """Shrink z toward 0 by the split-half reliability of the scores (even vs odd tracked layers): when the score
    spread is within projection noise the weights go to 1 (rapidun_dist/weights/robust.py)."""
    retain_score: Literal["typical", "at_risk"] = "typical"
    """typical: S_r = gamma RR - delta RF (the reference); at_risk: S_r = delta RF, so the retain rows the forget
    update threatens most (high RF) get the largest weights."""
    relabel_weights: Literal["same", "uniform", "self"] = "same"
    """Weights of the relabel term of forget rows: the ascent's (same), all 1 (uniform), or the self-only weights
    (FF alone, beta = 0), while the ascent keeps the fused FF - FR weights."""

    def __post_init__(self):
        check_literal(self, "weights")
        check(
            self.topk_frac is None or 0.0 < self.topk_frac <= 1.0,
            "weights.topk_frac",
            f"expected in (0, 1] or null, found {self.topk_frac}",
        )
        check(0.0 <= self.trim < 0.5, "weights.trim", f"expected in [0, 0.5), found {self.trim}")
        check(self.tau_f > 0 and self.tau_r > 0, "weights.tau_f/tau_r", "must be > 0")
        check(
            0 < self.w_min <= 1.0 <= self.w_max,
            "weights.w_min/w_max",
            f"need 0 < w_min <= 1 <= w_max, found {self.w_min}, {self.w_max}",
        )
        check(self.topk >= 1, "weights.topk", f"expected >= 1, found {self.topk}")
