"""One prepared GPU check of the kernels: correctness at Llama-3-8B layer sizes, then timings.

    python benchmarks/gpu_check.py                    # on the GPU machine; JSON to $OUT/gpu_check.json
    python benchmarks/gpu_check.py --out notes.json   # any path
    python benchmarks/gpu_check.py --dry-run          # CPU, tiny shapes, reference only (smoke test)

Correctness: the Triton kernels against the PyTorch reference on the same device (same
dtype-rounded inputs, so only accumulation order differs), k 32..128 (and a tiled k = 256),
~4k tokens, d in {4096, 14336}; one fp32 case against float64. Timings (triton.testing.do_bench):
Triton vs reference vs the bare GEMM of the same shape, with the fraction of the H200 roofline
(4.8 TB/s HBM, 990 TFLOP/s dense bf16): roofline_ms = max(bytes / BW, flops / peak), fraction =
roofline_ms / ms. The JSON is rewritten after every case, so a timeout keeps what was done.
Exit status 1 when a correctness case fails or raises.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
H200 = {"hbm_bytes_per_s": 4.8e12, "bf16_flops_per_s": 990e12}
TOKENS, SAMPLES = 4096, 16
LAYERS = [(4096, 4096), (4096, 14336), (14336, 4096)]  # (d_in, d_out): q/o, gate/up, down projections


def import_kernels():
    """rapidun_dist.kernels, installed or straight from this checkout (kernels/ mapped by hand)."""
    try:
        import rapidun_dist.kernels as kernels

        return kernels
    except ModuleNotFoundError:
        sys.path.insert(0, str(REPO))
        spec = importlib.util.spec_from_file_location(
            "rapidun_dist.kernels",
            REPO / "kernels" / "__init__.py",
            submodule_search_locations=[str(REPO / "kernels")],
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["rapidun_dist.kernels"] = module
        spec.loader.exec_module(module)
        return module


class Report:
    def __init__(self, path: Path, dry_run: bool, device: torch.device):
        self.path, self.t0 = path, time.time()
        self.data = {
            "dry_run": dry_run,
            "device": _device_name(device),
            "torch": torch.__version__,
            "triton": _triton_version(),
            "cuda": torch.version.cuda,
            "roofline": H200,
            "correctness": [],
            "timings": [],
            "errors": [],
        }

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        print(json.dumps({section: row}), flush=True)
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.time() - self.t0, 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _triton_version() -> str | None:
    spec = importlib.util.find_spec("triton")
    if spec is None:
        return None
    import triton

    return triton.__version__


def time_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100))
    fn()
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def projection_inputs(n_tok, n_samples, d_in, d_out, k_in, k_out, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cuts = torch.randint(0, n_tok + 1, (n_samples - 1,), generator=gen).sort().values
    offsets = torch.cat([torch.tensor([0]), cuts, torch.tensor([n_tok])]).to(device)
    x = torch.randn(n_tok, d_in, generator=gen).to(device, dtype)
    g = (torch.randn(n_tok, d_out, generator=gen) * 1e-3).to(device, dtype)
    x[::97] = 0  # some zero-norm tokens
    p_in = ((torch.randint(0, 2, (k_in, d_in), generator=gen) * 2 - 1) / k_in**0.5).to(device, dtype)
    p_out = ((torch.randint(0, 2, (k_out, d_out), generator=gen) * 2 - 1) / k_out**0.5).to(device, dtype)
    return x, g, offsets, p_in, p_out


def cosine_inputs(n, m, K, num_groups, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(m, K, generator=gen).to(device, dtype)
    q = c[:n].clone()
    return q, c, torch.randint(0, num_groups, (m,), generator=gen).to(device)


def per_token_error(got, ref, offsets) -> float:
    tokens = (offsets[1:] - offsets[:-1]).clamp_min(1).double()
    return ((got.double() - ref.double()).abs().amax(dim=(1, 2)) / tokens).max().item()


def check_projection(kn, report, shape, dtype, device, backend, ref_dtype=None):
    """backend "triton": kernel vs reference; "torch" (dry run): reference vs itself in float64."""
    x, g, offsets, p_in, p_out = projection_inputs(*shape, dtype, device)
    got = kn.fused_token_projection(x, g, offsets, p_in, p_out, backend=backend)
    up = (lambda t: t.to(ref_dtype)) if ref_dtype else (lambda t: t)
    ref = kn.fused_token_projection_reference(up(x), up(g), offsets, up(p_in), up(p_out))
    err, tol = per_token_error(got, ref, offsets), 1e-4
    report.add(
        "correctness",
        {
            "kernel": "token_projection",
            "case": str(shape),
            "dtype": str(dtype),
            "backend": backend,
            "reference": str(ref.dtype),
            "max_err_per_token": err,
            "tol": tol,
            "ok": bool(err <= tol),
        },
    )


def check_cosine(kn, report, shape, dtype, device, backend, ref_dtype=None):
    n, m, K, num_groups, self_offset = shape
    q, c, groups = cosine_inputs(n, m, K, num_groups, dtype, device)
    got = kn.grouped_cosine_sums(q, c, groups, num_groups, self_offset=self_offset, backend=backend)
    up = (lambda t: t.to(ref_dtype)) if ref_dtype else (lambda t: t)
    ref = kn.grouped_cosine_sums_reference(up(q), up(c), groups, num_groups, self_offset=self_offset)
    err, tol = (got.double() - ref.double()).abs().max().item() / m, 1e-5
    report.add(
        "correctness",
        {
            "kernel": "cosine_sums",
            "case": str(shape),
            "dtype": str(dtype),
            "backend": backend,
            "reference": str(ref.dtype),
            "max_err_per_column": err,
            "tol": tol,
            "ok": bool(err <= tol),
        },
    )


def timing_rows(report, kernel, case, fns: dict, bytes_moved: float, flops: float, device) -> None:
    times = {name: time_ms(fn, device) for name, fn in fns.items()}
    roofline_ms = max(bytes_moved / H200["hbm_bytes_per_s"], flops / H200["bf16_flops_per_s"]) * 1e3
    for name, ms in times.items():
        report.add(
            "timings",
            {
                "kernel": kernel,
                "case": case,
                "backend": name,
                "ms": ms,
                "gbps": bytes_moved / ms / 1e6,
                "tflops": flops / ms / 1e9,
                "ratio_to_gemm": ms / times["gemm"],
                "h200_roofline_fraction": roofline_ms / ms,
            },
        )


def time_projection(kn, report, shape, dtype, device, backends):
    x, g, offsets, p_in, p_out = projection_inputs(*shape, dtype, device)
    n_tok, n_samples, d_in, d_out, k_in, k_out = shape
    fns = {"gemm": lambda: (x @ p_in.T, g @ p_out.T)}
    fns.update(
        {b: (lambda b=b: kn.fused_token_projection(x, g, offsets, p_in, p_out, backend=b)) for b in backends}
    )
    nbytes = (
        x.element_size() * (n_tok * (d_in + d_out) + k_in * d_in + k_out * d_out)
        + 4 * n_samples * k_in * k_out
    )
    timing_rows(
        report, "token_projection", str(shape), fns, nbytes, 2 * n_tok * (d_in * k_in + d_out * k_out), device
    )


def time_cosine(kn, report, shape, dtype, device, backends):
    n, m, K, num_groups, self_offset = shape
    q, c, groups = cosine_inputs(n, m, K, num_groups, dtype, device)
    fns = {"gemm": lambda: q @ c.T}
    fns.update(
        {
            b: (
                lambda b=b: kn.grouped_cosine_sums(
                    q, c, groups, num_groups, self_offset=self_offset, backend=b
                )
            )
            for b in backends
        }
    )
    nbytes = q.element_size() * K * (n + m) + 8 * m + 4 * n * num_groups
    timing_rows(report, "cosine_sums", str(shape), fns, nbytes, 2 * n * m * K, device)


def plan(dry_run: bool) -> dict:
    """Which checks run: tiny reference-only ones for --dry-run, Llama-3-8B sizes otherwise."""
    if dry_run:
        return {
            "backend": "torch",
            "ref_dtype": torch.float64,
            "dtypes": [torch.float32],
            "proj_checks": [(64, 4, 48, 40, 16, 8)],
            "cos_checks": [(32, 64, 24, 3, 0)],
            "proj_times": [(64, 4, 48, 40, 16, 8)],
            "cos_times": [(32, 64, 24, 3, None)],
            "backends": ["torch"],
        }
    proj = [(TOKENS, SAMPLES, d_in, d_out, k, k) for d_in, d_out in LAYERS for k in (32, 64, 128)]
    return {
        "backend": "triton",
        "ref_dtype": None,
        "dtypes": [torch.bfloat16],
        "proj_checks": proj + [(TOKENS, SAMPLES, 4096, 4096, 256, 48), (TOKENS, 4096, 4096, 4096, 64, 64)],
        "cos_checks": [(4096, 16384, 4096, 2, None), (4096, 16384, 1024, 300, 0), (4096, 4096, 4096, 8, 0)],
        "proj_times": [
            (TOKENS, SAMPLES, 4096, 14336, 128, 128),
            (TOKENS, SAMPLES, 14336, 4096, 128, 128),
            (TOKENS, SAMPLES, 4096, 4096, 64, 64),
        ],
        "cos_times": [(4096, 16384, 4096, 2, None), (4096, 16384, 4096, 256, None), (8192, 8192, 8192, 8, 0)],
        "backends": ["triton", "torch"],
    }


def run_step(report, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # keep going: one broken case must not hide the others
        report.add(
            "errors",
            {
                "step": fn.__name__,
                "args": repr(args[2:]),
                "error": repr(exc),
                "traceback": traceback.format_exc()[-2000:],
            },
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, reference only")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry_run else "cuda")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: use --dry-run on CPU")
    kn, p = import_kernels(), plan(args.dry_run)
    report = Report(args.out, args.dry_run, device)
    for dtype in p["dtypes"]:
        for shape in p["proj_checks"]:
            run_step(report, check_projection, kn, report, shape, dtype, device, p["backend"], p["ref_dtype"])
        for shape in p["cos_checks"]:
            run_step(report, check_cosine, kn, report, shape, dtype, device, p["backend"], p["ref_dtype"])
    if not args.dry_run:  # fp32 kernels against a float64 reference
        run_step(
            report,
            check_projection,
            kn,
            report,
            (1024, 8, 4096, 14336, 64, 64),
            torch.float32,
            device,
            "triton",
            torch.float64,
        )
        run_step(
            report,
            check_cosine,
            kn,
            report,
            (1024, 4096, 4096, 4, 0),
            torch.float32,
            device,
            "triton",
            torch.float64,
        )
    for shape in p["proj_times"]:
        run_step(report, time_projection, kn, report, shape, p["dtypes"][0], device, p["backends"])
    for shape in p["cos_times"]:
        run_step(report, time_cosine, kn, report, shape, p["dtypes"][0], device, p["backends"])
    report.save()
    failed = report.data["errors"] or not all(r["ok"] for r in report.data["correctness"])
    print(f"wrote {args.out}; {'FAILED' if failed else 'all checks passed'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
