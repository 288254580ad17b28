"""Triton kernel for the backward-hook side of the token projection (math: see token_projection.py).

    out[b] = sum_{t in sample b} unit(P_out g_{rows[t]}) v_t^T          v_t = unit(P_in x_t), from the forward hook

Load balance: the N tracked tokens of the whole batch are cut into equal chunks (a multiple of 128
tokens, about 2 chunks per SM), one program per chunk, whatever the sample lengths. A program walks its
chunk in tiles of BLOCK_T tokens: it gathers the tile's rows of g by index (no [N, d] copy), projects them
with tensor-core dots over d in chunks of BLOCK_D (U = G P_out^T, fp32 accumulation, BLOCK_T >= 64 rows
so Hopper issues wgmma), normalises each row of U, rounds it to the dot dtype (bf16/fp16, or tf32 for
fp32) and accumulates U^T V into a [BLOCK_KO, BLOCK_KI] fp32 tile with a second tensor-core dot.

Segments: the running tile belongs to one sample; a token tile that crosses sample boundaries is split
by masking U per sample, and each finished sample is flushed. A sample that lies inside one chunk is
stored straight into `out`; one that spans chunks leaves one partial per chunk in `edge`
[chunks, 2, k_out, k_in] (slot 0: the chunk's first sample, slot 1: its last), and a small second kernel
sums those partials per sample in chunk order. Deterministic, no atomics, no host syncs: every size the
launch needs is a host int of the `TokenLayout` (RAPIDUN_KERNEL_DEBUG=1 validates the layout first).

- k_out, k_in <= 128 (one accumulator tile; BLOCK_KO >= 64 so the outer-product dot has M >= 64 too).
- Dtypes: g fp32/bf16/fp16; P_out is cast to g's dtype (callers cache the cast: `cached_cast`); v any
  float dtype, rounded to the dot dtype. fp32 uses "tf32" dots (tensor cores; ~1e-3 relative error per
  product, far inside the random projection's own error); use backend="torch" for exact fp32/fp64.
- In the interpreter every dot operand is upcast to fp32 after rounding (bf16 tl.dot is wrong there) and
  one fixed config runs; on CUDA the configs below are autotuned (all compile for sm_90 without spills:
  kernels/benchmarks/aot_sm90.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rapidun_dist.kernels._contracts import MAX_TRITON_K, TokenLayout
from rapidun_dist.kernels._contracts import check_projection_inputs as _check_inputs
from rapidun_dist.kernels._triton_utils import INTERPRETING, check_float_inputs, program_target, tuned

CHUNK_GRANULE = 128  # chunks are multiples of this (every BLOCK_T divides it)
FIXUP_BLOCK = 1024


@triton.jit
def _project_tile(g_ptr, p_ptr, rows, t_mask, ko, k_out, d, stride_g, stride_p,
                  BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_KO: tl.constexpr,
                  UPCAST: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """[BLOCK_T, BLOCK_KO] fp32 = G[rows] @ P^T, over d in chunks of BLOCK_D (int64 row offsets: R x d of a
    long batch at d = 14,336 passes 2^31)."""
    acc = tl.zeros((BLOCK_T, BLOCK_KO), dtype=tl.float32)
    ko_mask = ko < k_out
    g_rows = g_ptr + rows.to(tl.int64)[:, None] * stride_g
    p_rows = p_ptr + ko.to(tl.int64)[:, None] * stride_p
    for d0 in range(0, d, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_mask = dd < d
        a = tl.load(g_rows + dd[None, :], mask=t_mask[:, None] & d_mask[None, :], other=0.0)
        p = tl.load(p_rows + dd[None, :], mask=ko_mask[:, None] & d_mask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            p = p.to(tl.float32)
        acc = tl.dot(a, tl.trans(p), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _flush(acc, s, first, c, lo, hi, offsets_ptr, out_ptr, edge_ptr, ko, ki, k_out, k_in):
    """Store sample s's sum: into out when s lies inside this chunk, else into this chunk's edge slot."""
    start = tl.load(offsets_ptr + s)
    end = tl.load(offsets_ptr + s + 1)
    kk = k_out * k_in
    tile = ko[:, None] * k_in + ki[None, :]
    mask = (ko[:, None] < k_out) & (ki[None, :] < k_in)
    if (start >= lo) & (end <= hi):
        tl.store(out_ptr + tl.cast(s, tl.int64) * kk + tile, acc, mask=mask)
    else:
        slot = tl.where(s == first, 0, 1)
        tl.store(edge_ptr + tl.cast(c * 2 + slot, tl.int64) * kk + tile, acc, mask=mask)


@triton.jit
def _outer_sums_kernel(g_ptr, rows_ptr, sample_ptr, offsets_ptr, v_ptr, p_ptr, out_ptr, edge_ptr,
                       n_tokens, chunk, d, k_out, k_in, stride_g, stride_v, stride_p,
                       BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_KO: tl.constexpr,
                       BLOCK_KI: tl.constexpr, DOT_DTYPE: tl.constexpr, UPCAST: tl.constexpr,
                       PRECISION: tl.constexpr):  # fmt: skip
    c = tl.program_id(0)
    lo = c * chunk
    hi = tl.minimum(lo + chunk, n_tokens)
    ko = tl.arange(0, BLOCK_KO)
    ki = tl.arange(0, BLOCK_KI)
    first = tl.load(sample_ptr + lo)
    cur = first
    acc = tl.zeros((BLOCK_KO, BLOCK_KI), dtype=tl.float32)
    for t0 in range(lo, hi, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_mask = t < hi
        rows = tl.load(rows_ptr + t, mask=t_mask, other=0)
        s_t = tl.load(sample_ptr + t, mask=t_mask, other=-1)
        u = _project_tile(g_ptr, p_ptr, rows, t_mask, ko, k_out, d, stride_g, stride_p,
                          BLOCK_T, BLOCK_D, BLOCK_KO, UPCAST, PRECISION)  # fmt: skip
        ss = tl.sum(u * u, axis=1)
        inv = tl.where(ss > 0, 1.0 / tl.sqrt(tl.where(ss > 0, ss, 1.0)), 0.0)
        u = (u * inv[:, None]).to(DOT_DTYPE)
        v = tl.load(
            v_ptr + t.to(tl.int64)[:, None] * stride_v + ki[None, :],
            mask=t_mask[:, None] & (ki[None, :] < k_in),
            other=0.0,
        )
        v = v.to(DOT_DTYPE)
        if UPCAST:
            u = u.to(tl.float32)
            v = v.to(tl.float32)
        last = tl.load(sample_ptr + tl.minimum(t0 + BLOCK_T, hi) - 1)
        if last == cur:  # the common case: the whole tile belongs to the running sample
            acc = tl.dot(tl.trans(u), v, acc, input_precision=PRECISION)
        else:
            for s in range(cur, last + 1):
                u_s = tl.where((s_t == s)[:, None], u, 0.0).to(u.dtype)
                acc = tl.dot(tl.trans(u_s), v, acc, input_precision=PRECISION)
                if s < last:
                    _flush(acc, s, first, c, lo, hi, offsets_ptr, out_ptr, edge_ptr, ko, ki, k_out, k_in)
                    acc = tl.zeros((BLOCK_KO, BLOCK_KI), dtype=tl.float32)
            cur = last
    _flush(acc, cur, first, c, lo, hi, offsets_ptr, out_ptr, edge_ptr, ko, ki, k_out, k_in)


@triton.jit
def _edge_fixup_kernel(offsets_ptr, edge_ptr, out_ptr, chunk, kk, BLOCK: tl.constexpr):
    """out[s] = sum, in chunk order, of the edge partials of a sample that spans several chunks."""
    s = tl.program_id(0)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < kk
    start = tl.load(offsets_ptr + s)
    end = tl.load(offsets_ptr + s + 1)
    c0 = start // chunk
    c1 = (tl.maximum(end, 1) - 1) // chunk
    if (end > start) & (c1 > c0):
        slot = tl.where(start == c0 * chunk, 0, 1)
        acc = tl.load(edge_ptr + tl.cast(c0 * 2 + slot, tl.int64) * kk + idx, mask=mask, other=0.0)
        for c in range(c0 + 1, c1 + 1):
            acc += tl.load(edge_ptr + tl.cast(c * 2, tl.int64) * kk + idx, mask=mask, other=0.0)
        tl.store(out_ptr + tl.cast(s, tl.int64) * kk + idx, acc, mask=mask)


# (BLOCK_T, BLOCK_D, num_warps, num_stages) by accumulator size and dtype. Every entry compiles for sm_90
# with HGMMA (wgmma) and without spills or shared-memory overflow (kernels/benchmarks/aot_sm90.py); the
# ones that spilled at k = 128 (4 warps; BLOCK_T = 128; 16 warps, capped at 128 registers; fp32 with
# BLOCK_D = 128 or 5 stages) were pruned from these lists.
_SMALL_K = [(64, 64, 4, 3), (64, 64, 8, 3), (64, 128, 8, 3), (128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 8, 5)]
_K128 = {
    "bfloat16": [(64, 64, 8, 3), (64, 32, 8, 3), (64, 32, 8, 4), (64, 128, 8, 3), (64, 64, 8, 5)],
    "float32": [(64, 64, 8, 3), (64, 32, 8, 3), (64, 32, 8, 4)],
}
_K128["float16"] = _K128["bfloat16"]


def _config(bt: int, bd: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_T": bt, "BLOCK_D": bd}, num_warps=warps, num_stages=stages)


CONFIGS = [_config(*c) for c in dict.fromkeys(_SMALL_K + _K128["bfloat16"] + _K128["float32"])]


def configs_for(dtype: str, block_ko: int, block_ki: int) -> list[tuple]:
    """The (BLOCK_T, BLOCK_D, warps, stages) entries allowed for one dtype name and accumulator tile."""
    return _SMALL_K if max(block_ko, block_ki) <= 64 else _K128[dtype]


def _prune(configs, named_args, **kwargs):
    allowed = set(configs_for(dtype_name(named_args["g_ptr"].dtype), kwargs["BLOCK_KO"], kwargs["BLOCK_KI"]))
    keep = [
        c for c in configs if (c.kwargs["BLOCK_T"], c.kwargs["BLOCK_D"], c.num_warps, c.num_stages) in allowed
    ]
    return keep or configs[:1]


INTERP_CONFIG = {"BLOCK_T": 64, "BLOCK_D": 64}
_KERNEL, _INTERP_META = tuned(
    _outer_sums_kernel, CONFIGS, ["d", "BLOCK_KO", "BLOCK_KI"], INTERP_CONFIG, prune=_prune
)
_DOT_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def block_k(k: int) -> int:
    """The accumulator tile edge for k: a power of two >= 64 (wgmma needs M >= 64) and >= 16 for N."""
    return max(64, triton.next_power_of_2(k))


def chunking(n_tokens: int, device: torch.device) -> tuple[int, int]:
    """(chunk, chunks): equal token chunks, a multiple of CHUNK_GRANULE, about `program_target` of them."""
    per = triton.cdiv(max(n_tokens, 1), program_target(device))
    chunk = CHUNK_GRANULE * triton.cdiv(per, CHUNK_GRANULE)
    return chunk, triton.cdiv(n_tokens, chunk)


def dot_precision(dtype: torch.dtype) -> str:
    return "tf32" if dtype == torch.float32 else "ieee"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def launch_meta(dtype: torch.dtype, k_out: int, k_in: int) -> dict:
    """The constexprs of `_outer_sums_kernel` for a dtype and k (shared with the AOT compile script)."""
    return {
        "BLOCK_KO": block_k(k_out),
        "BLOCK_KI": max(16, triton.next_power_of_2(k_in)),
        "DOT_DTYPE": _DOT_DTYPES[dtype],
        "UPCAST": INTERPRETING,
        "PRECISION": dot_precision(dtype),
    }


def projected_outer_sums_triton(
    g, v, layout: TokenLayout, p_out, *, meta: dict | None = None
) -> torch.Tensor:
    """Triton version of `projected_outer_sums_reference`; returns fp32 [B, k_out, k_in].

    `meta` forces one config ({"BLOCK_T", "BLOCK_D", "num_warps", "num_stages"}) instead of the tuned
    choice (tests check every config this way)."""
    _check_inputs(g, v, layout, p_out)
    dtype = check_float_inputs("projected_outer_sums", g=g)
    if not v.is_floating_point() or v.device != g.device or p_out.device != g.device:
        raise TypeError(f"v and p_out must be float tensors on {g.device}; found {v.dtype} on {v.device}")
    (k_out, d), k_in = p_out.shape, v.shape[1]
    if k_out > MAX_TRITON_K or k_in > MAX_TRITON_K:
        raise ValueError(f"the Triton kernel takes k_out, k_in <= {MAX_TRITON_K}; found {k_out}, {k_in}")
    out = torch.zeros(layout.n_samples, k_out, k_in, dtype=torch.float32, device=g.device)
    if layout.n_tokens == 0 or k_out == 0 or k_in == 0:
        return out
    g = g if g.stride(1) == 1 else g.contiguous()
    v = v if v.stride(1) == 1 else v.contiguous()
    p_out = p_out.to(dtype).contiguous()
    chunk, chunks = chunking(layout.n_tokens, g.device)
    edge = torch.empty(chunks, 2, k_out, k_in, dtype=torch.float32, device=g.device)
    args = (g, layout.rows, layout.sample, layout.offsets, v, p_out, out, edge,
            layout.n_tokens, chunk, d, k_out, k_in, g.stride(0), v.stride(0), p_out.stride(0))  # fmt: skip
    kmeta = launch_meta(dtype, k_out, k_in)
    if meta is not None:
        _outer_sums_kernel[(chunks,)](*args, **kmeta, **meta)
    else:
        _KERNEL[(chunks,)](*args, **kmeta, **_INTERP_META)
    if chunks > 1:
        kk = k_out * k_in
        _edge_fixup_kernel[(layout.n_samples, triton.cdiv(kk, FIXUP_BLOCK))](
            layout.offsets, edge, out, chunk, kk, BLOCK=FIXUP_BLOCK
        )
    return out


AOT_K = (32, 64, 128)
AOT_D = (576, 4096, 14336)  # d is a runtime argument: one binary serves every d divisible by 16


def aot_variants() -> list[dict]:
    """Every (config, dtype, k) this module launches on CUDA, as `triton.compile` inputs (aot_sm90.py)."""
    out = []
    for dtype, ptr in ((torch.bfloat16, "*bf16"), (torch.float32, "*fp32")):
        sig = {"g_ptr": ptr, "rows_ptr": "*i64", "sample_ptr": "*i32", "offsets_ptr": "*i64", "v_ptr": ptr,
               "p_ptr": ptr, "out_ptr": "*fp32", "edge_ptr": "*fp32", "n_tokens": "i32", "chunk": "i32",
               "d": "i32", "k_out": "i32", "k_in": "i32", "stride_g": "i32", "stride_v": "i32",
               "stride_p": "i32"}  # fmt: skip
        aligned = [n for n in sig if n != "n_tokens"]
        for k in AOT_K:
            kmeta = launch_meta(dtype, k, k)
            for cfg in (
                _config(*c) for c in configs_for(dtype_name(dtype), kmeta["BLOCK_KO"], kmeta["BLOCK_KI"])
            ):
                meta = {**kmeta, "UPCAST": False, **cfg.kwargs}
                out.append({
                    "kernel": "token_outer_sums", "fn": _outer_sums_kernel, "signature": sig, "constexprs": meta,
                    "aligned": aligned, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                    "dtype": dtype_name(dtype), "shape": {"k_out": k, "k_in": k, "d": list(AOT_D)},
                    "config": {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
                })  # fmt: skip
    fix_sig = {"offsets_ptr": "*i64", "edge_ptr": "*fp32", "out_ptr": "*fp32", "chunk": "i32", "kk": "i32"}
    out.append({
        "kernel": "token_edge_fixup", "fn": _edge_fixup_kernel, "signature": fix_sig,
        "constexprs": {"BLOCK": FIXUP_BLOCK}, "aligned": list(fix_sig), "num_warps": 4, "num_stages": 3,
        "dtype": "float32", "shape": {}, "config": {"BLOCK": FIXUP_BLOCK, "num_warps": 4, "num_stages": 3},
    })  # fmt: skip
    return out
