"""Rep-Sim: a row's feature is the mean over its tokens (prompt and answer, as trained) of one layer's hidden state,
forward only; score = agg over the forget rows of the cosine - agg over the reference rows (`dense.contrast_scores`).

The layer is `find_poison.layer` in `output_hidden_states` numbering (0 = the embeddings, L = the last block's
output, after the final norm in the Llama family); null = the middle block, L // 2. The LM head is never run, and
below the last layer neither are the blocks above the one pooled (`hidden_upto`): at the middle block the pass costs
about half a forward.
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


class _Reached(Exception):
    """Raised by the hook on the module whose output is the wanted hidden state: the forward stops there."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


def _partitioned(model) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())  # ZeRO-3: gathers must run to the end


def hidden_upto(
    body, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, early: bool = True
) -> torch.Tensor:
    """`body(..., output_hidden_states=True).hidden_states[layer]`, running the decoder only up to that hidden
    state: 0 is the embeddings' output, 0 < layer < L the output of block layer - 1. The last one (L, after the final
    norm), a decoder without a `layers` list, or early=False (a ZeRO-3 partitioned model) run the whole forward."""
    blocks = getattr(body, "layers", None)
    embed = getattr(body, "embed_tokens", None)
    if not early or blocks is None or embed is None or not 0 <= layer < len(blocks):
        out = body(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
        )
        return out.hidden_states[layer]

    def stop(_module, _args, out):
        raise _Reached(out[0] if isinstance(out, tuple) else out)

    handle = (embed if layer == 0 else blocks[layer - 1]).register_forward_hook(stop)
    try:
        body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Reached as reached:
        return reached.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"the decoder's forward never reached hidden state {layer}")


def pooled_hidden(model, layer: int, pad_id: int):
    """A batch function: [B, d] masked token mean of hidden state `layer` (forward only, up to that layer)."""
    body = model.base_model  # the decoder without the LM head
    early = not _partitioned(model)  # checked once, not per batch

    def fn(examples: list[dict]) -> torch.Tensor:
        batch, _ = device_batch(model, examples, pad_id)
        h_BTD = hidden_upto(body, layer, batch["input_ids"], batch["attention_mask"], early=early)
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
