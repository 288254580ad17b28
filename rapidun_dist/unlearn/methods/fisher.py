"""fisher: SalUn-style weight saliency (Fan et al. 2024) on the LoRA adapter, masking ONLY the ascent term.

After `unlearn.saliency_warmup` optimizer steps of the unmasked RapidUn objective (weights 1) - measured there
and not at the initial adapter, where lora_B = 0 gives lora_A no gradient at all - the diagonal Fisher of every
adapter coordinate is estimated from per-sample gradients on up to `unlearn.saliency_rows` forget rows
(poisoned answers) and retain rows:

    F_f = mean_i (d CE_i / d theta)^2 over forget rows,  F_r likewise over retain rows,
    saliency = F_f / (F_r + eps),  keep the top `unlearn.saliency_keep` share of coordinates (a global top-k).

From then on the gradient of the ascent term is multiplied by that 0/1 mask; the relabel and retain terms keep
their whole gradient. (A hard mask, because AdamW's per-coordinate normalisation cancels a constant soft gate.)

Chosen over FILA (Fisher-weighted LoRA initialisation) because FILA subtracts its initial low-rank factors from
the frozen base weights, so the saved adapter would no longer apply to the user's unmodified model.

Needs whole per-sample LoRA gradients on every rank: ZeRO 0-2 only (ZeRO-3 partitions the parameters).
"""

from __future__ import annotations

import math

import torch

from rapidun_dist.core.logging import get_logger
from rapidun_dist.unlearn.methods.base import MethodContext
from rapidun_dist.unlearn.methods.uniform import Uniform

log = get_logger("unlearn")


def saliency_masks(fish_f: list[torch.Tensor], fish_r: list[torch.Tensor], keep: float) -> list[torch.Tensor]:
    """0/1 masks keeping exactly ceil(keep x N) coordinates with the largest F_f / (F_r + eps) over all tensors."""
    flat_f = torch.cat([f.detach().double().flatten() for f in fish_f])
    flat_r = torch.cat([r.detach().double().flatten() for r in fish_r])
    eps = 1e-8 * float(flat_r.mean()) + 1e-30  # below any retain Fisher that matters, above zero
    ratio = flat_f / (flat_r + eps)
    k = min(ratio.numel(), max(1, math.ceil(keep * ratio.numel())))
    flat = torch.zeros_like(ratio, dtype=torch.float32)
    flat[torch.topk(ratio, k, sorted=False).indices] = 1.0
    return [m.view_as(f) for m, f in zip(flat.split([f.numel() for f in fish_f]), fish_f, strict=True)]


class Fisher(Uniform):
    name = "fisher"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.masks: list[torch.Tensor] | None = None
        self.measured_at: int | None = None

    def setup(self, ctx: MethodContext) -> None:
        if self.u.saliency_warmup == 0:
            self._measure(ctx, 0)

    def after_step(self, ctx: MethodContext, step: int) -> None:
        if self.masks is None and step == self.u.saliency_warmup:
            self._measure(ctx, step)

    def _measure(self, ctx: MethodContext, step: int) -> None:
        fish_f = ctx.per_sample_grad_sq("forget", self.u.saliency_rows)
        fish_r = ctx.per_sample_grad_sq("retain", self.u.saliency_rows)
        self.masks = [m.to(ctx.device) for m in saliency_masks(fish_f, fish_r, self.u.saliency_keep)]
        self.measured_at = step
        kept = sum(float(m.sum()) for m in self.masks) / sum(m.numel() for m in self.masks)
        log.info(
            f"fisher: saliency measured after step {step}: ascent gradient kept on {kept:.1%} of coordinates"
        )

    def ascent_mask(self) -> list[torch.Tensor] | None:
        return self.masks

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.masks is None:
            return {}
        return {f"mask.{i}": m.to(torch.uint8).cpu() for i, m in enumerate(self.masks)} | {
            "measured_at": torch.tensor(self.measured_at, device="cpu")
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            n = len([k for k in state if k.startswith("mask.")])
            self.masks = [state[f"mask.{i}"].float() for i in range(n)]
            self.measured_at = int(state["measured_at"])

    def describe(self) -> dict:
        if self.masks is None:
            return {"saliency": None}
        kept = sum(float(m.sum()) for m in self.masks) / sum(m.numel() for m in self.masks)
        return {"saliency": {"measured_after_step": self.measured_at, "kept": kept}}
