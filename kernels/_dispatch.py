"""Backend selection shared by every kernel: "triton", "torch" (reference) or "auto"."""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; found {backend!r}")


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(backend: str, tensor: torch.Tensor) -> bool:
    """auto -> Triton on CUDA tensors, the reference otherwise. "triton" on CPU needs TRITON_INTERPRET=1."""
    if backend == "torch":
        return False
    if backend == "auto":
        return tensor.is_cuda
    if not tensor.is_cuda and not triton_interpreting():
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
    return True


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32
