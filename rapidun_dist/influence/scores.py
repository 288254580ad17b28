"""Per-sample directional scores from the Gram matrix of forget and retain features (the dense oracle).

Rows are stacked Gm = [F; R] (forget first) and S[i, j] = cos(g_i, g_j). For a row i of group a
(F or R) and a column group b, the directional score is an aggregate of S[i, j] over j in b:

    FF(i) = agg_{j in F} S[i, j],  FR(i) = agg_{j in R} S[i, j]   (i in F)
    RR(i) = agg_{j in R} S[i, j],  RF(i) = agg_{j in F} S[i, j]   (i in R)

The self pair (j = i) is left out unless `include_self`. Aggregations:

- `mean`: the plain mean.
- `trimmed_mean`: drop floor(trim * m) values at each end of the m sorted values, mean of the rest.
- `median_topk` (the reference RapidUn rule): within the block (rows of group a, columns of group b),
  each column j keeps its top-k rows i by S[i, j] (ties: lower global row index first) and zeroes
  the others; the score of row i is the median over the block's columns (the average of the two
  middle values when the count is even, as numpy does).

With a pack-size-scaled top-k (`weights.topk_frac`), the block of rows of group a keeps k_a = max(1,
ceil(topk_frac x |a|)) rows per column: forget-row blocks (FF, FR) k_F, retain-row blocks (RR, RF) k_R.

An aggregate over no values (a group of one sample with the self pair left out) is 0.
Everything is computed in float64 whatever the input dtype.

Rows against groups (`dense_group_scores`, what find_poison needs): every row i (any id) is scored
against each group g of column features (forget set, clean reference, ...) with the same aggregations,
plus `topk_mean` (the mean of the k largest cosines of the row to the group: retrieval). A row and a
group member with the same id are the same sample: that pair is left out unless `include_self`. For
`median_topk` the block is (all rows, the group's columns): each column keeps its top-k rows.
"""

from __future__ import annotations

import math

import torch

from rapidun_dist.core.errors import DataError
from rapidun_dist.kernels import grouped_cosine_sums

AGGS = ("mean", "trimmed_mean", "median_topk")
GROUP_AGGS = (*AGGS, "topk_mean")


def check_agg_args(agg: str, topk: int, trim: float, *, allowed: tuple[str, ...] = AGGS) -> None:
    """Validate the aggregation arguments; raises ValueError naming the bad one."""
    if agg not in allowed:
        raise ValueError(f"agg must be one of {allowed}; found {agg!r}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1; found {topk}")
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5); found {trim}")


def block_topk(topk: int, topk_frac: float | None, n_rows: int) -> int:
    """The k of a median_topk block with `n_rows` rows: `topk`, or max(1, ceil(topk_frac x n_rows))."""
    if topk_frac is None:
        return topk
    if not 0.0 < topk_frac <= 1.0:
        raise ValueError(f"topk_frac must be in (0, 1]; found {topk_frac}")
    return max(1, math.ceil(topk_frac * n_rows))


def normalize_rows(x_NK: torch.Tensor) -> torch.Tensor:
    """Unit-norm rows; a zero row stays zero (cosine 0 with everything, as in the kernels)."""
    norm = x_NK.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, x_NK / norm.clamp_min(torch.finfo(x_NK.dtype).tiny), torch.zeros_like(x_NK))


