"""Both Triton kernels address rows with int64 offsets: row x stride passes 2^31 elements in real shapes
(cosine_topk at the Llama-3-8B configs' K = 229,376 from row 9,363 on), where int32 offsets wrap.

A full-size case (9,363+ rows of 229,376 features: 4+ GB, hours in the interpreter) does not fit a CPU test.
Here the rows are views into one large allocation with a row stride just above 2^30 elements, so row 2
starts past 2^31: the pointer arithmetic of the full-size case (with int32 offsets the interpreter reads the
wrong address, here a segfault; a GPU reads garbage or faults), while only the few pages the rows touch are
ever materialised (the allocation is virtual). Each kernel is compared with the float64 reference on fresh
random inputs. The Triton tests run in a subprocess under TRITON_INTERPRET=1 on CPU (a crash fails the test
instead of killing pytest), in this process on CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rapidun_dist.kernels import (
    TokenLayout,
    cosine_topk,
    cosine_topk_reference,
    projected_outer_sums,
    projected_outer_sums_reference,
)

TRITON_READY = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(not TRITON_READY, reason="runs via test_interpreter_run (subprocess)")
STRIDE = 2**30 + 64  # elements between rows: row 2 starts at 2^31 + 128
DTYPES = [torch.float32, torch.bfloat16]


def _far_rows(n_rows: int, width: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """[n_rows, width] random rows STRIDE elements apart in one allocation (virtual but for the rows)."""
    try:
        base = torch.empty(STRIDE * (n_rows - 1) + width, dtype=dtype, device=DEVICE)
    except (RuntimeError, MemoryError) as e:  # a machine without overcommit refuses the address range
        pytest.skip(
            f"cannot reserve {STRIDE * n_rows * dtype.itemsize / 2**30:.0f} GiB of address space: {e}"
        )
    rows = base.as_strided((n_rows, width), (STRIDE, 1))
    rows.copy_(torch.randn(n_rows, width, generator=gen))
    assert rows.stride(0) * (n_rows - 1) >= 2**31
    return rows


def _gen() -> torch.Generator:
    seed = int(os.environ.get("RAPIDUN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"seed = {seed}")
    return torch.Generator().manual_seed(seed)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_cosine_topk_triton_rows_past_2_31(dtype):
    gen = _gen()
    c = _far_rows(3, 64, dtype, gen)
    q = torch.randn(4, 64, generator=gen).to(DEVICE, dtype)
    q[0], q[1] = c[2], c[1]  # the far rows are the best matches of these two
    vals, ids, sums, counts = cosine_topk(q, c, 3, backend="triton")
    rv, ri, rs, rc = cosine_topk_reference(q.double(), c.double(), 3)
    tol = 2e-6 if dtype == torch.float32 else 2e-5  # the reference sees the same rounded inputs
    assert ids[0, 0] == 2 and ids[1, 0] == 1
    assert torch.equal(ids.cpu(), ri.cpu())
    assert (vals.double() - rv).abs().max() <= tol
    assert (sums.double() - rs).abs().max() <= 3 * tol and torch.equal(counts.cpu(), rc.cpu())


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_projected_outer_sums_triton_rows_past_2_31(dtype):
    """g (the layer's gradient rows) and v (the tokens' input projections) both far apart."""
    gen = _gen()
    layout = TokenLayout.from_mask(torch.tensor([[True, True, True]]), DEVICE)
    g = _far_rows(3, 48, dtype, gen)
    v = _far_rows(3, 16, dtype, gen)
    p_out = (torch.randn(16, 48, generator=gen) / 4).to(DEVICE, dtype)
    got = projected_outer_sums(g, v, layout, p_out, backend="triton")
    ref = projected_outer_sums_reference(g.double(), v.double(), layout, p_out.double())
    tol = 2e-3 if dtype == torch.float32 else 8e-3  # tf32 / bf16 rounding of the unit u, v (3 tokens)
    assert got.shape == (1, 16, 16)
    assert (got.double() - ref).abs().max() <= 3 * tol


@pytest.mark.skipif(TRITON_READY, reason="the Triton tests already run in this process")
def test_interpreter_run():
    """This module's Triton tests under TRITON_INTERPRET=1 in a fresh interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "triton", __file__]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"exit {run.returncode}\n" + run.stdout[-6000:] + run.stderr[-3000:]
    assert "4 passed" in run.stdout.splitlines()[-1], run.stdout[-2000:]
