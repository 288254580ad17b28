"""Benchmark fused_token_projection: reference vs Triton (CUDA only) vs the floor.

The floor is the two bare projection GEMMs (X P_in^T and G P_out^T) of the same shape; the bytes
row counts what any implementation must move: read X, G, P_in, P_out once, write [B, k_out, k_in].

    python kernels/benchmarks/bench_token_projection.py --quick      # small shapes, appends results.csv
    python kernels/benchmarks/bench_token_projection.py              # Llama-3-8B-like layer shapes
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    DEFAULT_CSV,
    random_lengths,
    run_cli,
    time_ms,
    timed_rows,
)

from rapidun_dist.kernels import fused_token_projection  # noqa: E402

# (tokens, samples, d_in, d_out, k_in, k_out)
FULL = [(4096, 16, 4096, 4096, 64, 64), (4096, 16, 4096, 14336, 128, 128), (4096, 16, 14336, 4096, 128, 128)]
QUICK = [(1024, 8, 512, 1024, 32, 32), (1024, 8, 1024, 512, 64, 64)]
TINY = [(64, 4, 48, 40, 16, 8)]


def bench_shape(shape: tuple, dtype: torch.dtype, device: torch.device, repeat: int) -> list[dict]:
    n_tok, n_samples, d_in, d_out, k_in, k_out = shape
    gen = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0, *random_lengths(n_tok, n_samples, gen)]).cumsum(0).to(device)
    x = torch.randn(n_tok, d_in, generator=gen).to(device, dtype)
    g = torch.randn(n_tok, d_out, generator=gen).to(device, dtype)
    p_in = ((torch.randint(0, 2, (k_in, d_in), generator=gen) * 2 - 1) / k_in**0.5).to(device, dtype)
    p_out = ((torch.randint(0, 2, (k_out, d_out), generator=gen) * 2 - 1) / k_out**0.5).to(device, dtype)
    elt = x.element_size()
    bytes_moved = elt * (n_tok * (d_in + d_out) + k_in * d_in + k_out * d_out) + 4 * n_samples * k_in * k_out
    flops = 2 * n_tok * (d_in * k_in + d_out * k_out + k_in * k_out)
    floor_ms = time_ms(lambda: (x @ p_in.T, g @ p_out.T), device, repeat=repeat)
    label = f"N{n_tok}xB{n_samples} d{d_in}->{d_out} k{k_in}x{k_out}"
    return timed_rows(
        lambda b: fused_token_projection(x, g, offsets, p_in, p_out, backend=b),
        device=device,
        repeat=repeat,
        floor_ms=floor_ms,
        kernel="token_projection",
        shape=label,
        dtype=dtype,
        bytes_moved=bytes_moved,
        flops=flops,
    )


def main(argv: list[str] | None = None) -> None:
    run_cli(__doc__, bench_shape, {"tiny": TINY, "quick": QUICK, "full": FULL}, DEFAULT_CSV, argv)


if __name__ == "__main__":
    main()
