"""gpu_proof section 2, kernels: the dispatched Triton kernels (autotuned on CUDA, one config interpreted)
against float64, bf16 and fp32; timings against the bare torch equivalents; one large-K top-k case.

Large K (the int64 offsets): on the GPU a real one, K = 229,376 (the Llama-3-8B configs' feature width) with
more candidate rows than 2^31 / K = 9,362, the queries copies of rows past that line; on the CPU dry run the
same check on rows a stride of 2^30 + 64 elements apart in one virtual allocation (tests/kernels/
test_kernel_int64_offsets.py), so row 2 lies past 2^31 elements as row 9,363 does at full size.
"""

from __future__ import annotations

import torch
from gpu_check import (
    per_token_error,
    projection_inputs,
    time_ms,
    topk_agreement,
    topk_inputs,
    torch_outer_sums_bf16,
    torch_topk_bf16,
)
from proof_common import Section

from rapidun_dist.kernels import (
    cosine_topk,
    cosine_topk_reference,
    merge_topk,
    projected_outer_sums,
    projected_outer_sums_reference,
)

K_8B = 7 * 32 * 32 * 32  # 7 tracked linears x 32 layers x k_out x k_in = 229,376
PLANS = {
    # (n_tokens, samples, d, k_out, k_in); (n, m, K, k)
    # each new (d, k) or (K, k) autotunes: 4-6 configs compiled and timed, so few shapes on the device
    "gpu": {"proj": [(16384, 32, 4096, 32, 32), (16384, 32, 14336, 32, 32)], "topk": [(2048, 16384, 4096, 40)],
            "proj_fp32": [(16384, 32, 4096, 32, 32)], "large_k": {"n": 16, "m": 9472, "K": K_8B, "k": 40}},
    "dry": {"proj": [(300, 5, 48, 16, 8)], "topk": [(40, 200, 24, 16)], "proj_fp32": [(300, 5, 48, 16, 8)],
            "large_k": {"n": 4, "m": 3, "K": 64, "k": 3, "stride": 2**30 + 64}},
}  # fmt: skip
TOL_PROJ = {torch.bfloat16: 8e-3, torch.float32: 2e-3}  # per token: bf16 / tf32 rounding of the unit u, v
TOL_TOPK = {torch.bfloat16: 1e-4, torch.float32: 1e-5}


