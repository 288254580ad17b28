"""uniform: the RapidUn objective with every weight 1 (GA + GD in one batch; docs/DESIGN.md section 7).

forget i: -alpha_a min(CE(y_i_poisoned), ascent_cap) (+ the protocol's relabel term); retain j: CE(y_j); all in
the batch mix (1/|B|) sum, so forget rows carry |F_B| / |B| of the objective. The ablation RapidUn is measured
against: same everything, no influence weights."""

from __future__ import annotations

import torch

from rapidun_dist.training.losses import ga_term
from rapidun_dist.unlearn.methods.base import ForgetTerms, Method


class Uniform(Method):
    name = "uniform"

    def forget_loss(self, t: ForgetTerms) -> torch.Tensor:
        return self.u.alpha_a * ga_term(t.ce, self.u.ascent_cap)
