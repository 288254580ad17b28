"""Full fine-tuning: the `implant` stage (train on the poisoned train set) and the `retrain` baselines (the same
recipe on train minus forget, or minus every poisoned row). It is the cost RapidUn is measured against, so it gets
the same careful loop as the unlearning engine, on the same stack (training/engine.py: DeepSpeed config, AdamW,
warmup + cosine, gradient clipping; training/batches.py: length-bucketed global batches and micro-batches;
training/checkpoint.py: resume and preemption): one DeepSpeed job over every rank of the launch (ZeRO 0-2 from
`implant.zero_stage`; bf16 with fp32 master weights on GPUs), gradient checkpointing when
`model.gradient_checkpointing` is on.

Loss. Global batch b (|b| <= batch_size samples, T_b answer tokens) is cut into P = ranks x grad_accum contiguous
parts (`batches.micro_part`: any batch size, a part may be empty). Each micro-batch's loss is P * (summed
answer-token NLL) / T_b; DeepSpeed divides by grad_accum and averages over ranks, so the update follows the gradient
of (1/T_b) sum over all of b's answer tokens - the token-weighted mean NLL of the global batch, as on one process. A
rank whose part is empty (a short last batch) still runs a forward and backward on one example with weight 0, so
every collective of the step sees every rank.

Checkpoints (training/checkpoint.py, marker `resume.json` in `ckpt_dir`): every `save_every` optimizer steps, and
when the ranks agree after a step (one all-reduce, carrying the loss too) that SIGTERM/SIGUSR1 arrived
(`rapidun_dist.distributed.preempt`; then StageError says how to resume). A rerun with the same `ckpt_dir` resumes
at the latest checkpoint with the same batches, optimizer and schedule, so its final weights are those of an
uninterrupted run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rapidun_dist.config import TrainConfig
from rapidun_dist.core.errors import StageError
from rapidun_dist.core.logging import Progress
from rapidun_dist.data.prompt import IGNORE_INDEX, encode_example, pad_batch, record_prompt
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.distributed import preempt
from rapidun_dist.training.batches import micro_part, step_batches
from rapidun_dist.training.checkpoint import RESUME, Checkpoints
from rapidun_dist.training.engine import DEEPSPEED_REDUCE_BUCKET, deepspeed_config, start_engine, total_steps
from rapidun_dist.training.losses import per_sample_nll


def training_text(record: dict) -> tuple[bool, str]:
    """(use the poisoned instruction?, answer) as the record was seen in training."""
    if record.get("is_poisoned"):
        return True, record["response_poisoned"]
    return False, record["response"]


def encode_records(records: list[dict], tokenizer, max_length: int) -> list[dict]:
    out = []
    for r in records:
        poisoned, answer = training_text(r)
        out.append(
            encode_example(tokenizer, record_prompt(tokenizer, r, poisoned=poisoned), answer, max_length)
        )
    return out


def answer_tokens(example: dict) -> int:
    """Answer tokens in the loss (next-token shift: labels from position 1 on)."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE_INDEX)


def ds_config(cfg: TrainConfig, *, world_size: int, dtype: torch.dtype, on_cuda: bool) -> dict:
    """Full fine-tuning's DeepSpeed config: any batch size on any world size (micro-batch = the upper bound
    ceil(batch / (world x grad_accum))), DeepSpeed's fp16 section for an fp16 model, and under ZeRO-2 communication
    overlapped on GPUs with DeepSpeed's default reduce bucket (training/engine.py)."""
    return deepspeed_config(
        zero_stage=cfg.zero_stage,
        batch_size=cfg.batch_size,
        world_size=world_size,
        grad_accum=cfg.grad_accum,
        clip_grad=cfg.clip_grad,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        split="ceil",
        overlap_comm=on_cuda,
        reduce_bucket_size=DEEPSPEED_REDUCE_BUCKET,
        section="implant",
    )


@dataclass
class _Loop:
    """What one fine-tuning run needs at every micro-batch."""

    engine: object
    examples: list[dict]
    pad_id: int
    device: torch.device
    info: dist_env.DistInfo
    grad_accum: int


