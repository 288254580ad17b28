"""The `implant` section: the full fine-tune that implants the backdoor (experiment mode) and that the `retrain`
baselines repeat without the forget rows (rapidun_dist/training/finetune.py)."""

from __future__ import annotations

from dataclasses import dataclass

from rapidun_dist.config.checks import check


@dataclass(kw_only=True)
class TrainConfig:
    """Full fine-tuning recipe used by `implant` and by the `retrain` baselines (one DeepSpeed job over the ranks)."""

    epochs: float = 3.0
    """Passes over the training rows (> 0; fractions allowed): steps = ceil(rows / batch_size) x epochs, unless
    max_steps is set."""
    lr: float = 3e-3
    """AdamW peak learning rate (> 0), reached after the warmup and decayed by a cosine to 0."""
    batch_size: int = 32
    """Global batch (samples per optimizer step), split over ranks x grad_accum micro-batches."""
    grad_accum: int = 1
    """Micro-batches per rank per optimizer step (micro-batch per rank = ceil(batch_size / (ranks x grad_accum)))."""
    clip_grad: float = 1.0
    """Gradient clipping: max global L2 norm of the gradient."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-2 (0: replicated; 2: fp32 master weights, gradients and Adam state sharded - what a
    7-8B full fine-tune needs to fit)."""
    weight_decay: float = 0.0
    """AdamW (decoupled) weight decay."""
    warmup_ratio: float = 0.03
    """Share of the steps with a linear learning-rate warmup, in [0, 1)."""
    max_steps: int | None = None
    """Optimizer steps to run (>= 1), overriding epochs; null = from epochs."""
    seed: int = 0
    """Seeds the batch order and, for the tiny model, its initial weights; the top-level `seed` is added to it."""
    save_every: int = 200
    """Optimizer steps between checkpoints (0: only on SIGTERM / SIGUSR1). A job that is killed without warning, or
    preempted again and again, resumes from the latest one; one checkpoint is kept. Pick it so that a checkpoint
    costs a few percent of the interval: an 8B ZeRO-2 checkpoint is ~16 bytes per parameter (~130 GB) in all
    (slurm/README.md)."""

    def __post_init__(self):
        check(self.epochs > 0, "implant.epochs", f"expected > 0, found {self.epochs}")
        check(self.save_every >= 0, "implant.save_every", f"expected >= 0, found {self.save_every}")
        check(self.lr > 0, "implant.lr", f"expected > 0, found {self.lr}")
        check(self.batch_size >= 1, "implant.batch_size", f"expected >= 1, found {self.batch_size}")
        check(self.grad_accum >= 1, "implant.grad_accum", f"expected >= 1, found {self.grad_accum}")
        check(self.clip_grad > 0, "implant.clip_grad", f"expected > 0, found {self.clip_grad}")
        check(
            self.zero_stage in (0, 1, 2),
            "implant.zero_stage",
            f"expected 0, 1 or 2, found {self.zero_stage} (a full fine-tune under ZeRO-3 would need zero.Init "
            "loading; stage 2 already shards the optimizer state and gradients)",
        )
        check(
            self.max_steps is None or self.max_steps >= 1,
            "implant.max_steps",
            f"expected >= 1 (or null for epochs), found {self.max_steps}",
        )
        check(
            0.0 <= self.warmup_ratio < 1.0,
            "implant.warmup_ratio",
            f"expected in [0, 1), found {self.warmup_ratio}",
        )
