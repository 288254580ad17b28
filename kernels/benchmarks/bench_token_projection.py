"""Benchmark the backward-hook side of the token projection (`projected_outer_sums`): reference vs Triton
(CUDA only) vs the floor.

The floor is the bare projection GEMM G P_out^T of the same shape (what any implementation computes); the
bytes column counts what it must move at least: read the tracked rows of G, V [N, k_in] and P_out once,
write [B, k_out, k_in] fp32.

    python kernels/benchmarks/bench_token_projection.py --quick      # small shapes, appends results.csv
    python kernels/benchmarks/bench_token_projection.py              # Llama-3-8B layer shapes (d 4096/14336)
"""

from __future__ import annotations

from pathlib import Path

import torch

from rapidun_dist.cli.experiments.perf import random_lengths, run_cli, time_ms, timed_rows
from rapidun_dist.kernels import TokenLayout, projected_outer_sums, unit_rows

DEFAULT_CSV = Path(__file__).resolve().parent / "results.csv"

# (tokens, samples, d_out, k_out, k_in)
FULL = [(16384, 16, 4096, 64, 64), (16384, 16, 14336, 128, 128), (32768, 32, 4096, 128, 128)]
QUICK = [(1024, 8, 1024, 32, 32), (1024, 8, 512, 64, 64)]
TINY = [(64, 4, 40, 8, 16)]


def bench_shape(shape: tuple, dtype: torch.dtype, device: torch.device, repeat: int) -> list[dict]:
    n_tok, n_samples, d_out, k_out, k_in = shape
    gen = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0, *random_lengths(n_tok, n_samples, gen)]).cumsum(0)
    layout = TokenLayout.from_offsets(offsets, device)
    g = torch.randn(n_tok, d_out, generator=gen).to(device, dtype)
    v = unit_rows(torch.randn(n_tok, k_in, generator=gen)).to(device, dtype)
    p_out = ((torch.randint(0, 2, (k_out, d_out), generator=gen) * 2 - 1) / k_out**0.5).to(device, dtype)
    elt = g.element_size()
    bytes_moved = elt * (n_tok * (d_out + k_in) + k_out * d_out) + 4 * n_samples * k_out * k_in
    flops = 2 * n_tok * (d_out * k_out + k_out * k_in)
    floor_ms = time_ms(lambda: g @ p_out.T, device, repeat=repeat)
    return timed_rows(
        lambda b: projected_outer_sums(g, v, layout, p_out, backend=b),
        device=device,
        repeat=repeat,
        floor_ms=floor_ms,
        kernel="token_outer_sums",
        shape=f"N{n_tok}xB{n_samples} d{d_out} k{k_out}x{k_in}",
        dtype=dtype,
        bytes_moved=bytes_moved,
        flops=flops,
    )


def main(argv: list[str] | None = None) -> None:
    run_cli(__doc__, bench_shape, {"tiny": TINY, "quick": QUICK, "full": FULL}, DEFAULT_CSV, argv)


if __name__ == "__main__":
    main()
