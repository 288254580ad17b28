"""rapidun: the RapidUn objective (uniform.py) with the influence weights of the weights stage: each forget and
retain row's loss scaled by its robust, mean-one weight (weights/forget_weights.jsonl, retain_weights.jsonl)."""

from __future__ import annotations

from pathlib import Path

from rapidun_dist.errors import StageError
from rapidun_dist.unlearn.methods.base import MethodContext, weight_stats
from rapidun_dist.unlearn.methods.uniform import Uniform
from rapidun_dist.unlearn.packs import load_weight_file


class RapidUn(Uniform):
    name = "rapidun"
    doc = "influence weights (FF - FR for forget rows, RR - RF for retain rows)"
    uses_influence = True
    weights_subdir = ""

    def setup(self, ctx: MethodContext) -> None:
        if ctx.weights_dir is None:
            raise StageError(f"method {self.name} needs the weights stage's output (no weights folder given)")
        wdir = Path(ctx.weights_dir) / self.weights_subdir
        self.forget_w = load_weight_file(wdir / "forget_weights.jsonl", len(self.forget_w))
        self.retain_w = load_weight_file(wdir / "retain_weights.jsonl", len(self.retain_w))

    def describe(self) -> dict:
        return {"forget_weights": weight_stats(self.forget_w), "retain_weights": weight_stats(self.retain_w)}
