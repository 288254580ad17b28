"""Pairwise aggregations on an r x c grid of ranks (the 2D block decomposition of docs/DESIGN.md section 6).

Rows Q (the scored rows) and columns C (the rows of the groups they are scored against) are sharded over
the ranks in any way; for a symmetric problem (the directional scores of Gm = [F; R]) C is Q itself.

1. Features: one all_to_all gives rank (a, b) row block a (the Q shards of grid row a) and column block b
   (the C shards of grid column b); see `grid.py` for the bytes.
2. Tile: rank (a, b) reduces S = cos(row block, column block) per point with the streaming top-k kernel
   (`kernels.cosine_topk`: top-k values and ids, sums, counts per row over valid columns; self pairs are
   the pairs with equal ids). The partial of a point against each group of the other side is a fixed-width
   float64 row: [sum], top-k values, [top-k ids], [bottom-k values (top-k of -s)], group after group.
3. Merge: the partials go to the owners of the points (one all_to_all; every owner gets one slab of its
   own rows from each rank that saw them) and merge there: sums add, top-k lists merge (`merge_topk`).

Per aggregation, for row i and column group g with m = |g| (minus the self pair) values:

- mean: sum / m (also available without any tile: `linear.py`).
- trimmed_mean: t = floor(trim m); (sum - top-t - bottom-t) / (m - 2t); the lists keep floor(trim |g|).
- topk_mean: the mean of the k largest (retrieval; the ids are returned too).
- median_topk: for each column j the top-k rows of each row group (rows of group h only compete with
  rows of group h), zeros elsewhere, the median over the columns of g per row. The column-wise top-k is
  a per-point top-k of the columns against the rows: for a symmetric problem S = S^T makes it the row-wise
  top-k of the tile itself (merged at the row owners, like every other aggregation); otherwise the tile
  is reduced along the columns and merged at the column owners. A third exchange sends each surviving
  (row, value) to the row's owner, which takes the median with the missing entries as zeros.

Nothing here depends on the grid shape, the shard assignment or the kernel's column tiling except the
order of float additions: float64 results agree to ~1e-15 across world sizes and grids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rapidun_dist.distributed.env import all_to_all_tensors, all_to_all_varsize, rank, world_size
from rapidun_dist.influence.gram.grid import ExchangePlan, Grid, choose_grid, predict_recv_bytes
from rapidun_dist.influence.gram.layout import ShardLayout, gather_layout, lookup
from rapidun_dist.influence.scores import median_with_implicit_zeros, topk_mean_rows
from rapidun_dist.kernels import cosine_topk, merge_topk

F64 = torch.float64


@dataclass(frozen=True)
class RowSet:
    """This rank's shard of a row set (features, global ids, group labels) and the gathered layout."""

    feats: torch.Tensor  # [n_local, K]
    ids: torch.Tensor  # [n_local] long
    labels: torch.Tensor  # [n_local] long, in [0, num_labels)
    layout: ShardLayout
    num_labels: int


def gather_rows(
    feats: torch.Tensor,
    ids: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    *,
    stats: dict,
    what: str,
    local_error: str | None = None,
) -> RowSet:
    """This rank's shard plus everyone's ids and labels (collective; a `local_error` raises on every rank)."""
    ids = ids.to(device=feats.device, dtype=torch.long)
    labels = labels.to(device=feats.device, dtype=torch.long)
    dim = feats.shape[1] if feats.dim() == 2 else -1
    layout = gather_layout(
        ids, labels, dim=dim, num_labels=num_labels, stats=stats, what=what, local_error=local_error
    )
    return RowSet(feats=feats, ids=ids, labels=labels, layout=layout, num_labels=num_labels)


METHODS = ("auto", "linear", "alltoall2d", "allgather")


def resolve_method(method: str, agg: str) -> str:
    """ "auto" -> "linear" for means (no tile at all), "alltoall2d" for the pairwise aggregations."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; found {method!r}")
    if method == "auto":
        return "linear" if agg == "mean" else "alltoall2d"
    if method == "linear" and agg != "mean":
        raise ValueError(f"method='linear' computes agg='mean' only (a sum of cosines); found agg={agg!r}")
    return method


@dataclass(frozen=True)
class PartialSpec:
    """Fields of one point's partial against each of `num_groups` groups of the other side."""

    num_groups: int
    topk: list[int]  # per group: top values kept (0: none)
    bottom: list[int]  # per group: bottom values kept (as top values of -s)
    with_sums: bool
    with_ids: bool
    offsets: list[dict[str, slice]] = field(init=False)

    def __post_init__(self):
        offs, at = [], 0
        for g in range(self.num_groups):
            o = {}
            for name, width in (
                ("sum", int(self.with_sums)),
                ("top", self.topk[g]),
                ("top_ids", self.topk[g] if self.with_ids else 0),
                ("bottom", self.bottom[g]),
            ):
                if width:
                    o[name] = slice(at, at + width)
                    at += width
            offs.append(o)
        object.__setattr__(self, "offsets", offs)

    @property
    def width(self) -> int:
        ends = [s.stop for o in self.offsets for s in o.values()]
        return max(ends, default=0)


