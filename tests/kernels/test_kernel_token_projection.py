"""Token projection at hook time: the reference and the Triton kernel (every config) against a naive
float64 per-token loop.

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

from rapidun_dist.kernels import (
    TokenLayout,
    fused_token_projection,
    fused_token_projection_reference,
    projected_outer_sums,
    projected_outer_sums_reference,
    unit_projection,
)

TRITON_READY = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not TRITON_READY, reason="Triton runs via test_interpreter_run (subprocess)"
)
# max |out - exact| per token of the sample; the exact result uses the same dtype-rounded inputs. The kernel
# rounds the unit u, v to the dot dtype (bf16: 8 bits, fp16: 11 bits; fp32: tf32 on a GPU, exact in the
# interpreter), the reference keeps them in fp32.
KERNEL_TOL = {
    torch.float32: 2e-3 if torch.cuda.is_available() else 2e-5,
    torch.bfloat16: 8e-3,
    torch.float16: 1e-3,
}
REF_TOL = {torch.float32: 2e-5, torch.bfloat16: 5e-5, torch.float16: 5e-5, torch.float64: 1e-12}
SHAPES = [
    (48, 64, 8, 16),
    (97, 48, 32, 8),
    (64, 97, 16, 32),
    (33, 20, 17, 5),
    (40, 72, 128, 100),
]  # d_in, d_out, k_in, k_out
LENGTHS = [0, 1, 37, 5, 70, 0]


def _seed() -> int:
    return int(os.environ.get("RAPIDUN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


def _make(seed, d_in, d_out, k_in, k_out, dtype, lengths=LENGTHS, device=DEVICE, stray=7):
    """A padded batch: sample b tracks lengths[b] rows, scattered among `stray` untracked rows per sample."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths, default=0) + stray
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, torch.randperm(width, generator=gen)[:n]] = True
    rows = mask.numel()
    x = torch.randn(rows, d_in, generator=gen) * torch.rand(rows, 1, generator=gen) * 3
    g = torch.randn(rows, d_out, generator=gen)
    tracked = mask.flatten().nonzero().squeeze(1)
    if tracked.numel() > 3:
        x[tracked[2]], g[tracked[-1]] = 0, 0  # zero-norm tokens
    p_in = (torch.randint(0, 2, (k_in, d_in), generator=gen) * 2.0 - 1) / k_in**0.5
    p_out = (torch.randint(0, 2, (k_out, d_out), generator=gen) * 2.0 - 1) / k_out**0.5
    cast = lambda t: t.to(dtype).to(device)
    return cast(x), cast(g), TokenLayout.from_mask(mask, device), cast(p_in), cast(p_out)


def _naive_float64(x, g, layout, p_in, p_out) -> torch.Tensor:
    """The definition, token by token: sum over tracked rows of outer(unit(P_out g_t), unit(P_in x_t))."""
    x, g, p_in, p_out = (t.detach().cpu().double() for t in (x, g, p_in, p_out))
    out = torch.zeros(layout.n_samples, p_out.shape[0], p_in.shape[0], dtype=torch.float64)
    for row, b in zip(layout.rows.tolist(), layout.sample.tolist(), strict=True):
        u, v = p_out @ g[row], p_in @ x[row]
        if u.norm() > 0 and v.norm() > 0:
            out[b] += torch.outer(u / u.norm(), v / v.norm())
    return out


def _assert_close(got, exact, layout, tol, seed):
    assert got.shape == exact.shape, f"seed={seed}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    tokens = (layout.offsets[1:] - layout.offsets[:-1]).cpu().clamp_min(1).double()
    err = ((got.cpu().double() - exact).abs().amax(dim=(1, 2)) / tokens).max().item()
    assert err <= tol, f"seed={seed}: max error per token {err:.3g} > {tol:.1g}"


