"""What the kernel benchmarks (kernels/benchmarks/bench_*.py) share: timing, hardware/version stamps, the CSV
(kernels/benchmarks/results.csv: one row per kernel, shape, dtype and backend, with date, hardware and versions)
and the table, and their common command line (`run_cli`).

Each result row says how far a backend is from its floor: the bare GEMM of the same shape
(`ratio_to_floor` = ms / gemm ms) and the bytes it must move at least (`gbps` = bytes / time).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

FIELDS = [
    "date",
    "hardware",
    "torch",
    "triton",
    "kernel",
    "shape",
    "dtype",
    "backend",
    "ms",
    "gbps",
    "tflops",
    "ratio_to_floor",
]


def import_triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return triton.__version__


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} x{os.cpu_count()} threads={torch.get_num_threads()}"


def time_ms(fn: Callable[[], object], device: torch.device, *, repeat: int) -> float:
    """Median wall time of fn in ms: triton.testing.do_bench on CUDA, perf_counter on CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=max(repeat * 10, 50)))
    fn()  # warm-up
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def backends(device: torch.device) -> list[str]:
    """The reference always; Triton only on CUDA (interpreter timings mean nothing)."""
    return ["torch", "triton"] if device.type == "cuda" else ["torch"]


def make_row(
    *,
    kernel: str,
    shape: str,
    dtype: torch.dtype,
    backend: str,
    ms: float,
    bytes_moved: float,
    flops: float,
    floor_ms: float,
    device: torch.device,
) -> dict:
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "hardware": hardware(device),
        "torch": torch.__version__,
        "triton": import_triton_version(),
        "kernel": kernel,
        "shape": shape,
        "dtype": str(dtype).removeprefix("torch."),
        "backend": backend,
        "ms": f"{ms:.4f}",
        "gbps": f"{bytes_moved / ms / 1e6:.2f}",
        "tflops": f"{flops / ms / 1e9:.4f}",
        "ratio_to_floor": f"{ms / floor_ms:.2f}",
    }


def append_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict]) -> str:
    cols = ["kernel", "shape", "dtype", "backend", "ms", "gbps", "tflops", "ratio_to_floor"]
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(r[c].ljust(w) for c, w in zip(cols, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def random_lengths(n_tokens: int, n_samples: int, gen: torch.Generator) -> list[int]:
    """n_samples lengths summing to n_tokens, uneven (one sample may be empty)."""
    cuts = torch.randint(0, n_tokens + 1, (n_samples - 1,), generator=gen).sort().values.tolist()
    edges = [0, *cuts, n_tokens]
    return [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]


def run_cli(
    doc: str, bench_shape: Callable, shapes: dict, default_csv: Path, argv: list[str] | None = None
) -> None:
    """The shared command line of the kernel benchmarks: pick shapes (`--tiny`/`--quick`/full) and dtype, time
    every shape with `bench_shape(shape, dtype, device, repeat=)`, append the rows to the CSV, print a table."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--tiny", action="store_true", help="smoke-test shapes (seconds)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument("--csv", type=Path, default=default_csv)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    chosen = shapes["tiny"] if args.tiny else shapes["quick"] if args.quick else shapes["full"]
    rows = [
        r for s in chosen for r in bench_shape(s, dtype, device, repeat=3 if args.quick or args.tiny else 10)
    ]
    append_csv(args.csv, rows)
    print(format_table(rows))
    print(f"appended {len(rows)} rows to {args.csv}")


def timed_rows(
    call: Callable[[str], object], *, device: torch.device, repeat: int, floor_ms: float, **row
) -> list[dict]:
    """The floor row plus one row per available backend, `call(backend)` timed on each."""
    rows = [make_row(backend="gemm-floor", ms=floor_ms, floor_ms=floor_ms, device=device, **row)]
    for backend in backends(device):
        ms = time_ms(lambda b=backend: call(b), device, repeat=repeat)
        rows.append(make_row(backend=backend, ms=ms, floor_ms=floor_ms, device=device, **row))
    return rows
