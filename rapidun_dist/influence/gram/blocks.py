"""Directional scores (FF/FR/RR/RF) from Gram blocks with the rows of Gm = [F; R] sharded over ranks.

`distributed_directional_scores(..., method=)` picks the path (the result is the same up to float
rounding; float64 tests compare all of them with the dense oracle at 1e-10):

- "linear" (the default for `mean`): per-group sums of unit features, one all_reduce of [2, K]
  (`linear.py`); no tile at all.
- "alltoall2d" (the default for `trimmed_mean` and `median_topk`): the 2D block decomposition on an
  r x c grid of ranks (`pairwise.py`, `grid.py`); received bytes fall as ~2 n K / sqrt(P).
- "allgather": the tiled all_gather below, kept as the cross-check (and for memory: it streams tiles,
  O(n_local K + tile K), where the 2D path holds a row and a column block).

The tiled all_gather path. Every rank holds some rows of Gm = [F; R] (any subset, `local_ids` = their
global indices) and computes its rows of S = cos(Gm, Gm) against every column, column tile by column
tile: in round t each rank contributes its next `tile_size // world` rows and an all_gather hands every
rank the tile (at most `tile_size` columns). No rank ever holds the n x n matrix: memory is
O(n_local K + n_local tile) plus the per-agg state below. The result does not depend on world
size, shard assignment or tile size; it equals `rapidun_dist.influence.scores.dense_directional_scores`
(see there for the math):

- `mean`: grouped cosine sums per row (kernel `grouped_cosine_sums`, groups F = 0 / R = 1); each row
  meets itself in exactly one tile, and cos(f_i, f_i) is subtracted once at the end.
- `trimmed_mean`: needs each row's full value list per group; rows are processed in chunks that fit
  `mem_budget_bytes` ([rows, n] buffers), and the columns stream once per row chunk.
- `median_topk`: per tile, each rank sends its local top-k rows per column and row group (value and
  global id); after the all_gather every rank knows each column's global k-th (value, id) threshold
  (ties: lower global id ranks first) and keeps only its surviving values, sparsely. The median over
  a row's columns counts the non-surviving entries as implicit zeros.

Returns per local row self_score (FF for forget rows, RR for retain rows) and cross_score (FR / RF),
in float64, plus a stats dict with bytes moved per collective.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rapidun_dist.core.errors import DataError
from rapidun_dist.distributed.env import all_gather_tensor, is_main, total_recv_bytes, world_size
from rapidun_dist.influence.gram.grid import parse_grid
from rapidun_dist.influence.gram.layout import ShardLayout, check_permutation, gather_layout
from rapidun_dist.influence.gram.linear import linear_group_means
from rapidun_dist.influence.gram.pairwise import gather_rows, pairwise_scores, resolve_method
from rapidun_dist.influence.scores import (
    check_agg_args,
    median_with_implicit_zeros,
    normalize_rows,
    trimmed_mean_rows,
)
from rapidun_dist.kernels import grouped_cosine_sums


@dataclass
class _Tile:
    cols_CK: torch.Tensor
    col_ids: torch.Tensor
    own_rows: slice  # local rows whose columns are in this tile ...
    own_offset: int  # ... starting at this tile column


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gather_layout(
    local_ids: torch.Tensor, n_total: int, stats: dict, *, dim: int = 0, local_error: str | None = None
) -> ShardLayout:
    layout = gather_layout(
        local_ids.reshape(-1),
        torch.zeros_like(local_ids.reshape(-1)),
        dim=dim,
        num_labels=1,
        stats=stats,
        what="local_ids",
        local_error=local_error,
    )
    check_permutation(layout, n_total)
    return layout


def _stream_tiles(
    feats_NK: torch.Tensor, layout: ShardLayout, chunk: int, stats: dict, consume: Callable[[_Tile], None]
) -> None:
    """All ranks in lockstep: round t gathers rows [t*chunk, (t+1)*chunk) of every shard as one tile."""
    n_local, k = feats_NK.shape
    max_count = max(layout.counts)
    for t in range(math.ceil(max_count / chunk)):
        lo = t * chunk
        width = min(chunk, max_count - lo)  # the last round sends no more padding than it needs
        mine = torch.zeros(width, k, dtype=feats_NK.dtype, device=feats_NK.device)
        mine[: max(0, min(width, n_local - lo))] = feats_NK[lo : lo + width]
        got = all_gather_tensor(mine, expected_shape=(width, k), stats=stats, phase="features")
        valid = [max(0, min(chunk, c - lo)) for c in layout.counts]
        cols = torch.cat([g[:v] for g, v in zip(got, valid, strict=True)])
        col_ids = torch.cat([i[lo : lo + v] for i, v in zip(layout.ids, valid, strict=True)])
        own = slice(lo, lo + valid[layout.rank])
        consume(_Tile(cols, col_ids, own, sum(valid[: layout.rank])))
        stats["rounds"] = stats.get("rounds", 0) + 1


def _group_counts(local_ids: torch.Tensor, n_forget: int, n_total: int, include_self: bool) -> torch.Tensor:
    """[n_local, 2]: how many columns of group F (0) and R (1) each row aggregates over."""
    is_r = (local_ids >= n_forget).long()
    counts = torch.tensor([n_forget, n_total - n_forget], device=local_ids.device).repeat(
        local_ids.numel(), 1
    )
    if not include_self:
        counts[torch.arange(local_ids.numel(), device=local_ids.device), is_r] -= 1
    return counts


def _self_cross(
    per_group_N2: torch.Tensor, local_ids: torch.Tensor, n_forget: int
) -> dict[str, torch.Tensor]:
    is_r = (local_ids >= n_forget).long().unsqueeze(1)
    own = per_group_N2.gather(1, is_r).squeeze(1)
    other = per_group_N2.gather(1, 1 - is_r).squeeze(1)
    return {"self_score": own.to(torch.float64), "cross_score": other.to(torch.float64)}


# ---------------------------------------------------------------------------------------------------
# mean


def _mean_scores(feats, local_ids, layout, n_forget, n_total, *, include_self, chunk, stats, backend):
    sums = torch.zeros(feats.shape[0], 2, dtype=torch.float64, device=feats.device)  # f64 across tiles

    def consume(tile: _Tile) -> None:
        groups = (tile.col_ids >= n_forget).long()
        sums.add_(grouped_cosine_sums(feats, tile.cols_CK, groups, 2, backend=backend).to(sums.dtype))

    _stream_tiles(feats, layout, chunk, stats, consume)
    if (
        not include_self
    ):  # every row met itself in exactly one tile: take cos(f_i, f_i) (1, or 0 for a zero row) out
        self_cos = (feats.norm(dim=1) > 0).to(sums.dtype)
        own = (local_ids >= n_forget).long()
        sums[torch.arange(feats.shape[0], device=feats.device), own] -= self_cos
    counts = _group_counts(local_ids, n_forget, n_total, include_self).to(sums.dtype)
    mean = torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))
    return _self_cross(mean, local_ids, n_forget)


# ---------------------------------------------------------------------------------------------------
# trimmed mean


def _trimmed_scores(
    feats, local_ids, layout, n_forget, n_total, *, trim, include_self, chunk, stats, mem_budget_bytes
):
    acc = _acc_dtype(feats.dtype)
    per_row = n_total * (3 * torch.finfo(acc).bits // 8 + 2)  # buffer + sort copy + masks
    rows_per_pass = max(1, mem_budget_bytes // per_row)
    n_pass = math.ceil(max(layout.counts) / rows_per_pass)
    stats["row_passes"] = n_pass
    out = torch.zeros(feats.shape[0], 2, dtype=acc, device=feats.device)
    for p in range(n_pass):
        rows = slice(p * rows_per_pass, min((p + 1) * rows_per_pass, feats.shape[0]))
        qn = normalize_rows(feats[rows].to(acc))
        buf = torch.zeros(qn.shape[0], n_total, dtype=acc, device=feats.device)

        def consume(tile: _Tile, qn=qn, buf=buf) -> None:
            buf[:, tile.col_ids] = qn @ normalize_rows(tile.cols_CK.to(acc)).T

        _stream_tiles(feats, layout, chunk, stats, consume)
        valid = torch.ones_like(buf, dtype=torch.bool)
        ids = local_ids[rows]
        if not include_self:
            valid[torch.arange(ids.numel(), device=ids.device), ids] = False
        out[rows, 0] = trimmed_mean_rows(buf[:, :n_forget], valid[:, :n_forget], trim)
        out[rows, 1] = trimmed_mean_rows(buf[:, n_forget:], valid[:, n_forget:], trim)
    return _self_cross(out, local_ids, n_forget)


# ---------------------------------------------------------------------------------------------------
# median of column-wise top-k


def _local_topk(s_NC, valid_NC, row_ids, k, n_total):
    """[k, C] values and ids of the k best valid rows per column (ties: lower id), padded with (-inf, n_total)."""
    order = row_ids.argsort()
    v = torch.where(valid_NC, s_NC, torch.full_like(s_NC, float("-inf")))[order]
    srt = v.sort(dim=0, descending=True, stable=True)
    take = min(k, v.shape[0])
    vals = torch.full((k, s_NC.shape[1]), float("-inf"), dtype=s_NC.dtype, device=s_NC.device)
    ids = torch.full((k, s_NC.shape[1]), n_total, dtype=torch.long, device=s_NC.device)
    vals[:take] = srt.values[:take]
    ids[:take] = row_ids[order][srt.indices[:take]]
    return vals, ids


def _kth_threshold(vals_MC, ids_MC, k):
    """Column-wise k-th best (value, id) among candidates, ordered by value desc then id asc."""
    by_id = ids_MC.sort(dim=0, stable=True).indices
    v, i = vals_MC.gather(0, by_id), ids_MC.gather(0, by_id)
    pos = v.sort(dim=0, descending=True, stable=True).indices[k - 1 : k]
    return v.gather(0, pos).squeeze(0), i.gather(0, pos).squeeze(0)


def _median_topk_scores(feats, local_ids, layout, n_forget, n_total, *, topk, include_self, chunk, stats):
    acc = _acc_dtype(feats.dtype)
    qn = normalize_rows(feats.to(acc))
    row_grp = (local_ids >= n_forget).long()
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def consume(tile: _Tile) -> None:
        s = qn @ normalize_rows(tile.cols_CK.to(acc)).T
        valid = torch.ones_like(s, dtype=torch.bool)
        if not include_self:
            valid &= local_ids.unsqueeze(1) != tile.col_ids.unsqueeze(0)
        cand = [
            _local_topk(s[row_grp == a], valid[row_grp == a], local_ids[row_grp == a], topk, n_total)
            for a in (0, 1)
        ]
        vals = torch.stack([c[0] for c in cand])
        ids = torch.stack([c[1] for c in cand])
        g_vals = all_gather_tensor(vals, expected_shape=tuple(vals.shape), stats=stats, phase="candidates")
        g_ids = all_gather_tensor(ids, expected_shape=tuple(ids.shape), stats=stats, phase="candidates")
        tv, ti = zip(
            *(
                _kth_threshold(torch.cat([g[a] for g in g_vals]), torch.cat([g[a] for g in g_ids]), topk)
                for a in (0, 1)
            ),
            strict=True,
        )
        tv, ti = (
            torch.stack(tv)[row_grp],
            torch.stack(ti)[row_grp],
        )  # [n_local, C] thresholds of the row's group
        rid = local_ids.unsqueeze(1)
        keep = valid & ((s > tv) | ((s == tv) & (rid <= ti)))
        r, c = keep.nonzero(as_tuple=True)
        kept.append((r, (tile.col_ids[c] >= n_forget).long(), s[r, c]))

    _stream_tiles(feats, layout, chunk, stats, consume)
    rows, grp, vals = (
        (torch.cat(x) for x in zip(*kept, strict=True)) if kept else (torch.empty(0, dtype=torch.long),) * 3
    )
    stats["survivors"] = int(vals.numel())
    counts = _group_counts(local_ids, n_forget, n_total, include_self)
    return _self_cross(median_with_implicit_zeros(rows, grp, vals.to(acc), counts), local_ids, n_forget)


# ---------------------------------------------------------------------------------------------------


def _check_args(n_forget, n_total, tile_size) -> None:
    """Checks of arguments every rank passes alike (so every rank raises alike)."""
    if not 0 < n_forget < n_total:
        raise DataError(f"need 0 < n_forget < n_total; found n_forget={n_forget}, n_total={n_total}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1; found {tile_size}")


def _local_problem(local_feats, local_ids) -> str | None:
    """This rank's own input check; reported through the layout gather so that every rank raises."""
    if local_feats.dim() != 2 or local_ids.dim() != 1 or local_feats.shape[0] != local_ids.shape[0]:
        return (
            f"expected local_feats [n_local, K] and local_ids [n_local]; found "
            f"{tuple(local_feats.shape)} and {tuple(local_ids.shape)}"
        )
    if local_ids.dtype != torch.long:
        return f"local_ids must be a LongTensor; found {local_ids.dtype}"
    if not torch.isfinite(local_feats).all():
        return "local_feats contain NaN or inf"
    return None


