"""loreun: loss-based reweighting (LoReUn, Li et al. 2025) on the RapidUn objective.

Forget weights from the CURRENT poisoned-answer losses of the WHOLE forget set (not of a micro-batch): lower loss =
still remembered = harder to forget = larger weight,

    w_i = clip(c n softmax_i(-CE_i / tau), 0.2, 3), with c such that the mean is one,

recomputed (no grad, eval mode, the same rows on every rank) before the first step and after every
`unlearn.loreun_refresh` optimizer steps. The refreshes are part of the method and of its measured cost."""

from __future__ import annotations

import math

import torch

from rapidun_dist.unlearn.methods.base import MethodContext, weight_stats
from rapidun_dist.unlearn.methods.uniform import Uniform

W_MIN, W_MAX = 0.2, 3.0


def loreun_weights(
    ce: torch.Tensor, *, tau: float, w_min: float = W_MIN, w_max: float = W_MAX
) -> torch.Tensor:
    """clip(c x n softmax(-ce / tau), w_min, w_max) with the scale c that makes the mean exactly one (float64).

    The mean of the clipped weights grows monotonically with c, so c is found by bisection on log c."""
    ce = ce.detach().double()
    raw = ce.numel() * torch.softmax(-ce / tau, dim=0)
    lo, hi = (
        math.log(w_min / float(raw.max())),
        math.log(w_max / float(raw.min())),
    )  # mean <= w_min .. >= w_max
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float((math.exp(mid) * raw).clamp(w_min, w_max).mean()) < 1.0:
            lo = mid
        else:
            hi = mid
    w = (math.exp(0.5 * (lo + hi)) * raw).clamp(w_min, w_max)
    return w / w.mean()  # removes the last bisection residue (~1e-15)


class LoReUn(Uniform):
    name = "loreun"

    def setup(self, ctx: MethodContext) -> None:
        self.refreshed_at: list[int] = []
        self._refresh(ctx, 0)

    def after_step(self, ctx: MethodContext, step: int) -> None:
        if step % self.u.loreun_refresh == 0:
            self._refresh(ctx, step)

    def _refresh(self, ctx: MethodContext, step: int) -> None:
        nll, n_tok = ctx.forget_nll_all(adapter=True)
        self.forget_w = loreun_weights(nll / n_tok.clamp_min(1), tau=self.u.loreun_tau).float()
        self.refreshed_at.append(step)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "forget_w": self.forget_w.clone(),
            "refreshed_at": torch.tensor(self.refreshed_at, device="cpu"),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.forget_w = state["forget_w"].clone()
        self.refreshed_at = [int(s) for s in state["refreshed_at"]]

    def describe(self) -> dict:
        return {"forget_weights": weight_stats(self.forget_w), "refreshes": len(self.refreshed_at)}