def test_layout_from_mask_and_offsets():
    mask = torch.tensor(
        [[False, True, True, False], [False, False, False, False], [True, False, False, True]]
    )
    lay = TokenLayout.from_mask(mask)
    assert lay.rows.tolist() == [1, 2, 8, 11] and lay.sample.tolist() == [0, 0, 2, 2]
    assert lay.pos.tolist() == [0, 1, 0, 1] and lay.offsets.tolist() == [0, 2, 2, 4]
    assert (lay.n_tokens, lay.n_samples, lay.max_count, lay.n_rows) == (4, 3, 2, 12)
    off = TokenLayout.from_offsets(torch.tensor([0, 3, 3, 5]))
    assert off.rows.tolist() == list(range(5)) and off.sample.tolist() == [0, 0, 0, 2, 2]
    with pytest.raises(ValueError, match="non-decreasing"):
        TokenLayout.from_offsets(torch.tensor([0, 3, 2]))


@pytest.mark.parametrize("dtype", list(REF_TOL))
@pytest.mark.parametrize("shape", SHAPES[:3])
def test_reference_matches_naive_float64(shape, dtype):
    seed = _seed()
    x, g, layout, p_in, p_out = _make(seed, *shape, dtype, device="cpu")
    v = unit_projection(x, p_in, layout.rows)
    got = projected_outer_sums_reference(g, v, layout, p_out)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    _assert_close(got, _naive_float64(x, g, layout, p_in, p_out), layout, REF_TOL[dtype], seed)


def test_token_major_form_and_errors():
    seed = _seed()
    x, g, layout, p_in, p_out = _make(
        seed, 40, 24, 8, 4, torch.float64, lengths=[0, 4, 0, 3], device="cpu", stray=0
    )
    xs, gs = x[layout.rows], g[layout.rows]
    got = fused_token_projection_reference(xs, gs, layout.offsets, p_in, p_out)
    _assert_close(got, _naive_float64(x, g, layout, p_in, p_out), layout, 1e-12, seed)
    assert not got[0].any() and not got[2].any()
    assert torch.equal(fused_token_projection(xs, gs, layout.offsets, p_in, p_out), got)
    with pytest.raises(ValueError, match="non-decreasing"):
        fused_token_projection_reference(xs, gs, torch.tensor([0, 3, 2, 7]), p_in, p_out)
    with pytest.raises(ValueError, match="layout expects"):
        projected_outer_sums_reference(g[:-1], xs @ p_in.T, layout, p_out)


def test_debug_mode_validates_the_layout(monkeypatch):
    x, g, layout, p_in, p_out = _make(0, 16, 16, 4, 4, torch.float32, device="cpu")
    bad = TokenLayout(**{**layout.__dict__, "sample": layout.sample.flip(0)})
    v = unit_projection(x, p_in, layout.rows)
    projected_outer_sums_reference(g, v, bad, p_out)  # no sync-heavy checks by default
    monkeypatch.setenv("RAPIDUN_KERNEL_DEBUG", "1")
    with pytest.raises(ValueError, match="inconsistent TokenLayout"):
        projected_outer_sums_reference(g, v, bad, p_out)


def _configs(dtype, k_out, k_in):
    import rapidun_dist.kernels.token_projection_triton as tpt

    meta = tpt.launch_meta(dtype, k_out, k_in)
    entries = tpt.configs_for(tpt.dtype_name(dtype), meta["BLOCK_KO"], meta["BLOCK_KI"])
    return [dict(zip(("BLOCK_T", "BLOCK_D", "num_warps", "num_stages"), c, strict=True)) for c in entries]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[4]])