@dataclass(frozen=True)
class Blocks:
    """What rank (a, b) holds after the redistribution."""

    x: torch.Tensor  # row block features [nx, K]
    x_ids: torch.Tensor
    x_labels: torch.Tensor
    x_ranks: list[int]  # owners of the row block's segments, in order
    y: torch.Tensor  # column block features [ny, K]
    y_ids: torch.Tensor
    y_labels: torch.Tensor
    y_ranks: list[int]


# ---------------------------------------------------------------------------------------------------
# 1. features


def exchange_blocks(grid: Grid, rows: RowSet, cols: RowSet | None, stats: dict) -> Blocks:
    """One all_to_all: my row shard to my grid-row mates, my column shard to my grid-column mates."""
    me, p = rank(), grid.size
    a, b = grid.coords(me)
    row_mates, col_mates = set(grid.row_ranks(a)) - {me}, set(grid.col_ranks(b)) - {me}
    cset = rows if cols is None else cols
    empty = rows.feats[:0]
    send = [rows.feats if d in row_mates else cset.feats if d in col_mates else empty for d in range(p)]
    recv_rows = [
        rows.layout.counts[s] if s in row_mates else cset.layout.counts[s] if s in col_mates else 0
        for s in range(p)
    ]
    got = all_to_all_tensors(send, recv_rows, stats=stats, phase="features")
    got[me] = None
    xr, yr = grid.row_ranks(a), grid.col_ranks(b)
    return Blocks(
        x=torch.cat([rows.feats if s == me else got[s] for s in xr]),
        x_ids=torch.cat([rows.layout.ids[s] for s in xr]),
        x_labels=torch.cat([rows.layout.labels[s] for s in xr]),
        x_ranks=xr,
        y=torch.cat([cset.feats if s == me else got[s] for s in yr]),
        y_ids=torch.cat([cset.layout.ids[s] for s in yr]),
        y_labels=torch.cat([cset.layout.labels[s] for s in yr]),
        y_ranks=yr,
    )


# ---------------------------------------------------------------------------------------------------
# 2. tile partials


def _topk(q, q_ids, c, c_ids, k, include_self, backend):
    """cosine_topk with self pairs (equal ids) left out, or kept with the column ids still reported."""
    if c.shape[0] == 0:
        n = q.shape[0]
        vals = torch.full((n, k), float("-inf"), dtype=F64, device=q.device)
        return vals, torch.full((n, k), -1, device=q.device), q.new_zeros(n, dtype=F64)
    if include_self:  # ids stay on the columns (ties go to the lower id); no row id can match one (ids >= 0)
        q_ids = torch.full_like(q_ids, -2)
    vals, ids, sums, _ = cosine_topk(q, c, k, q_ids=q_ids, c_ids=c_ids, backend=backend)
    return vals, ids, sums


def tile_partials(
    pts, pt_ids, others, other_ids, other_labels, spec: PartialSpec, *, include_self: bool, backend: str
) -> torch.Tensor:
    """[n_pts, spec.width] float64: each point's partial against each group of `others`."""
    out = torch.zeros(pts.shape[0], spec.width, dtype=F64, device=pts.device)
    for g, o in enumerate(spec.offsets):
        sel = other_labels == g
        c, c_ids = others[sel], other_ids[sel]
        if "sum" in o or "top" in o:
            vals, ids, sums = _topk(pts, pt_ids, c, c_ids, max(1, spec.topk[g]), include_self, backend)
            if "sum" in o:
                out[:, o["sum"]] = sums.to(F64).unsqueeze(1)
            if "top" in o:
                out[:, o["top"]] = vals.to(F64)
            if "top_ids" in o:
                out[:, o["top_ids"]] = ids.to(F64)
        if "bottom" in o:
            out[:, o["bottom"]] = _topk(-pts, pt_ids, c, c_ids, spec.bottom[g], include_self, backend)[0].to(
                F64
            )
    return out


# ---------------------------------------------------------------------------------------------------
# 3. merge at the owners


