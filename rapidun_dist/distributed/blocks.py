"""Directional scores from Gram blocks with the rows sharded over ranks.

Every rank holds some rows of Gm = [F; R] (any subset, `local_ids` = their global indices) and
computes its rows of S = cos(Gm, Gm) against every column, column tile by column tile: in round t
each rank contributes its next `tile_size // world` rows and an all_gather hands every rank the
tile (at most `tile_size` columns). No rank ever holds the n x n matrix: memory is
O(n_local K + n_local tile) plus the per-agg state below. The result does not depend on world
size, shard assignment or tile size; it equals `rapidun_dist.weights.scores.dense_directional_scores`
(see there for the math):

- `mean`: grouped cosine sums per row (kernel `grouped_cosine_sums`, groups F = 0 / R = 1), the self
  pair left out through the kernel's `self_offset` on the rank's own slice of the tile.
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

from rapidun_dist.distributed.env import all_gather_tensor, is_main, rank, world_size
from rapidun_dist.errors import DataError
from rapidun_dist.kernels import grouped_cosine_sums
from rapidun_dist.weights.scores import check_agg_args, normalize_rows, trimmed_mean_rows


@dataclass
class _Layout:
    """Which global rows every rank holds (gathered once: O(n_total) ints)."""

    counts: list[int]
    ids: list[torch.Tensor]
    rank: int

    @property
    def max_count(self) -> int:
        return max(self.counts)


@dataclass
class _Tile:
    cols_CK: torch.Tensor
    col_ids: torch.Tensor
    own_rows: slice  # local rows whose columns are in this tile ...
    own_offset: int  # ... starting at this tile column


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gather_layout(local_ids: torch.Tensor, n_total: int, stats: dict) -> _Layout:
    dev = local_ids.device
    counts_t = all_gather_tensor(
        torch.tensor([local_ids.numel()], device=dev), expected_shape=(1,), stats=stats
    )
    counts = [int(c.item()) for c in counts_t]
    padded = torch.full((max(counts),), -1, dtype=torch.long, device=dev)
    padded[: local_ids.numel()] = local_ids
    got = all_gather_tensor(padded, expected_shape=(max(counts),), stats=stats)
    ids = [g[:c] for g, c in zip(got, counts, strict=True)]
    everything = torch.cat(ids).sort().values
    if everything.numel() != n_total or not torch.equal(everything, torch.arange(n_total, device=dev)):
        raise DataError(
            f"local_ids over all ranks must be a permutation of 0..{n_total - 1}; found "
            f"{everything.numel()} ids ({int(everything.unique().numel())} distinct)"
        )
    return _Layout(counts=counts, ids=ids, rank=rank())


def _stream_tiles(
    feats_NK: torch.Tensor, layout: _Layout, chunk: int, stats: dict, consume: Callable[[_Tile], None]
) -> None:
    """All ranks in lockstep: round t gathers rows [t*chunk, (t+1)*chunk) of every shard as one tile."""
    n_local, k = feats_NK.shape
    for t in range(math.ceil(layout.max_count / chunk)):
        lo = t * chunk
        width = min(chunk, layout.max_count - lo)  # the last round sends no more padding than it needs
        mine = torch.zeros(width, k, dtype=feats_NK.dtype, device=feats_NK.device)
        mine[: max(0, min(width, n_local - lo))] = feats_NK[lo : lo + width]
        got = all_gather_tensor(mine, expected_shape=(width, k), stats=stats)
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
    n_pass = math.ceil(layout.max_count / rows_per_pass)
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


def _survivor_median(rows, grp, vals, counts_N2):
    """Median per (row, group) of the sparse survivors plus (count - survivors) implicit zeros."""
    n_seg = counts_N2.numel()
    key = rows * 2 + grp
    o1 = vals.sort(stable=True).indices
    o2 = key[o1].sort(stable=True).indices
    flat, key = vals[o1][o2], key[o1][o2]
    n_surv = torch.bincount(key, minlength=n_seg)
    n_neg = torch.bincount(key[flat < 0], minlength=n_seg)
    n_pos = torch.bincount(key[flat > 0], minlength=n_seg)
    start = n_surv.cumsum(0) - n_surv
    m = counts_N2.reshape(-1)
    flat = torch.cat([flat, flat.new_zeros(1)])  # guard index for empty segments

    def at(p):
        neg = flat[(start + p).clamp(0, flat.numel() - 1)]
        pos = flat[(start + n_surv - m + p).clamp(0, flat.numel() - 1)]
        return torch.where(p < n_neg, neg, torch.where(p >= m - n_pos, pos, torch.zeros_like(neg)))

    med = 0.5 * (at((m - 1).clamp_min(0) // 2) + at(m // 2))
    return torch.where(m > 0, med, torch.zeros_like(med)).reshape(counts_N2.shape)


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
        g_vals = all_gather_tensor(vals, expected_shape=tuple(vals.shape), stats=stats)
        g_ids = all_gather_tensor(ids, expected_shape=tuple(ids.shape), stats=stats)
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
    return _self_cross(_survivor_median(rows, grp, vals.to(acc), counts), local_ids, n_forget)


# ---------------------------------------------------------------------------------------------------


def _check_args(local_feats, local_ids, n_forget, n_total, tile_size) -> None:
    if local_feats.dim() != 2 or local_ids.dim() != 1 or local_feats.shape[0] != local_ids.shape[0]:
        raise DataError(
            f"expected local_feats [n_local, K] and local_ids [n_local]; found "
            f"{tuple(local_feats.shape)} and {tuple(local_ids.shape)}"
        )
    if local_ids.dtype != torch.long:
        raise DataError(f"local_ids must be a LongTensor; found {local_ids.dtype}")
    if not 0 < n_forget < n_total:
        raise DataError(f"need 0 < n_forget < n_total; found n_forget={n_forget}, n_total={n_total}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1; found {tile_size}")
    if not torch.isfinite(local_feats).all():
        raise DataError("local_feats contain NaN or inf")


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
    tile_size: int = 1024,
    mem_budget_bytes: int = 256 << 20,
    backend: str = "auto",
) -> dict:
    """Directional scores of this rank's rows; call on every rank (collective). See the module docstring.

    Returns {"self_score": [n_local] f64, "cross_score": [n_local] f64, "stats": {...}}.
    """
    check_agg_args(agg, topk, trim)
    _check_args(local_feats, local_ids, n_forget, n_total, tile_size)
    local_ids = local_ids.to(local_feats.device)  # NCCL collectives need every tensor on the device
    backend = "torch" if local_feats.dtype == torch.float64 else backend  # the Triton kernel has no fp64
    stats: dict = {"world_size": world_size(), "tile_size": tile_size}
    layout = _gather_layout(local_ids, n_total, stats)
    chunk = max(1, tile_size // world_size())
    common = dict(include_self=include_self, chunk=chunk, stats=stats)
    if agg == "mean":
        out = _mean_scores(local_feats, local_ids, layout, n_forget, n_total, backend=backend, **common)
    elif agg == "trimmed_mean":
        out = _trimmed_scores(
            local_feats,
            local_ids,
            layout,
            n_forget,
            n_total,
            trim=trim,
            mem_budget_bytes=mem_budget_bytes,
            **common,
        )
    else:
        out = _median_topk_scores(local_feats, local_ids, layout, n_forget, n_total, topk=topk, **common)
    out["stats"] = stats
    return out


def gather_scores_to_rank0(
    scores: dict[str, torch.Tensor], local_ids: torch.Tensor, n_total: int, *, stats: dict | None = None
) -> dict[str, torch.Tensor] | None:
    """Per-rank [n_local] score vectors -> global-order [n_total] vectors on rank 0 (None elsewhere).

    Tensor entries only (a "stats" dict entry is skipped). Collective: call on every rank."""
    stats = {} if stats is None else stats
    tensors = [v for v in scores.values() if isinstance(v, torch.Tensor)]
    local_ids = local_ids.to(tensors[0].device) if tensors else local_ids
    layout = _gather_layout(local_ids, n_total, stats)
    out = {}
    for name, vec in scores.items():
        if not isinstance(vec, torch.Tensor):
            continue
        if vec.shape != local_ids.shape:
            raise DataError(
                f"scores[{name!r}]: expected shape {tuple(local_ids.shape)}; found {tuple(vec.shape)}"
            )
        padded = vec.new_zeros(layout.max_count)
        padded[: vec.numel()] = vec
        got = all_gather_tensor(padded, expected_shape=(layout.max_count,), stats=stats)
        full = vec.new_zeros(n_total)
        for g, ids in zip(got, layout.ids, strict=True):
            full[ids] = g[: ids.numel()]
        out[name] = full
    return out if is_main() else None
