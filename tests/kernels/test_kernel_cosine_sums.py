"""grouped_cosine_sums: the linear identity and the tiled definition against a dense float64 cosine matrix.

Seeds are fresh per run; set RAPIDUN_TEST_SEED to replay one (the failing seed is in the message).
"""

from __future__ import annotations

import os

import pytest
import torch

from rapidun_dist.kernels import grouped_cosine_sums, grouped_cosine_sums_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
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


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_linear_identity_matches_dense_float64(case, dtype):
    seed = _seed()
    q, c, groups = _make(seed, *case, dtype)
    n, m, _, num_groups, self_offset = case
    got = grouped_cosine_sums(q, c, groups, num_groups, self_offset=self_offset)
    assert (
        got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and got.device == q.device
    )
    exact = _dense_float64(q, c, groups, num_groups, self_offset)
    _assert_close(got, exact, m, TOL.get(dtype, 1e-14), seed)
    ref = grouped_cosine_sums_reference(q, c, groups, num_groups, self_offset=self_offset, tile=7)
    _assert_close(got, ref.double().cpu(), m, TOL.get(dtype, 1e-14), seed)


def test_linear_identity_empty_inputs_int32_groups_and_errors():
    q, c, groups = _make(0, 8, 16, 16, 4, None, torch.float32)
    assert grouped_cosine_sums(q[:0], c, groups, 4).shape == (0, 4)
    empty = grouped_cosine_sums(q, c[:0], groups[:0], 4)
    assert empty.shape == (8, 4) and not empty.any()
    torch.testing.assert_close(
        grouped_cosine_sums(q, c, groups.int(), 4), grouped_cosine_sums(q, c, groups, 4)
    )
    with pytest.raises(ValueError, match="integer"):
        grouped_cosine_sums(q, c, groups.float(), 4)
    with pytest.raises(ValueError, match="groups must lie"):
        grouped_cosine_sums(q, c, groups + 4, 4)
