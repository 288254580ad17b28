"""self_only: RapidUn with the self-only weights (beta = delta = 0: FF for forget rows, RR for retain rows),
written by the weights stage to weights/self_only/."""

from __future__ import annotations

from rapidun_dist.config import WeightsConfig
from rapidun_dist.unlearn.methods.rapidun import RapidUn


class SelfOnly(RapidUn):
    name = "self_only"

    def weights_config(self, cfg: WeightsConfig) -> WeightsConfig:
        from rapidun_dist.weights.recipe import self_only_config

        return self_only_config(cfg)
