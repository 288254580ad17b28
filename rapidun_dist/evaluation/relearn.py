"""The relearning attack (docs/DESIGN.md section 8): after unlearning, an attacker fine-tunes the model for a few steps on
a handful of poisoned rows (20 by default) and ASR is measured again. A backdoor that comes back within a few
steps was suppressed, not removed.

`relearn_attack(model, tokenizer, rows, steps, lr, seed)` trains on the rows' triggered prompts and poisoned
answers (`instruction_poisoned` -> `response_poisoned`, the training prompt format, answer tokens only):
token-weighted mean next-token CE, AdamW (no weight decay), constant learning rate, grad-norm clip 1.0,
batches of `batch_size` rows from a seeded shuffle that cycles through the rows. What trains: on a PEFT model
its LoRA adapter (the backbone stays frozen: the attacker fine-tunes what the defender shipped), on a plain
model every parameter; `full=True` trains every parameter of either. The model is deep-copied first unless
`copy=False`, so the caller's model is unchanged. The batches go to the model's device.
"""

from __future__ import annotations

import copy as copy_module
import random
from collections.abc import Sequence

import torch

from rapidun_dist.config import EvalConfig
from rapidun_dist.core.errors import ConfigError, DataError
from rapidun_dist.core.logging import get_logger
from rapidun_dist.data.prompt import encode_example, pad_batch, record_prompt
from rapidun_dist.evaluation.generation import model_device
from rapidun_dist.evaluation.judge import Judge
from rapidun_dist.evaluation.metrics import triggered_asr
from rapidun_dist.training.losses import per_sample_nll

_log = get_logger("rapidun.eval")


def relearn_rows(train: Sequence[dict], forget: Sequence[dict], *, n: int = 20, seed: int = 0) -> list[dict]:
    """`n` poisoned train rows the forget pack does not hold (seeded, in id order): the attacker's data."""
    forget_ids = {r["id"] for r in forget}
    pool = sorted(
        (r for r in train if r.get("is_poisoned") and r["id"] not in forget_ids), key=lambda r: r["id"]
    )
    if len(pool) < n:
        raise DataError(
            f"relearn_rows: {n} poisoned train rows outside the forget pack asked for, found {len(pool)}"
        )
    return sorted(random.Random(f"{seed}:relearn").sample(pool, n), key=lambda r: r["id"])


def _encode(tokenizer, rows: Sequence[dict], max_length: int) -> list[dict]:
    missing = [
        r.get("id") for r in rows if not (r.get("instruction_poisoned") and r.get("response_poisoned"))
    ]
    if missing:
        raise DataError(f"relearn: rows {missing[:3]} lack instruction_poisoned / response_poisoned")
    return [
        encode_example(
            tokenizer, record_prompt(tokenizer, r, poisoned=True), r["response_poisoned"], max_length
        )
        for r in rows
    ]


def _trainable(model, full: bool) -> list[torch.nn.Parameter]:
    """Mark what the attack trains (the LoRA adapter of a PEFT model, else everything) and return it."""
    from peft import PeftModel

    adapter_only = isinstance(model, PeftModel) and not full
    for name, p in model.named_parameters():
        p.requires_grad_(not adapter_only or "lora_" in name)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("relearn: the model has no parameter to train (a PEFT model without LoRA weights?)")
    return params


def _batches(n_rows: int, batch_size: int, steps: int, rng: random.Random) -> list[list[int]]:
    order: list[int] = []
    while len(order) < steps * batch_size:
        order += rng.sample(range(n_rows), n_rows)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def relearn_attack(
    model,
    tokenizer,
    rows: Sequence[dict],
    steps: int,
    lr: float,
    seed: int,
    *,
    batch_size: int = 4,
    max_length: int = 128,
    full: bool = False,
    copy: bool = True,
) -> tuple[object, list[float]]:
    """Fine-tune on poisoned `rows` for `steps` steps (module doc); returns (the attacked model, step losses)."""
    if steps < 1 or lr <= 0 or batch_size < 1:
        raise ConfigError(
            f"relearn: expected steps >= 1, lr > 0, batch_size >= 1, found {steps}, {lr}, {batch_size}"
        )
    if not rows:
        raise DataError("relearn: expected at least one poisoned row, found none")
    examples = _encode(tokenizer, rows, max_length)
    model = copy_module.deepcopy(model) if copy else model
    params = _trainable(model, full)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = model_device(model)
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)  # masked
    torch.manual_seed(seed)  # dropout masks of the adapter, if any
    model.train()
    losses = []
    for batch_idx in _batches(len(examples), min(batch_size, len(examples)), steps, random.Random(seed)):
        batch = {k: v.to(device) for k, v in pad_batch([examples[i] for i in batch_idx], pad_id).items()}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        nll, count = per_sample_nll(out.logits, batch["labels"])
        loss = nll.sum() / count.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    _log.info(
        f"relearn: {steps} steps on {len(rows)} poisoned rows, loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    return model, losses


def asr_after_relearning(
    model,
    tokenizer,
    rows: Sequence[dict],
    records: Sequence[dict],
    judge: Judge,
    cfg: EvalConfig,
    max_length: int,
    *,
    steps: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    full: bool = False,
) -> dict:
    """ASR on the triggered `records` before and after `relearn_attack` on `rows` (the model is not changed)."""
    if not records:
        raise DataError("asr_after_relearning: expected triggered records to measure ASR on, found none")
    before = triggered_asr(model, tokenizer, records, judge, cfg, max_length)
    attacked, losses = relearn_attack(
        model, tokenizer, rows, steps, lr, seed, max_length=max_length, full=full, copy=True
    )
    after = triggered_asr(attacked, tokenizer, records, judge, cfg, max_length)
    del attacked
    return {
        "before": before,
        "after": after,
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "n_rows": len(rows),
        "full": full,
        "losses": losses,
    }
