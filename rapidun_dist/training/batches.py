"""Global batches and this rank's micro-batches, shared by full fine-tuning and unlearning.

World-size invariance. The global batches of a run are a function of the seed only (full fine-tuning:
`step_batches`; unlearning: `unlearn/sampler.py`). Global batch b is cut into P = world_size x grad_accum contiguous
parts; rank r takes part a x world_size + r at accumulation step a, so 1 rank x 2 accumulation steps and 2 ranks x 1
step run the very same micro-batches, and DeepSpeed's averaging over ranks and accumulation steps gives the update
of the whole global batch for any (world_size, grad_accum).

Two ways to cut, one formula (part m holds positions [m n / P, (m + 1) n / P), integer division):

    micro_part    any n: parts differ by at most one element, a part may be empty (a short last batch)
    micro_batch   n divisible by P (checked): P equal parts; the unlearning loss divides by the part's size

`check_divisible` is THE rule that an even split needs of the config (validate.py and the DeepSpeed config builder
both call it).
"""

from __future__ import annotations

import random

from rapidun_dist.core.errors import ConfigError


def check_divisible(batch_size: int, *, world_size: int, grad_accum: int, section: str) -> None:
    """ConfigError unless `<section>.batch_size` splits into world_size x grad_accum equal micro-batches."""
    parts = world_size * grad_accum
    if batch_size % parts:
        raise ConfigError(
            f"{section}.batch_size={batch_size}: must be divisible by world size x {section}.grad_accum = "
            f"{world_size} x {grad_accum} = {parts}"
        )


def micro_part(batch: list, *, rank: int, world_size: int, accum_step: int, grad_accum: int) -> list:
    """Rank `rank`'s contiguous part of `batch` at accumulation step `accum_step` (possibly empty)."""
    parts, m = world_size * grad_accum, accum_step * world_size + rank
    n = len(batch)
    return batch[m * n // parts : (m + 1) * n // parts]


def micro_batch(batch: list, *, rank: int, world_size: int, accum_step: int, grad_accum: int) -> list:
    """`micro_part` of a batch that splits into world_size x grad_accum equal parts (ConfigError otherwise)."""
    parts = world_size * grad_accum
    if len(batch) % parts:
        raise ConfigError(f"global batch {len(batch)} is not divisible by world_size x grad_accum = {parts}")
    return micro_part(batch, rank=rank, world_size=world_size, accum_step=accum_step, grad_accum=grad_accum)


def length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches of indices into `lengths`: shuffle, sort within windows of 50 batches by length (so
    padding stays small), cut, shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s : s + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def step_batches(lengths: list[int], batch_size: int, seed: int, steps: int) -> list[list[int]]:
    """Full fine-tuning's global batch of every step, in order: epochs of `length_bucketed_batches` drawn from one
    `random.Random(seed)` (every rank draws the same), each epoch in reverse order (it was popped from the end)."""
    rng, out = random.Random(seed), []
    while len(out) < steps:
        out += length_bucketed_batches(lengths, batch_size, rng)[::-1]
    return out[:steps]
