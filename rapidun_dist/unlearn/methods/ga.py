"""ga: gradient ascent on the poisoned answers alone, as published: L = -mean_F min(CE, cap), no retain term.

It sees the same global batches as every method (the same forget rows, the same steps); the retain rows of those
batches are skipped, so it does not visit forget rows more often than the others."""

from __future__ import annotations

import torch

from rapidun_dist.training.losses import ga_term
from rapidun_dist.unlearn.methods.base import ForgetTerms, Method


class GA(Method):
    name = "ga"

    def forget_loss(self, t: ForgetTerms) -> torch.Tensor:
        return self.u.alpha_a * self.shape.forget_scale * ga_term(t.ce, self.u.ascent_cap)