def test_triton_every_config_matches_naive_float64(shape, dtype):
    import rapidun_dist.kernels.token_projection_triton as tpt

    seed = _seed()
    x, g, layout, p_in, p_out = _make(seed, *shape, dtype)
    v = unit_projection(x, p_in, layout.rows).to(dtype)
    exact = _naive_float64(x, g, layout, p_in, p_out)
    for meta in _configs(dtype, p_out.shape[0], p_in.shape[0]):
        got = tpt.projected_outer_sums_triton(g, v, layout, p_out, meta=meta)
        assert got.dtype == torch.float32 and got.device == g.device
        _assert_close(got, exact, layout, KERNEL_TOL[dtype], f"{seed} {meta}")


@needs_triton
@pytest.mark.parametrize("dtype", list(KERNEL_TOL))
@pytest.mark.parametrize("shape", SHAPES[:4])
def test_triton_dispatch_matches_naive_float64(shape, dtype):
    seed = _seed()
    x, g, layout, p_in, p_out = _make(seed, *shape, dtype)
    v = unit_projection(x, p_in, layout.rows).to(dtype)
    exact = _naive_float64(x, g, layout, p_in, p_out)
    _assert_close(
        projected_outer_sums(g, v, layout, p_out, backend="triton"), exact, layout, KERNEL_TOL[dtype], seed
    )
    xs, gs = x[layout.rows], g[layout.rows]
    tok = fused_token_projection(xs, gs, layout.offsets, p_in, p_out, backend="triton")
    _assert_close(tok, exact, layout, KERNEL_TOL[dtype], seed)


@needs_triton
@pytest.mark.parametrize("granule,target", [(16, 7), (32, 100), (64, 3)])
def test_triton_equal_chunks_across_sample_boundaries(granule, target, monkeypatch):
    """Chunks cut samples anywhere (inside, at their ends, several chunks per sample): edges sum exactly."""
    import rapidun_dist.kernels.token_projection_triton as tpt

    seed = _seed()
    monkeypatch.setattr(tpt, "program_target", lambda device: target)
    monkeypatch.setattr(tpt, "CHUNK_GRANULE", granule)
    lengths = [130, 0, 16, 1, 47, 0, 200, 32]
    x, g, layout, p_in, p_out = _make(seed, 40, 24, 16, 8, torch.float32, lengths=lengths)
    chunk, chunks = tpt.chunking(layout.n_tokens, g.device)
    assert chunks > 1 and chunk % granule == 0
    v = unit_projection(x, p_in, layout.rows)
    got = tpt.projected_outer_sums_triton(g, v, layout, p_out)
    _assert_close(got, _naive_float64(x, g, layout, p_in, p_out), layout, KERNEL_TOL[torch.float32], seed)


@needs_triton
def test_triton_strided_inputs_no_tokens_and_errors():
    seed = _seed()
    x, g, layout, p_in, p_out = _make(seed, 48, 32, 16, 16, torch.float32)
    v = unit_projection(x, p_in, layout.rows)
    g_strided = torch.stack([g, g], dim=2).reshape(g.shape[0], -1)[:, ::2]  # same values, column stride 2
    got = projected_outer_sums(g_strided, v, layout, p_out, backend="triton")
    _assert_close(got, _naive_float64(x, g, layout, p_in, p_out), layout, KERNEL_TOL[torch.float32], seed)
    empty = TokenLayout.from_mask(torch.zeros(3, 4, dtype=torch.bool), g.device)
    none = projected_outer_sums(g[:12], v[:0], empty, p_out, backend="triton")
    assert none.shape == (3, 16, 16) and not none.any()
    with pytest.raises(TypeError, match="float64"):
        projected_outer_sums(g.double(), v.double(), layout, p_out.double(), backend="triton")
    with pytest.raises(ValueError, match="k_out, k_in <= 128"):
        projected_outer_sums(g, v, layout, torch.randn(129, 32, device=g.device), backend="triton")


@pytest.mark.skipif(TRITON_READY, reason="Triton tests already run in this process")
def test_interpreter_run():
    """Run this module's Triton tests under TRITON_INTERPRET=1 in a fresh interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "triton", __file__]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout.splitlines()[-1], run.stdout[-2000:]