def send_to_owners(
    partials: torch.Tensor, seg_ranks: list[int], layout: ShardLayout, stats: dict, phase: str
) -> list[torch.Tensor]:
    """The block's partials, segment by segment, to the ranks that own the segments; returns the slabs
    of my own rows from every rank whose block holds them (in rank order)."""
    p, me = world_size(), rank()
    seg = dict(zip(seg_ranks, partials.split([layout.counts[s] for s in seg_ranks]), strict=True))
    send = [seg.get(d, partials[:0]) for d in range(p)]
    # my rows sit in my own block: the ranks holding that block (seg_ranks, me included) each send a slab
    recv = [layout.counts[me] if s in seg else 0 for s in range(p)]
    got = all_to_all_tensors(send, recv, stats=stats, phase=phase)
    return [got[s] for s in seg_ranks]


def merge_partials(slabs: list[torch.Tensor], spec: PartialSpec) -> list[dict[str, torch.Tensor]]:
    """Per group: {"sum": [n], "top": [n, k], "top_ids": [n, k] long, "bottom": [n, k]} over all slabs."""
    stack = torch.stack(slabs)  # [S, n, w]
    n = stack.shape[1]
    out = []
    for o in spec.offsets:
        m = {}
        if "sum" in o:
            m["sum"] = stack[:, :, o["sum"]].sum(dim=0).squeeze(1)
        for name in ("top", "bottom"):
            if name not in o:
                continue
            k = o[name].stop - o[name].start
            vals = stack[:, :, o[name]].permute(1, 0, 2).reshape(n, len(slabs) * k)
            if name == "top" and "top_ids" in o:
                ids = stack[:, :, o["top_ids"]].permute(1, 0, 2).reshape(n, len(slabs) * k).long()
                m["top"], m["top_ids"] = merge_topk(vals, ids, vals[:, :0], ids[:, :0], k)
            else:
                m[name] = vals.sort(dim=1, descending=True).values[:, :k]
        out.append(m)
    return out


# ---------------------------------------------------------------------------------------------------
# finishing per aggregation


def group_counts(q_ids: torch.Tensor, cols: ShardLayout, num_groups: int, include_self: bool) -> torch.Tensor:
    """[n, G]: how many columns of each group a row aggregates over (its own id left out)."""
    sizes = cols.group_sizes(num_groups)
    counts = sizes.unsqueeze(0).repeat(q_ids.numel(), 1)
    if not include_self:
        all_ids, all_labels = cols.all_ids(), cols.all_labels()
        for g in range(num_groups):
            counts[:, g] -= torch.isin(q_ids, all_ids[all_labels == g]).long()
    return counts


def _sum_first(vals_NK: torch.Tensor, t_N: torch.Tensor) -> torch.Tensor:
    pos = torch.arange(vals_NK.shape[1], device=vals_NK.device).unsqueeze(0)
    keep = pos < t_N.unsqueeze(1)
    return torch.where(keep, vals_NK, torch.zeros_like(vals_NK)).sum(dim=1)


def finish_rowwise(merged, counts_NG, agg: str, trim: float) -> torch.Tensor:
    """[n, G] scores from merged row-side partials."""
    cols = []
    for g, m in enumerate(merged):
        cnt = counts_NG[:, g].to(F64)
        if agg == "topk_mean":
            cols.append(topk_mean_rows(m["top"]))
            continue
        total = m["sum"]
        if agg == "trimmed_mean" and "top" in m:
            t = torch.floor(trim * cnt)
            total = total - _sum_first(m["top"], t) + _sum_first(m["bottom"], t)  # bottom holds -s
            cnt = cnt - 2 * t
        cols.append(torch.where(cnt > 0, total / cnt.clamp_min(1), torch.zeros_like(total)))
    return torch.stack(cols, dim=1)


