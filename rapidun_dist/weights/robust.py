"""Directional fusion and robust, bounded, mean-one weights.

    S_f(i) = alpha FF(i) - beta FR(i)        (forget rows)
    S_r(i) = gamma RR(i) - delta RF(i)       (retain rows)
    z = (S - median S) / max(1.4826 MAD(S), 1e-3),   MAD = median |S - median S|;  z = 0 when S is constant
    w = exp(clip(z / tau, ln w_min, ln w_max)),  then w <- w / mean(w)

Medians average the two middle values on an even count (numpy's convention, as the reference used).
"""

from __future__ import annotations

import math

import torch

from rapidun_dist.config import WeightsConfig
from rapidun_dist.errors import DataError

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


def weights_from_scores(s: torch.Tensor, tau: float, w_min: float, w_max: float) -> torch.Tensor:
    """w = exp(clip(robust_scale(s) / tau, ln w_min, ln w_max)), normalized to mean one. Float64."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0; found {tau}")
    if not 0 < w_min <= w_max:
        raise ValueError(f"need 0 < w_min <= w_max; found {w_min}, {w_max}")
    z = robust_scale(s)
    w = torch.exp((z / tau).clamp(math.log(w_min), math.log(w_max)))
    return w / w.mean()


def fuse_and_weight(scores: dict, cfg: WeightsConfig) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Directional scores {ff, fr, rr, rf} -> (forget_w [nf], retain_w [nr], fused {s_f, s_r, z_f, z_r})."""
    missing = [k for k in ("ff", "fr", "rr", "rf") if k not in scores]
    if missing:
        raise DataError(f"scores: expected keys ff, fr, rr, rf; missing {missing}")
    ff, fr, rr, rf = (_check_scores(scores[k], k) for k in ("ff", "fr", "rr", "rf"))
    if ff.shape != fr.shape or rr.shape != rf.shape:
        raise DataError(
            f"scores: ff/fr and rr/rf must match; found {tuple(ff.shape)}/{tuple(fr.shape)} "
            f"and {tuple(rr.shape)}/{tuple(rf.shape)}"
        )
    s_f = cfg.alpha * ff - cfg.beta * fr
    s_r = cfg.gamma * rr - cfg.delta * rf
    forget_w = weights_from_scores(s_f, cfg.tau_f, cfg.w_min, cfg.w_max)
    retain_w = weights_from_scores(s_r, cfg.tau_r, cfg.w_min, cfg.w_max)
    fused = {"s_f": s_f, "s_r": s_r, "z_f": robust_scale(s_f), "z_r": robust_scale(s_r)}
    return forget_w, retain_w, fused
