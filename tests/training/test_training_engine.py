"""training/engine.py: the DeepSpeed config builder against hand-written configs (both trainers' choices), the
step budget's rounding, and the warmup + cosine schedule against hand-computed factors."""

from __future__ import annotations

import math

import pytest
import torch

from rapidun_dist.core.errors import ConfigError
from rapidun_dist.training.engine import (
    DEEPSPEED_REDUCE_BUCKET,
    deepspeed_config,
    total_steps,
    warmup_cosine,
)

COMMON = {"steps_per_print": 1000000, "wall_clock_breakdown": False}


def test_even_split_zero2_as_unlearning_builds_it():
    ds = deepspeed_config(
        zero_stage=2, batch_size=16, world_size=4, grad_accum=2, clip_grad=0.5, bf16=True, section="unlearn"
    )
    assert ds == {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2,
        "train_batch_size": 16,
        "gradient_clipping": 0.5,
        "bf16": {"enabled": True},
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": False,
            "contiguous_gradients": True,
            "reduce_bucket_size": 50000000.0,
        },
        **COMMON,
    }


def test_ceil_split_zero2_as_full_fine_tuning_builds_it():
    # batch 7 over 2 ranks x 2 steps: micro-batch ceil(7 / 4) = 2 (an upper bound), DeepSpeed sees 8
    ds = deepspeed_config(
        section="implant",
        zero_stage=2,
        batch_size=7,
        world_size=2,
        grad_accum=2,
        clip_grad=1.0,
        bf16=False,
        fp16=True,
        split="ceil",
        overlap_comm=True,
        reduce_bucket_size=DEEPSPEED_REDUCE_BUCKET,
    )
    assert ds == {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2,
        "train_batch_size": 8,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": False},
        "fp16": {"enabled": True},
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": 500000000,
        },
        **COMMON,
    }


@pytest.mark.parametrize("stage", [0, 1])
def test_communication_overrides_touch_only_stages_that_have_them(stage):
    ds = deepspeed_config(
        section="implant",
        zero_stage=stage,
        batch_size=32,
        world_size=3,
        grad_accum=1,
        clip_grad=1.0,
        bf16=False,
        split="ceil",
        overlap_comm=True,
        reduce_bucket_size=DEEPSPEED_REDUCE_BUCKET,
    )
    assert ds["zero_optimization"] == {"stage": stage}
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (11, 33)
    assert "fp16" not in ds


def test_zero3_keeps_its_template_fields():
    ds = deepspeed_config(
        section="unlearn", zero_stage=3, batch_size=8, world_size=2, grad_accum=1, clip_grad=1.0, bf16=False
    )
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["zero_optimization"]["overlap_comm"] is False
    assert ds["train_micro_batch_size_per_gpu"] == 4


def test_even_split_and_stage_errors():
    with pytest.raises(ConfigError, match=r"unlearn.batch_size=10: must be divisible .* = 3 x 2 = 6"):
        deepspeed_config(
            section="unlearn",
            zero_stage=0,
            batch_size=10,
            world_size=3,
            grad_accum=2,
            clip_grad=1.0,
            bf16=False,
        )
    with pytest.raises(ConfigError, match="expected 0, 1, 2 or 3, found 4"):
        deepspeed_config(
            section="unlearn",
            zero_stage=4,
            batch_size=8,
            world_size=1,
            grad_accum=1,
            clip_grad=1.0,
            bf16=False,
        )


def test_total_steps_rounding_and_max_steps():
    # 11 batches per epoch x 0.35 epochs = 3.85 steps
    assert total_steps(11, 0.35, None, rounding="floor") == 3  # full fine-tuning
    assert total_steps(11, 0.35, None, rounding="ceil") == 4  # unlearning
    assert total_steps(11, 2.0, None, rounding="floor") == total_steps(11, 2.0, None, rounding="ceil") == 22
    assert total_steps(1, 0.1, None, rounding="floor") == 1  # at least one step
    assert total_steps(11, 0.35, 7, rounding="ceil") == 7


@pytest.mark.parametrize(
    ("total", "ratio", "factors"),
    [
        # warmup int(10 x 0.2) = 2: (step + 1) / 2, then 0.5 (1 + cos(pi (step - 2) / 8))
        (10, 0.2, [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 8)), 0.5 * (1 + math.cos(math.pi / 4))]),
        # no warmup: the cosine from step 0; at the end (and past it) the factor is 0
        (
            4,
            0.0,
            [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0, 0.0],
        ),
        # warmup int(3 x 0.5) = 1: step 0 already at the full rate
        (3, 0.5, [1.0, 1.0, 0.5]),
    ],
)
def test_warmup_cosine_against_hand_computed_factors(total, ratio, factors):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = warmup_cosine(opt, total, ratio)
    seen = []
    for _ in factors:
        seen.append(opt.param_groups[0]["lr"] / 2.0)
        opt.step()
        sched.step()
    assert seen == pytest.approx(factors, abs=1e-12)
