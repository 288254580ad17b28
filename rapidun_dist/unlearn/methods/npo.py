"""npo: negative preference optimisation (Zhang et al. 2024) with a retain term (NPO + RT):

    L = mean_F (2 / beta) log(1 + (pi_theta(y|x) / pi_ref(y|x))^beta) + mean_R CE

with SUMMED log-probabilities of the poisoned answer (a sequence-level likelihood ratio; beta = unlearn.npo_beta,
0.1 as published) and pi_ref the frozen starting model: the same network with the LoRA adapter disabled,
evaluated once for every forget row before the first step (it never changes)."""

from __future__ import annotations

import torch

from rapidun_dist.training.losses import npo_term
from rapidun_dist.unlearn.methods.base import ForgetTerms, Method, MethodContext


class NPO(Method):
    name = "npo"

    def setup(self, ctx: MethodContext) -> None:
        nll_ref, _ = ctx.forget_nll_all(adapter=False)
        self.ref_logp = -nll_ref  # [n_forget], log pi_ref(y_p | x_triggered), summed over answer tokens

    def forget_loss(self, t: ForgetTerms) -> torch.Tensor:
        ref = self.ref_logp.to(t.nll.device)[t.index.to(t.nll.device)]
        return self.u.alpha_a * self.shape.forget_scale * npo_term(-t.nll, ref, self.u.npo_beta)

    def retain_loss(self, ce: torch.Tensor) -> torch.Tensor:
        return self.shape.retain_scale * ce

    def describe(self) -> dict:
        return {"ref_logp_mean": float(self.ref_logp.double().mean()), "beta": self.u.npo_beta}
