"""Full fine-tuning: the `implant` stage (train on the poisoned train set) and the `retrain` baselines (the same
recipe on train minus forget, or minus every poisoned row). It is the cost RapidUn is measured against, so it gets
the same careful loop as the unlearning engine: AdamW, warmup + cosine, gradient clipping, length-bucketed batches,
one DeepSpeed job over every rank of the launch (ZeRO 0-2 from `implant.zero_stage`; bf16 with fp32 master weights
on GPUs), gradient checkpointing when `model.gradient_checkpointing` is on.

World-size invariance. The global batches are a function of the seed only. Global batch b (|b| <= batch_size
samples, T_b answer tokens) is cut into P = ranks x grad_accum contiguous parts; rank r takes part a * ranks + r at
accumulation step a, so 1 rank x 2 accumulation steps and 2 ranks x 1 step run the very same micro-batches. Each
micro-batch's loss is P * (summed answer-token NLL) / T_b; DeepSpeed divides by grad_accum and averages over ranks,
so the update follows the gradient of (1/T_b) sum over all of b's answer tokens - the token-weighted mean NLL of
the global batch, as on one process. A rank whose part is empty (a short last batch) still runs a forward and
backward on one example with weight 0, so every collective of the step sees every rank.

Checkpoints: every `save_every` optimizer steps, and when the ranks agree after a step (one all-reduce, carrying
the loss too) that SIGTERM/SIGUSR1 arrived (`rapidun_dist.distributed.preempt`; then StageError says how to resume).
A rerun with the same `ckpt_dir` resumes at the latest checkpoint with the same batches, optimizer and schedule, so
its final weights are those of an uninterrupted run. Layout of `ckpt_dir`:

    step<N>/      DeepSpeed's files of step N (every rank writes its shards; DeepSpeed's own `latest` is not used)
    resume.json   {"key", "tag", "step", "world_size"}: written by rank 0, atomically, only after every rank's shards
                  are on disk; the one checkpoint a rerun may load. Then every other step* folder is removed.

A kill at any moment leaves either the previous checkpoint named by resume.json (a half-written step folder is
never named, and the next save removes it) or the new one.
"""

from __future__ import annotations

import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from rapidun_dist.config import TrainConfig
from rapidun_dist.core.errors import ConfigError, StageError
from rapidun_dist.core.logging import Progress, get_logger
from rapidun_dist.data.prompt import IGNORE_INDEX, encode_example, pad_batch, record_prompt
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.distributed import preempt
from rapidun_dist.training.losses import per_sample_nll

log = get_logger("train")


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


