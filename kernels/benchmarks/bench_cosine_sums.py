"""Benchmark grouped_cosine_sums: reference vs Triton (CUDA only) vs the floor.

The floor is the bare GEMM Q C^T of the same shape (which the kernels never store); the bytes row
counts what any implementation must move: read Q, C and groups once, write [n, num_groups] fp32.

    python kernels/benchmarks/bench_cosine_sums.py --quick      # small shapes, appends results.csv
    python kernels/benchmarks/bench_cosine_sums.py              # influence-sized shapes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import DEFAULT_CSV, append_csv, backends, format_table, make_row, time_ms  # noqa: E402

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
    common = dict(kernel="cosine_sums", shape=label, dtype=dtype, bytes_moved=bytes_moved, flops=flops,
                  floor_ms=floor_ms, device=device)
    rows = [make_row(backend="gemm-floor", ms=floor_ms, **common)]
    for backend in backends(device):
        fn = lambda b=backend: grouped_cosine_sums(q, c, groups, num_groups, self_offset=self_offset, backend=b)
        rows.append(make_row(backend=backend, ms=time_ms(fn, device, repeat=repeat), **common))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--tiny", action="store_true", help="smoke-test shapes (seconds)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    shapes = TINY if args.tiny else QUICK if args.quick else FULL
    rows = [r for s in shapes for r in bench_shape(s, dtype, device, repeat=3 if args.quick or args.tiny else 10)]
    append_csv(args.csv, rows)
    print(format_table(rows))
    print(f"appended {len(rows)} rows to {args.csv}")


if __name__ == "__main__":
    main()
