"""Grad-Sim: the cosine of per-sample gradients of the summed answer NLL, without token normalisation (every token's
gradient weighs by its size, unlike the token-wise features); score = agg over the forget rows - agg over the
reference rows (`dense.contrast_scores`). `find_poison.grad_layer` picks the gradient:

- `lm_head` (default): the output layer's. For logits z_t = W h_t, dL/dW = sum_t e_t h_t^T over the answer
  positions, e_t = softmax(z_t) - onehot(y_{t+1}): one forward pass gives it, no backward (and it is the head's own
  gradient even when the head is tied to the input embeddings, whose autograd gradient would mix in the embedding
  lookup's). Projected with the influence package's Kronecker Rademacher pair (`layer_projections`, k = head_k):
  f = P_out (dL/dW) P_in^T = sum_t (P_out e_t)(P_in h_t)^T, so <f_i, f_j> is an unbiased estimate of
  <dL_i/dW, dL_j/dW>_F and never a [V, d] matrix is formed.
- `last_block`: the last transformer block's linear layers (those of `influence.target_modules`), through the
  influence package's per-sample RapidGrad extractor (one backward per row, each weight gradient normalised per
  tensor and hashed into `influence.rapidgrad_k` buckets; `rapidun_dist.influence.features.RapidGradExtractor`).
"""

from __future__ import annotations

import re

import torch

from rapidun_dist.find_poison.dense import device_batch, group_method_scores
from rapidun_dist.find_poison.job import ScoreJob

_BLOCK = re.compile(r"\.(\d+)\.")


def head_projections(model, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(P_in [k, d], P_out [k, V]) of the output layer, from the influence package's (seed, name) generator."""
    from rapidun_dist.influence.features import model_device
    from rapidun_dist.influence.projection import layer_projections

    head = model.get_output_embeddings()
    return layer_projections(
        "lm_head", head.in_features, head.out_features, k_in=k, k_out=k, seed=seed, device=model_device(model)
    )


def head_gradient(model, pad_id: int, k: int, seed: int):
    """A batch function: [B, k * k] projected output-layer gradients of the summed answer NLL (forward only)."""
    head = model.get_output_embeddings()
    p_in, p_out = head_projections(model, k, seed)

    def fn(examples: list[dict]) -> torch.Tensor:
        batch, answer_BT = device_batch(model, examples, pad_id)
        seen: dict[str, torch.Tensor] = {}
        handle = head.register_forward_hook(lambda m, args, out: seen.update(h=args[0], z=out))
        try:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        finally:
            handle.remove()
        return projected_head_gradient(seen["h"], seen["z"], batch["labels"], answer_BT, p_in, p_out)

    fn.forward_only = True
    return fn


def projected_head_gradient(
    h_BTD: torch.Tensor,
    z_BTV: torch.Tensor,
    labels_BT: torch.Tensor,
    answer_BT: torch.Tensor,
    p_in: torch.Tensor,
    p_out: torch.Tensor,
) -> torch.Tensor:
    """[B, k_out * k_in]: sum over the answer positions t of (P_out e_t)(P_in h_t)^T, e_t = softmax(z_t) - onehot of
    the next token (module docstring)."""
    B, T, _ = h_BTD.shape
    acc = torch.promote_types(z_BTV.dtype, torch.float32)
    rows = answer_BT.flatten().nonzero().squeeze(1).to(h_BTD.device)  # host-built: no device sync
    targets = labels_BT[:, 1:].flatten(0, 1) if T > 1 else labels_BT.new_zeros(0)
    next_pos = (rows // T) * (T - 1) + rows % T  # position t's next token in the [B, T - 1] shifted labels
    y_N = targets.index_select(0, next_pos)
    z_NV = z_BTV.flatten(0, 1).index_select(0, rows).to(acc)
    h_ND = h_BTD.flatten(0, 1).index_select(0, rows).to(acc)
    p_out_t, p_in_t = p_out.to(acc).T, p_in.to(acc).T  # [V, k_out], [D, k_in]
    u_NK = torch.softmax(z_NV, dim=-1) @ p_out_t - p_out_t.index_select(0, y_N)
    v_NK = h_ND @ p_in_t
    out = torch.zeros(B, u_NK.shape[1], v_NK.shape[1], dtype=acc, device=h_BTD.device)
    out.index_add_(0, rows // T, u_NK.unsqueeze(2) * v_NK.unsqueeze(1))
    return out.flatten(1)


def last_block_extractor(model, cfg, pad_id: int):
    """The influence package's RapidGrad extractor restricted to the last block's tracked linear layers."""
    from rapidun_dist.influence.features import RapidGradExtractor

    ext = RapidGradExtractor(model, cfg.influence, pad_id=pad_id)
    blocks = {int(m.group(1)) for n in ext.layers for m in [_BLOCK.search(n)] if m}
    if not blocks:
        raise ValueError(f"find_poison.grad_layer=last_block: no numbered block among {list(ext.layers)[:3]}")
    last = f".{max(blocks)}."
    ext.layers = {n: m for n, m in ext.layers.items() if last in n}
    ext.params = {n: m.weight for n, m in ext.layers.items()}
    return ext


def feature_fn(job: ScoreJob):
    model, tok = job.model()
    fp = job.cfg.find_poison
    if fp.grad_layer == "lm_head":
        return head_gradient(model, tok.pad_token_id, fp.head_k, job.cfg.influence.seed)
    return last_block_extractor(model, job.cfg, tok.pad_token_id)


def score(job: ScoreJob) -> torch.Tensor | None:
    return group_method_scores(job, feature_fn(job), f"gradsim {job.cfg.find_poison.grad_layer}")
