"""Per-row streaming top-k of cosine similarities, with the row sums and counts, over column tiles.

For row features q [n, K] and column features c [m, K] (ids q_ids [n], c_ids [m] when given):

    valid(i, j)  = c_ids[j] != q_ids[i]              (all pairs when either id vector is None)
    s(i, j)      = cos(q_i, c_j)                     (0 for a zero row or column)
    vals[i, :]   = the k largest s(i, j) over valid j, descending; ties: smaller c id first
    ids[i, :]    = their c ids (column positions when c_ids is None)
    sums[i]      = sum over valid j of s(i, j)
    counts[i]    = number of valid j

Rows with fewer than k valid columns are padded with (-inf, -1). The n x m matrix is never held: the
columns stream in tiles and each tile's candidates are merged into the running top-k (`merge_topk`),
so memory is O(n (k + tile)). This is what the pairwise aggregations need (docs/DESIGN.md section 6):
`median_topk` (the top-k per column, i.e. this with the roles of rows and columns swapped),
`trimmed_mean` (sum minus the top-t and bottom-t values; bottom-t = top-t of -q), top-k retrieval.
Accumulation: float64 for float64 inputs, float32 otherwise.
"""

from __future__ import annotations

import torch

from rapidun_dist.kernels._contracts import PAD_ID, TRITON_MAX_K
from rapidun_dist.kernels._contracts import check_topk_inputs as _check_inputs
from rapidun_dist.kernels._dispatch import accum_dtype, check_backend, use_triton


def _normalize(z: torch.Tensor) -> torch.Tensor:
    return z / z.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)


def merge_topk(
    vals_a: torch.Tensor, ids_a: torch.Tensor, vals_b: torch.Tensor, ids_b: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise top-k of two candidate lists [n, ka] and [n, kb] (value desc, then id asc; padding last)."""
    vals = torch.cat([vals_a, vals_b], dim=1)
    ids = torch.cat([ids_a, ids_b], dim=1)
    # sort by id ascending (padding id -1 goes to the end via a large key), then stably by value descending
    id_key = torch.where(ids == PAD_ID, torch.full_like(ids, torch.iinfo(ids.dtype).max), ids)
    by_id = id_key.argsort(dim=1, stable=True)
    vals, ids = vals.gather(1, by_id), ids.gather(1, by_id)
    by_val = vals.argsort(dim=1, descending=True, stable=True)[:, :k]
    out_v, out_i = vals.gather(1, by_val), ids.gather(1, by_val)
    if out_v.shape[1] < k:  # fewer candidates than k in total: pad
        pad = k - out_v.shape[1]
        out_v = torch.cat([out_v, out_v.new_full((out_v.shape[0], pad), float("-inf"))], dim=1)
        out_i = torch.cat([out_i, out_i.new_full((out_i.shape[0], pad), PAD_ID)], dim=1)
    return out_v, out_i


def cosine_topk_reference(
    q: torch.Tensor,
    c: torch.Tensor,
    k: int,
    *,
    q_ids: torch.Tensor | None = None,
    c_ids: torch.Tensor | None = None,
    tile: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vals [n, k], ids [n, k] int64, sums [n], counts [n] int64). See the module docstring."""
    _check_inputs(q, c, k, q_ids, c_ids)
    acc = accum_dtype(q.dtype)
    n, m = q.shape[0], c.shape[0]
    qn, cn = _normalize(q.to(acc)), _normalize(c.to(acc))
    cols = (
        c_ids.to(device=q.device, dtype=torch.long) if c_ids is not None else torch.arange(m, device=q.device)
    )
    rows = q_ids.to(device=q.device, dtype=torch.long) if q_ids is not None else None
    vals = torch.full((n, k), float("-inf"), dtype=acc, device=q.device)
    ids = torch.full((n, k), PAD_ID, dtype=torch.long, device=q.device)
    sums = torch.zeros(n, dtype=acc, device=q.device)
    counts = torch.zeros(n, dtype=torch.long, device=q.device)
    for j0 in range(0, m, tile):
        s = qn @ cn[j0 : j0 + tile].T  # [n, tile]
        tile_ids = cols[j0 : j0 + tile].unsqueeze(0).expand_as(s)
        if rows is not None and c_ids is not None:
            valid = rows.unsqueeze(1) != tile_ids
            s_valid = torch.where(valid, s, torch.zeros_like(s))
            sums += s_valid.sum(dim=1)
            counts += valid.sum(dim=1)
            s = torch.where(valid, s, torch.full_like(s, float("-inf")))
            tile_ids = torch.where(valid, tile_ids, torch.full_like(tile_ids, PAD_ID))
        else:
            sums += s.sum(dim=1)
            counts += s.shape[1]
        vals, ids = merge_topk(vals, ids, s, tile_ids.contiguous(), k)
    return vals, ids, sums, counts


def cosine_topk(
    q: torch.Tensor,
    c: torch.Tensor,
    k: int,
    *,
    q_ids: torch.Tensor | None = None,
    c_ids: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row top-k cosines (with ids), sums and counts over valid columns. See the module docstring.

    "auto": the Triton kernel for CUDA fp32/bf16/fp16 inputs with k <= 64, the reference otherwise."""
    check_backend(backend)
    if use_triton(backend, q) and (backend == "triton" or k <= TRITON_MAX_K):
        from rapidun_dist.kernels.cosine_topk_triton import cosine_topk_triton

        return cosine_topk_triton(q, c, k, q_ids=q_ids, c_ids=c_ids)
    return cosine_topk_reference(q, c, k, q_ids=q_ids, c_ids=c_ids)
