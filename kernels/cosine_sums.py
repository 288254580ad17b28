"""Normalized inner products with grouped block reductions.

    out[i, k] = sum_{j : groups[j] == k} cos(q_i, c_j)

with q [n, K] row features and c [m, K] column features. When `self_offset` is an int the rows
are a slice of the columns and the pair (i, i + self_offset) is left out. Columns are processed
in tiles: the n x m matrix is never held, memory is O(n x tile).

A zero row (or column) has cosine 0 with everything.
"""

from __future__ import annotations

import torch

from rapidun_dist.kernels._dispatch import accum_dtype, check_backend, use_triton


def _normalize(z: torch.Tensor) -> torch.Tensor:
    """Unit rows; a zero row stays zero (0 / tiny = 0), without an extra [n, K] select pass."""
    return z / z.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)


def _check_inputs(q, c, groups, num_groups) -> None:
    if q.dim() != 2 or c.dim() != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"q [n, K] and c [m, K] must share K; found {tuple(q.shape)} and {tuple(c.shape)}")
    if groups.shape != (c.shape[0],):
        raise ValueError(f"groups must be [m={c.shape[0]}]; found {tuple(groups.shape)}")
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= num_groups):
        raise ValueError(
            f"groups must lie in [0, {num_groups}); found [{int(groups.min())}, {int(groups.max())}]"
        )


def grouped_cosine_sums_reference(
    q, c, groups, num_groups: int, *, self_offset: int | None = None, tile: int = 4096
) -> torch.Tensor:
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
    """Per-row sums of cosines over column groups. See the module docstring."""
    check_backend(backend)
    if use_triton(backend, q):
        from rapidun_dist.kernels.cosine_sums_triton import grouped_cosine_sums_triton

        return grouped_cosine_sums_triton(q, c, groups, num_groups, self_offset=self_offset)
    return grouped_cosine_sums_reference(q, c, groups, num_groups, self_offset=self_offset)
