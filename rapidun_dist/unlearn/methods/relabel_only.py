"""relabel_only: no ascent. The protocol's relabel term (descent on the clean answer of each triggered forget
prompt) and the retain descent, in the RapidUn batch mix with weights 1: uniform minus its ascent term.

With unlearn.relabel=false it is plain fine-tuning on the retain rows."""

from __future__ import annotations

import torch

from rapidun_dist.unlearn.methods.base import ForgetTerms, Method


class RelabelOnly(Method):
    name = "relabel_only"

    def forget_loss(self, t: ForgetTerms) -> torch.Tensor:
        return torch.zeros_like(t.ce)
