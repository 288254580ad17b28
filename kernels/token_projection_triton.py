"""Triton kernel for the fused token projection (math: see token_projection.py).

    out[b] = sum_{t in sample b} u_t v_t^T,   u_t = unit(P_out g_t),  v_t = unit(P_in x_t)

Grid (sample b, token split s, k-tile): each program walks its tokens in blocks of BLOCK_T,
projects both sides with tl.dot over d chunks (V = X P_in^T, U = G P_out^T, fp32 accumulation),
scales every row by its inverse norm (0 for a zero-norm token or a padding row) and accumulates
U^T V into a [BLOCK_KO, BLOCK_KI] fp32 register tile, stored once. No per-token k_out x k_in
tensor exists anywhere.

- k <= 128 on both sides (the usual case): one k-tile, the norms come from the tile itself.
- k > 128: k is tiled (<= 128 x 128 accumulator per program) and the per-token inverse norms
  come from a torch pre-pass ([N] floats per side; costs one extra projection GEMM).
- Token splits: on CUDA, long samples are split over several programs (about 2 programs per SM
  in all) that store [S, B, k_out, k_in] fp32 partials, summed afterwards (deterministic, no
  atomics). In the interpreter there is one split.
- Dtypes: fp32/bf16/fp16 (x, g, P cast to x's dtype for the tensor-core dot; fp32 accumulation,
  fp32 output; P may have any float dtype). fp32 dots are exact ("ieee") unless torch.backends.cuda.matmul.allow_tf32.
  float64 is rejected with a TypeError (use backend="torch"). In the interpreter every dot
  operand is upcast to fp32 (bf16 tl.dot is wrong there).
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
from rapidun_dist.kernels.token_projection import _check_inputs

MAX_BLOCK_K = 128
MIN_SPLIT_TOKENS = 128


@triton.jit
def _project_rows(
    a_ptr,
    p_ptr,
    rows,
    row_mask,
    kk,
    k,
    d,
    stride_a,
    stride_p,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """[BLOCK_T, BLOCK_K] fp32 tile of A[rows] @ P[kk]^T, looping over d in chunks of BLOCK_D."""
    acc = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    k_mask = kk < k
    for d0 in range(0, d, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_mask = dd < d
        a = tl.load(
            a_ptr + rows[:, None] * stride_a + dd[None, :],
            mask=row_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        p = tl.load(
            p_ptr + kk[:, None] * stride_p + dd[None, :], mask=k_mask[:, None] & d_mask[None, :], other=0.0
        )
        if DOT_FP32:
            a = a.to(tl.float32)
            p = p.to(tl.float32)
        acc = tl.dot(a, tl.trans(p), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _inverse_norms(z, inv_ptr, rows, row_mask, HAS_INV: tl.constexpr):
    """Per-row 1/||z|| (0 for zero rows); from inv_ptr when the k dimension is tiled."""
    if HAS_INV:
        inv = tl.load(inv_ptr + rows, mask=row_mask, other=0.0)
    else:
        ss = tl.sum(z * z, axis=1)
        inv = tl.where(ss > 0, 1.0 / tl.sqrt(tl.where(ss > 0, ss, 1.0)), 0.0)
    return inv


@triton.jit
def _token_projection_kernel(
    x_ptr,
    g_ptr,
    offsets_ptr,
    p_in_ptr,
    p_out_ptr,
    inv_v_ptr,
    inv_u_ptr,
    part_ptr,
    d_in,
    d_out,
    k_in,
    k_out,
    chunk,
    num_ki_tiles,
    stride_x,
    stride_g,
    stride_pin,
    stride_pout,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_KO: tl.constexpr,
    BLOCK_KI: tl.constexpr,
    HAS_INV: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PRECISION: tl.constexpr,
):
    b = tl.program_id(0)
    split = tl.program_id(1)
    k_tile = tl.program_id(2)
    n_samples = tl.num_programs(0)
    ko = (k_tile // num_ki_tiles) * BLOCK_KO + tl.arange(0, BLOCK_KO)
    ki = (k_tile % num_ki_tiles) * BLOCK_KI + tl.arange(0, BLOCK_KI)
    start = tl.load(offsets_ptr + b).to(tl.int64)
    end = tl.load(offsets_ptr + b + 1).to(tl.int64)
    t_lo = start + split * chunk
    t_hi = tl.minimum(end, t_lo + chunk)

    acc = tl.zeros((BLOCK_KO, BLOCK_KI), dtype=tl.float32)
    for t0 in range(t_lo, t_hi, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_mask = rows < t_hi
        v = _project_rows(
            x_ptr,
            p_in_ptr,
            rows,
            row_mask,
            ki,
            k_in,
            d_in,
            stride_x,
            stride_pin,
            BLOCK_T,
            BLOCK_D,
            BLOCK_KI,
            DOT_FP32,
            PRECISION,
        )
        u = _project_rows(
            g_ptr,
            p_out_ptr,
            rows,
            row_mask,
            ko,
            k_out,
            d_out,
            stride_g,
            stride_pout,
            BLOCK_T,
            BLOCK_D,
            BLOCK_KO,
            DOT_FP32,
            PRECISION,
        )
        v = v * _inverse_norms(v, inv_v_ptr, rows, row_mask, HAS_INV)[:, None]
        u = u * _inverse_norms(u, inv_u_ptr, rows, row_mask, HAS_INV)[:, None]
        acc = tl.dot(tl.trans(u), v, acc, input_precision="ieee")

    base = (split * n_samples + b).to(tl.int64) * k_out * k_in
    out_mask = (ko[:, None] < k_out) & (ki[None, :] < k_in)
    tl.store(part_ptr + base + ko[:, None] * k_in + ki[None, :], acc, mask=out_mask)


_CONFIGS = [
    triton.Config({"BLOCK_T": bt, "BLOCK_D": bd}, num_warps=w, num_stages=s)
    for bt, bd, w, s in [
        (16, 128, 4, 3),
        (32, 64, 4, 3),
        (32, 128, 8, 3),
        (64, 64, 8, 3),
        (64, 128, 8, 2),
        (32, 64, 8, 4),
        (16, 64, 4, 4),
        (64, 32, 8, 4),
    ]
]
_KERNEL, _INTERP_META = tuned(
    _token_projection_kernel,
    _CONFIGS,
    ["d_in", "d_out", "BLOCK_KO", "BLOCK_KI"],
    {"BLOCK_T": 64, "BLOCK_D": 128},
)


def _token_splits(n_samples: int, max_len: int, device: torch.device) -> tuple[int, int]:
    """(splits, tokens per split) so that about `program_target` programs run; never below 128 tokens."""
    want = triton.cdiv(program_target(device), max(n_samples, 1))
    splits = max(1, min(want, triton.cdiv(max_len, MIN_SPLIT_TOKENS)))
    return splits, max(1, triton.cdiv(max_len, splits))


def _inverse_norm_prepass(a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """[N] fp32 1/||P a_t|| (0 for zero rows), used when the k dimension is tiled."""
    norm = (a.float() @ p.float().T).norm(dim=1)
    return torch.where(
        norm > 0, 1.0 / norm.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(norm)
    )


def fused_token_projection_triton(x, g, offsets, p_in, p_out) -> torch.Tensor:
    """Triton version of `fused_token_projection_reference`; returns fp32 [B, k_out, k_in]."""
    _check_inputs(x, g, offsets, p_in, p_out)
    dtype = check_float_inputs("fused_token_projection", x=x, g=g)
    for name, p in (("p_in", p_in), ("p_out", p_out)):
        if not p.is_floating_point() or p.device != x.device:
            raise TypeError(f"{name} must be a float tensor on {x.device}; found {p.dtype} on {p.device}")
    x, g = x.contiguous(), g.contiguous()
    p_in, p_out = p_in.to(dtype).contiguous(), p_out.to(dtype).contiguous()
    offsets = offsets.to(device=x.device, dtype=torch.int64).contiguous()
    (k_in, d_in), (k_out, d_out) = p_in.shape, p_out.shape
    n_samples = offsets.numel() - 1
    if n_samples == 0 or k_in == 0 or k_out == 0:
        return torch.zeros(n_samples, k_out, k_in, dtype=torch.float32, device=x.device)

    block_ko, block_ki = block_size(k_out, hi=MAX_BLOCK_K), block_size(k_in, hi=MAX_BLOCK_K)
    tiles_ko, tiles_ki = triton.cdiv(k_out, block_ko), triton.cdiv(k_in, block_ki)
    has_inv = tiles_ko * tiles_ki > 1
    inv_v = _inverse_norm_prepass(x, p_in) if has_inv else x.new_empty(1, dtype=torch.float32)
    inv_u = _inverse_norm_prepass(g, p_out) if has_inv else inv_v
    max_len = int((offsets[1:] - offsets[:-1]).max())
    splits, chunk = _token_splits(n_samples, max_len, x.device)
    part = torch.empty(splits, n_samples, k_out, k_in, dtype=torch.float32, device=x.device)
    _KERNEL[(n_samples, splits, tiles_ko * tiles_ki)](
        x,
        g,
        offsets,
        p_in,
        p_out,
        inv_v,
        inv_u,
        part,
        d_in,
        d_out,
        k_in,
        k_out,
        chunk,
        tiles_ki,
        x.stride(0),
        g.stride(0),
        p_in.stride(0),
        p_out.stride(0),
        BLOCK_KO=block_ko,
        BLOCK_KI=block_ki,
        HAS_INV=has_inv,
        DOT_FP32=INTERPRETING,
        PRECISION=dot_precision(dtype),
        **_INTERP_META,
    )
    return part[0] if splits == 1 else part.sum(0)
