"""Rep-Sim: a row's feature is the mean over its tokens (prompt and answer, as trained) of one layer's hidden state,
forward only; score = agg over the forget rows of the cosine - agg over the reference rows (`dense.contrast_scores`).

The layer is `find_poison.layer` in `output_hidden_states` numbering (0 = the embeddings, L = the last block's
output, after the final norm in the Llama family); null = the middle block, L // 2. The LM head is never run.
"""

from __future__ import annotations

import torch

from rapidun_dist.find_poison.dense import device_batch, group_method_scores
from rapidun_dist.find_poison.job import ScoreJob


def resolve_layer(model, layer: int | None) -> int:
    """The hidden-state index to pool: `layer`, or the middle block when None; checked against the model's depth."""
    n = int(model.config.num_hidden_layers)
    picked = n // 2 if layer is None else layer
    if not 0 <= picked <= n:
        raise ValueError(f"find_poison.layer: expected in [0, {n}] for this {n}-block model, found {picked}")
    return picked


def pooled_hidden(model, layer: int, pad_id: int):
    """A batch function: [B, d] masked token mean of hidden state `layer` (forward only)."""
    body = model.base_model  # the decoder without the LM head

    def fn(examples: list[dict]) -> torch.Tensor:
        batch, _ = device_batch(model, examples, pad_id)
        out = body(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        h_BTD = out.hidden_states[layer]
        h_BTD = h_BTD.to(torch.promote_types(h_BTD.dtype, torch.float32))
        mask = batch["attention_mask"].unsqueeze(-1).to(h_BTD.dtype)
        return (h_BTD * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    fn.forward_only = True
    return fn


def score(job: ScoreJob) -> torch.Tensor | None:
    model, tok = job.model()
    layer = resolve_layer(model, job.cfg.find_poison.layer)
    job.notes["repsim_layer"] = layer
    return group_method_scores(job, pooled_hidden(model, layer, tok.pad_token_id), f"repsim layer {layer}")
