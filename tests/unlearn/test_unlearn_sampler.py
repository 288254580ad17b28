"""The global batch schedule is a function of the seed only; micro-batches partition it exactly."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rapidun_dist.core.errors import ConfigError
from rapidun_dist.training.batches import micro_batch
from rapidun_dist.unlearn.sampler import GlobalBatchSchedule


def _schedule(seed=0, n_forget=7, n_retain=23, batch_size=8, rpf=3):
    return GlobalBatchSchedule(
        n_forget=n_forget, n_retain=n_retain, batch_size=batch_size, retain_per_forget=rpf, seed=seed
    )


def test_same_seed_same_batches_other_seed_other_batches():
    seed = random.randrange(1 << 30)
    a, b = _schedule(seed).batches(12), _schedule(seed).batches(12)
    assert a == b
    assert _schedule(seed + 1).batches(12) != a


def test_retain_to_forget_ratio_and_epoch_coverage():
    n_forget, rpf, bs = 10, 3, 8
    sched = _schedule(random.randrange(1000), n_forget=n_forget, n_retain=37, batch_size=bs, rpf=rpf)
    batches = sched.batches(5 * sched.steps_per_epoch)
    for b in batches:
        kinds = Counter(it.kind for it in b)
        assert kinds == {"forget": bs // (1 + rpf), "retain": bs - bs // (1 + rpf)}
    forget = [it.index for b in batches for it in b if it.kind == "forget"]
    for e in range(
        len(forget) // n_forget
    ):  # draws without replacement: each pass holds every forget row once
        assert sorted(forget[e * n_forget : (e + 1) * n_forget]) == list(range(n_forget))
    assert {it.index for b in batches for it in b if it.kind == "retain"} == set(range(37))


def test_forget_only_schedule_for_methods_without_retain():
    batches = _schedule(n_retain=0, batch_size=4, rpf=0).batches(3)
    assert all(it.kind == "forget" for b in batches for it in b) and all(len(b) == 4 for b in batches)


@pytest.mark.parametrize(("world", "accum"), [(1, 1), (1, 2), (2, 1), (2, 2), (4, 2), (8, 1)])
def test_micro_batches_partition_the_global_batch(world, accum):
    batch = _schedule(random.randrange(1000), batch_size=16).batches(1)[0]
    parts = [
        micro_batch(batch, rank=r, world_size=world, accum_step=a, grad_accum=accum)
        for a in range(accum)
        for r in range(world)
    ]
    assert all(len(p) == 16 // (world * accum) for p in parts)
    assert [it for p in parts for it in p] == batch  # disjoint, complete, in order


def test_invalid_shapes_are_refused():
    with pytest.raises(ConfigError, match="multiple of 1 \\+ retain_per_forget"):
        _schedule(batch_size=6, rpf=3)
    with pytest.raises(ConfigError, match="not divisible by world_size x grad_accum"):
        micro_batch(list(range(8)), rank=0, world_size=3, accum_step=0, grad_accum=1)
    with pytest.raises(ConfigError, match="at least one forget sample"):
        _schedule(n_forget=0)
