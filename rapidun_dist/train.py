"""Full fine-tuning: the `implant` stage (train on the poisoned train set) and the `retrain` baselines
(the same recipe on train minus forget, or minus every poisoned row). Single process, plain PyTorch:
it is the cost RapidUn is measured against, so it gets the same careful loop (AdamW, warmup + cosine,
grad clip, length-bucketed batches)."""

from __future__ import annotations

import math
import random

import torch

from rapidun_dist.config import TrainConfig
from rapidun_dist.data.prompt import encode_example, pad_batch, record_prompt
from rapidun_dist.logging import Progress, get_logger
from rapidun_dist.losses import per_sample_nll

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


def finetune(
    model, tokenizer, records: list[dict], cfg: TrainConfig, *, max_length: int, desc: str = "train"
) -> dict:
    """Train every parameter of `model` on `records`; returns {"steps", "final_loss", "tokens", "losses"}."""
    examples = encode_records(records, tokenizer, max_length)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total = cfg.max_steps or max(1, int(steps_per_epoch * cfg.epochs))
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    sched = cosine_schedule(opt, total, cfg.warmup_ratio)
    model.train()
    progress = Progress(total, desc, unit="step")
    losses, tokens, step, batches = [], 0, 0, []
    while step < total:
        if not batches:
            batches = length_bucketed_batches(examples, cfg.batch_size, rng)
        batch = pad_batch([examples[i] for i in batches.pop()], tokenizer.pad_token_id)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        nll, count = per_sample_nll(out.logits, batch["labels"])
        loss = nll.sum() / count.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        tokens += int(batch["attention_mask"].sum())
        losses.append(loss.item())
        progress.update(loss=losses[-1])
    model.eval()
    return {
        "steps": step,
        "final_loss": sum(losses[-10:]) / len(losses[-10:]),
        "tokens": tokens,
        "losses": losses,
    }