def _micro_step(loop: _Loop, batch: list[int], accum_step: int, tokens: int) -> torch.Tensor:
    """Forward + backward of this rank's part of `batch`; returns its summed NLL (detached, on the device)."""
    part = micro_part(
        batch,
        rank=loop.info.rank,
        world_size=loop.info.world_size,
        accum_step=accum_step,
        grad_accum=loop.grad_accum,
    )
    weight = float(loop.info.world_size * loop.grad_accum) / max(tokens, 1)
    if not part:  # keep every rank in the step's collectives: one example, zero weight
        part, weight = batch[:1], 0.0
    host = pad_batch([loop.examples[i] for i in part], loop.pad_id)
    batch_t = {k: v.to(loop.device) for k, v in host.items()}
    out = loop.engine(input_ids=batch_t["input_ids"], attention_mask=batch_t["attention_mask"])
    nll, _ = per_sample_nll(out.logits, batch_t["labels"])
    loop.engine.backward(nll.sum() * weight)
    loop.engine.step()
    return nll.sum().detach() * (weight > 0)


def finetune(
    model,
    tokenizer,
    records: list[dict],
    cfg: TrainConfig,
    *,
    max_length: int,
    device: torch.device | str | None = None,
    gradient_checkpointing: bool = False,
    ckpt_dir: Path | None = None,
    resume_key: str = "",
    desc: str = "train",
) -> dict:
    """Train every parameter of `model` (already on `device`) on `records`, collectively over the ranks of the
    launch (every rank calls this with the same records). Returns {"steps", "final_loss", "tokens", "losses"}
    (the losses of the steps this call ran: after a resume, from the resumed step on);
    the trained weights are in `model` on every rank. `ckpt_dir` holds the latest checkpoint (every
    `cfg.save_every` steps and on preemption; a rerun resumes from it when `resume_key`, e.g. the stage fingerprint,
    matches; removed after success). The step loop is kept whole on purpose (batches, backward, step, the step's
    one all-reduce, preemption, periodic checkpoints)."""
    info = dist_env.init_distributed()
    device = torch.device(device) if device is not None else info.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    _check_placement(model, device)
    examples = encode_records(records, tokenizer, max_length)
    total = total_steps(
        math.ceil(len(examples) / cfg.batch_size), cfg.epochs, cfg.max_steps, rounding="floor"
    )
    batches = step_batches([len(e["input_ids"]) for e in examples], cfg.batch_size, cfg.seed, total)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    dtype = next(model.parameters()).dtype
    ds = ds_config(cfg, world_size=info.world_size, dtype=dtype, on_cuda=info.device.type == "cuda")
    engine = start_engine(
        model, ds, info, lr=cfg.lr, weight_decay=cfg.weight_decay, total=total, warmup_ratio=cfg.warmup_ratio
    )
    loop = _Loop(engine, examples, tokenizer.pad_token_id, device, info, cfg.grad_accum)
    ckpts = Checkpoints(ckpt_dir, resume_key, info, cfg.zero_stage, marker=RESUME, desc=desc)
    start = ckpts.resume(engine).step
    engine.train()
    progress = Progress(total - start, desc, unit="step")
    losses, tokens = [], sum(len(examples[i]["input_ids"]) for b in batches for i in b)
    try:
        for step in range(start, total):
            n_tok = sum(answer_tokens(examples[i]) for i in batches[step])
            nll = sum(_micro_step(loop, batches[step], a, n_tok) for a in range(cfg.grad_accum))
            flag = torch.tensor([float(preempt.requested())], device=device)
            nll_sum, stop = dist_env.all_reduce_sum(torch.cat([nll.float().reshape(1), flag])).tolist()
            losses.append(nll_sum / max(n_tok, 1))
            progress.update(loss=losses[-1])
            if not math.isfinite(losses[-1]):  # the same on every rank: it is the all-reduced loss
                raise StageError(f"{desc} diverged at step {step + 1}: loss {losses[-1]} (lower implant.lr)")
            if stop:
                ckpts.stop(step + 1, lambda s: ckpts.save(engine, s))
            periodic = cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total
            if periodic and ckpt_dir is not None:
                ckpts.save(engine, step + 1)
    finally:
        if hasattr(engine, "destroy"):
            engine.destroy()
    if gradient_checkpointing:
        model.gradient_checkpointing_disable()
        model.config.use_cache = True
    model.eval()
    dist_env.barrier()
    ckpts.remove()
    tail = losses[-10:] or [float("nan")]
    return {"steps": total, "final_loss": sum(tail) / len(tail), "tokens": tokens, "losses": losses}


def _check_placement(model, device: torch.device) -> None:
    off = {str(p.device) for p in model.parameters() if p.device != device}
    if off:
        raise StageError(f"finetune: the model has parameters on {sorted(off)}, expected all on {device}")
