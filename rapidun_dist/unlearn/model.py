"""The model under unlearning as DeepSpeed wants it: the ZeRO config for a world size, and the backbone loaded
fully on every rank (ZeRO 0-2: the LoRA default, the frozen backbone fits a GPU) or partitioned at load time
through zero.Init (ZeRO-3, where it does not): `HfDeepSpeedConfig` alive while `from_pretrained` runs makes
transformers build the model inside `deepspeed.zero.Init`, and while it stays alive `generate` runs with
`synced_gpus` on several ranks (every rank steps until all are done: the partitioned forward is collective)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.core.errors import StageError
from rapidun_dist.models.loading import load_saved, torch_dtype

ZERO_DIR = Path(__file__).resolve().parents[1] / "models" / "zero"  # package data: shipped in the wheel


def build_ds_config(cfg: RunConfig, world_size: int) -> dict:
    u = cfg.unlearn
    ds = json.loads((ZERO_DIR / f"zero{u.zero_stage}.json").read_text())
    parts = world_size * u.grad_accum
    if u.batch_size % parts:
        raise StageError(
            f"unlearn.batch_size={u.batch_size} must be divisible by world_size x grad_accum = {parts}"
        )
    ds["train_micro_batch_size_per_gpu"] = u.batch_size // parts
    ds["gradient_accumulation_steps"] = u.grad_accum
    ds["train_batch_size"] = u.batch_size
    ds["gradient_clipping"] = u.clip_grad
    ds["bf16"] = {"enabled": torch_dtype(cfg.model.dtype) == torch.bfloat16}
    return ds


class Zero3Init:
    """Keeps transformers' DeepSpeed config alive (zero.Init loading, synced_gpus generation) until `release`."""

    def __init__(self, ds_config: dict):
        from transformers.integrations.deepspeed import HfDeepSpeedConfig

        self._hf = HfDeepSpeedConfig(ds_config)

    def release(self) -> None:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        self._hf = None


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


def is_partitioned(param) -> bool:
    """A ZeRO-3 parameter whose local tensor holds only this rank's share (or nothing)."""
    return hasattr(param, "ds_numel") and param.numel() < param.ds_numel