def run(sec: Section, device: torch.device, dry_run: bool) -> None:
    plan = PLANS["dry" if dry_run else "gpu"]
    for dtype in (torch.bfloat16, torch.float32):
        for shape in plan["proj" if dtype == torch.bfloat16 else "proj_fp32"]:
            sec.step(f"projection {dtype_name(dtype)} {shape}", check_projection, sec, device, shape, dtype)
        for shape in plan["topk"]:
            sec.step(f"topk {dtype_name(dtype)} {shape}", check_topk, sec, device, shape, dtype)
    sec.step("large_k topk", check_large_k, sec, device, plan["large_k"])
    timing_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for shape in plan["proj"]:
        sec.step(f"timing projection {shape}", time_projection, sec, device, shape, timing_dtype)
    for shape in plan["topk"]:
        sec.step(f"timing topk {shape}", time_topk, sec, device, shape, timing_dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_projection(sec, device, shape, dtype) -> None:
    g, v, layout, p_out = projection_inputs(*shape, dtype, device)
    got = projected_outer_sums(g, v, layout, p_out, backend="triton")
    ref = projected_outer_sums_reference(g.double(), v.double(), layout, p_out.double())
    err = per_token_error(got, ref, layout) if bool(torch.isfinite(got).all()) else float("inf")
    sec.check(f"projection {dtype_name(dtype)} {shape}", err <= TOL_PROJ[dtype],
              max_err_per_token=err, tol=TOL_PROJ[dtype])  # fmt: skip


def check_topk(sec, device, shape, dtype) -> None:
    n, m, K, k = shape
    q, c, q_ids, c_ids = topk_inputs(n, m, K, dtype, device)
    got = cosine_topk(q, c, k, q_ids=q_ids, c_ids=c_ids, backend="triton")
    ref = cosine_topk_reference(q.double(), c.double(), k, q_ids=q_ids, c_ids=c_ids)
    ok, info = _topk_ok(got, ref, TOL_TOPK[dtype], m)
    sec.check(f"topk {dtype_name(dtype)} {shape}", ok, **info)


def _topk_ok(got, ref, tol: float, m: int) -> tuple[bool, dict]:
    agree = topk_agreement(got, ref, tol)
    ok = agree["max_val_err"] <= tol and agree["max_sum_err"] <= tol * m and agree["counts_equal"]
    return ok and agree["id_match"] >= 0.99, {**agree, "tol": tol}


def time_projection(sec, device, shape, dtype) -> None:
    g, v, layout, p_out = projection_inputs(*shape, dtype, device)
    rows = g.index_select(0, layout.rows)
    fns = {
        "triton": lambda: projected_outer_sums(g, v, layout, p_out, backend="triton"),
        "torch": lambda: torch_outer_sums_bf16(g, v, layout, p_out),
        "floor_gemm": lambda: rows @ p_out.T,
    }
    ms = {name: round(time_ms(fn, device), 4) for name, fn in fns.items()}
    tokens = shape[0]
    sec.figure(f"projection {dtype_name(dtype)} {shape}", {"ms": ms, "tokens_per_s_triton": tokens / ms["triton"] * 1e3,
               "speedup_vs_torch": ms["torch"] / ms["triton"]})  # fmt: skip
    sec.check(f"timing projection {shape}", all(t > 0 for t in ms.values()), ms=ms)


def time_topk(sec, device, shape, dtype) -> None:
    n, m, K, k = shape
    q, c, q_ids, c_ids = topk_inputs(n, m, K, dtype, device)
    fns = {
        "triton": lambda: cosine_topk(q, c, k, q_ids=q_ids, c_ids=c_ids, backend="triton"),
        "torch": lambda: torch_topk_bf16(q, c, k),
        "floor_gemm": lambda: q @ c.T,
    }
    ms = {name: round(time_ms(fn, device), 4) for name, fn in fns.items()}
    sec.figure(
        f"topk {dtype_name(dtype)} {shape}", {"ms": ms, "speedup_vs_torch": ms["torch"] / ms["triton"]}
    )
    sec.check(f"timing topk {shape}", all(t > 0 for t in ms.values()), ms=ms)


def far_rows(m: int, K: int, dtype, device, stride: int | None, gen) -> torch.Tensor:
    """[m, K] candidate rows: dense, or `stride` elements apart in one allocation (virtual but for the rows)."""
    if stride is None:
        return torch.randn(m, K, generator=gen, device=device, dtype=dtype)
    base = torch.empty(stride * (m - 1) + K, dtype=dtype, device=device)
    rows = base.as_strided((m, K), (stride, 1))
    rows.copy_(torch.randn(m, K, generator=gen, device=device))
    return rows


def chunked_reference(q, c, k: int, chunk: int = 2048):
    """cosine_topk_reference in float64 over row chunks of c (never the whole c in float64), merged."""
    vals = ids = sums = counts = None
    for j0 in range(0, c.shape[0], chunk):
        part = c[j0 : j0 + chunk].double()
        c_ids = torch.arange(j0, j0 + part.shape[0], device=q.device)
        v, i, s, n = cosine_topk_reference(q.double(), part, k, c_ids=c_ids)
        if vals is None:
            vals, ids, sums, counts = v, i, s, n
        else:
            vals, ids = merge_topk(vals, ids, v, i, k)
            sums, counts = sums + s, counts + n
    return vals, ids, sums, counts


def check_large_k(sec, device, case: dict) -> None:
    n, m, K, k, stride = case["n"], case["m"], case["K"], case["k"], case.get("stride")
    dtype = torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(0)
    c = far_rows(m, K, dtype, device, stride, gen)
    first_far_row = -(-(2**31) // c.stride(0))  # the first row whose offset passes 2^31 elements
    far = torch.arange(max(first_far_row, m - n // 2), m, device=device)  # queries that copy such rows
    q = torch.randn(n, K, generator=gen, device=device, dtype=dtype)
    q[: far.numel()] = c[far]
    got = cosine_topk(q, c, k, backend="triton")
    ok, agree = _topk_ok(got, chunked_reference(q, c, k), TOL_TOPK[dtype], m)
    found = bool((got[1][: far.numel(), 0] == far).all())
    sec.check("large_k topk", ok and found and far.numel() > 0, **agree, queries_find_far_rows=found,
              K=K, rows=m, row_stride=c.stride(0), first_row_past_2_31=first_far_row)  # fmt: skip
