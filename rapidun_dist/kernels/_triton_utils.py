"""Launch helpers shared by the Triton kernels: interpreter detection, dtype checks, dot precision, tuning.

Importing this module imports triton, so only the `*_triton.py` files import it (lazily, from the
dispatchers). `TRITON_INTERPRET=1` must be set before the first `import triton` for CPU runs.
"""

from __future__ import annotations

import os

import torch
import triton

from rapidun_dist.kernels._dispatch import TRITON_DTYPES as SUPPORTED_DTYPES

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def check_float_inputs(kernel: str, **tensors: torch.Tensor) -> torch.dtype:
    """All tensors must share one of fp32/bf16/fp16; fp64 is rejected (the torch reference handles it)."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    first = next(iter(dtypes.values()))
    if first not in SUPPORTED_DTYPES or any(d != first for d in dtypes.values()):
        raise TypeError(
            f"{kernel}: the Triton kernel takes inputs sharing one dtype among {SUPPORTED_DTYPES}; found {dtypes}. "
            "Use backend='torch' for float64 (the reference computes in float64)."
        )
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        raise ValueError(f"{kernel}: all inputs must be on one device; found {sorted(map(str, devices))}")
    return first


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs follow torch's own fp32 matmul rule (`allow_tf32`, default off -> exact "ieee")."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def program_target(device: torch.device) -> int:
    """How many programs keep the device busy: 2 per SM on CUDA, 1 (no splitting) in the interpreter."""
    if device.type != "cuda":
        return 1
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def block_size(n: int, *, lo: int = 16, hi: int = 128) -> int:
    """A power of two covering n, clamped to [lo, hi] (tl.dot needs >= 16, tl.arange a power of two)."""
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def tuned(kernel, configs: list, key: list[str], interp_meta: dict, *, prune=None):
    """(launchable, extra meta): autotuned on GPU (configs pruned per launch by `prune`, the autotuner's
    early_config_prune); one fixed config in the interpreter (autotune breaks there)."""
    if INTERPRETING:
        return kernel, dict(interp_meta)
    prune_by = {"early_config_prune": prune} if prune is not None else None
    return triton.autotune(configs=configs, key=key, prune_configs_by=prune_by)(kernel), {}