def sorted_median(sorted_RM: torch.Tensor, counts_R: torch.Tensor) -> torch.Tensor:
    """Median of the first counts[r] entries of each ascending-sorted row (even count: mean of the two middles).

    Rows with count 0 give 0.
    """
    lo = ((counts_R - 1).clamp_min(0) // 2).unsqueeze(1)
    hi = (counts_R // 2).clamp_max(max(sorted_RM.shape[1] - 1, 0)).unsqueeze(1)
    if sorted_RM.shape[1] == 0:
        return torch.zeros(sorted_RM.shape[0], dtype=sorted_RM.dtype, device=sorted_RM.device)
    med = 0.5 * (sorted_RM.gather(1, lo) + sorted_RM.gather(1, hi)).squeeze(1)
    return torch.where(counts_R > 0, med, torch.zeros_like(med))


def trimmed_mean_rows(vals_RM: torch.Tensor, valid_RM: torch.Tensor, trim: float) -> torch.Tensor:
    """Trimmed mean of the valid entries of each row: drop floor(trim * m) at each end (m = valid count)."""
    counts = valid_RM.sum(dim=1)
    filled = torch.where(valid_RM, vals_RM, torch.full_like(vals_RM, float("inf")))
    srt = filled.sort(dim=1).values
    cut = torch.floor(trim * counts.to(torch.float64)).to(torch.long)
    pos = torch.arange(vals_RM.shape[1], device=vals_RM.device).unsqueeze(0)
    keep = (pos >= cut.unsqueeze(1)) & (pos < (counts - cut).unsqueeze(1))
    total = torch.where(keep, srt, torch.zeros_like(srt)).sum(dim=1, dtype=torch.float64)
    n_keep = (counts - 2 * cut).clamp_min(1)
    return torch.where(counts > 0, total / n_keep, torch.zeros_like(total))


def topk_survivors(
    vals_RC: torch.Tensor, valid_RC: torch.Tensor, row_ids_R: torch.Tensor, k: int
) -> torch.Tensor:
    """Boolean [R, C]: for each column, the k valid rows with the largest value (ties: lower row id first)."""
    order_ids = row_ids_R.argsort()
    v = torch.where(valid_RC, vals_RC, torch.full_like(vals_RC, float("-inf")))[order_ids]
    rank_order = v.sort(dim=0, descending=True, stable=True).indices  # stable: ties keep ascending id
    keep_sorted = torch.zeros_like(valid_RC)
    keep_sorted.scatter_(0, rank_order[: min(k, v.shape[0])], True)
    keep = torch.zeros_like(valid_RC)
    keep[order_ids] = keep_sorted
    return keep & valid_RC


def median_topk_block(
    s_AB: torch.Tensor, self_AB: torch.Tensor, row_ids_A: torch.Tensor, *, topk: int, include_self: bool
) -> torch.Tensor:
    """The reference aggregation on one block: column-wise top-k mask, then the row-wise median of the
    masked values (zeros included) over the block's valid columns."""
    valid = torch.ones_like(self_AB) if include_self else ~self_AB
    keep = topk_survivors(s_AB, valid, row_ids_A, topk)
    masked = torch.where(keep, s_AB, torch.zeros_like(s_AB))
    filled = torch.where(valid, masked, torch.full_like(masked, float("inf")))
    return sorted_median(filled.sort(dim=1).values, valid.sum(dim=1))


def topk_rows(
    s_AB: torch.Tensor, valid_AB: torch.Tensor, col_ids_B: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k largest valid values and their column ids (ties: lower id), padded with (-inf, -1)."""
    order = col_ids_B.argsort()
    v = torch.where(valid_AB, s_AB, torch.full_like(s_AB, float("-inf")))[:, order]
    srt = v.sort(dim=1, descending=True, stable=True)
    take = min(k, v.shape[1])
    vals = torch.full((s_AB.shape[0], k), float("-inf"), dtype=s_AB.dtype, device=s_AB.device)
    ids = torch.full((s_AB.shape[0], k), -1, dtype=torch.long, device=s_AB.device)
    vals[:, :take] = srt.values[:, :take]
    ids[:, :take] = torch.where(
        torch.isfinite(srt.values[:, :take]), col_ids_B[order][srt.indices[:, :take]], ids[:, :take]
    )
    return vals, ids


def topk_mean_rows(topk_vals_RK: torch.Tensor) -> torch.Tensor:
    """Mean of each row's finite top-k values (a row with none scores 0)."""
    ok = torch.isfinite(topk_vals_RK)
    total = torch.where(ok, topk_vals_RK, torch.zeros_like(topk_vals_RK)).sum(dim=1, dtype=torch.float64)
    n = ok.sum(dim=1)
    return torch.where(n > 0, total / n.clamp_min(1), torch.zeros_like(total))


def median_with_implicit_zeros(
    rows: torch.Tensor, grp: torch.Tensor, vals: torch.Tensor, counts_NG: torch.Tensor
) -> torch.Tensor:
    """[N, G] medians of sparse values: entry (rows[e], grp[e]) holds vals[e]; each (row, group) has
    counts_NG[row, group] values in all, the ones not listed being zeros. Count 0 gives 0."""
    n_seg = counts_NG.numel()
    key = rows * counts_NG.shape[1] + grp
    o1 = vals.sort(stable=True).indices
    o2 = key[o1].sort(stable=True).indices
    flat, key = vals[o1][o2], key[o1][o2]
    n_surv = torch.bincount(key, minlength=n_seg)
    n_neg = torch.bincount(key[flat < 0], minlength=n_seg)
    n_pos = torch.bincount(key[flat > 0], minlength=n_seg)
    start = n_surv.cumsum(0) - n_surv
    m = counts_NG.reshape(-1)
    flat = torch.cat([flat, flat.new_zeros(1)])  # guard index for empty segments

    def at(p):
        neg = flat[(start + p).clamp(0, flat.numel() - 1)]
        pos = flat[(start + n_surv - m + p).clamp(0, flat.numel() - 1)]
        return torch.where(p < n_neg, neg, torch.where(p >= m - n_pos, pos, torch.zeros_like(neg)))

    med = 0.5 * (at((m - 1).clamp_min(0) // 2) + at(m // 2))
    return torch.where(m > 0, med, torch.zeros_like(med)).reshape(counts_NG.shape)


def block_scores(s_AB, self_AB, row_ids_A, *, agg, topk, trim, include_self) -> torch.Tensor:
    if agg == "median_topk":
        return median_topk_block(s_AB, self_AB, row_ids_A, topk=topk, include_self=include_self)
    valid = torch.ones_like(self_AB) if include_self else ~self_AB
    return trimmed_mean_rows(s_AB, valid, trim if agg == "trimmed_mean" else 0.0)


def _mean_scores(g_NK: torch.Tensor, nf: int, include_self: bool) -> dict[str, torch.Tensor]:
    """Mean path through the grouped cosine-sum kernel (groups F = 0, R = 1)."""
    n = g_NK.shape[0]
    groups = (torch.arange(n, device=g_NK.device) >= nf).long()
    sums = grouped_cosine_sums(
        g_NK, g_NK, groups, 2, self_offset=None if include_self else 0, backend="torch"
    )
    counts = torch.tensor([nf, n - nf], dtype=torch.float64, device=g_NK.device).expand(n, 2).clone()
    if not include_self:
        counts[torch.arange(n), groups] -= 1
    mean = torch.where(counts > 0, sums / counts.clamp_min(1), torch.zeros_like(sums))
    return {"ff": mean[:nf, 0], "fr": mean[:nf, 1], "rr": mean[nf:, 1], "rf": mean[nf:, 0]}


def _check_features(f_FK: torch.Tensor, r_RK: torch.Tensor) -> None:
    if f_FK.dim() != 2 or r_RK.dim() != 2 or f_FK.shape[1] != r_RK.shape[1]:
        raise DataError(
            f"forget [nf, K] and retain [nr, K] features must share K; found {tuple(f_FK.shape)} "
            f"and {tuple(r_RK.shape)}"
        )
    if f_FK.shape[0] == 0 or r_RK.shape[0] == 0:
        raise DataError(
            f"need at least one forget and one retain row; found {f_FK.shape[0]} and {r_RK.shape[0]}"
        )
    if not (torch.isfinite(f_FK).all() and torch.isfinite(r_RK).all()):
        raise DataError("features contain NaN or inf")


def dense_directional_scores(
    f_FK: torch.Tensor,
    r_RK: torch.Tensor,
    *,
    agg: str = "mean",
    topk: int = 40,
    trim: float = 0.1,
    include_self: bool = False,
    topk_frac: float | None = None,
) -> dict[str, torch.Tensor]:
    """Directional scores {ff [nf], fr [nf], rr [nr], rf [nr]} (float64) from the dense Gram matrix.

    Single-process oracle: holds the full (nf + nr)^2 matrix. See the module docstring for the math.
    """
    check_agg_args(agg, topk, trim)
    _check_features(f_FK, r_RK)
    nf = f_FK.shape[0]
    k_f, k_r = (block_topk(topk, topk_frac, n) for n in (nf, r_RK.shape[0]))
    g_NK = torch.cat([f_FK, r_RK]).to(torch.float64)
    if agg == "mean":
        return _mean_scores(g_NK, nf, include_self)
    gn = normalize_rows(g_NK)
    s_NN = gn @ gn.T
    ids = torch.arange(g_NK.shape[0], device=g_NK.device)
    eye = ids.unsqueeze(1) == ids.unsqueeze(0)
    fs, rs = slice(0, nf), slice(nf, None)
    kw = dict(agg=agg, trim=trim, include_self=include_self)
    return {
        "ff": block_scores(s_NN[fs, fs], eye[fs, fs], ids[fs], topk=k_f, **kw),
        "fr": block_scores(s_NN[fs, rs], eye[fs, rs], ids[fs], topk=k_f, **kw),
        "rr": block_scores(s_NN[rs, rs], eye[rs, rs], ids[rs], topk=k_r, **kw),
        "rf": block_scores(s_NN[rs, fs], eye[rs, fs], ids[rs], topk=k_r, **kw),
    }


def _check_group_inputs(rows_NK, row_ids_N, groups) -> None:
    if rows_NK.dim() != 2 or row_ids_N.shape != (rows_NK.shape[0],):
        raise DataError(
            f"expected rows [n, K] and row_ids [n]; found {tuple(rows_NK.shape)} and {tuple(row_ids_N.shape)}"
        )
    if row_ids_N.unique().numel() != row_ids_N.numel():
        raise DataError("row_ids must be distinct")
    for name, (feats, ids) in groups.items():
        if feats.dim() != 2 or feats.shape[1] != rows_NK.shape[1] or ids.shape != (feats.shape[0],):
            raise DataError(
                f"group {name!r}: expected feats [m, {rows_NK.shape[1]}] and ids [m]; found "
                f"{tuple(feats.shape)} and {tuple(ids.shape)}"
            )
        if ids.unique().numel() != ids.numel():
            raise DataError(f"group {name!r}: ids must be distinct within the group")
        if not torch.isfinite(feats).all():
            raise DataError(f"group {name!r}: features contain NaN or inf")
    if not torch.isfinite(rows_NK).all():
        raise DataError("row features contain NaN or inf")


def dense_group_scores(
    rows_NK: torch.Tensor,
    row_ids_N: torch.Tensor,
    groups: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    agg: str = "mean",
    topk: int = 40,
    trim: float = 0.1,
    include_self: bool = False,
) -> dict[str, torch.Tensor]:
    """{group name: [n] float64} scores of every row against each group (name -> (feats [m, K], ids [m])).

    Single-process oracle of `rapidun_dist.distributed.distributed_group_scores`: holds [n, m] per group.
    With `agg="topk_mean"` also returns "<name>.topk_ids" [n, topk] (ties: lower id; -1 padding)."""
    check_agg_args(agg, topk, trim, allowed=GROUP_AGGS)
    _check_group_inputs(rows_NK, row_ids_N, groups)
    qn = normalize_rows(rows_NK.to(torch.float64))
    out: dict[str, torch.Tensor] = {}
    for name, (feats, ids) in groups.items():
        s = qn @ normalize_rows(feats.to(torch.float64)).T
        self_pairs = row_ids_N.unsqueeze(1) == ids.to(row_ids_N.device).unsqueeze(0)
        if agg == "topk_mean":
            valid = torch.ones_like(self_pairs) if include_self else ~self_pairs
            vals, top_ids = topk_rows(s, valid, ids.to(row_ids_N.device), topk)
            out[name], out[f"{name}.topk_ids"] = topk_mean_rows(vals), top_ids
        else:
            out[name] = block_scores(
                s, self_pairs, row_ids_N, agg=agg, topk=topk, trim=trim, include_self=include_self
            )
    return out


def split_directional(self_N: torch.Tensor, cross_N: torch.Tensor, n_forget: int) -> dict[str, torch.Tensor]:
    """Global-order (self, cross) score vectors -> {ff, fr, rr, rf} (forget rows first)."""
    if self_N.shape != cross_N.shape or self_N.dim() != 1 or not 0 < n_forget < self_N.shape[0]:
        raise DataError(
            f"expected self/cross [n] with 0 < n_forget < n; found {tuple(self_N.shape)}, "
            f"{tuple(cross_N.shape)}, n_forget={n_forget}"
        )
    return {
        "ff": self_N[:n_forget],
        "fr": cross_N[:n_forget],
        "rr": self_N[n_forget:],
        "rf": cross_N[n_forget:],
    }