def survivors_to_owners(
    merged, col_labels: torch.Tensor, rows: ShardLayout, stats: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each column's final top-k rows (per row group) -> (local row index, column group, value) at the
    rows' owners (one varsize all_to_all)."""
    ids = torch.cat([m["top_ids"] for m in merged], dim=1)  # [n_cols, H k] row ids
    vals = torch.cat([m["top"] for m in merged], dim=1)
    grp = col_labels.unsqueeze(1).expand_as(ids)
    ok = ids >= 0
    ids, vals, grp = ids[ok], vals[ok], grp[ok]
    all_ids = rows.all_ids()
    srt, order = all_ids.sort()
    pos = lookup(srt, order, ids)
    owner, local = rows.owners()[pos], rows.local_index()[pos]
    payload = torch.stack([local.to(F64), grp.to(F64), vals.to(F64)], dim=1)
    send = [payload[owner == d] for d in range(world_size())]
    got = torch.cat(all_to_all_varsize(send, stats=stats, phase="survivors"))
    stats["survivors_received"] = int(got.shape[0])
    return got[:, 0].long(), got[:, 1].long(), got[:, 2]


# ---------------------------------------------------------------------------------------------------
# the pass


def _spec(agg, rows: RowSet, cset: RowSet, *, topk, trim, symmetric) -> tuple[PartialSpec, str]:
    """Which partials the aggregation needs and whose owners merge them ("rows" or "cols")."""
    if agg == "median_topk":
        h = cset.num_labels if symmetric else rows.num_labels  # the other side's groups: row groups
        side = "rows" if symmetric else "cols"  # S = S^T: a column's top-k is the row-wise top-k
        return PartialSpec(h, [topk] * h, [0] * h, with_sums=False, with_ids=True), side
    g = cset.num_labels
    if agg == "topk_mean":
        return PartialSpec(g, [topk] * g, [0] * g, with_sums=False, with_ids=True), "rows"
    if agg == "trimmed_mean":
        t = [math.floor(trim * int(s)) for s in cset.layout.group_sizes(g).tolist()]
        return PartialSpec(g, t, t, with_sums=True, with_ids=False), "rows"
    return PartialSpec(g, [0] * g, [0] * g, with_sums=True, with_ids=False), "rows"


def plan_for(rows: RowSet, cols: RowSet | None, spec: PartialSpec, side: str) -> ExchangePlan:
    return ExchangePlan(
        row_counts=rows.layout.counts,
        col_counts=None if cols is None else cols.layout.counts,
        feat_row_bytes=rows.feats.shape[1] * rows.feats.element_size(),
        partial_row_bytes=spec.width * 8,
        partial_side=side,
    )


def _tile_and_merge(blk: Blocks, spec, side, row_layout, col_layout, include_self, backend, stats):
    """Side "rows": the row block's points against the column block, merged at the row owners; side
    "cols": the column block's points against the row block, merged at the column owners."""
    if side == "rows":
        pts, others, seg, layout = (
            (blk.x, blk.x_ids),
            (blk.y, blk.y_ids, blk.y_labels),
            blk.x_ranks,
            row_layout,
        )
    else:
        pts, others, seg, layout = (
            (blk.y, blk.y_ids),
            (blk.x, blk.x_ids, blk.x_labels),
            blk.y_ranks,
            col_layout,
        )
    part = tile_partials(*pts, *others, spec, include_self=include_self, backend=backend)
    stats["tile_pairs"] = blk.x.shape[0] * blk.y.shape[0] * (1 + any(spec.bottom))  # kernel passes x pairs
    return merge_partials(send_to_owners(part, seg, layout, stats, "partials"), spec)


def pairwise_scores(
    rows: RowSet,
    cols: RowSet | None,
    *,
    agg: str,
    topk: int,
    trim: float,
    include_self: bool,
    grid: Grid | None,
    backend: str,
    stats: dict,
) -> dict[str, torch.Tensor]:
    """{"scores": [n_local, G] float64 (+ "topk_vals", "topk_ids" [n_local, G, k] for topk_mean)} for this
    rank's rows against every column group. `cols=None`: symmetric (the rows are their own columns)."""
    symmetric = cols is None
    cset = rows if symmetric else cols
    spec, side = _spec(agg, rows, cset, topk=topk, trim=trim, symmetric=symmetric)
    plan = plan_for(rows, cols, spec, side)
    grid = grid or choose_grid(world_size(), plan)
    stats.update(grid=str(grid), predicted_recv_bytes=predict_recv_bytes(grid, plan)[rank()])
    blk = exchange_blocks(grid, rows, cols, stats)
    merged = _tile_and_merge(blk, spec, side, rows.layout, cset.layout, include_self, backend, stats)
    counts = group_counts(rows.ids, cset.layout, cset.num_labels, include_self)
    if agg == "median_topk":
        r, g, v = survivors_to_owners(merged, cset.labels, rows.layout, stats)
        return {"scores": median_with_implicit_zeros(r, g, v, counts)}
    out = {"scores": finish_rowwise(merged, counts, agg, trim)}
    if agg == "topk_mean":
        out["topk_vals"] = torch.stack([m["top"] for m in merged], dim=1)
        out["topk_ids"] = torch.stack([m["top_ids"] for m in merged], dim=1)
    return out
