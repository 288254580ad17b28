"""fused_token_projection: reference and Triton kernel against a naive float64 per-token loop.

The Triton tests (names contain "triton") run in this process on CUDA or when TRITON_INTERPRET=1
was set before triton was imported; otherwise `test_interpreter_run` reruns them in a subprocess
with TRITON_INTERPRET=1, so the variable never leaks into other test modules.
Seeds are fresh per run; set RAPIDUN_TEST_SEED to replay one (the failing seed is in the message).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rapidun_dist.kernels import fused_token_projection, fused_token_projection_reference

TRITON_READY = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not TRITON_READY, reason="Triton runs via test_interpreter_run (subprocess)"
)
# max |out - exact| per token of the sample; the exact result uses the same dtype-rounded inputs
TOL = {torch.float32: 2e-5, torch.float16: 5e-5, torch.bfloat16: 5e-5}
DTYPES = list(TOL)
SHAPES = [(48, 64, 8, 16), (97, 48, 32, 8), (64, 97, 16, 32), (33, 20, 17, 5)]  # d_in, d_out, k_in, k_out
LENGTHS = [0, 1, 37, 5, 70, 0]


def _seed() -> int:
    return int(os.environ.get("RAPIDUN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


def _make(seed, d_in, d_out, k_in, k_out, dtype, lengths=LENGTHS, device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    x = torch.randn(n, d_in, generator=gen) * torch.rand(n, 1, generator=gen) * 3
    g = torch.randn(n, d_out, generator=gen)
    if n > 3:
        x[2], g[n - 1] = 0, 0  # zero-norm tokens
    p_in = torch.randint(0, 2, (k_in, d_in), generator=gen) * 2.0 - 1
    p_out = torch.randint(0, 2, (k_out, d_out), generator=gen) * 2.0 - 1
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    cast = lambda t: t.to(dtype).to(device)
    return cast(x), cast(g), offsets.to(device), cast(p_in / k_in**0.5), cast(p_out / k_out**0.5)


def _naive_float64(x, g, offsets, p_in, p_out) -> torch.Tensor:
    """The definition, token by token: sum_t outer(unit(P_out g_t), unit(P_in x_t)) in float64."""
    x, g, p_in, p_out = (t.detach().cpu().double() for t in (x, g, p_in, p_out))
    bounds = offsets.tolist()
    out = torch.zeros(len(bounds) - 1, p_out.shape[0], p_in.shape[0], dtype=torch.float64)
    for b in range(len(bounds) - 1):
        for t in range(bounds[b], bounds[b + 1]):
            u, v = p_out @ g[t], p_in @ x[t]
            if u.norm() > 0 and v.norm() > 0:
                out[b] += torch.outer(u / u.norm(), v / v.norm())
    return out


def _assert_close(got, exact, offsets, tol, seed):
    assert got.shape == exact.shape, f"seed={seed}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    tokens = (offsets[1:] - offsets[:-1]).cpu().clamp_min(1).double()
    err = ((got.cpu().double() - exact).abs().amax(dim=(1, 2)) / tokens).max().item()
    assert err <= tol, f"seed={seed}: max error per token {err:.3g} > {tol:.1g}"


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("shape", SHAPES[:3])
def test_reference_matches_naive_float64(shape, dtype):
    seed = _seed()
    x, g, offsets, p_in, p_out = _make(seed, *shape, dtype, device="cpu")
    got = fused_token_projection_reference(x, g, offsets, p_in, p_out)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _assert_close(got, _naive_float64(x, g, offsets, p_in, p_out), offsets, TOL.get(dtype, 1e-12), seed)


def test_reference_empty_samples_and_zero_tokens():
    seed = _seed()
    x, g, offsets, p_in, p_out = _make(seed, 40, 24, 8, 4, torch.float32, lengths=[0, 4, 0, 3], device="cpu")
    x[1] = 0  # sample 1, token 1
    out = fused_token_projection_reference(x, g, offsets, p_in, p_out)
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(out[2], torch.zeros_like(out[2]))
    keep = torch.tensor([0, 2, 3])
    alone = fused_token_projection_reference(x[keep], g[keep], torch.tensor([0, 3]), p_in, p_out)
    torch.testing.assert_close(out[1], alone[0], msg=f"seed={seed}")
    with pytest.raises(ValueError, match="offsets"):
        fused_token_projection_reference(x, g, torch.tensor([0, 3, 2, 7]), p_in, p_out)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_naive_float64(shape, dtype):
    seed = _seed()
    x, g, offsets, p_in, p_out = _make(seed, *shape, dtype)
    got = fused_token_projection(x, g, offsets, p_in, p_out, backend="triton")
    assert got.dtype == torch.float32 and got.device == x.device
    exact = _naive_float64(x, g, offsets, p_in, p_out)
    _assert_close(got, exact, offsets, TOL[dtype], seed)
    ref = fused_token_projection(x, g, offsets, p_in, p_out, backend="torch")
    _assert_close(ref, exact, offsets, TOL[dtype], seed)


@needs_triton
def test_triton_fp32_projection_with_bf16_tokens():
    """P stays fp32 in the reference but is rounded to the token dtype for the kernel's dot."""
    seed = _seed()
    x, g, offsets, p_in, p_out = _make(seed, 64, 48, 16, 8, torch.bfloat16)
    p_in, p_out = p_in.float() * 1.001, p_out.float() * 0.999
    got = fused_token_projection(x, g, offsets, p_in, p_out, backend="triton")
    _assert_close(got, _naive_float64(x, g, offsets, p_in, p_out), offsets, 2e-2, seed)


@needs_triton
def test_triton_tiled_k_and_token_splits(monkeypatch):
    """k_in > 128 tiles k (norms from the pre-pass); a larger program target splits long samples."""
    import rapidun_dist.kernels.token_projection_triton as tpt

    seed = _seed()
    monkeypatch.setattr(tpt, "program_target", lambda device: 64)
    x, g, offsets, p_in, p_out = _make(seed, 40, 24, 130, 8, torch.float32, lengths=[300, 0, 5])
    assert tpt._token_splits(3, 300, x.device)[0] == 3
    got = tpt.fused_token_projection_triton(x, g, offsets.int(), p_in, p_out)
    _assert_close(got, _naive_float64(x, g, offsets, p_in, p_out), offsets, TOL[torch.float32], seed)


@needs_triton
def test_triton_strided_inputs_and_no_samples():
    seed = _seed()
    x, g, offsets, p_in, p_out = _make(seed, 48, 32, 16, 16, torch.float32)
    x_strided = torch.stack([x, x], dim=2).reshape(x.shape[0], -1)[:, ::2]  # same values, column stride 2
    got = fused_token_projection(x_strided, g, offsets, p_in, p_out, backend="triton")
    _assert_close(got, _naive_float64(x, g, offsets, p_in, p_out), offsets, TOL[torch.float32], seed)
    none = fused_token_projection(x[:0], g[:0], offsets[:1], p_in, p_out, backend="triton")
    assert none.shape == (0, 16, 16)


@needs_triton
def test_triton_rejects_float64_and_mixed_dtypes():
    x, g, offsets, p_in, p_out = _make(0, 16, 16, 16, 16, torch.float64)
    with pytest.raises(TypeError, match="float64"):
        fused_token_projection(x, g, offsets, p_in, p_out, backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        fused_token_projection(x.float(), g.half(), offsets, p_in, p_out, backend="triton")


@pytest.mark.skipif(TRITON_READY, reason="Triton tests already run in this process")
def test_interpreter_run():
    """Run this module's Triton tests under TRITON_INTERPRET=1 in a fresh interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "triton", __file__]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]
