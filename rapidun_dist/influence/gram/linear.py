"""Group means of cosines without any pairwise tile: the sum over a group is linear.

    sum_{j in g} cos(q_i, c_j) = unit(q_i) . U_g,     U_g = sum_{j in g} unit(c_j)

Every rank sums the unit features of its column rows per group; one all_reduce of the [G, K] float64
tensor U gives every rank all group sums; each rank then scores its own rows with one [n_local, K] x
[K, G] product. Work O((n + m) K), received bytes 2 (P - 1) / P G K 8 (ring all-reduce) whatever n is.

The self pair (a row and a group member with the same id) is left out exactly: its cosine is subtracted.
For a symmetric problem (the rows are their own columns) that cosine is local. Otherwise the member may
sit on another rank: the group rows whose id is also a scored row go to that row's owner first (one
all_to_all of |Q n C| rows; their sizes follow from the gathered layouts, so no size exchange).
Rows are processed in chunks whose float64 temporaries ([chunk, K]) stay within `mem_budget_bytes`
(256 MiB by default: 146 rows at the K = 229,376 of Llama-3-8B).
"""

from __future__ import annotations

import torch

from rapidun_dist.distributed.env import all_reduce_sum_, all_to_all_tensors, rank, world_size
from rapidun_dist.influence.gram.layout import lookup
from rapidun_dist.influence.gram.pairwise import RowSet, group_counts

F64 = torch.float64


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Unit float64 rows; a zero row stays zero (0 / tiny), as in `influence.scores.normalize_rows`."""
    x = x.to(F64)
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(F64).tiny)


def group_unit_sums(cols: RowSet, chunk: int, stats: dict) -> torch.Tensor:
    """[G, K] float64: per group, the sum over all ranks' column rows of their unit features."""
    u = torch.zeros(cols.num_labels, cols.feats.shape[1], dtype=F64, device=cols.feats.device)
    for lo in range(0, cols.feats.shape[0], chunk):
        u.index_add_(0, cols.labels[lo : lo + chunk], _unit(cols.feats[lo : lo + chunk]))
    return all_reduce_sum_(u, stats=stats, phase="group_sums")


def _self_members_to_owners(
    rows: RowSet, cols: RowSet, stats: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The group rows whose id is also a scored row, at that row's owner: (local row index, group, feats)."""
    me, p = rank(), world_size()
    q_sorted, q_order = rows.layout.all_ids().sort()
    q_owner, q_local = rows.layout.owners(), rows.layout.local_index()

    def targets(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos = lookup(q_sorted, q_order, ids)
        hit = pos >= 0
        return torch.where(hit, q_owner[pos.clamp_min(0)], -1), torch.where(
            hit, q_local[pos.clamp_min(0)], -1
        )

    my_owner, _ = targets(cols.ids)
    send = [cols.feats[my_owner == d] for d in range(p)]
    recv_rows, local_idx, groups = [], [], []
    for s in range(p):  # what every sender sends me, in its local order
        owner_s, local_s = targets(cols.layout.ids[s])
        mine = owner_s == me
        recv_rows.append(int(mine.sum()) if s != me else 0)
        local_idx.append(local_s[mine])
        groups.append(cols.layout.labels[s][mine])
    send[me] = send[me][:0]
    got = all_to_all_tensors(send, recv_rows, stats=stats, phase="self_pairs")
    got[me] = cols.feats[my_owner == me]
    return torch.cat(local_idx), torch.cat(groups), torch.cat(got)


def linear_group_means(
    rows: RowSet, cols: RowSet | None, *, include_self: bool, stats: dict, mem_budget_bytes: int = 256 << 20
) -> torch.Tensor:
    """[n_local, G] float64 mean cosine of each local row to each column group. `cols=None`: symmetric."""
    cset = rows if cols is None else cols
    chunk = max(1, mem_budget_bytes // (2 * 8 * max(1, rows.feats.shape[1])))  # the f64 copy + its unit rows
    u_GK = group_unit_sums(cset, chunk, stats)
    n = rows.feats.shape[0]
    sums = torch.empty(n, cset.num_labels, dtype=F64, device=rows.feats.device)
    self_cos = torch.empty(n, dtype=F64, device=rows.feats.device)  # cos(q_i, q_i): 1, or 0 for a zero row
    for lo in range(0, n, chunk):
        u = _unit(rows.feats[lo : lo + chunk])
        sums[lo : lo + chunk] = u @ u_GK.T
        self_cos[lo : lo + chunk] = (u * u).sum(dim=1)
    if not include_self:
        if cols is None:
            sums[torch.arange(n, device=sums.device), rows.labels] -= self_cos
        else:
            idx, grp, member = _self_members_to_owners(rows, cols, stats)
            if idx.numel():
                cos = (_unit(rows.feats[idx]) * _unit(member)).sum(dim=1)
                sums.index_put_((idx, grp), -cos, accumulate=True)
    counts = group_counts(rows.ids, cset.layout, cset.num_labels, include_self).to(F64)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))
