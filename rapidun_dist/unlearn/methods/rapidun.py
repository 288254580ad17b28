"""rapidun: the RapidUn objective (uniform.py) with the influence weights of the weights stage: each forget and
retain row's loss scaled by its robust, mean-one weight (weights/forget_weights.jsonl, retain_weights.jsonl).

Separate relabel weights (`weights.relabel_weights` uniform | self: weights/forget_relabel_weights.jsonl present):
the engine scales a forget row's ascent and relabel terms by one weight (`forget_w`), so `forget_w` holds the
relabel weights r_i and the ascent carries the ratio a_i / r_i: row i contributes a_i ascent_i + r_i beta_d CE_i.

Dynamic reweighting (`unlearn.reweight_every` N > 0): after every N-th optimizer step (not after the last) the
weights are recomputed from the current adapter: token-wise features of both packs (`MethodContext.pack_features`,
the influence stage's definition and projections), the dense directional scores, and the weights stage's fusion
(shrinkage and relabel weights included). The refreshes are part of the method's measured cost; each is logged with
the rank correlation of the new forget weights to the previous and to the initial ones."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rapidun_dist.config import WeightsConfig
from rapidun_dist.core.errors import StageError
from rapidun_dist.core.logging import get_logger
from rapidun_dist.unlearn.methods.base import ForgetTerms, MethodContext, weight_stats
from rapidun_dist.unlearn.methods.uniform import Uniform
from rapidun_dist.unlearn.packs import load_weight_file
from rapidun_dist.weights.rapidin import RELABEL_WEIGHTS

log = get_logger("unlearn")


class RapidUn(Uniform):
    name = "rapidun"

    def weights_config(self, cfg: WeightsConfig) -> WeightsConfig:
        """The fusion this method's weights come from (the weights stage writes weights_subdir with it)."""
        return cfg

    def setup(self, ctx: MethodContext) -> None:
        if ctx.weights_dir is None:
            raise StageError(f"method {self.name} needs the weights stage's output (no weights folder given)")
        wdir = Path(ctx.weights_dir) / self.weights_subdir
        ascent_w = load_weight_file(wdir / "forget_weights.jsonl", len(self.forget_w))
        retain_w = load_weight_file(wdir / "retain_weights.jsonl", len(self.retain_w))
        relabel_w = None
        if (wdir / RELABEL_WEIGHTS).exists():
            relabel_w = load_weight_file(wdir / RELABEL_WEIGHTS, len(self.forget_w))
        self._set_weights(ascent_w, retain_w, relabel_w)
        self.initial_w = self.ascent_w.clone()
        self.reweights: list[dict] = []

    def _set_weights(
        self, ascent_w: torch.Tensor, retain_w: torch.Tensor, relabel_w: torch.Tensor | None
    ) -> None:
        if relabel_w is not None and not bool((relabel_w > 0).all()):
            raise StageError(f"method {self.name}: relabel weights must be > 0 (weights.w_min > 0)")
        self.retain_w = retain_w.float()
        self.ascent_ratio: torch.Tensor | None = None
        if relabel_w is None:
            self.ascent_w = self.forget_w = ascent_w.float()
        else:
            self.ascent_w, self.forget_w = ascent_w.float(), relabel_w.float()
            self.ascent_ratio = self.ascent_w / self.forget_w

    def forget_loss(self, t: ForgetTerms) -> torch.Tensor:
        loss = super().forget_loss(t)
        if self.ascent_ratio is None:
            return loss
        return loss * self.ascent_ratio[t.index].to(device=loss.device, dtype=loss.dtype)

    # dynamic reweighting -------------------------------------------------------------------------------
    def after_step(self, ctx: MethodContext, step: int) -> None:
        every = self.u.reweight_every
        if every and step % every == 0 and step < ctx.total_steps:
            self.reweight(ctx, step)

    def reweight(self, ctx: MethodContext, step: int) -> None:
        """Recompute every weight from the current adapter (module docstring)."""
        from rapidun_dist.weights.recipe import weights_from_features
        from rapidun_dist.weights.robust import spearman

        t0 = time.perf_counter()
        f_FK, r_RK, spec = ctx.pack_features()
        w = self.weights_config(ctx.cfg.weights)
        fw, rw, relabel_w, fused = weights_from_features(f_FK, r_RK, w, spec)
        previous = self.ascent_w.clone()
        self._set_weights(fw, rw, relabel_w)
        entry = {
            "step": step,
            "seconds": time.perf_counter() - t0,
            "spearman_previous": spearman(fw, previous),
            "spearman_initial": spearman(fw, self.initial_w),
            "forget_weights": weight_stats(self.ascent_w),
            "retain_weights": weight_stats(self.retain_w),
        }
        if w.shrink:
            entry["shrink"] = {"forget": fused["shrink_f"], "retain": fused["shrink_r"]}
        self.reweights.append(entry)
        log.info(
            f"unlearn[{self.name}]: reweighted at step {step} in {entry['seconds']:.2f} s; forget weights rank corr. "
            f"{entry['spearman_previous']:.3f} to the previous, {entry['spearman_initial']:.3f} to the initial ones"
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in use (a resumed run continues from the last refresh; `reweights` in the summary lists
        the refreshes of the process that wrote it)."""
        if not self.u.reweight_every:
            return {}  # the weights stage's files are the state
        state = {"ascent_w": self.ascent_w.clone(), "retain_w": self.retain_w.clone()}
        if self.ascent_ratio is not None:
            state["relabel_w"] = self.forget_w.clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "ascent_w" in state:
            self._set_weights(state["ascent_w"], state["retain_w"], state.get("relabel_w"))

    def describe(self) -> dict:
        out = {"forget_weights": weight_stats(self.ascent_w), "retain_weights": weight_stats(self.retain_w)}
        if self.ascent_ratio is not None:
            out["relabel_weights"] = weight_stats(self.forget_w)
        if self.u.reweight_every:
            out["reweight_every"] = self.u.reweight_every
            out["reweights"] = self.reweights
        return out
