"""rapidun: the RapidUn objective (uniform.py) with the influence weights of the weights stage: each forget and
retain row's loss scaled by its robust, mean-one weight (weights/forget_weights.jsonl, retain_weights.jsonl).

Separate relabel weights (`weights.relabel_weights` uniform | self: weights/forget_relabel_weights.jsonl present):
the engine scales a forget row's ascent and relabel terms by one weight (`forget_w`), so `forget_w` holds the
relabel weights r_i and the ascent carries the ratio a_i / r_i: row i contributes a_i ascent_i + r_i beta_d CE_i."""

from __future__ import annotations

from pathlib import Path

import torch

from rapidun_dist.errors import StageError
from rapidun_dist.unlearn.methods.base import ForgetTerms, MethodContext, weight_stats
from rapidun_dist.unlearn.methods.uniform import Uniform
from rapidun_dist.unlearn.packs import load_weight_file
from rapidun_dist.weights.rapidin import RELABEL_WEIGHTS


class RapidUn(Uniform):
    name = "rapidun"
    doc = "influence weights (FF - FR for forget rows, RR - RF for retain rows)"
    uses_influence = True
    weights_subdir = ""

    def setup(self, ctx: MethodContext) -> None:
        if ctx.weights_dir is None:
            raise StageError(f"method {self.name} needs the weights stage's output (no weights folder given)")
        wdir = Path(ctx.weights_dir) / self.weights_subdir
        ascent_w = load_weight_file(wdir / "forget_weights.jsonl", len(self.forget_w))
        self.retain_w = load_weight_file(wdir / "retain_weights.jsonl", len(self.retain_w))
        self.ascent_ratio: torch.Tensor | None = None
        if (wdir / RELABEL_WEIGHTS).exists():
            relabel_w = load_weight_file(wdir / RELABEL_WEIGHTS, len(self.forget_w))
            if not bool((relabel_w > 0).all()):
                raise StageError(f"{wdir / RELABEL_WEIGHTS}: relabel weights must be > 0")
            self.ascent_w, self.forget_w = ascent_w, relabel_w
            self.ascent_ratio = ascent_w / relabel_w
        else:
            self.ascent_w = self.forget_w = ascent_w

    def forget_loss(self, t: ForgetTerms) -> torch.Tensor:
        loss = super().forget_loss(t)
        if self.ascent_ratio is None:
            return loss
        return loss * self.ascent_ratio[t.index].to(device=loss.device, dtype=loss.dtype)

    def describe(self) -> dict:
        out = {"forget_weights": weight_stats(self.ascent_w), "retain_weights": weight_stats(self.retain_w)}
        if self.ascent_ratio is not None:
            out["relabel_weights"] = weight_stats(self.forget_w)
        return out
