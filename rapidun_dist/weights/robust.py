"""Directional fusion and robust, bounded, mean-one weights.

    S_f(i) = alpha FF(i) - beta FR(i)        (forget rows)
    S_r(i) = gamma RR(i) - delta RF(i)       (retain rows; `retain_score: at_risk`: S_r(i) = delta RF(i))
    z = (S - median S) / max(1.4826 MAD(S), 1e-3),   MAD = median |S - median S|;  z = 0 when S is constant
    w = exp(clip(lambda z / tau, ln w_min, ln w_max)),  then w <- w / mean(w)

lambda = 1 unless `weights.shrink`. Shrinkage toward 0 when the score spread is within projection noise: the
influence stage also scores the two halves of the features (even and odd tracked layers; each half is an
independent projection of its own layers, and for `mean` S = (S_A + S_B) / 2 exactly since every layer block
carries the same norm). With robust variances var(x) = (1.4826 MAD(x))^2,

    sigma_noise^2 = var(S_A - S_B) / 4      (the noise of the mean of two halves with independent noise)
    lambda = clip(1 - sigma_noise^2 / var(S), 0, 1)

the split-half reliability of S (a James-Stein-style factor): lambda -> 0, all weights -> 1, when the spread of
S is no larger than its noise; lambda -> 1 when the halves agree. Real differences between the layer halves
count as noise here, so the estimate is conservative (it shrinks more than projection noise alone would).

Medians average the two middle values on an even count (numpy's convention, as the reference used).
"""

from __future__ import annotations

import math

import torch

from rapidun_dist.config import WeightsConfig
from rapidun_dist.core.errors import DataError

MAD_SCALE = 1.4826
MAD_FLOOR = 1e-3


