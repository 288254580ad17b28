"""simnpo: SimNPO (Fan et al. 2024), NPO without a reference model and with the length-normalised
log-probability: L = mean_F -(2 / beta) log sigmoid(-(beta / |y|) log pi(y|x) - gamma) + mean_R CE
(beta = unlearn.simnpo_beta, gamma = unlearn.simnpo_gamma)."""

from __future__ import annotations

import torch

from rapidun_dist.training.losses import simnpo_term
from rapidun_dist.unlearn.methods.base import ForgetTerms, Method


class SimNPO(Method):
    name = "simnpo"

    def forget_loss(self, t: ForgetTerms) -> torch.Tensor:
        term = simnpo_term(t.ce, self.u.simnpo_beta, self.u.simnpo_gamma)
        return self.u.alpha_a * self.shape.forget_scale * term

    def retain_loss(self, ce: torch.Tensor) -> torch.Tensor:
        return self.shape.retain_scale * ce
