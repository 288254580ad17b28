"""The one DeepSpeed engine of the package: the config builder, the learning-rate schedule, the step budget and the
start-up that full fine-tuning (`training/finetune.py`: implant, the retrain baselines) and LoRA unlearning
(`unlearn/engine.py`) share.

Config. `deepspeed_config` fills a ZeRO template of `models/zero/zero{0,1,2,3}.json` (package data): micro-batch per
rank, gradient accumulation, the global batch, clipping and the half-precision section. The callers differ where the
numbers would differ, and say so through parameters:

    split       "even": the global batch is cut into world x grad_accum equal parts (`batches.check_divisible`:
                unlearning); "ceil": the micro-batch is an upper bound ceil(batch / parts), a short last part allowed
                (full fine-tuning: any batch size runs on any world size)
    fp16        a DeepSpeed fp16 section (loss scaling, the module cast to fp16): full fine-tuning of an fp16 model;
                never for LoRA, whose fp32 adapters would be cast too
    overlap_comm, reduce_bucket_size
                ZeRO-2/3 settings that replace the template's where it has them (None: keep the template's).
                Full fine-tuning overlaps communication on GPUs and keeps DeepSpeed's default bucket (5e8 elements),
                as it always has: another bucket size could change NCCL's summation order

Schedule. Linear warmup over int(total x warmup_ratio) steps, then a half cosine to 0 (`warmup_cosine`). Hand-written
rather than transformers' `get_cosine_schedule_with_warmup`, whose warmup starts at factor 0: here step 0 already
runs at 1 / warmup of the rate, and the checkpoints and golden numbers of both trainers depend on that.

Start-up (`start_engine`): a process group even for one process (`distributed.env.ensure_process_group`; DeepSpeed
needs one), torch AdamW over the trainable parameters, the schedule, `deepspeed.initialize`, and a check that
DeepSpeed's accelerator is the device the model runs on. Under ZeRO-3 the model is built inside `deepspeed.zero.Init`
before that: `Zero3Init` keeps transformers' DeepSpeed config alive while `from_pretrained` runs (and, while alive,
makes `generate` run with synced GPUs over several ranks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch

from rapidun_dist.core.errors import ConfigError
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.training.batches import check_divisible

ZERO_DIR = Path(__file__).resolve().parents[1] / "models" / "zero"  # package data: shipped in the wheel
DEEPSPEED_REDUCE_BUCKET = 500_000_000  # DeepSpeed's own default of zero_optimization.reduce_bucket_size


def zero_template(stage: int) -> dict:
    """The ZeRO-`stage` template (its "auto" fields still unfilled)."""
    path = ZERO_DIR / f"zero{stage}.json"
    if not path.is_file():
        raise ConfigError(f"zero_stage: expected 0, 1, 2 or 3, found {stage} (no {path.name} in {ZERO_DIR})")
    return json.loads(path.read_text())


def deepspeed_config(
    *,
    zero_stage: int,
    batch_size: int,
    world_size: int,
    grad_accum: int,
    clip_grad: float,
    bf16: bool,
    fp16: bool = False,
    split: Literal["even", "ceil"] = "even",
    overlap_comm: bool | None = None,
    reduce_bucket_size: int | None = None,
    section: str,
) -> dict:
    """The DeepSpeed config of one engine (module docstring: what each parameter chooses). `section` is the config
    section the numbers come from (implant, unlearn), named in the error when an even split is impossible."""
    ds = zero_template(zero_stage)
    parts = world_size * grad_accum
    if split == "even":
        check_divisible(batch_size, world_size=world_size, grad_accum=grad_accum, section=section)
        micro = batch_size // parts
    else:
        micro = math.ceil(batch_size / parts)  # an upper bound: short last batches give smaller parts
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = grad_accum
    ds["train_batch_size"] = micro * parts
    ds["gradient_clipping"] = clip_grad
    ds["bf16"] = {"enabled": bool(bf16)}
    if fp16:
        ds["fp16"] = {"enabled": True}
    zero = ds["zero_optimization"]
    for key, value in (("overlap_comm", overlap_comm), ("reduce_bucket_size", reduce_bucket_size)):
        if value is not None and key in zero:
            zero[key] = value
    return ds


def total_steps(
    steps_per_epoch: int, epochs: float, max_steps: int | None, *, rounding: Literal["floor", "ceil"]
) -> int:
    """Optimizer steps of a run: `max_steps` when set, else epochs x steps per epoch, rounded down (full fine-tuning)
    or up (unlearning: a fraction of an epoch still visits its last forget rows), at least 1."""
    if max_steps:
        return max_steps
    exact = steps_per_epoch * epochs
    return max(1, int(exact) if rounding == "floor" else math.ceil(exact))


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float):
    """LambdaLR: factor (step + 1) / warmup for step < warmup = int(total x warmup_ratio), then
    0.5 (1 + cos(pi p)) with p = (step - warmup) / (total - warmup), clamped to 1."""
    warmup = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def start_engine(
    model,
    ds_config: dict,
    info: dist_env.DistInfo,
    *,
    lr: float,
    weight_decay: float,
    total: int,
    warmup_ratio: float,
):
    """`deepspeed.initialize` of `model` with torch AdamW over its trainable parameters and `warmup_cosine`."""
    import deepspeed

    dist_env.ensure_process_group(info)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=opt, lr_scheduler=warmup_cosine(opt, total, warmup_ratio), config=ds_config
    )
    if torch.device(engine.device).type != info.device.type:
        raise ConfigError(
            f"distributed.device: the model runs on {info.device} but DeepSpeed's accelerator is on "
            f"{engine.device}; set DS_ACCELERATOR=cpu to train on the CPU of a GPU machine"
        )
    return engine


class Zero3Init:
    """Keeps transformers' DeepSpeed config alive (zero.Init loading, synced_gpus generation) until `release`."""

    def __init__(self, ds_config: dict):
        from transformers.integrations.deepspeed import HfDeepSpeedConfig

        self._hf = HfDeepSpeedConfig(ds_config)

    def release(self) -> None:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        self._hf = None


def is_partitioned(param) -> bool:
    """A ZeRO-3 parameter whose local tensor holds only this rank's share (or nothing)."""
    return hasattr(param, "ds_numel") and param.numel() < param.ds_numel
