"""Token projection at hook time: per-sample sums of unit outer products of projected token gradients.

For a linear layer y = W x and tracked token t, the weight gradient is G_t = g_t x_t^T. With
Kronecker-factored projections P_in [k_in, d_in] and P_out [k_out, d_out],

    phi_t = (P_out g_t) (x) (P_in x_t),        ||phi_t|| = ||P_out g_t|| * ||P_in x_t||

so the unit token feature is the outer product of u_t = unit(P_out g_t) and v_t = unit(P_in x_t), and
the per-sample sum is

    out[b] = sum_{t in sample b} u_t v_t^T = U_b^T V_b          ([k_out, k_in])

A zero-norm token contributes zero; a sample without tokens gets zeros. No per-token k_out x k_in
tensor is ever formed.

The work is split the way the hooks see it (docs/DESIGN.md section 5): the forward hook keeps only
v_t = `unit_projection(x, p_in)` (k_in floats per token); the backward hook calls

    projected_outer_sums(g, v, layout, p_out)        # [B, k_out, k_in]

with g the layer's output gradient rows [R, d_out] (R = B x T: every position of the padded batch),
`layout` saying which rows are tracked and which sample each belongs to (`TokenLayout`, built on the
host from the CPU-side mask, so no launch needs a device-to-host sync), and v [N, k_in] the tracked
tokens' unit input projections, in layout order. `fused_token_projection(x, g, offsets, ...)` is the
whole formula on token-major inputs (tests, benchmarks).

`*_reference` are the PyTorch references (any device, any float dtype, accumulating in fp32, or fp64
for fp64 inputs). The Triton kernel (token_projection_triton.py) has the same signature; the
dispatchers pick it for CUDA fp32/bf16/fp16 with k_in, k_out <= 128.
"""

from __future__ import annotations

import torch

from rapidun_dist.kernels._contracts import MAX_TRITON_K, TokenLayout
from rapidun_dist.kernels._contracts import check_projection_inputs as _check_inputs
from rapidun_dist.kernels._dispatch import accum_dtype, check_backend, use_triton


def unit_rows(z: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm; a zero row stays zero."""
    norm = z.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, z / norm.clamp_min(torch.finfo(z.dtype).tiny), torch.zeros_like(z))


def unit_projection(x_RD: torch.Tensor, p_KD: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """v = unit(P x) for the given rows (all rows when None), in the accumulation dtype of x.

    The forward-hook side: projects every row, then keeps the tracked ones (a [R, k] temporary instead of
    an [N, d] gather)."""
    acc = accum_dtype(x_RD.dtype)
    z = x_RD.to(acc) @ p_KD.to(acc).T
    return unit_rows(z if rows is None else z[rows])


def segment_outer_sums(u_NO: torch.Tensor, v_NI: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """out[b] = U_b^T V_b as one batched GEMM over zero-padded samples ([B, max_count, k] each)."""
    shape = (layout.n_samples, layout.max_count)
    u_pad = u_NO.new_zeros(*shape, u_NO.shape[1])
    v_pad = v_NI.new_zeros(*shape, v_NI.shape[1])
    idx = (layout.sample.long(), layout.pos)
    u_pad[idx] = u_NO
    v_pad[idx] = v_NI
    return u_pad.transpose(1, 2) @ v_pad


def projected_outer_sums_reference(g, v, layout: TokenLayout, p_out) -> torch.Tensor:
    """[B, k_out, k_in] = sum over each sample's tokens of unit(P_out g_row) v^T (see the module docstring)."""
    _check_inputs(g, v, layout, p_out)
    u = unit_projection(g, p_out, layout.rows)
    return segment_outer_sums(u, v.to(u.dtype), layout)


def _triton_fits(k_out: int, k_in: int) -> bool:
    return k_out <= MAX_TRITON_K and k_in <= MAX_TRITON_K


def projected_outer_sums(g, v, layout: TokenLayout, p_out, *, backend: str = "auto") -> torch.Tensor:
    """The backward-hook side. "auto": Triton for CUDA fp32/bf16/fp16 with k <= 128, else the reference."""
    check_backend(backend)
    if use_triton(backend, g) and (backend == "triton" or _triton_fits(p_out.shape[0], v.shape[1])):
        from rapidun_dist.kernels.token_projection_triton import projected_outer_sums_triton

        return projected_outer_sums_triton(g, v, layout, p_out)
    return projected_outer_sums_reference(g, v, layout, p_out)


def _token_major(x, g, offsets, p_in, p_out) -> TokenLayout:
    if x.dim() != 2 or g.dim() != 2 or x.shape[0] != g.shape[0]:
        raise ValueError(
            f"x [N, d_in] and g [N, d_out] must share N; found {tuple(x.shape)} and {tuple(g.shape)}"
        )
    if p_in.dim() != 2 or p_in.shape[1] != x.shape[1]:
        raise ValueError(f"p_in must be [k_in, {x.shape[1]}]; found {tuple(p_in.shape)}")
    layout = TokenLayout.from_offsets(offsets, device=x.device)
    if layout.n_tokens != x.shape[0]:
        raise ValueError(f"offsets must end at N={x.shape[0]}; found {layout.n_tokens}")
    return layout


def fused_token_projection_reference(x, g, offsets, p_in, p_out) -> torch.Tensor:
    """Token-major form: x [N, d_in], g [N, d_out], offsets [B + 1] -> [B, k_out, k_in]."""
    layout = _token_major(x, g, offsets, p_in, p_out)
    return projected_outer_sums_reference(g, unit_projection(x, p_in), layout, p_out)


def fused_token_projection(x, g, offsets, p_in, p_out, *, backend: str = "auto") -> torch.Tensor:
    """Token-major form of the whole formula: v from x in torch, then `projected_outer_sums`.

    Builds the layout from `offsets` on the host (one device-to-host copy of B + 1 ints when offsets live
    on a GPU); the extractor builds its layouts on the host and calls `projected_outer_sums` directly."""
    check_backend(backend)
    layout = _token_major(x, g, offsets, p_in, p_out)
    if use_triton(backend, g) and (backend == "triton" or _triton_fits(p_out.shape[0], p_in.shape[0])):
        v = unit_projection(x, p_in).to(x.dtype)
        return projected_outer_sums(g, v, layout, p_out, backend="triton")
    return projected_outer_sums_reference(g, unit_projection(x, p_in), layout, p_out)
