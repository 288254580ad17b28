"""grouped_cosine_sums: reference and Triton kernel against a dense float64 cosine matrix.

The Triton tests (names contain "triton") run in this process on CUDA or when TRITON_INTERPRET=1
was set before triton was imported; otherwise `test_interpreter_run` reruns them in a subprocess.
Seeds are fresh per run; set RAPIDUN_TEST_SEED to replay one (the failing seed is in the message).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rapidun_dist.kernels import grouped_cosine_sums, grouped_cosine_sums_reference

TRITON_READY = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not TRITON_READY, reason="Triton runs via test_interpreter_run (subprocess)"
)
# max |out - exact| per summed column; the exact result uses the same dtype-rounded inputs
TOL = {torch.float32: 1e-6, torch.float16: 5e-6, torch.bfloat16: 5e-6}
DTYPES = list(TOL)
# n, m, K, num_groups, self_offset
CASES = [
    (37, 50, 97, 3, None),
    (20, 64, 64, 5, 7),
    (16, 33, 48, 1, 0),
    (30, 300, 32, 150, 0),
    (9, 40, 16, 70, None),
]


def _seed() -> int:
    return int(os.environ.get("RAPIDUN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


def _make(seed, n, m, K, num_groups, self_offset, dtype, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(m, K, generator=gen) * torch.rand(m, 1, generator=gen) * 4
    c[m // 2] = 0  # a zero column
    q = (
        c[self_offset : self_offset + n].clone()
        if self_offset is not None
        else torch.randn(n, K, generator=gen)
    )
    q[n // 3] = 0  # a zero row
    groups = torch.randint(0, num_groups, (m,), generator=gen)
    return q.to(dtype).to(device), c.to(dtype).to(device), groups.to(device)


def _dense_float64(q, c, groups, num_groups, self_offset) -> torch.Tensor:
    """The definition: the full cosine matrix in float64, self pairs zeroed, summed per group."""
    q, c = q.detach().cpu().double(), c.detach().cpu().double()
    qn = q / q.norm(dim=1, keepdim=True).where(q.norm(dim=1, keepdim=True) > 0, torch.tensor(1.0).double())
    cn = c / c.norm(dim=1, keepdim=True).where(c.norm(dim=1, keepdim=True) > 0, torch.tensor(1.0).double())
    cos = qn @ cn.T
    if self_offset is not None:
        rows = torch.arange(q.shape[0])
        keep = (rows + self_offset >= 0) & (rows + self_offset < c.shape[0])
        cos[rows[keep], rows[keep] + self_offset] = 0
    out = torch.zeros(q.shape[0], num_groups, dtype=torch.float64)
    return out.index_add_(1, groups.cpu(), cos)


def _assert_close(got, exact, m, tol, seed):
    assert got.shape == exact.shape, f"seed={seed}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    err = (got.cpu().double() - exact).abs().max().item() / max(m, 1)
    assert err <= tol, f"seed={seed}: max error per column {err:.3g} > {tol:.1g}"


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("case", CASES[:3])
def test_reference_matches_dense_float64(case, dtype):
    seed = _seed()
    q, c, groups = _make(seed, *case, dtype, device="cpu")
    n, m, _, num_groups, self_offset = case
    got = grouped_cosine_sums_reference(q, c, groups, num_groups, self_offset=self_offset, tile=16)
    exact = _dense_float64(q, c, groups, num_groups, self_offset)
    _assert_close(got, exact, m, TOL.get(dtype, 1e-14), seed)


def test_reference_self_offset_and_row_sums():
    """Without groups the row sums of cosines with a unit row are known: self pair gives exactly 1."""
    seed = _seed()
    q, c, _ = _make(seed, 12, 12, 24, 1, 0, torch.float64, device="cpu")
    ones = torch.zeros(12, dtype=torch.long)
    full = grouped_cosine_sums_reference(q, c, ones, 1)
    without = grouped_cosine_sums_reference(q, c, ones, 1, self_offset=0)
    nonzero = (q.norm(dim=1) > 0).double()
    torch.testing.assert_close(full[:, 0] - without[:, 0], nonzero, msg=f"seed={seed}")
    with pytest.raises(ValueError, match="groups"):
        grouped_cosine_sums_reference(q, c, ones + 1, 1)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_dense_float64(case, dtype):
    seed = _seed()
    q, c, groups = _make(seed, *case, dtype)
    n, m, _, num_groups, self_offset = case
    got = grouped_cosine_sums(q, c, groups, num_groups, self_offset=self_offset, backend="triton")
    assert got.dtype == torch.float32 and got.device == q.device
    exact = _dense_float64(q, c, groups, num_groups, self_offset)
    _assert_close(got, exact, m, TOL[dtype], seed)
    ref = grouped_cosine_sums(q, c, groups, num_groups, self_offset=self_offset, backend="torch")
    _assert_close(ref, exact, m, TOL[dtype], seed)


@needs_triton
def test_triton_column_splits_and_int32_groups(monkeypatch):
    import rapidun_dist.kernels.cosine_sums_triton as cst

    seed = _seed()
    monkeypatch.setattr(cst, "program_target", lambda device: 16)
    q, c, groups = _make(seed, 10, 700, 16, 90, 3, torch.float32)
    assert cst._column_splits(1, 2, 400, q.device)[0] == 2
    got = cst.grouped_cosine_sums_triton(q, c, groups.int(), 90, self_offset=3)
    _assert_close(got, _dense_float64(q, c, groups, 90, 3), 700, TOL[torch.float32], seed)


@needs_triton
def test_triton_empty_inputs_and_errors():
    q, c, groups = _make(0, 8, 16, 16, 4, None, torch.float32)
    assert grouped_cosine_sums(q[:0], c, groups, 4, backend="triton").shape == (0, 4)
    empty = grouped_cosine_sums(q, c[:0], groups[:0], 4, backend="triton")
    assert empty.shape == (8, 4) and not empty.any()
    with pytest.raises(TypeError, match="float64"):
        grouped_cosine_sums(q.double(), c.double(), groups, 4, backend="triton")
    with pytest.raises(TypeError, match="integer"):
        grouped_cosine_sums(q, c, groups.float(), 4, backend="triton")


@pytest.mark.skipif(TRITON_READY, reason="Triton tests already run in this process")
def test_interpreter_run():
    """Run this module's Triton tests under TRITON_INTERPRET=1 in a fresh interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "triton", __file__]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]
