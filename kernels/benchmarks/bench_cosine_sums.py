"""Benchmark grouped_cosine_sums: reference vs Triton (CUDA only) vs the floor.

The floor is the bare GEMM Q C^T of the same shape (which the kernels never store); the bytes row
counts what any implementation must move: read Q, C and groups once, write [n, num_groups] fp32.

    python kernels/benchmarks/bench_cosine_sums.py --quick      # small shapes, appends results.csv
    python kernels/benchmarks/bench_cosine_sums.py              # influence-sized shapes
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import DEFAULT_CSV, run_cli, time_ms, timed_rows  # noqa: E402

from rapidun_dist.kernels import grouped_cosine_sums  # noqa: E402

# (n rows, m columns, K features, num_groups, self_offset)
FULL = [(4096, 16384, 4096, 2, None), (4096, 16384, 4096, 256, None), (8192, 8192, 8192, 8, 0)]
QUICK = [(512, 2048, 512, 2, None), (512, 2048, 512, 100, 0)]
TINY = [(64, 128, 32, 3, 0)]


def bench_shape(shape: tuple, dtype: torch.dtype, device: torch.device, repeat: int) -> list[dict]:
    n, m, K, num_groups, self_offset = shape
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(m, K, generator=gen).to(device, dtype)
    q = c[:n] if self_offset is not None else torch.randn(n, K, generator=gen).to(device, dtype)
    groups = torch.randint(0, num_groups, (m,), generator=gen).to(device)
    bytes_moved = c.element_size() * K * (n + m) + groups.element_size() * m + 4 * n * num_groups
    flops = 2 * n * m * (K + num_groups)
    floor_ms = time_ms(lambda: q @ c.T, device, repeat=repeat)
    label = f"n{n} m{m} K{K} G{num_groups} self={self_offset}"
    return timed_rows(
        lambda b: grouped_cosine_sums(q, c, groups, num_groups, self_offset=self_offset, backend=b),
        device=device,
        repeat=repeat,
        floor_ms=floor_ms,
        kernel="cosine_sums",
        shape=label,
        dtype=dtype,
        bytes_moved=bytes_moved,
        flops=flops,
    )


def main(argv: list[str] | None = None) -> None:
    run_cli(__doc__, bench_shape, {"tiny": TINY, "quick": QUICK, "full": FULL}, DEFAULT_CSV, argv)


if __name__ == "__main__":
    main()
