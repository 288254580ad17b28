"""rapidun_dist/losses.py against naive loops and closed forms, on fresh random inputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rapidun_dist.data.prompt import IGNORE_INDEX
from rapidun_dist.losses import (
    bounded_ascent,
    per_sample_ce,
    per_sample_nll,
    unlearning_sample_losses,
    weighted_batch_loss,
)


def _batch(gen, B=5, T=9, V=13):
    logits = torch.randn(B, T, V, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=gen)
    for b in range(B):  # a prompt of random length, then answer tokens, then right padding
        p = int(torch.randint(1, T - 1, (1,), generator=gen))
        pad = int(torch.randint(0, T - p, (1,), generator=gen))
        labels[b, :p] = IGNORE_INDEX
        if pad:
            labels[b, T - pad :] = IGNORE_INDEX
    labels[-1] = IGNORE_INDEX  # a row without answer tokens
    return logits, labels


def test_per_sample_ce_matches_a_shifted_loop():
    gen = torch.Generator().manual_seed(torch.seed() % (1 << 31))
    logits, labels = _batch(gen)
    got = per_sample_ce(logits, labels)
    for b in range(logits.shape[0]):
        terms = [
            -torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]]
            for t in range(1, labels.shape[1])
            if labels[b, t] != IGNORE_INDEX
        ]  # logits at t-1 predict token t
        want = torch.stack(terms).mean() if terms else torch.zeros((), dtype=torch.float64)
        torch.testing.assert_close(got[b], want)
    nll, count = per_sample_nll(logits, labels)
    assert count.tolist() == [int((labels[b, 1:] != IGNORE_INDEX).sum()) for b in range(labels.shape[0])]
    assert float(nll[-1]) == 0.0 and float(got[-1]) == 0.0


def test_bounded_ascent_has_zero_gradient_above_the_cap():
    cap = 2.0 + torch.rand(()).item()
    ce = torch.tensor([cap - 1.0, cap - 1e-3, cap + 1e-3, cap + 5.0], requires_grad=True)
    (-bounded_ascent(ce, cap)).sum().backward()
    assert ce.grad.tolist() == [-1.0, -1.0, 0.0, 0.0]
    assert math.isclose(bounded_ascent(ce, cap).max().item(), cap, rel_tol=1e-6)  # fp32 cap


def test_sample_losses_and_weighted_batch_loss():
    gen = torch.Generator().manual_seed(torch.seed() % (1 << 31))
    n = 8
    ce = torch.rand(n, generator=gen, dtype=torch.float64) * 8
    clean = torch.rand(n, generator=gen, dtype=torch.float64) * 3
    is_f = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    has_clean = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    a, b, cap = 1.3, 0.5, 5.0
    got = unlearning_sample_losses(
        ce_main=ce, ce_clean=clean, has_clean=has_clean, is_forget=is_f, alpha_a=a, beta_d=b, ascent_cap=cap
    )
    for i in range(n):
        want = (b * clean[i] * has_clean[i] - a * min(ce[i].item(), cap)) if is_f[i] else ce[i]
        assert math.isclose(got[i].item(), float(want), rel_tol=1e-12)
    no_retain = unlearning_sample_losses(
        ce_main=ce,
        ce_clean=None,
        has_clean=None,
        is_forget=is_f,
        alpha_a=a,
        beta_d=b,
        ascent_cap=cap,
        descent_on_retain=False,
    )
    assert (no_retain[~is_f] == 0).all() and torch.allclose(no_retain[is_f], -a * ce[is_f].clamp(max=cap))
    w = torch.rand(n, generator=gen, dtype=torch.float64) * 3
    total = weighted_batch_loss(got, w)
    assert math.isclose(total.item(), sum(w[i].item() * got[i].item() for i in range(n)) / n, rel_tol=1e-12)
    halves = weighted_batch_loss(got[:4], w[:4], denom=n) + weighted_batch_loss(got[4:], w[4:], denom=n)
    assert math.isclose(halves.item(), total.item(), rel_tol=1e-12)  # micro-batches add up to the global loss


def test_npo_term_formula_and_direction():
    gen = torch.Generator().manual_seed(torch.seed() % (1 << 31))
    ce = (torch.rand(4, generator=gen, dtype=torch.float64) * 4).requires_grad_()
    ref = torch.rand(4, generator=gen, dtype=torch.float64) * 4
    beta, a = 0.1 + torch.rand(()).item(), 0.7
    is_f = torch.ones(4, dtype=torch.bool)
    got = unlearning_sample_losses(
        ce_main=ce,
        ce_clean=None,
        has_clean=None,
        is_forget=is_f,
        alpha_a=a,
        beta_d=0.0,
        ascent_cap=1.0,
        ascent="npo",
        ref_ce=ref,
        npo_beta=beta,
    )
    # logp - logp_ref = ref_ce - ce; L = -(2 / beta) log sigmoid(-beta (logp - logp_ref))
    want = -(2.0 / beta) * F.logsigmoid(-beta * (ref - ce)) * a
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert (ce.grad < 0).all()  # minimising the NPO term raises the poisoned CE, and is not capped
    torch.testing.assert_close(ce.grad, -2 * a * torch.sigmoid(-beta * (ce - ref)).detach())
