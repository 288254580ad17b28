"""cosine_topk: the reference and the Triton kernel (every config) against a dense float64 cosine matrix.

The Triton tests (names contain "triton") run in this process on CUDA or when TRITON_INTERPRET=1 was set
before triton was imported; otherwise `test_interpreter_run` reruns them in a subprocess with
TRITON_INTERPRET=1, so the variable never leaks into other test modules.
Seeds are fresh per run; set RAPIDUN_TEST_SEED to replay one (the failing seed is in the message).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rapidun_dist.kernels import cosine_topk, cosine_topk_reference

TRITON_READY = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not TRITON_READY, reason="Triton runs via test_interpreter_run (subprocess)"
)
TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-5, torch.float16: 2e-5, torch.float64: 1e-12}
# n, m, K, k, ids (self pairs excluded by id)
CASES = [(37, 50, 97, 5, True), (64, 128, 64, 16, False), (20, 9, 33, 16, True), (10, 300, 40, 64, True)]


def _seed() -> int:
    return int(os.environ.get("RAPIDUN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


def _make(seed, n, m, K, with_ids, dtype, device=DEVICE):
    """Columns with a zero column and exact duplicates (ties); rows partly copies of columns (self pairs)."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(m, K, generator=gen) * torch.rand(m, 1, generator=gen) * 3
    if m > 4:
        c[m // 2] = 0
        c[m - 1], c[1] = c[0], c[0]  # three identical columns: exact ties
    q = torch.randn(n, K, generator=gen)
    q[: min(n, m) // 2] = c[: min(n, m) // 2] * 2  # rows that meet themselves (and their duplicates)
    q[n // 3] = 0
    q_ids = c_ids = None
    if with_ids:
        c_ids = torch.randperm(m + 5, generator=gen)[:m] + 100  # unsorted ids: ties break by id, not position
        q_ids = c_ids[torch.arange(n) % m].clone()
        q_ids[min(n, m) // 2 :] += 1000  # later rows have no self column
        q_ids, c_ids = q_ids.to(device), c_ids.to(device)
    return q.to(dtype).to(device), c.to(dtype).to(device), q_ids, c_ids


def _dense(q, c, q_ids, c_ids):
    """(cosines [n, m] float64 of the dtype-rounded inputs, valid [n, m], column ids [m])."""
    q, c = q.detach().cpu().double(), c.detach().cpu().double()
    unit = lambda z: z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos = unit(q) @ unit(c).T
    ids = c_ids.cpu() if c_ids is not None else torch.arange(c.shape[0])
    valid = torch.ones_like(cos, dtype=torch.bool)
    if q_ids is not None and c_ids is not None:
        valid = q_ids.cpu()[:, None] != ids[None, :]
    return cos, valid, ids


def _check(out, q, c, k, q_ids, c_ids, tol, seed):
    """Counts exact; sums and values within tol; pads where fewer than k are valid; a true top-k; equal
    returned values ordered by id; the float64 order wherever the exact values are more than 2 tol apart."""
    vals, ids, sums, counts = (t.cpu() for t in out)
    cos, valid, col_ids = _dense(q, c, q_ids, c_ids)
    msg = f"seed={seed}"
    assert vals.shape == ids.shape == (q.shape[0], k) and ids.dtype == torch.long, msg
    assert torch.equal(counts, valid.sum(1)), msg
    exact_sums = torch.where(valid, cos, 0.0).sum(1)
    torch.testing.assert_close(sums.double(), exact_sums, atol=tol * c.shape[0], rtol=0, msg=msg)
    pos_of = {int(i): j for j, i in enumerate(col_ids)}
    for i in range(q.shape[0]):
        take = min(k, int(valid[i].sum()))
        assert torch.equal(ids[i, take:], torch.full((k - take,), -1)), msg
        assert bool((vals[i, take:] == float("-inf")).all()), msg
        cols = [pos_of[int(x)] for x in ids[i, :take]]
        assert len(set(cols)) == take and all(bool(valid[i, j]) for j in cols), msg
        torch.testing.assert_close(vals[i, :take].double(), cos[i, cols], atol=tol, rtol=0, msg=msg)
        v, d = vals[i, :take], ids[i, :take]
        assert bool((v[:-1] >= v[1:]).all()) and bool((d[:-1] < d[1:])[v[:-1] == v[1:]].all()), msg
        ranked = sorted((-float(cos[i, j]), int(col_ids[j])) for j in range(c.shape[0]) if valid[i, j])
        want, all_v = ranked[:take], [-x for x, _ in ranked]
        want_v = all_v[:take]
        if take:
            assert float(cos[i, cols].min()) >= want_v[-1] - 2 * tol, msg
        for j, (_, cid) in enumerate(want):  # neighbours include the first row outside the top-k (a near-tie
            gaps = [all_v[j - 1] - all_v[j]] if j else []  # across the cut may go either way)
            gaps += [all_v[j] - all_v[j + 1]] if j + 1 < len(all_v) else []
            if all(g > 2 * tol for g in gaps):
                assert int(ids[i, j]) == cid, f"{msg}: row {i} rank {j}: id {int(ids[i, j])} != {cid}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES)
def test_reference_matches_dense_float64(case, dtype):
    seed = _seed()
    n, m, K, k, with_ids = case
    q, c, q_ids, c_ids = _make(seed, n, m, K, with_ids, dtype, device="cpu")
    out = cosine_topk_reference(q, c, k, q_ids=q_ids, c_ids=c_ids, tile=7)
    assert out[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _check(out, q, c, k, q_ids, c_ids, TOL[dtype] * 10, seed)


def test_exact_ties_go_to_the_smaller_id():
    # The tied rows are exact in floating point whatever the BLAS: four entries of +-1 have norm 2, so every unit
    # entry is +-0.5 or 0 and every cosine among them is exactly 1 in any summation order. (Copies of one random
    # row are not enough: a GEMV may sum its last columns in another order and break the tie by an ulp.)
    c = torch.randn(6, 8, dtype=torch.float64)
    signs = torch.where(torch.rand(4) < 0.5, -1.0, 1.0).double()
    c[0] = 0.0
    c[0, torch.randperm(8)[:4]] = signs
    c[4], c[2] = c[0], c[0]
    c_ids = torch.tensor([50, 10, 30, 20, 40, 60])
    vals, ids, _, counts = cosine_topk(c[:1] * 3, c, 3, q_ids=torch.tensor([7]), c_ids=c_ids)
    assert ids[0].tolist() == [30, 40, 50] and torch.allclose(vals[0], torch.ones(3, dtype=torch.float64))
    assert counts.tolist() == [6]
    _, ids_self, _, counts_self = cosine_topk(c[:1], c, 3, q_ids=torch.tensor([30]), c_ids=c_ids)
    assert ids_self[0].tolist() == [40, 50, int(ids_self[0, 2])] and counts_self.tolist() == [5]


def _configs(dtype):
    import rapidun_dist.kernels.cosine_topk_triton as ctt

    name = str(dtype).removeprefix("torch.")
    return [
        dict(zip(("BLOCK_N", "BLOCK_M", "BLOCK_K", "num_warps", "num_stages"), c, strict=True))
        for c in ctt.configs_for(name)
    ]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_every_config_matches_dense_float64(dtype):
    import rapidun_dist.kernels.cosine_topk_triton as ctt

    seed = _seed()
    for meta in _configs(dtype):
        for n, m, K, k, with_ids in CASES[:2]:  # the interpreter pays ~3 ms per jit call: small cases here
            q, c, q_ids, c_ids = _make(seed, n, m, K, with_ids, dtype)
            out = ctt.cosine_topk_triton(q, c, k, q_ids=q_ids, c_ids=c_ids, meta=meta)
            assert out[0].dtype == torch.float32 and out[0].device == q.device
            _check(out, q, c, k, q_ids, c_ids, TOL[dtype], f"{seed} {meta} {(n, m, K, k)}")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_dispatch_k_above_the_valid_count_and_column_splits(dtype, monkeypatch):
    import rapidun_dist.kernels.cosine_topk_triton as ctt

    seed = _seed()
    n, m, K, k, _ = CASES[2]
    q, c, q_ids, c_ids = _make(seed, n, m, K, True, dtype)
    _check(
        cosine_topk(q, c, k, q_ids=q_ids, c_ids=c_ids, backend="triton"),
        q,
        c,
        k,
        q_ids,
        c_ids,
        TOL[dtype],
        seed,
    )
    monkeypatch.setattr(ctt, "program_target", lambda device: 16)
    q, c, q_ids, c_ids = _make(seed, 30, 700, 24, True, dtype)
    assert ctt._splits(1, 700, 64, q.device)[1] > 1
    _check(
        ctt.cosine_topk_triton(q, c, 20, q_ids=q_ids, c_ids=c_ids), q, c, 20, q_ids, c_ids, TOL[dtype], seed
    )


@needs_triton
def test_triton_rejects_float64_large_k_and_handles_empty_inputs():
    q, c, _, _ = _make(0, 8, 16, 16, False, torch.float32)
    with pytest.raises(TypeError, match="float64"):
        cosine_topk(q.double(), c.double(), 4, backend="triton")
    with pytest.raises(ValueError, match="k <= 64"):
        cosine_topk(q, c, 65, backend="triton")
    vals, ids, sums, counts = cosine_topk(q[:0], c, 4, backend="triton")
    assert vals.shape == (0, 4) and sums.shape == (0,)
    vals, ids, sums, counts = cosine_topk(q, c[:0], 4, backend="triton")
    assert bool((ids == -1).all()) and not sums.any() and not counts.any()


@pytest.mark.skipif(TRITON_READY, reason="Triton tests already run in this process")
def test_interpreter_run():
    """Run this module's Triton tests under TRITON_INTERPRET=1 in a fresh interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "triton", __file__]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]
