"""The model under unlearning as DeepSpeed wants it, on the shared stack (training/engine.py): the DeepSpeed config of
the `unlearn` section, and the backbone loaded fully on every rank (ZeRO 0-2: the LoRA default, the frozen backbone
fits a GPU) or partitioned at load time through zero.Init (ZeRO-3, where it does not): `Zero3Init` alive while
`from_pretrained` runs makes transformers build the model inside `deepspeed.zero.Init`, and while it stays alive
`generate` runs with `synced_gpus` on several ranks (every rank steps until all are done: the partitioned forward is
collective)."""

from __future__ import annotations

from pathlib import Path

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.models.loading import load_saved, torch_dtype
from rapidun_dist.training.engine import Zero3Init, deepspeed_config


def build_ds_config(cfg: RunConfig, world_size: int) -> dict:
    """Unlearning's DeepSpeed config: the global batch split into world x grad_accum equal micro-batches (checked),
    bf16 iff `model.dtype` resolves to bfloat16, no fp16 section (the LoRA adapters stay fp32 under an fp16
    backbone), the ZeRO template's communication settings as they are."""
    u = cfg.unlearn
    return deepspeed_config(
        zero_stage=u.zero_stage,
        batch_size=u.batch_size,
        world_size=world_size,
        grad_accum=u.grad_accum,
        clip_grad=u.clip_grad,
        bf16=torch_dtype(cfg.model.dtype) == torch.bfloat16,
        split="even",
        section="unlearn",
    )


def load_backbone(cfg: RunConfig, model_dir: Path, ds_config: dict, device=None):
    """(model, tokenizer, Zero3Init | None): partitioned at load under ZeRO-3 (zero.Init places the shards), whole
    and on the rank's `device` otherwise."""
    z3 = Zero3Init(ds_config) if cfg.unlearn.zero_stage == 3 else None
    try:
        model, tok = load_saved(model_dir, cfg.model, device=None if z3 is not None else device)
    except BaseException:
        if z3 is not None:
            z3.release()
        raise
    return model, tok, z3