def _median(x: torch.Tensor) -> torch.Tensor:
    srt = x.sort().values
    n = srt.numel()
    return 0.5 * (srt[(n - 1) // 2] + srt[n // 2])


def _check_scores(s: torch.Tensor, name: str) -> torch.Tensor:
    s = torch.as_tensor(s)
    if s.dim() != 1 or s.numel() == 0:
        raise DataError(f"{name}: expected a non-empty 1-D score vector; found shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise DataError(f"{name}: scores contain NaN or inf")
    return s.to(torch.float64)


def robust_scale(s: torch.Tensor) -> torch.Tensor:
    """z = (s - median) / max(1.4826 MAD, 1e-3); all zeros when s is constant. Float64."""
    s = _check_scores(s, "robust_scale")
    med = _median(s)
    if bool((s == s[0]).all()):
        return torch.zeros_like(s)
    mad = _median((s - med).abs())
    return (s - med) / max(MAD_SCALE * float(mad), MAD_FLOOR)


def _check_weight_args(tau: float, w_min: float, w_max: float) -> None:
    if not tau > 0:
        raise ValueError(f"tau must be > 0; found {tau}")
    if not 0 < w_min <= w_max:
        raise ValueError(f"need 0 < w_min <= w_max; found {w_min}, {w_max}")


def weights_from_z(z: torch.Tensor, tau: float, w_min: float, w_max: float) -> torch.Tensor:
    """w = exp(clip(z / tau, ln w_min, ln w_max)), normalized to mean one. Float64."""
    _check_weight_args(tau, w_min, w_max)
    w = torch.exp((z.to(torch.float64) / tau).clamp(math.log(w_min), math.log(w_max)))
    return w / w.mean()


def weights_from_scores(s: torch.Tensor, tau: float, w_min: float, w_max: float) -> torch.Tensor:
    """w = exp(clip(robust_scale(s) / tau, ln w_min, ln w_max)), normalized to mean one. Float64."""
    _check_weight_args(tau, w_min, w_max)
    return weights_from_z(robust_scale(s), tau, w_min, w_max)


def robust_var(x: torch.Tensor) -> float:
    """(1.4826 MAD(x))^2."""
    x = _check_scores(x, "robust_var")
    return float(MAD_SCALE * _median((x - _median(x)).abs())) ** 2


def shrink_factor(s: torch.Tensor, s_a: torch.Tensor, s_b: torch.Tensor) -> float:
    """lambda = clip(1 - var(S_A - S_B) / (4 var(S)), 0, 1) with robust variances (module docstring)."""
    s, s_a, s_b = (_check_scores(x, n) for x, n in ((s, "S"), (s_a, "S_A"), (s_b, "S_B")))
    if not s.shape == s_a.shape == s_b.shape:
        raise DataError(
            f"shrink: S, S_A, S_B must match; found {tuple(s.shape)}, {tuple(s_a.shape)}, {tuple(s_b.shape)}"
        )
    var_s = robust_var(s)
    if var_s == 0.0:
        return 0.0
    return min(max(1.0 - robust_var(s_a - s_b) / (4.0 * var_s), 0.0), 1.0)


def _checked_blocks(scores: dict, where: str) -> tuple[torch.Tensor, ...]:
    missing = [k for k in ("ff", "fr", "rr", "rf") if k not in scores]
    if missing:
        raise DataError(f"{where}: expected keys ff, fr, rr, rf; missing {missing}")
    ff, fr, rr, rf = (_check_scores(scores[k], k) for k in ("ff", "fr", "rr", "rf"))
    if ff.shape != fr.shape or rr.shape != rf.shape:
        raise DataError(
            f"{where}: ff/fr and rr/rf must match; found {tuple(ff.shape)}/{tuple(fr.shape)} "
            f"and {tuple(rr.shape)}/{tuple(rf.shape)}"
        )
    return ff, fr, rr, rf


def fused_scores(
    scores: dict, cfg: WeightsConfig, where: str = "scores"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(S_f [nf], S_r [nr]) of directional scores {ff, fr, rr, rf} as `cfg` fuses them."""
    ff, fr, rr, rf = _checked_blocks(scores, where)
    s_f = cfg.alpha * ff - cfg.beta * fr
    s_r = cfg.delta * rf if cfg.retain_score == "at_risk" else cfg.gamma * rr - cfg.delta * rf
    return s_f, s_r


def fuse_and_weight(
    scores: dict, cfg: WeightsConfig, halves: tuple[dict, dict] | None = None
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Directional scores {ff, fr, rr, rf} -> (forget_w [nf], retain_w [nr], fused {s_f, s_r, z_f, z_r,
    shrink_f, shrink_r}). `halves`: the split-half scores `cfg.shrink` needs (module docstring); z is reported
    after shrinkage."""
    s_f, s_r = fused_scores(scores, cfg)
    lam_f = lam_r = 1.0
    if cfg.shrink:
        if halves is None:
            raise DataError(
                "weights.shrink needs the split-half scores of the influence stage (rerun it with weights.shrink)"
            )
        (fa, ra), (fb, rb) = (fused_scores(h, cfg, f"half {n}") for h, n in zip(halves, "AB", strict=True))
        lam_f, lam_r = shrink_factor(s_f, fa, fb), shrink_factor(s_r, ra, rb)
    z_f, z_r = lam_f * robust_scale(s_f), lam_r * robust_scale(s_r)
    forget_w = weights_from_z(z_f, cfg.tau_f, cfg.w_min, cfg.w_max)
    retain_w = weights_from_z(z_r, cfg.tau_r, cfg.w_min, cfg.w_max)
    fused = {"s_f": s_f, "s_r": s_r, "z_f": z_f, "z_r": z_r, "shrink_f": lam_f, "shrink_r": lam_r}
    return forget_w, retain_w, fused


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of a 1-D tensor, ties given their average rank (float64)."""
    x = x.detach().double().flatten()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=torch.float64)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(values.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(values.numel(), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def spearman(a, b) -> float:
    """Spearman rank correlation with average ranks for ties; nan when either side is constant."""
    ra, rb = (average_ranks(torch.as_tensor(v)) for v in (a, b))
    if ra.numel() != rb.numel():
        raise DataError(f"spearman: {ra.numel()} vs {rb.numel()} values")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else float("nan")
