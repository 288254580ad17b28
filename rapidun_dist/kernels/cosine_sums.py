"""Grouped sums of cosine similarities, through the linear identity (no pairwise matrix, no kernel).

    out[i, k] = sum_{j : groups[j] == k} cos(q_i, c_j) = unit(q_i) . C_k,      C_k = sum_{j : groups[j] == k} unit(c_j)

with q [n, K] row features and c [m, K] column features: one scatter-add of the unit columns into
[num_groups, K] group sums and one [n, K] x [K, num_groups] product, O((n + m) K) instead of the
O(n m K) of the pairwise matrix. When `self_offset` is an int the rows are a slice of the columns and
the pair (i, i + self_offset) is left out (its cosine is subtracted from its group). A zero row or
column has cosine 0 with everything.

`grouped_cosine_sums_reference` is the definition, column tile by column tile (tests compare the
identity against it and against a dense float64 matrix). The reductions that need the pairwise
values (top-k, median of top-k, trimmed mean) use `cosine_topk` instead.
"""

from __future__ import annotations

import torch

from rapidun_dist.kernels._dispatch import accum_dtype, check_backend, debug_checks


def _normalize(z: torch.Tensor) -> torch.Tensor:
    """Unit rows; a zero row stays zero (0 / tiny = 0), without an extra [n, K] select pass."""
    return z / z.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)


def _check_inputs(q, c, groups, num_groups) -> None:
    if q.dim() != 2 or c.dim() != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"q [n, K] and c [m, K] must share K; found {tuple(q.shape)} and {tuple(c.shape)}")
    if groups.shape != (c.shape[0],) or groups.is_floating_point():
        raise ValueError(
            f"groups must be an integer tensor [m={c.shape[0]}]; found {groups.dtype} {tuple(groups.shape)}"
        )
    # a range check reads the device back: always on the CPU, on a GPU only in debug mode
    if groups.numel() and (not groups.is_cuda or debug_checks()):
        lo, hi = int(groups.min()), int(groups.max())
        if lo < 0 or hi >= num_groups:
            raise ValueError(f"groups must lie in [0, {num_groups}); found [{lo}, {hi}]")


def grouped_cosine_sums_reference(
    q, c, groups, num_groups: int, *, self_offset: int | None = None, tile: int = 4096
) -> torch.Tensor:
    """The definition: cosine tiles [n, tile] reduced into groups (O(n m K); for tests)."""
    _check_inputs(q, c, groups, num_groups)
    acc = accum_dtype(q.dtype)
    qn, cn = _normalize(q.to(acc)), _normalize(c.to(acc))
    n, m = q.shape[0], c.shape[0]
    out = torch.zeros(n, num_groups, dtype=acc, device=q.device)
    rows = torch.arange(n, device=q.device)
    for j0 in range(0, m, tile):
        j1 = min(j0 + tile, m)
        s = qn @ cn[j0:j1].T  # [n, tile]
        if self_offset is not None:
            cols = rows + self_offset - j0
            hit = (cols >= 0) & (cols < j1 - j0)
            s[rows[hit], cols[hit]] = 0
        onehot = torch.nn.functional.one_hot(groups[j0:j1].long(), num_groups).to(acc)
        out += s @ onehot
    return out


def grouped_cosine_sums(
    q, c, groups, num_groups: int, *, self_offset: int | None = None, backend: str = "auto"
) -> torch.Tensor:
    """Per-row sums of cosines over column groups by the linear identity (module docstring).

    Any device; fp32 accumulation (fp64 for fp64 inputs). `backend` is accepted for the shared kernel
    interface: there is no pairwise work left for a kernel to fuse."""
    check_backend(backend)
    _check_inputs(q, c, groups, num_groups)
    acc = accum_dtype(q.dtype)
    qn, cn = _normalize(q.to(acc)), _normalize(c.to(acc))
    centroids_GK = torch.zeros(num_groups, q.shape[1], dtype=acc, device=q.device)
    centroids_GK.index_add_(0, groups.long(), cn)
    out = qn @ centroids_GK.T
    if self_offset is not None:
        rows = torch.arange(q.shape[0], device=q.device)
        cols = rows + self_offset
        hit = (cols >= 0) & (cols < c.shape[0])
        rows, cols = rows[hit], cols[hit]
        self_cos = (qn[rows] * cn[cols]).sum(dim=1)
        out.index_put_((rows, groups[cols].long()), -self_cos, accumulate=True)
    return out
