"""Fused token projection: per-sample sums of unit outer products of projected token gradients.

For a linear layer y = W x and answer token t, the weight gradient is G_t = g_t x_t^T. With
Kronecker-factored projections P_in [k_in, d_in] and P_out [k_out, d_out],

    phi_t = (P_out g_t) (x) (P_in x_t),        ||phi_t|| = ||P_out g_t|| * ||P_in x_t||

so the unit token feature is the outer product of the two unit projected vectors
u_t = P_out g_t / ||P_out g_t|| and v_t = P_in x_t / ||P_in x_t||, and the per-sample sum is

    out[b] = sum_{t in sample b} u_t v_t^T = U_b^T V_b          ([k_out, k_in])

A zero-norm token contributes zero; a sample without tokens gets zeros. No per-token
k_out x k_in tensor is ever formed.

`fused_token_projection_reference` is the PyTorch reference (any device, any float dtype,
accumulating in fp32, or fp64 for fp64 inputs). The Triton kernel, when present, has the same
signature; `fused_token_projection` dispatches.
"""

from __future__ import annotations

import torch

from rapidun_dist.kernels._dispatch import accum_dtype, check_backend, use_triton


def _unit_rows(z: torch.Tensor) -> torch.Tensor:
    norm = z.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, z / norm.clamp_min(torch.finfo(z.dtype).tiny), torch.zeros_like(z))


def _check_inputs(x, g, offsets, p_in, p_out) -> None:
    if x.dim() != 2 or g.dim() != 2 or x.shape[0] != g.shape[0]:
        raise ValueError(
            f"x [N, d_in] and g [N, d_out] must share N; found {tuple(x.shape)} and {tuple(g.shape)}"
        )
    if p_in.shape[1] != x.shape[1] or p_out.shape[1] != g.shape[1]:
        raise ValueError(
            f"p_in must be [k_in, {x.shape[1]}] and p_out [k_out, {g.shape[1]}]; found {tuple(p_in.shape)}, {tuple(p_out.shape)}"
        )
    if offsets.dim() != 1 or offsets.numel() < 1 or offsets.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"offsets must be a 1-D integer tensor [B+1]; found {offsets.dtype} {tuple(offsets.shape)}"
        )
    if int(offsets[0]) != 0 or int(offsets[-1]) != x.shape[0] or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"offsets must start at 0, end at N={x.shape[0]} and be non-decreasing")


def fused_token_projection_reference(x, g, offsets, p_in, p_out) -> torch.Tensor:
    _check_inputs(x, g, offsets, p_in, p_out)
    acc = accum_dtype(x.dtype)
    v = _unit_rows(x.to(acc) @ p_in.to(acc).T)  # [N, k_in]
    u = _unit_rows(g.to(acc) @ p_out.to(acc).T)  # [N, k_out]
    return _segment_outer_sums(u, v, offsets.long())


def _segment_outer_sums(u_NO: torch.Tensor, v_NI: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """out[b] = U_b^T V_b for the token rows of each sample, as one batched GEMM over zero-padded samples
    ([B, T_max, k] each; padding rows are zero and add nothing)."""
    lengths = offsets[1:] - offsets[:-1]
    n_samples, t_max = lengths.numel(), int(lengths.max()) if lengths.numel() else 0
    sample = torch.repeat_interleave(torch.arange(n_samples, device=u_NO.device), lengths)
    pos = torch.arange(u_NO.shape[0], device=u_NO.device) - offsets[:-1][sample]
    u_pad = u_NO.new_zeros(n_samples, t_max, u_NO.shape[1])
    v_pad = v_NI.new_zeros(n_samples, t_max, v_NI.shape[1])
    u_pad[sample, pos] = u_NO
    v_pad[sample, pos] = v_NI
    return u_pad.transpose(1, 2) @ v_pad


def fused_token_projection(x, g, offsets, p_in, p_out, *, backend: str = "auto") -> torch.Tensor:
    """Per-sample [k_out, k_in] sums of unit token outer products. See the module docstring."""
    check_backend(backend)
    if use_triton(backend, x):
        from rapidun_dist.kernels.token_projection_triton import fused_token_projection_triton

        return fused_token_projection_triton(x, g, offsets, p_in, p_out)
    return fused_token_projection_reference(x, g, offsets, p_in, p_out)
