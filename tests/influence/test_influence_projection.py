"""Kronecker-factored Rademacher projections: determinism by (seed, name), E[P^T P] = I, unbiased inner products."""

from __future__ import annotations

import pytest
import torch

from rapidun_dist.influence.projection import layer_projections, rademacher


def test_same_seed_and_name_give_the_same_matrices():
    a = layer_projections("model.layers.0.mlp.up_proj", 24, 40, k_in=8, k_out=6, seed=3)
    b = layer_projections("model.layers.0.mlp.up_proj", 24, 40, k_in=8, k_out=6, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (8, 24) and a[1].shape == (6, 40)


def test_different_name_seed_or_side_give_different_matrices():
    base = rademacher(8, 32, 3, "layers.0.q_proj", "in")
    assert not torch.equal(base, rademacher(8, 32, 3, "layers.1.q_proj", "in"))
    assert not torch.equal(base, rademacher(8, 32, 4, "layers.0.q_proj", "in"))
    assert not torch.equal(base, rademacher(8, 32, 3, "layers.0.q_proj", "out"))


def test_entries_are_scaled_signs_and_follow_dtype():
    p = rademacher(16, 20, 0, "x", "in", dtype=torch.float64)
    assert p.dtype == torch.float64
    assert torch.equal(p.abs(), torch.full_like(p, 16**-0.5))
    assert 0.3 < float((p > 0).double().mean()) < 0.7


def test_expected_gram_is_identity():
    k, d, n = 16, 24, 400
    mean = (
        sum(
            rademacher(k, d, s, "layer", "in", dtype=torch.float64).T
            @ rademacher(k, d, s, "layer", "in", dtype=torch.float64)
            for s in range(n)
        )
        / n
    )
    torch.testing.assert_close(mean.diagonal(), torch.ones(d, dtype=torch.float64))  # exact per draw
    off = mean - torch.diag(mean.diagonal())
    assert float(off.abs().max()) < 0.08  # std of each entry: 1 / sqrt(k n) = 0.0125


def test_projected_inner_product_is_unbiased_for_frobenius():
    gen = torch.Generator().manual_seed(0)
    d_in, d_out, k_in, k_out, n = 10, 7, 4, 3, 3000
    x = torch.randn(2, d_in, generator=gen, dtype=torch.float64)
    g = torch.randn(2, d_out, generator=gen, dtype=torch.float64)
    exact = float((torch.outer(g[0], x[0]) * torch.outer(g[1], x[1])).sum())
    est = []
    for s in range(n):
        p_in, p_out = layer_projections(
            f"l{s}", d_in, d_out, k_in=k_in, k_out=k_out, seed=1, dtype=torch.float64
        )
        phi = [torch.outer(p_out @ g[i], p_in @ x[i]).flatten() for i in range(2)]
        est.append(float(phi[0] @ phi[1]))
    est = torch.tensor(est, dtype=torch.float64)
    stderr = float(est.std()) / n**0.5
    assert abs(float(est.mean()) - exact) < 4 * stderr + 1e-9
    assert float(est.std()) > 0  # it is a random estimate, not the exact value


def test_bank_stacks_a_groups_p_in_and_casts_once_per_dtype():
    from rapidun_dist.influence.projection import ProjectionBank

    names = ["l.q_proj", "l.k_proj", "l.o_proj"]
    mats = {n: layer_projections(n, 12, 6 + i, k_in=4 + i, k_out=3, seed=1) for i, n in enumerate(names)}
    bank = ProjectionBank(mats, [names[:2], names[2:]])
    stacked, sizes = bank.p_in_stacked(0, torch.float64)
    assert sizes == [4, 5] and stacked.dtype == torch.float64
    assert torch.equal(stacked, torch.cat([mats["l.q_proj"][0], mats["l.k_proj"][0]]).double())
    assert bank.p_in_stacked(0, torch.float64)[0] is stacked  # cached, not re-cast
    assert bank.p_out("l.o_proj", torch.bfloat16) is bank.p_out("l.o_proj", torch.bfloat16)
    assert torch.equal(bank.p_out("l.o_proj", torch.float32), mats["l.o_proj"][1])
    with pytest.raises(ValueError, match="l.v_proj"):
        ProjectionBank(mats, [["l.v_proj"]])
