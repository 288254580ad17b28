"""Triton kernel for grouped cosine sums (math: see cosine_sums.py).

    out[i, k] = sum_{j : groups[j] == k} <q_i, c_j> / (||q_i|| ||c_j||)     (0 for zero rows/columns)

Grid (row tile, group tile, column split). A program holds BLOCK_N rows; it computes the row
norms once, then walks its column range in tiles of BLOCK_M: S = Q C^T with tl.dot over K in
chunks of BLOCK_K (the column norms accumulate in the same loop), S is scaled by both inverse
norms, the self pair (i, i + self_offset) is zeroed, and S is reduced into groups with a second
dot against the tile's one-hot group matrix [BLOCK_M, BLOCK_G]. The n x m matrix is never stored.

- num_groups <= 64: one group tile, every program sees all columns.
- num_groups > 64: the columns are visited in group order (a stable argsort, applied through an
  index load, so c is not copied); group tile g only walks the contiguous column range of its 64
  groups, so the total work stays n x m x K whatever the number of groups.
- Column splits: on CUDA, programs split the columns (about 2 programs per SM in all) and store
  [S, n, num_groups] fp32 partials, summed afterwards (deterministic, no atomics).
- Dtypes: fp32/bf16/fp16 with fp32 accumulation and fp32 output; fp32 dots are exact ("ieee")
  unless torch.backends.cuda.matmul.allow_tf32. float64 raises TypeError (use backend="torch").
  In the interpreter dot operands are upcast to fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rapidun_dist.kernels._triton_utils import (
    INTERPRETING,
    block_size,
    check_float_inputs,
    dot_precision,
    program_target,
    tuned,
)
from rapidun_dist.kernels.cosine_sums import _check_inputs

MAX_BLOCK_G = 64
MIN_SPLIT_COLUMNS = 256
NOMINAL_BLOCK_N = 64


@triton.jit
def _safe_inverse_sqrt(ss):
    return tl.where(ss > 0, 1.0 / tl.sqrt(tl.where(ss > 0, ss, 1.0)), 0.0)


@triton.jit
def _cosine_sums_kernel(
    q_ptr,
    c_ptr,
    groups_ptr,
    order_ptr,
    col_lo_ptr,
    col_hi_ptr,
    part_ptr,
    n,
    K,
    num_groups,
    chunk,
    self_offset,
    stride_q,
    stride_c,
    HAS_SELF: tl.constexpr,
    USE_ORDER: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    g_tile = tl.program_id(1)
    split = tl.program_id(2)
    rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    row_mask = rows < n
    q_ss = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        q = tl.load(
            q_ptr + rows[:, None] * stride_q + kk[None, :],
            mask=row_mask[:, None] & (kk < K)[None, :],
            other=0.0,
        )
        q_ss += tl.sum(q.to(tl.float32) * q.to(tl.float32), axis=1)
    inv_q = _safe_inverse_sqrt(q_ss)

    gg = g_tile * BLOCK_G + tl.arange(0, BLOCK_G)
    c_lo = tl.load(col_lo_ptr + g_tile) + split * chunk
    c_hi = tl.minimum(tl.load(col_hi_ptr + g_tile), c_lo + chunk)
    acc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
    for j0 in range(c_lo, c_hi, BLOCK_M):
        pos = j0 + tl.arange(0, BLOCK_M)
        col_mask = pos < c_hi
        if USE_ORDER:
            cols = tl.load(order_ptr + pos, mask=col_mask, other=0)
        else:
            cols = pos
        col_group = tl.load(groups_ptr + cols, mask=col_mask, other=-1)
        s = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        c_ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            k_mask = (kk < K)[None, :]
            q = tl.load(
                q_ptr + rows[:, None] * stride_q + kk[None, :], mask=row_mask[:, None] & k_mask, other=0.0
            )
            c = tl.load(
                c_ptr + cols[:, None] * stride_c + kk[None, :], mask=col_mask[:, None] & k_mask, other=0.0
            )
            c_ss += tl.sum(c.to(tl.float32) * c.to(tl.float32), axis=1)
            if DOT_FP32:
                q = q.to(tl.float32)
                c = c.to(tl.float32)
            s = tl.dot(q, tl.trans(c), s, input_precision=PRECISION)
        s = s * inv_q[:, None] * _safe_inverse_sqrt(c_ss)[None, :]
        if HAS_SELF:
            s = tl.where(cols[None, :] == rows[:, None] + self_offset, 0.0, s)
        one_hot = (col_group[:, None] == gg[None, :]).to(tl.float32)
        acc = tl.dot(s, one_hot, acc, input_precision="ieee")

    out_mask = row_mask[:, None] & (gg < num_groups)[None, :]
    tl.store(part_ptr + (split * n + rows[:, None]) * num_groups + gg[None, :], acc, mask=out_mask)


_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bn, bm, bk, w, s in [
        (64, 64, 64, 4, 3),
        (64, 128, 64, 4, 3),
        (128, 64, 64, 8, 3),
        (128, 128, 32, 8, 3),
        (64, 64, 128, 4, 2),
        (128, 128, 64, 8, 2),
        (64, 128, 32, 4, 4),
    ]
]
_KERNEL, _INTERP_META = tuned(
    _cosine_sums_kernel,
    _CONFIGS,
    ["K", "BLOCK_G", "USE_ORDER"],
    {"BLOCK_N": 64, "BLOCK_M": 128, "BLOCK_K": 128},
)


def _column_ranges(groups: torch.Tensor, num_groups: int, block_g: int):
    """(order or None, col_lo, col_hi): per group tile, the range of (group-sorted) columns it walks."""
    m, g_tiles = groups.numel(), triton.cdiv(num_groups, block_g)
    if g_tiles == 1:
        bounds = torch.tensor([0, m], dtype=torch.int64, device=groups.device)
        return None, bounds[:1], bounds[1:]
    sorted_groups, order = torch.sort(groups.to(torch.int64), stable=True)
    edges = torch.arange(g_tiles + 1, device=groups.device, dtype=torch.int64) * block_g
    bounds = torch.searchsorted(sorted_groups, edges)
    return order.contiguous(), bounds[:-1].contiguous(), bounds[1:].contiguous()


def _column_splits(row_tiles: int, g_tiles: int, max_cols: int, device: torch.device) -> tuple[int, int]:
    want = triton.cdiv(program_target(device), row_tiles * g_tiles)
    splits = max(1, min(want, triton.cdiv(max_cols, MIN_SPLIT_COLUMNS)))
    return splits, max(1, triton.cdiv(max_cols, splits))


def grouped_cosine_sums_triton(
    q, c, groups, num_groups: int, *, self_offset: int | None = None
) -> torch.Tensor:
    """Triton version of `grouped_cosine_sums_reference`; returns fp32 [n, num_groups]."""
    _check_inputs(q, c, groups, num_groups)
    dtype = check_float_inputs("grouped_cosine_sums", q=q, c=c)
    if groups.device != q.device or groups.is_floating_point() or groups.dtype == torch.bool:
        raise TypeError(
            f"groups must be an integer tensor on {q.device}; found {groups.dtype} on {groups.device}"
        )
    n, K = q.shape
    if n == 0 or num_groups == 0 or c.shape[0] == 0:
        return torch.zeros(n, num_groups, dtype=torch.float32, device=q.device)
    q, c = q.contiguous(), c.contiguous()
    groups = groups.contiguous() if groups.dtype in (torch.int32, torch.int64) else groups.to(torch.int64)
    block_g = block_size(num_groups, hi=MAX_BLOCK_G)
    order, col_lo, col_hi = _column_ranges(groups, num_groups, block_g)
    g_tiles = col_lo.numel()
    splits, chunk = _column_splits(
        triton.cdiv(n, NOMINAL_BLOCK_N), g_tiles, int((col_hi - col_lo).max()), q.device
    )
    part = torch.empty(splits, n, num_groups, dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), g_tiles, splits)
    _KERNEL[grid](
        q,
        c,
        groups,
        order if order is not None else col_lo,
        col_lo,
        col_hi,
        part,
        n,
        K,
        num_groups,
        chunk,
        0 if self_offset is None else int(self_offset),
        q.stride(0),
        c.stride(0),
        HAS_SELF=self_offset is not None,
        USE_ORDER=order is not None,
        BLOCK_G=block_g,
        DOT_FP32=INTERPRETING,
        PRECISION=dot_precision(dtype),
        **_INTERP_META,
    )
    return part[0] if splits == 1 else part.sum(0)
