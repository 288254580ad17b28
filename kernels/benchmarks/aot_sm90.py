"""Compile every autotune config of every Triton kernel for sm_90 (H100/H200) on this machine, no GPU needed.

For each (kernel, config, dtype, k) that the launchers can pick on CUDA (each `*_triton.py` module lists
them in `aot_variants()`), `triton.compile` builds the cubin for GPUTarget("cuda", 90, 32) with the
alignment a real launch specializes on (16-byte aligned pointers, strides and sizes divisible by 16), and
the wheel's cuobjdump reads it back: registers, spill (local) bytes, shared memory, and the SASS counts of
HGMMA (wgmma tensor cores), HMMA (mma.sync tensor cores), FFMA (fp32 FMA units), LDL/STL (spill traffic).

    python kernels/benchmarks/aot_sm90.py --json          # one JSON line per config, then the summary line
    PYTHONPATH=/tmp/triton36 python kernels/benchmarks/aot_sm90.py --json   # with the GPU machine's Triton 3.6
                                                            # (pip install --no-deps --target /tmp/triton36 triton==3.6.0)

The last line is {"configs": N, "spilling": S, "wgmma_bf16_configs": W}. Nothing is launched.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiling needs the real backend, not the interpreter
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

MODULES = ("token_projection_triton", "cosine_topk_triton")
SASS_OPS = ("HGMMA", "HMMA", "FFMA", "LDL", "STL")
TARGET = GPUTarget("cuda", 90, 32)
SM90_MAX_SHARED = 232448  # bytes of shared memory one block may use on H100/H200 (227 KB)


def cuobjdump() -> str:
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found at {path} (the Triton wheel bundles it)")
    return str(path)


def inspect_cubin(cubin: bytes) -> dict:
    """Registers, stack/local (spill) bytes, static shared memory and SASS instruction counts of one cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        res = subprocess.run([cuobjdump(), "-res-usage", fh.name], capture_output=True, text=True, check=True)
        sass = subprocess.run([cuobjdump(), "-sass", fh.name], capture_output=True, text=True, check=True)
    usage = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", res.stdout))
    ops = {op.lower(): len(re.findall(rf"\b{op}(?:\.|\s)", sass.stdout)) for op in SASS_OPS}
    return {
        "registers": int(usage.get("REG", 0)),
        "stack_bytes": int(usage.get("STACK", 0)),
        "spill_bytes": int(usage.get("LOCAL", 0)),
        "static_shared_bytes": int(usage.get("SHARED", 0)),
        **ops,
    }


def compile_variant(v: dict) -> dict:
    fn = v["fn"]
    signature = dict(v["signature"]) | {name: "constexpr" for name in v["constexprs"]}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in v["aligned"]}
    src = ASTSource(fn, signature, constexprs=v["constexprs"], attrs=attrs)
    compiled = triton.compile(
        src, target=TARGET, options={"num_warps": v["num_warps"], "num_stages": v["num_stages"]}
    )
    facts = inspect_cubin(compiled.asm["cubin"])
    spills = facts["spill_bytes"] > 0 or facts["stl"] > 0 or facts["ldl"] > 0
    return {
        "kernel": v["kernel"],
        "config": v["config"],
        "dtype": v["dtype"],
        **v["shape"],
        **facts,
        "shared_bytes": int(compiled.metadata.shared),
        "fits_shared": int(compiled.metadata.shared) + facts["static_shared_bytes"] <= SM90_MAX_SHARED,
        "spills": spills,
        "triton": triton.__version__,
    }


def variants() -> list[dict]:
    import importlib

    out = []
    for name in MODULES:
        module = importlib.import_module(f"rapidun_dist.kernels.{name}")
        out += module.aot_variants()
    return out


def summarize(rows: list[dict]) -> dict:
    return {
        "configs": len(rows),
        "spilling": sum(r["spills"] for r in rows),
        "wgmma_bf16_configs": sum(r["dtype"] == "bfloat16" and r["hgmma"] > 0 for r in rows),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON line per config and the summary line")
    ap.add_argument("--kernel", action="append", help="only these kernel names (repeatable)")
    args = ap.parse_args(argv)
    rows = []
    for v in variants():
        if args.kernel and v["kernel"] not in args.kernel:
            continue
        row = compile_variant(v)
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            cfg = " ".join(f"{k}={val}" for k, val in row["config"].items())
            print(
                f"{row['kernel']:<18} {row['dtype']:<9} k={row.get('k_out', row.get('k', '-'))!s:<4} {cfg:<60} "
                f"reg={row['registers']:<4} spill={row['spill_bytes']:<5} smem={row['shared_bytes']:<7} "
                f"hgmma={row['hgmma']:<4} hmma={row['hmma']:<4} ffma={row['ffma']:<5} ldl/stl={row['ldl']}/{row['stl']}",
                flush=True,
            )
    summary = summarize(rows)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    sys.exit(main() is None)
