"""Per-sample influence features (DESIGN section 5).

Token-wise (default): for every tracked layer l and answer position t, phi_t = (P_out g_t) (x) (P_in x_t);
unit-normalized per token (||phi_t|| = ||P_out g_t|| ||P_in x_t||, free), averaged over the sample's
answer tokens, normalized per layer, concatenated over layers and scaled by 1/sqrt(L): ||f_i|| = 1 and
<f_i, f_j> is the layer-balanced mean pairwise cosine of token gradients.

RapidGrad (RapidIn-compatible baseline): one backward per sample, the flattened weight gradient of the
tracked layers normalized per tensor, then an OPORP sketch (random signs, random permutation, bucket
sums into K bins), normalized. Slower by design.

Answer positions: the loss is the next-token CE summed over answer tokens, so position t is tracked when
its shifted label (token t+1) is an answer token.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from rapidun_dist.config import InfluenceConfig
from rapidun_dist.data.prompt import IGNORE_INDEX, pad_batch
from rapidun_dist.influence.hooks import GradientCapture, enable_input_grads, tracked_linears
from rapidun_dist.influence.projection import layer_projections
from rapidun_dist.kernels import fused_token_projection
from rapidun_dist.losses import per_sample_nll


def answer_positions(labels_BT: torch.Tensor) -> torch.Tensor:
    """Bool [B, T]: position t predicts an answer token (labels[t + 1] is not ignored)."""
    mask = torch.zeros_like(labels_BT, dtype=torch.bool)
    mask[:, :-1] = labels_BT[:, 1:] != IGNORE_INDEX
    return mask


def _unit(z: torch.Tensor) -> torch.Tensor:
    n = z.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, z / n.clamp_min(1e-30), torch.zeros_like(z))


@contextmanager
def _frozen_params(model: nn.Module):
    """Parameters stop requiring grad for the duration: the backward then computes only the activation
    gradients the hooks need (no weight gradients, nothing accumulated into `.grad`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# Causal LMs whose logits are exactly lm_head(final hidden state): the vocabulary projection can be restricted to
# the answer positions (the only ones in the loss), which on small models is a third of the work.
_PLAIN_HEAD_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


def answer_nll(model: nn.Module, batch: dict, mask_BT: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over answer tokens (position t predicts token t + 1)."""
    if hasattr(model, "get_base_model"):  # PEFT wrapper: the causal LM with the adapters injected
        model = model.get_base_model()
    config = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if (
        getattr(config, "model_type", None) not in _PLAIN_HEAD_TYPES
        or head is None
        or not hasattr(model, "model")
    ):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return per_sample_nll(out.logits, batch["labels"])[0].sum()
    hidden_BTH = model.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    logits_NV = head(hidden_BTH[mask_BT])
    targets = batch["labels"][:, 1:][mask_BT[:, :-1]]
    logits_NV = logits_NV.float() if logits_NV.dtype in (torch.float16, torch.bfloat16) else logits_NV
    return torch.nn.functional.cross_entropy(logits_NV, targets, reduction="sum")


class TokenwiseExtractor:
    """Hooks + fused projection. `__call__(examples)` -> features [B, L * k_out * k_in] (unit rows; float32,
    float64 when the model and the projections are float64)."""

    def __init__(self, model: nn.Module, cfg: InfluenceConfig, *, pad_id: int):
        self.model, self.cfg, self.pad_id = model, cfg, pad_id
        self.layers = tracked_linears(model, cfg.target_modules)
        dev = next(model.parameters()).device
        self.proj = {
            n: layer_projections(
                n, m.in_features, m.out_features, k_in=cfg.k_in, k_out=cfg.k_out, seed=cfg.seed, device=dev
            )
            for n, m in self.layers.items()
        }
        self.dim = len(self.layers) * cfg.k_in * cfg.k_out

    def spec(self) -> dict:
        return {
            "estimator": "tokenwise",
            "k_in": self.cfg.k_in,
            "k_out": self.cfg.k_out,
            "seed": self.cfg.seed,
            "layers": list(self.layers),
            "dim": self.dim,
        }

    def __call__(self, examples: list[dict]) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        batch = {k: v.to(dev) for k, v in pad_batch(examples, self.pad_id).items()}
        mask = answer_positions(batch["labels"])
        counts = mask.sum(1)
        offsets = torch.zeros(len(examples) + 1, dtype=torch.long, device=dev)
        offsets[1:] = counts.cumsum(0)
        handle = enable_input_grads(self.model)
        try:
            with _frozen_params(self.model), GradientCapture(self.layers) as cap:
                answer_nll(self.model, batch, mask).backward()
                parts = [self._layer_feature(cap, name, mask, offsets, counts) for name in self.layers]
        finally:
            handle.remove()
        return torch.cat(parts, dim=1) / len(parts) ** 0.5

    def _layer_feature(self, cap, name, mask, offsets, counts) -> torch.Tensor:
        x_TD = cap.inputs[name][mask]
        g_TO = cap.grads[name][mask]
        p_in, p_out = self.proj[name]
        sums_BOI = fused_token_projection(x_TD, g_TO, offsets, p_in, p_out, backend=self.cfg.backend)
        sums = sums_BOI.flatten(1)
        mean = sums.to(torch.promote_types(sums.dtype, torch.float32)) / counts.clamp_min(1).unsqueeze(1)
        return _unit(mean)


class RapidGradExtractor:
    """The RapidIn-style per-sample estimator: full per-tensor-normalized gradient, OPORP-sketched to K."""

    def __init__(self, model: nn.Module, cfg: InfluenceConfig, *, pad_id: int):
        self.model, self.cfg, self.pad_id = model, cfg, pad_id
        self.layers = tracked_linears(model, cfg.target_modules)
        self.params = [m.weight for m in self.layers.values()]
        total = sum(p.numel() for p in self.params)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.perm = torch.randperm(total, generator=gen)
        self.signs = torch.randint(0, 2, (total,), generator=gen).float() * 2 - 1
        self.bucket = torch.arange(total) % cfg.rapidgrad_k
        self.dim = cfg.rapidgrad_k

    def spec(self) -> dict:
        return {
            "estimator": "rapidgrad",
            "k": self.cfg.rapidgrad_k,
            "seed": self.cfg.seed,
            "layers": list(self.layers),
            "dim": self.dim,
        }

    def __call__(self, examples: list[dict]) -> torch.Tensor:
        return torch.stack([self._one(e) for e in examples])

    def _one(self, example: dict) -> torch.Tensor:
        dev = self.params[0].device
        batch = {k: v.to(dev) for k, v in pad_batch([example], self.pad_id).items()}
        flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(True)
        try:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            nll, _ = per_sample_nll(out.logits, batch["labels"])
            grads = torch.autograd.grad(nll.sum(), self.params, allow_unused=True)
        finally:
            for p, f in zip(self.params, flags, strict=True):
                p.requires_grad_(f)
        flat = torch.cat(
            [
                _unit(g.flatten().float()) if g is not None else torch.zeros(p.numel(), device=dev)
                for g, p in zip(grads, self.params, strict=True)
            ]
        ).cpu()
        return _unit(self.sketch(flat))

    def sketch(self, flat: torch.Tensor) -> torch.Tensor:
        """OPORP: s[k] = sum_{j: j mod K = k} (sign * v)[perm[j]] (random signs, permutation, K bucket sums)."""
        signed = flat * self.signs.to(flat.dtype)
        return torch.zeros(self.dim, dtype=flat.dtype).index_add_(0, self.bucket, signed[self.perm])


def make_extractor(model: nn.Module, cfg: InfluenceConfig, *, pad_id: int):
    cls = TokenwiseExtractor if cfg.estimator == "tokenwise" else RapidGradExtractor
    return cls(model, cfg, pad_id=pad_id)