def _tiled_allgather(
    problem, local_feats, local_ids, n_forget, n_total, *, agg, topk, trim, common, budget, backend
):
    dim = local_feats.shape[1] if local_feats.dim() == 2 else -1
    layout = _gather_layout(local_ids, n_total, common["stats"], dim=dim, local_error=problem)
    args = (local_feats, local_ids, layout, n_forget, n_total)
    if agg == "mean":
        return _mean_scores(*args, backend=backend, **common)
    if agg == "trimmed_mean":
        return _trimmed_scores(*args, trim=trim, mem_budget_bytes=budget, **common)
    return _median_topk_scores(*args, topk=topk, **common)


def _grid_path(
    problem,
    local_feats,
    local_ids,
    n_forget,
    n_total,
    *,
    method,
    agg,
    topk,
    trim,
    include_self,
    grid,
    backend,
    stats,
    mem_budget_bytes,
):
    rows = gather_rows(
        local_feats,
        local_ids.reshape(-1),
        (local_ids.reshape(-1) >= n_forget).long(),
        2,
        stats=stats,
        what="local_ids",
        local_error=problem,
    )
    check_permutation(rows.layout, n_total)
    if method == "linear":
        per_group = linear_group_means(
            rows, None, include_self=include_self, stats=stats, mem_budget_bytes=mem_budget_bytes
        )
    else:
        per_group = pairwise_scores(
            rows,
            None,
            agg=agg,
            topk=topk,
            trim=trim,
            include_self=include_self,
            grid=parse_grid(grid, world_size()),
            backend=backend,
            stats=stats,
        )["scores"]
    return _self_cross(per_group, local_ids, n_forget)