def cosine_schedule(optimizer, total_steps: int, warmup_ratio: float):
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def length_bucketed_batches(examples: list[dict], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort within windows of 50 batches by length, so padding stays small."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s : s + window], key=lambda i: len(examples[i]["input_ids"]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
    return cfg.max_steps or max(1, int(math.ceil(n_examples / cfg.batch_size) * cfg.epochs))


def step_batches(examples: list[dict], cfg: TrainConfig, steps: int) -> list[list[int]]:
    """The global batch of every step, in order: a function of the seed only (every rank draws the same)."""
    rng, out = random.Random(cfg.seed), []
    while len(out) < steps:
        out += length_bucketed_batches(examples, cfg.batch_size, rng)[::-1]  # popped from the end before
    return out[:steps]


def micro_part(
    batch: list[int], *, rank: int, world_size: int, accum_step: int, grad_accum: int
) -> list[int]:
    """Rank `rank`'s contiguous part of `batch` at accumulation step `accum_step` (possibly empty)."""
    parts, m = world_size * grad_accum, accum_step * world_size + rank
    n = len(batch)
    return batch[m * n // parts : (m + 1) * n // parts]


def answer_tokens(example: dict) -> int:
    """Answer tokens in the loss (next-token shift: labels from position 1 on)."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE_INDEX)


def ds_config(cfg: TrainConfig, *, world_size: int, dtype: torch.dtype, on_cuda: bool) -> dict:
    micro = math.ceil(cfg.batch_size / (world_size * cfg.grad_accum))
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.zero_stage == 2:
        zero |= {"contiguous_gradients": True, "overlap_comm": on_cuda}
    return {
        "train_micro_batch_size_per_gpu": micro,  # an upper bound: short last batches give smaller parts
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": micro * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.clip_grad,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


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


def _start_engine(model, cfg: TrainConfig, total: int, info: dist_env.DistInfo, dtype: torch.dtype):
    import deepspeed

    dist_env.ensure_process_group(info)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=opt,
        lr_scheduler=cosine_schedule(opt, total, cfg.warmup_ratio),
        config=ds_config(cfg, world_size=info.world_size, dtype=dtype, on_cuda=info.device.type == "cuda"),
    )
    if torch.device(engine.device).type != info.device.type:
        raise ConfigError(
            f"distributed.device: the model runs on {info.device} but DeepSpeed's accelerator is on "
            f"{engine.device}; set DS_ACCELERATOR=cpu to train on the CPU of a GPU machine"
        )
    return engine


RESUME_FILE = "resume.json"


def _resume_decision(ckpt_dir: Path | None, key: str, world_size: int, zero_stage: int) -> dict | None:
    """Rank 0's reading of `ckpt_dir`: {"tag", "step"} to resume, {"error"} to stop, None to start afresh."""
    from rapidun_dist.core.io import read_json

    meta = None if ckpt_dir is None else ckpt_dir / RESUME_FILE
    if meta is None or not meta.is_file():
        return None
    saved = read_json(meta)
    if saved.get("key") != key:
        log.warning(f"{ckpt_dir}: checkpoint of another config or data ({saved.get('key')}); starting afresh")
        return None
    if not (ckpt_dir / saved["tag"]).is_dir():
        return {
            "error": f"{meta} names checkpoint {saved['tag']}, but {ckpt_dir / saved['tag']} is missing; restore "
            "it, or delete the folder to restart"
        }
    if saved["world_size"] != world_size and zero_stage > 0:
        return {
            "error": f"{ckpt_dir}: checkpoint written by {saved['world_size']} ranks under ZeRO-{zero_stage} (its "
            f"optimizer state is partitioned that way); resume with {saved['world_size']} ranks, or delete the "
            "folder to restart"
        }
    return {"tag": saved["tag"], "step": int(saved["step"])}


def _resume(engine, ckpt_dir: Path | None, key: str, info: dist_env.DistInfo, zero_stage: int) -> int:
    """The step to start at: rank 0 decides from `ckpt_dir` and broadcasts, then every rank loads the checkpoint."""
    decision = _resume_decision(ckpt_dir, key, info.world_size, zero_stage) if info.rank == 0 else None
    decision = dist_env.broadcast_object(decision)
    if decision is None:
        return 0
    if "error" in decision:
        raise StageError(decision["error"])
    engine.load_checkpoint(str(ckpt_dir), tag=decision["tag"])
    log.info(f"resumed from {ckpt_dir} at step {decision['step']}")
    return decision["step"]


def _mark_ready(ckpt_dir: Path, meta: dict) -> None:
    """Rank 0, once every rank's shards of `meta["tag"]` are on disk: name it in resume.json (atomic replace), then
    remove every other step folder (the previous checkpoint, or one a kill left half-written)."""
    from rapidun_dist.core.io import write_json

    write_json(ckpt_dir / RESUME_FILE, meta)
    for old in ckpt_dir.glob("step*"):
        if old.is_dir() and old.name != meta["tag"]:
            shutil.rmtree(old, ignore_errors=True)


def _save_checkpoint(engine, ckpt_dir: Path, key: str, info: dist_env.DistInfo, step: int) -> None:
    """Every rank writes its shards of `step<step>`; after a barrier rank 0 makes it the checkpoint to resume from."""
    tag = f"step{step}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step}, save_latest=False)
    dist_env.barrier()
    if info.rank == 0:
        _mark_ready(ckpt_dir, {"key": key, "tag": tag, "step": step, "world_size": info.world_size})
    dist_env.barrier()
    log.info(f"checkpoint of step {step} saved in {ckpt_dir}")


def _preempted(engine, ckpt_dir: Path | None, key: str, info: dist_env.DistInfo, step: int) -> None:
    """Checkpoint (every rank), stop with a StageError that says how to resume."""
    if ckpt_dir is None:
        raise StageError(
            f"preempted at step {step}: no checkpoint folder was given, so a rerun starts from 0"
        )
    _save_checkpoint(engine, ckpt_dir, key, info, step)
    raise StageError(f"preempted at step {step}: checkpoint saved in {ckpt_dir}; run again to resume from it")


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
    total = total_steps(len(examples), cfg)
    batches = step_batches(examples, cfg, total)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    dtype = next(model.parameters()).dtype
    engine = _start_engine(model, cfg, total, info, dtype)
    loop = _Loop(engine, examples, tokenizer.pad_token_id, device, info, cfg.grad_accum)
    start = _resume(engine, ckpt_dir, resume_key, info, cfg.zero_stage)
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
                _preempted(engine, ckpt_dir, resume_key, info, step + 1)
            periodic = cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total
            if periodic and ckpt_dir is not None:
                _save_checkpoint(engine, ckpt_dir, resume_key, info, step + 1)
    finally:
        if hasattr(engine, "destroy"):
            engine.destroy()
    if gradient_checkpointing:
        model.gradient_checkpointing_disable()
        model.config.use_cache = True
    model.eval()
    dist_env.barrier()
    if ckpt_dir is not None and info.rank == 0:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    tail = losses[-10:] or [float("nan")]
    return {"steps": total, "final_loss": sum(tail) / len(tail), "tokens": tokens, "losses": losses}


def _check_placement(model, device: torch.device) -> None:
    off = {str(p.device) for p in model.parameters() if p.device != device}
    if off:
        raise StageError(f"finetune: the model has parameters on {sorted(off)}, expected all on {device}")
