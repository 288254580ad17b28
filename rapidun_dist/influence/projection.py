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


class ProjectionBank:
    """The per-layer (P_in, P_out) of an extractor, P_in stacked per shared-input group, casts cached.

    `p_in_stacked(group, dtype)` is the [sum of k_in, d_in] concatenation of the group's P_in (one GEMM
    projects an input that several layers read: q/k/v, gate/up) with the members' row counts;
    `p_out(name, dtype)` is that layer's P_out. Each (matrix, dtype, device) cast is made once.
    """

    def __init__(self, mats: dict[str, tuple[torch.Tensor, torch.Tensor]], groups: list[list[str]]):
        missing = [n for g in groups for n in g if n not in mats]
        if missing:
            raise ValueError(f"no projections for layers {missing[:3]}")
        self.mats, self.groups = mats, groups
        self._cache: dict[tuple, torch.Tensor] = {}

    def p_in_stacked(self, group: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[int]]:
        names = self.groups[group]
        sizes = [self.mats[n][0].shape[0] for n in names]
        key = ("in", group, dtype)
        if key not in self._cache:
            self._cache[key] = torch.cat([self.mats[n][0] for n in names]).to(dtype).contiguous()
        return self._cache[key], sizes

    def p_out(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        key = ("out", name, dtype)
        if key not in self._cache:
            self._cache[key] = self.mats[name][1].to(dtype).contiguous()
        return self._cache[key]
