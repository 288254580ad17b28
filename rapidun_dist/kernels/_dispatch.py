"""Backend selection shared by every kernel: "triton", "torch" (reference) or "auto"."""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; found {backend!r}")


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(backend: str, tensor: torch.Tensor) -> bool:
    """auto -> Triton on CUDA fp32/bf16/fp16 tensors, the reference otherwise (CPU, float64).

    "triton" on CPU needs TRITON_INTERPRET=1 (set before triton is imported).
    """
    if backend == "torch":
        return False
    if backend == "auto":
        return tensor.is_cuda and tensor.dtype in TRITON_DTYPES
    if not tensor.is_cuda and not triton_interpreting():
        raise RuntimeError(
            "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
        )
    return True


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def debug_checks() -> bool:
    """RAPIDUN_KERNEL_DEBUG=1: validate index inputs fully (device-to-host syncs; off by default so the
    launches can be captured in a CUDA graph)."""
    return os.environ.get("RAPIDUN_KERNEL_DEBUG") == "1"
