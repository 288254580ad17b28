"""Which rows every rank holds: one gather of ids and labels per row set, O(n) integers per rank.

A row set (the rows being scored, or the column groups they are scored against) is sharded over the
ranks in any way: rank r holds `counts[r]` rows with global ids `ids[r]` and integer labels `labels[r]`
(the group of each row). Every rank learns the whole layout once, so the later exchanges can size their
buffers without asking, and errors in the sharding (a missing or duplicated row) fail on every rank
alike instead of hanging one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rapidun_dist.core.errors import DataError
from rapidun_dist.distributed.env import all_gather_tensor, rank


@dataclass(frozen=True)
class ShardLayout:
    """Rows per rank in rank order: ids [counts[r]] and labels [counts[r]] (long, on the features' device)."""

    counts: list[int]
    ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    rank: int

    @property
    def total(self) -> int:
        return sum(self.counts)

    def all_ids(self) -> torch.Tensor:
        return torch.cat(self.ids)

    def all_labels(self) -> torch.Tensor:
        return torch.cat(self.labels)

    def owners(self) -> torch.Tensor:
        """[total] rank of each row, in the rank-order concatenation."""
        dev = self.ids[0].device
        return torch.repeat_interleave(
            torch.arange(len(self.counts), device=dev), torch.tensor(self.counts, device=dev)
        )

    def local_index(self) -> torch.Tensor:
        """[total] position of each row in its owner's local shard."""
        return torch.cat([torch.arange(c, device=self.ids[0].device) for c in self.counts])

    def group_sizes(self, num_groups: int) -> torch.Tensor:
        return torch.bincount(self.all_labels(), minlength=num_groups)[:num_groups]


def gather_layout(
    local_ids: torch.Tensor,
    local_labels: torch.Tensor,
    *,
    dim: int,
    num_labels: int,
    stats: dict | None,
    what: str,
    local_error: str | None = None,
) -> ShardLayout:
    """Every rank's ids and labels (two all_gathers: [count, dim, num_labels, error flag], then [max count, 2]).

    Checks that need every rank to agree happen here, so that all ranks raise alike instead of one raising
    and the others waiting in the next collective: `local_error` (this rank's own input check, None when
    fine), the feature width `dim` and `num_labels` (a mismatch would mis-size every later exchange), ids
    >= 0 and distinct within a label."""
    dev = local_ids.device
    n = local_ids.numel()
    head = torch.tensor([n, dim, num_labels, int(local_error is not None)], device=dev)
    got = all_gather_tensor(head, expected_shape=(4,), stats=stats, phase="layout")
    heads = torch.stack(got).tolist()
    bad = [r for r, h in enumerate(heads) if h[3]]
    if bad:
        raise DataError(local_error or f"{what}: invalid input on rank(s) {bad} (their error says what)")
    if len({(h[1], h[2]) for h in heads}) != 1:
        raise DataError(f"{what}: ranks disagree on (feature dim, groups): {[(h[1], h[2]) for h in heads]}")
    counts = [h[0] for h in heads]
    pad = torch.full((max(counts), 2), -1, dtype=torch.long, device=dev)
    pad[:n, 0], pad[:n, 1] = local_ids, local_labels.to(dev)
    rows = (  # every rank knows max(counts): all skip the gather of an empty set alike
        all_gather_tensor(pad, expected_shape=(max(counts), 2), stats=stats, phase="layout")
        if max(counts) > 0
        else [pad] * len(counts)
    )
    ids = [r[:c, 0].clone() for r, c in zip(rows, counts, strict=True)]
    labels = [r[:c, 1].clone() for r, c in zip(rows, counts, strict=True)]
    layout = ShardLayout(counts=counts, ids=ids, labels=labels, rank=rank())
    if layout.total and int(layout.all_ids().min()) < 0:
        raise DataError(f"{what}: ids must be >= 0; found {int(layout.all_ids().min())}")
    _check_unique(layout, what)
    return layout


def _check_unique(layout: ShardLayout, what: str) -> None:
    """Ids must be distinct within a label (the same id may sit in two different groups)."""
    key = layout.all_ids() * (int(layout.all_labels().max()) + 1 if layout.total else 1) + layout.all_labels()
    if key.unique().numel() != key.numel():
        dup = key.numel() - key.unique().numel()
        raise DataError(f"{what}: {dup} row id(s) held twice (over all ranks) within one group")


def check_permutation(layout: ShardLayout, n_total: int) -> None:
    """The ids over all ranks are exactly 0..n_total-1 (every rank raises alike)."""
    everything = layout.all_ids().sort().values
    if everything.numel() != n_total or not torch.equal(
        everything, torch.arange(n_total, device=everything.device)
    ):
        raise DataError(
            f"local_ids over all ranks must be a permutation of 0..{n_total - 1}; found "
            f"{everything.numel()} ids ({int(everything.unique().numel())} distinct)"
        )


def lookup(sorted_keys: torch.Tensor, order: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Position (in the unsorted array) of each query key, or -1 where absent.

    `sorted_keys, order = keys.sort()` is computed once by the caller."""
    if sorted_keys.numel() == 0:
        return torch.full_like(query, -1)
    pos = torch.searchsorted(sorted_keys, query).clamp_max(sorted_keys.numel() - 1)
    return torch.where(sorted_keys[pos] == query, order[pos], torch.full_like(query, -1))
