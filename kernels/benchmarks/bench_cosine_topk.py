"""Benchmark `cosine_topk` (per-row streaming top-k of cosines with sums and counts): reference vs Triton
(CUDA only) vs the floor.

The floor is the bare GEMM Q C^T of the same shape (which the fused kernel never writes out); bytes
count reading Q and C once and writing the [n, k] values and ids and the [n] sums and counts.

    python kernels/benchmarks/bench_cosine_topk.py --quick      # small shapes, appends results.csv
    python kernels/benchmarks/bench_cosine_topk.py              # influence-sized shapes
"""

from __future__ import annotations

from pathlib import Path

import torch

from rapidun_dist.cli.experiments.perf import run_cli, time_ms, timed_rows
from rapidun_dist.kernels import cosine_topk

DEFAULT_CSV = Path(__file__).resolve().parent / "results.csv"

# (n, m, K, k, with ids)
FULL = [(4096, 16384, 4096, 40, True), (8192, 8192, 16384, 64, True), (16384, 65536, 1024, 16, False)]
QUICK = [(512, 2048, 512, 40, True), (256, 4096, 256, 16, False)]
TINY = [(32, 64, 24, 5, True)]


def bench_shape(shape: tuple, dtype: torch.dtype, device: torch.device, repeat: int) -> list[dict]:
    n, m, K, k, with_ids = shape
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(m, K, generator=gen).to(device, dtype)
    q = c[:n].clone()
    ids = torch.arange(m, device=device) if with_ids else None
    q_ids = ids[:n] if with_ids else None
    elt = q.element_size()
    bytes_moved = elt * K * (n + m) + n * k * 12 + n * 16
    floor_ms = time_ms(lambda: q @ c.T, device, repeat=repeat)
    return timed_rows(
        lambda b: cosine_topk(q, c, k, q_ids=q_ids, c_ids=ids, backend=b),
        device=device,
        repeat=repeat,
        floor_ms=floor_ms,
        kernel="cosine_topk",
        shape=f"n{n} m{m} K{K} k{k} ids={with_ids}",
        dtype=dtype,
        bytes_moved=bytes_moved,
        flops=2 * n * m * K,
    )


def main(argv: list[str] | None = None) -> None:
    run_cli(__doc__, bench_shape, {"tiny": TINY, "quick": QUICK, "full": FULL}, DEFAULT_CSV, argv)


if __name__ == "__main__":
    main()
