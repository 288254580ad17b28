"""graddiff: gradient difference as published (TOFU): L = -mean_F min(CE, cap) + mean_R CE, each term averaged
over its own rows of the batch (so the ascent is not diluted by the retain:forget mix, unlike uniform)."""

from __future__ import annotations

import torch

from rapidun_dist.training.losses import ga_term
from rapidun_dist.unlearn.methods.base import ForgetTerms, Method


class GradDiff(Method):
    name = "graddiff"

    def forget_loss(self, t: ForgetTerms) -> torch.Tensor:
        return self.u.alpha_a * self.shape.forget_scale * ga_term(t.ce, self.u.ascent_cap)

    def retain_loss(self, ce: torch.Tensor) -> torch.Tensor:
        return self.shape.retain_scale * ce