def distributed_directional_scores(
    local_feats: torch.Tensor,
    local_ids: torch.Tensor,
    n_forget: int,
    n_total: int,
    *,
    agg: str = "mean",
    topk: int = 40,
    trim: float = 0.1,
    include_self: bool = False,
    method: str = "auto",
    grid: tuple[int, int] | str | None = None,
    tile_size: int = 1024,
    mem_budget_bytes: int = 256 << 20,
    backend: str = "auto",
) -> dict:
    """Directional scores of this rank's rows; call on every rank (collective). See the module docstring.

    `method`: "auto" | "linear" (mean only) | "alltoall2d" | "allgather"; `grid` ("RxC", (r, c) or None =
    chosen from the world size and the shards) applies to "alltoall2d"; `tile_size` to "allgather";
    `mem_budget_bytes` bounds the temporaries of "allgather" (trimmed_mean row chunks) and "linear". Returns {"self_score": [n_local] f64, "cross_score": [n_local] f64, "stats": {...}}:
    stats hold per-collective calls and bytes, bytes received per phase, the method and the grid.
    """
    check_agg_args(agg, topk, trim)
    method = resolve_method(method, agg)
    _check_args(n_forget, n_total, tile_size)
    problem = _local_problem(local_feats, local_ids)
    local_ids = local_ids.to(local_feats.device)  # NCCL collectives need every tensor on the device
    backend = "torch" if local_feats.dtype == torch.float64 else backend  # the Triton kernel has no fp64
    stats: dict = {"world_size": world_size(), "method": method, "agg": agg}
    if method == "allgather":
        stats["tile_size"] = tile_size
        common = dict(include_self=include_self, chunk=max(1, tile_size // world_size()), stats=stats)
        out = _tiled_allgather(
            problem,
            local_feats,
            local_ids,
            n_forget,
            n_total,
            agg=agg,
            topk=topk,
            trim=trim,
            common=common,
            budget=mem_budget_bytes,
            backend=backend,
        )
    else:
        out = _grid_path(
            problem,
            local_feats,
            local_ids,
            n_forget,
            n_total,
            method=method,
            agg=agg,
            topk=topk,
            trim=trim,
            include_self=include_self,
            grid=grid,
            backend=backend,
            stats=stats,
            mem_budget_bytes=mem_budget_bytes,
        )
    stats["recv_bytes"] = total_recv_bytes(stats)
    out["stats"] = stats
    return out


def gather_scores_to_rank0(
    scores: dict[str, torch.Tensor], local_ids: torch.Tensor, n_total: int, *, stats: dict | None = None
) -> dict[str, torch.Tensor] | None:
    """Per-rank [n_local, ...] score tensors -> global-order [n_total, ...] tensors on rank 0 (None elsewhere).

    `local_ids` over all ranks must be a permutation of 0..n_total-1 (row positions). Trailing dims (e.g.
    the [n_local, k] top-k ids of `distributed_group_scores`) must agree over ranks. Tensor entries only (a
    "stats" dict entry is skipped). Collective: call on every rank."""
    stats = {} if stats is None else stats
    tensors = [v for v in scores.values() if isinstance(v, torch.Tensor)]
    local_ids = local_ids.to(tensors[0].device) if tensors else local_ids
    layout = _gather_layout(local_ids, n_total, stats)
    out = {}
    for name, vec in scores.items():
        if not isinstance(vec, torch.Tensor):
            continue
        if vec.dim() < 1 or vec.shape[0] != local_ids.numel():
            raise DataError(
                f"scores[{name!r}]: expected [{local_ids.numel()}, ...] (one row per local id); found "
                f"{tuple(vec.shape)}"
            )
        shape = (max(layout.counts), *vec.shape[1:])
        padded = vec.new_zeros(shape)
        padded[: vec.shape[0]] = vec
        got = all_gather_tensor(padded, expected_shape=shape, stats=stats, phase="scores")
        full = vec.new_zeros((n_total, *vec.shape[1:]))
        for g, ids in zip(got, layout.ids, strict=True):
            full[ids] = g[: ids.numel()]
        out[name] = full
    return out if is_main() else None


def comm_summary(stats: dict) -> str:
    """One log line: method, grid, bytes received per phase and in all (for the stage logs)."""
    phases = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in stats.get("phase_bytes_recv", {}).items())
    where = f" grid {stats['grid']}" if "grid" in stats else ""
    return (
        f"{stats.get('method', '?')}{where}: {total_recv_bytes(stats) / 2**20:.1f} MiB received on this rank"
        f" ({phases} MiB)"
    )
