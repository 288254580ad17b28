"""training/batches.py: the micro-batch split against a brute-force reference and hand-computed cases, its
world-size invariance, the one divisibility rule, and full fine-tuning's global batches (pinned to the numbers the
implant stage has always drawn)."""

from __future__ import annotations

import pytest

from rapidun_dist.core.errors import ConfigError
from rapidun_dist.training.batches import check_divisible, micro_batch, micro_part, step_batches


def _reference_parts(n: int, parts: int) -> list[list[int]]:
    """Brute force: row i goes to the last part whose first row floor(m n / parts) is <= i."""
    starts = [m * n // parts for m in range(parts)]
    out = [[] for _ in range(parts)]
    for i in range(n):
        out[max(m for m in range(parts) if starts[m] <= i)].append(i)
    return out


def _split(batch, world, accum, fn=micro_part):
    """Every part in the order DeepSpeed sees them: accumulation step a, rank r -> part a x world + r."""
    return [
        fn(batch, rank=r, world_size=world, accum_step=a, grad_accum=accum)
        for a in range(accum)
        for r in range(world)
    ]


@pytest.mark.parametrize("n", range(0, 14))
@pytest.mark.parametrize(("world", "accum"), [(1, 1), (1, 3), (2, 1), (2, 2), (3, 1), (4, 2), (3, 4)])
def test_micro_part_matches_the_brute_force_split(n, world, accum):
    parts = _split(list(range(n)), world, accum)
    assert parts == _reference_parts(n, world * accum)
    assert [i for p in parts for i in p] == list(range(n))  # contiguous, in order, every row once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_micro_part_hand_computed():
    # n = 5 over 4 parts: boundaries floor(5m/4) = 0, 1, 2, 3, 5
    assert _split(list("abcde"), 2, 2) == [["a"], ["b"], ["c"], ["d", "e"]]
    # n = 2 over 4 parts: boundaries 0, 0, 1, 1, 2 (a short last batch leaves ranks empty)
    assert _split(list("ab"), 4, 1) == [[], ["a"], [], ["b"]]


@pytest.mark.parametrize("n", [1, 5, 8, 13])
def test_the_parts_depend_on_ranks_x_accumulation_only(n):
    batch = list(range(n))
    assert _split(batch, 1, 4) == _split(batch, 2, 2) == _split(batch, 4, 1)


def test_micro_batch_is_the_even_split_and_refuses_a_remainder():
    batch = list(range(12))
    for world, accum in [(1, 1), (2, 3), (3, 2), (4, 1), (6, 2)]:
        even = _split(batch, world, accum, fn=micro_batch)
        assert even == _split(batch, world, accum) and {len(p) for p in even} == {12 // (world * accum)}
    with pytest.raises(ConfigError, match="global batch 12 is not divisible by world_size x grad_accum = 5"):
        micro_batch(batch, rank=0, world_size=5, accum_step=0, grad_accum=1)


def test_check_divisible_names_the_section_and_the_numbers():
    check_divisible(24, world_size=4, grad_accum=3, section="unlearn")
    with pytest.raises(ConfigError, match=r"implant.batch_size=10: .* implant.grad_accum = 2 x 2 = 4"):
        check_divisible(10, world_size=2, grad_accum=2, section="implant")


def test_step_batches_are_pinned_and_a_function_of_the_seed():
    lengths = [5, 3, 8, 1, 9, 2, 7, 4, 6, 10, 3]
    # drawn by the implant loop before the stacks were merged (train.step_batches on these lengths, seed 7)
    expected = [
        [10, 7, 0],
        [3, 5, 1],
        [8, 6, 2],
        [4, 9],
        [10, 7, 0],
        [8, 6, 2],
        [3, 5, 1],
        [4, 9],
        [10, 7, 0],
    ]
    assert step_batches(lengths, 3, 7, 9) == expected
    assert step_batches(lengths, 3, 8, 9) != expected


def test_step_batches_epochs_cover_every_row_once_in_length_sorted_batches(rng):
    lengths = [rng.randrange(1, 50) for _ in range(437)]
    bs = 4
    per_epoch = 110  # windows of 50 batches (200 rows): 50 + 50 + 10 batches
    batches = step_batches(lengths, bs, rng.randrange(1000), 2 * per_epoch)
    for epoch in (batches[:per_epoch], batches[per_epoch:]):
        assert sorted(i for b in epoch for i in b) == list(range(437))
        assert all(1 <= len(b) <= bs for b in epoch)
    assert all([lengths[i] for i in b] == sorted(lengths[i] for i in b) for b in batches)
