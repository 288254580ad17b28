"""What find_poison costs next to fine-tuning: one fine-tuning epoch of the same model over the same rows, measured
side by side in the stage (`find_poison.time_epoch`).

The implant's batches of one epoch (`training.batches.length_bucketed_batches` at `implant.batch_size`, rows encoded
as trained) are listed; `find_poison.epoch_batches` of them, a seeded draw, are timed after one untimed warm-up
batch: forward + backward of the full model (every parameter trainable) on the implant's loss, each rank on its
share of the batch (as the implant splits a global batch over ranks). The batches are length-bucketed, so their cost
varies with their padded size (rows x their longest row), and a batch mean over a few of them is as long or short as
the lengths drawn. epoch_seconds is a ratio estimate instead: the slowest rank's seconds per padded
token of the timed batches x the padded tokens of every batch of the epoch. No optimizer step and no DeepSpeed
engine: the real epoch is at least this long, so find_poison's seconds divided by it overstate find_poison's share,
never understate it. Gradients are dropped after each batch, and every parameter's requires_grad flag and the train
/ eval mode are restored: the weights never change. With `model.gradient_checkpointing` the backward checkpoints, as
the implant's does; a rank without room for a full backward (the implant may have had ZeRO over several GPUs) leaves
epoch_seconds unmeasured (null, with a warning) rather than failing the stage.
"""

from __future__ import annotations

import random
import time

import torch

from rapidun_dist.core.logging import get_logger
from rapidun_dist.data.prompt import pad_batch
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.training.losses import per_sample_nll

log = get_logger("find_poison")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_batches(batches: list[list[int]], n_timed: int, seed: str) -> list[list[int]]:
    """A warm-up batch then `n_timed` batches, a seeded draw from an epoch's batches (all of them when fewer; a
    single batch twice)."""
    if len(batches) == 1:  # an epoch of one batch: it warms up, then it is timed
        return batches * 2
    k = min(len(batches), n_timed + 1)
    return [batches[i] for i in random.Random(seed).sample(range(len(batches)), k)]


def time_finetune(
    model, examples: list[dict], batches: list[list[int]], pad_id: int, *, checkpointing: bool = False
) -> dict:
    """{"batches", "rows", "seconds"} of forward + backward over batches[1:] (batches[0] warms up, untimed); an
    empty batch (a rank's share of a short batch) costs nothing. `checkpointing`: with gradient checkpointing, as
    the implant runs with `model.gradient_checkpointing`."""
    from rapidun_dist.influence.features import model_device

    dev = model_device(model)
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    out = {"batches": 0, "rows": 0, "seconds": 0.0}
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        for b, batch in enumerate(batches):
            if batch:
                host = pad_batch([examples[i] for i in batch], pad_id)
                data = {k: v.to(dev) for k, v in host.items()}
                _sync(dev)
                t0 = time.perf_counter()
                logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
                nll, tokens = per_sample_nll(logits, data["labels"])
                (nll.sum() / tokens.sum().clamp_min(1)).backward()
                _sync(dev)
                seconds = time.perf_counter() - t0
                for p in model.parameters():
                    p.grad = None
            if b > 0:
                out = {"batches": out["batches"] + 1, "rows": out["rows"] + len(batch),
                       "seconds": out["seconds"] + (seconds if batch else 0.0)}  # fmt: skip
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
        model.train(was_training)
        if checkpointing:
            model.gradient_checkpointing_disable()
    return out


def padded_tokens(batch: list[int], lengths: list[int]) -> int:
    """Tokens a batch costs once padded: its rows x its longest row."""
    return len(batch) * max((lengths[i] for i in batch), default=0)


def epoch_estimate(per_rank: list[dict], timed_tokens: int, epoch_tokens: int) -> float | None:
    """The slowest rank's seconds per padded token of the timed (global) batches x the epoch's padded tokens; None
    when nothing was timed."""
    if timed_tokens <= 0 or not any(r["batches"] and r["seconds"] > 0 for r in per_rank):
        return None
    return max(r["seconds"] for r in per_rank) / timed_tokens * epoch_tokens


def epoch_seconds(job) -> dict:
    """Collective: one fine-tuning epoch over the rows of `job.train`, estimated as the module docstring says:
    {"epoch_seconds", "rows", "batches", "batch_size", "timed_batches", "timed_tokens", "epoch_tokens",
    "rows_per_s", "per_rank"} (tokens: padded, summed over the timed batches and over the epoch's)."""
    from rapidun_dist.training.batches import length_bucketed_batches
    from rapidun_dist.training.finetune import encode_records

    cfg, info = job.cfg, job.info
    model, tok = job.model()
    examples = encode_records(job.train, tok, cfg.model.max_length)
    lengths = [len(e["input_ids"]) for e in examples]
    epoch = length_bucketed_batches(lengths, cfg.implant.batch_size, random.Random(cfg.implant.seed))
    picked = timed_batches(epoch, cfg.find_poison.epoch_batches, f"{cfg.data.seed}:find_poison:epoch")
    shares = [
        b[info.rank * len(b) // info.world_size : (info.rank + 1) * len(b) // info.world_size] for b in picked
    ]
    try:
        mine = time_finetune(
            model, examples, shares, tok.pad_token_id, checkpointing=cfg.model.gradient_checkpointing
        )
    except (
        torch.OutOfMemoryError
    ):  # a rank that cannot hold a full backward says so; every rank still gathers
        for p in model.parameters():
            p.grad = None
        log.warning(
            "find_poison: no room for a full fine-tuning backward on this rank: epoch_seconds not measured"
        )
        mine = {"batches": 0, "rows": 0, "seconds": 0.0, "out_of_memory": True}
    per_rank = dist_env.all_gather_object(mine)
    timed_tokens = sum(padded_tokens(b, lengths) for b in picked[1:])
    epoch_tokens = sum(padded_tokens(b, lengths) for b in epoch)
    failed = any(r.get("out_of_memory") for r in per_rank)
    seconds = None if failed else epoch_estimate(per_rank, timed_tokens, epoch_tokens)
    return {
        "epoch_seconds": seconds,
        "rows": len(examples),
        "batches": len(epoch),
        "batch_size": cfg.implant.batch_size,
        "timed_batches": max(len(picked) - 1, 0),
        "timed_tokens": timed_tokens,
        "epoch_tokens": epoch_tokens,
        "rows_per_s": len(examples) / seconds if seconds else None,
        "per_rank": per_rank,
    }
