"""Kronecker-factored random projections, derived from (seed, layer name) only.

P_in [k_in, d_in] and P_out [k_out, d_out] are Rademacher (+-1) scaled by 1/sqrt(k), so
E[P^T P] = I and <phi_t, phi_s> is an unbiased estimate of <G_t, G_s>_F. The generator seed is a
hash of (seed, layer name, side): every rank and every world size draws the same matrices.
"""

from __future__ import annotations

import hashlib

import torch


def _seed_for(seed: int, name: str, side: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}:{side}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def rademacher(
    rows: int, cols: int, seed: int, name: str, side: str, *, dtype=torch.float32, device=None
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_seed_for(seed, name, side))
    signs = torch.randint(
        0, 2, (rows, cols), generator=gen, dtype=torch.int8, device="cpu"
    )  # host RNG: same draws on any device
    return ((signs.to(dtype) * 2 - 1) / rows**0.5).to(device)


def layer_projections(
    name: str, d_in: int, d_out: int, *, k_in: int, k_out: int, seed: int, dtype=torch.float32, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P_in [k_in, d_in], P_out [k_out, d_out]) for one tracked layer."""
    return (
        rademacher(k_in, d_in, seed, name, "in", dtype=dtype, device=device),
        rademacher(k_out, d_out, seed, name, "out", dtype=dtype, device=device),
    )
