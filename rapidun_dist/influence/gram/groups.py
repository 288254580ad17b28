"""Score every row of a large sharded set against a few groups: what find_poison needs.

Every training row (n up to ~57k, sharded over ranks in any subsets) is scored against each group (the
forget set, a clean reference, ...; each a few hundred to a few thousand rows, also sharded in any way,
and may or may not be training rows themselves: a row and a member with the same id are one sample and
that pair is left out unless `include_self`). Aggregations as in `influence.scores.dense_group_scores`,
the single-process oracle: the result does not depend on the world size, the grid shape or the shards.

Methods: "linear" (mean only; the default for mean) sums unit features per group, one all_reduce of
[G, K]. "alltoall2d" (the default otherwise) runs the 2D block decomposition on a grid chosen from the
shards (with a large row set against small groups that is usually P x 1: every rank receives the group
rows, ~m K, and nothing else). "allgather" forces the P x 1 grid (every rank gathers all group rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rapidun_dist.core.errors import DataError
from rapidun_dist.distributed.env import total_recv_bytes, world_size
from rapidun_dist.influence.gram.grid import Grid, parse_grid
from rapidun_dist.influence.gram.linear import linear_group_means
from rapidun_dist.influence.gram.pairwise import gather_rows, pairwise_scores, resolve_method
from rapidun_dist.influence.scores import GROUP_AGGS, check_agg_args


@dataclass(frozen=True)
class GroupShard:
    """This rank's rows of one group (any part of it, possibly none): features [m_local, K], ids [m_local]."""

    name: str
    feats: torch.Tensor
    ids: torch.Tensor


def _local_problem(
    local_feats: torch.Tensor, local_ids: torch.Tensor, groups: Sequence[GroupShard]
) -> str | None:
    """What is wrong with this rank's inputs (None when fine): reported through the layout gather, so every
    rank raises, not just this one."""
    if local_feats.dim() != 2 or local_ids.shape != (local_feats.shape[0],):
        return (
            f"expected local_feats [n_local, K] and local_ids [n_local]; found {tuple(local_feats.shape)} "
            f"and {tuple(local_ids.shape)}"
        )
    for g in groups:
        if (
            g.feats.dim() != 2
            or g.feats.shape[1] != local_feats.shape[1]
            or g.ids.shape != (g.feats.shape[0],)
        ):
            return (
                f"group {g.name!r}: expected feats [m_local, {local_feats.shape[1]}] and ids [m_local]; found "
                f"{tuple(g.feats.shape)} and {tuple(g.ids.shape)}"
            )
        if g.feats.dtype != local_feats.dtype:
            return f"group {g.name!r}: features are {g.feats.dtype}, the rows {local_feats.dtype}"
        if not torch.isfinite(g.feats).all():
            return f"group {g.name!r}: features contain NaN or inf"
    if not torch.isfinite(local_feats).all():
        return "local_feats contain NaN or inf"
    return None


def _column_set(groups: Sequence[GroupShard], device: torch.device, stats: dict):
    feats = torch.cat([g.feats.to(device) for g in groups])
    ids = torch.cat([g.ids.to(device=device, dtype=torch.long) for g in groups])
    labels = torch.cat(
        [torch.full((g.ids.numel(),), i, dtype=torch.long, device=device) for i, g in enumerate(groups)]
    )
    return gather_rows(feats, ids, labels, len(groups), stats=stats, what="groups")


def distributed_group_scores(
    local_feats: torch.Tensor,
    local_ids: torch.Tensor,
    *,
    groups: Sequence[GroupShard],
    agg: str = "mean",
    topk: int = 40,
    trim: float = 0.1,
    include_self: bool = False,
    method: str = "auto",
    grid: Grid | tuple[int, int] | str | None = None,
    backend: str = "auto",
    mem_budget_bytes: int = 256 << 20,
) -> dict:
    """Scores of this rank's rows against every group; call on every rank, with the same group names in
    the same order (collective). See the module docstring.

    Returns {"scores": {name: [n_local] float64}, "stats": {...}} and, for agg="topk_mean", also
    "topk_vals" / "topk_ids": {name: [n_local, topk]} (the retrieved member ids, best first; ties: lower
    id; padded with (-inf, -1) when a group has fewer than topk valid members). `mem_budget_bytes` bounds the
    float64 temporaries of the linear path."""
    check_agg_args(agg, topk, trim, allowed=GROUP_AGGS)
    method = resolve_method(method, agg)
    if not groups or len({g.name for g in groups}) != len(groups):
        raise DataError(f"need at least one group, with distinct names; found {[g.name for g in groups]}")
    dev = local_feats.device  # NCCL collectives need every tensor on the device
    backend = "torch" if local_feats.dtype == torch.float64 else backend  # the Triton kernels have no fp64
    stats: dict = {"world_size": world_size(), "method": method, "agg": agg}
    zeros = torch.zeros(local_ids.numel(), dtype=torch.long, device=dev)
    problem = _local_problem(local_feats, local_ids, groups)
    rows = gather_rows(local_feats, local_ids, zeros, 1, stats=stats, what="local_ids", local_error=problem)
    cols = _column_set(groups, dev, stats)
    out: dict = {}
    if method == "linear":
        per_group = linear_group_means(
            rows, cols, include_self=include_self, stats=stats, mem_budget_bytes=mem_budget_bytes
        )
    else:
        g = Grid(world_size(), 1) if method == "allgather" else parse_grid(grid, world_size())
        res = pairwise_scores(
            rows,
            cols,
            agg=agg,
            topk=topk,
            trim=trim,
            include_self=include_self,
            grid=g,
            backend=backend,
            stats=stats,
        )
        per_group = res["scores"]
        if agg == "topk_mean":
            out["topk_vals"] = {grp.name: res["topk_vals"][:, i] for i, grp in enumerate(groups)}
            out["topk_ids"] = {grp.name: res["topk_ids"][:, i] for i, grp in enumerate(groups)}
    out["scores"] = {grp.name: per_group[:, i] for i, grp in enumerate(groups)}
    stats["recv_bytes"] = total_recv_bytes(stats)
    out["stats"] = stats
    return out
