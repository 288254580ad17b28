"""World-size-invariant batch schedule for unlearning.

The sequence of GLOBAL batches is a function of the seed only: each global batch holds
`n_forget_per_batch` forget rows and `retain_per_forget` x as many retain rows, drawn by epochs over
shuffled forget and retain lists. A global batch is cut into `world_size x grad_accum` equal
micro-batches (`training.batches.micro_batch`); rank r at accumulation step a takes
micro-batch a * world_size + r. With the loss (1/|B_global|) sum w_i l_i, DeepSpeed's gradient averaging
(over ranks and accumulation steps) then gives the same update for any (world_size, grad_accum) with the
same global batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rapidun_dist.core.errors import ConfigError


@dataclass(frozen=True)
class Item:
    kind: str  # "forget" | "retain"
    index: int  # position in the forget or retain pack


class GlobalBatchSchedule:
    def __init__(self, *, n_forget: int, n_retain: int, batch_size: int, retain_per_forget: int, seed: int):
        if n_forget < 1:
            raise ConfigError("unlearning needs at least one forget sample")
        per = 1 + retain_per_forget
        if batch_size % per:
            raise ConfigError(
                f"unlearn.batch_size={batch_size} must be a multiple of 1 + retain_per_forget = {per}"
            )
        if retain_per_forget and n_retain < 1:
            raise ConfigError("retain_per_forget > 0 but the retain set is empty")
        self.n_forget, self.n_retain, self.seed = n_forget, n_retain, seed
        self.f_per_batch = batch_size // per
        self.r_per_batch = batch_size - self.f_per_batch
        self.batch_size = batch_size

    @property
    def steps_per_epoch(self) -> int:
        """One epoch = one pass over the forget set."""
        return max(1, -(-self.n_forget // self.f_per_batch))

    def _stream(self, n: int, salt: int):
        rng = random.Random(self.seed * 1_000_003 + salt)
        while True:
            order = list(range(n))
            rng.shuffle(order)
            yield from order

    def batches(self, num_steps: int) -> list[list[Item]]:
        fs, rs = self._stream(self.n_forget, 1), (self._stream(self.n_retain, 2) if self.n_retain else None)
        out = []
        for _ in range(num_steps):
            items = [Item("forget", next(fs)) for _ in range(self.f_per_batch)]
            items += [Item("retain", next(rs)) for _ in range(self.r_per_batch)] if rs else []
            out.append(items)
        return out
