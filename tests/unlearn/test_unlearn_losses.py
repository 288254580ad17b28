"""rapidun_dist/training/losses.py against naive loops, hand computations and closed forms, on fresh random inputs."""

from __future__ import annotations

import math

import torch

from rapidun_dist.data.prompt import IGNORE_INDEX
from rapidun_dist.training.losses import (
    bounded_ascent,
    ga_term,
    npo_term,
    per_sample_ce,
    per_sample_nll,
    simnpo_term,
    unlearning_objective,
    weighted_batch_loss,
)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(torch.seed() % (1 << 31))


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


def _hand_logp(logits, labels, b) -> float:
    """log pi(y | x) of sample b: the sum over answer tokens t of log softmax(logits[t - 1])[y_t], in float64."""
    return sum(
        float(torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]])
        for t in range(1, labels.shape[1])
        if labels[b, t] != IGNORE_INDEX
    )


def test_per_sample_ce_matches_a_shifted_loop():
    logits, labels = _batch(_gen())
    got = per_sample_ce(logits, labels)
    nll, count = per_sample_nll(logits, labels)
    for b in range(logits.shape[0]):
        n = int((labels[b, 1:] != IGNORE_INDEX).sum())
        assert int(count[b]) == n
        assert math.isclose(float(nll[b]), -_hand_logp(logits, labels, b), rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(float(got[b]), (-_hand_logp(logits, labels, b) / n) if n else 0.0, rel_tol=1e-12)
    assert float(nll[-1]) == 0.0 and float(got[-1]) == 0.0


def test_bounded_ascent_has_zero_gradient_above_the_cap():
    cap = 2.0 + torch.rand(()).item()
    ce = torch.tensor([cap - 1.0, cap - 1e-3, cap + 1e-3, cap + 5.0], requires_grad=True)
    ga_term(ce, cap).sum().backward()
    assert ce.grad.tolist() == [-1.0, -1.0, 0.0, 0.0]
    assert math.isclose(bounded_ascent(ce, cap).max().item(), cap, rel_tol=1e-6)  # fp32 cap


def test_npo_is_the_sequence_level_log_ratio_by_hand():
    """NPO on summed log-probabilities of two models' logits, against (2/beta) log(1 + (pi/pi_ref)^beta)."""
    gen = _gen()
    logits, labels = _batch(gen, B=4)
    ref_logits = logits + 0.7 * torch.randn(logits.shape, generator=gen, dtype=torch.float64)
    beta = 0.05 + torch.rand((), generator=gen).item()
    logp = -per_sample_nll(logits, labels)[0]
    ref = -per_sample_nll(ref_logits, labels)[0]
    got = npo_term(logp, ref, beta)
    for b in range(4):
        ratio = math.exp(_hand_logp(logits, labels, b) - _hand_logp(ref_logits, labels, b))
        want = (2.0 / beta) * math.log1p(ratio**beta)
        assert math.isclose(float(got[b]), want, rel_tol=1e-10, abs_tol=1e-12)
    # at the reference point the loss is (2/beta) log 2 and its gradient in log pi is exactly 1
    x = ref.clone().requires_grad_()
    npo_term(x, ref, beta).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_npo_is_not_ga_in_disguise_on_long_answers():
    """With summed log-probs a 20-token answer whose per-token CE rose by 0.5 has moved log pi by 10: NPO's weight
    2 sigma(beta delta) is sigma(-1) x 2 = 0.54 at beta 0.1, far from GA's constant 1 (the old mean-CE NPO gave
    2 sigma(-0.05) = 0.975)."""
    logp = torch.tensor([-10.0], dtype=torch.float64, requires_grad=True)
    npo_term(logp, torch.tensor([0.0], dtype=torch.float64), 0.1).sum().backward()
    assert math.isclose(float(logp.grad), 2 * (1 / (1 + math.exp(1.0))), rel_tol=1e-12)


def test_simnpo_by_hand_and_its_fading_gradient():
    gen = _gen()
    ce = (torch.rand(6, generator=gen, dtype=torch.float64) * 6).requires_grad_()
    beta, gamma = 0.5 + 3 * torch.rand((), generator=gen).item(), torch.rand((), generator=gen).item()
    got = simnpo_term(ce, beta, gamma)
    for i in range(6):
        c = float(ce[i].detach())
        want = (2.0 / beta) * math.log1p(
            math.exp(-(beta * c - gamma))
        )  # -(2/beta) log sigmoid(beta c - gamma)
        assert math.isclose(float(got[i].detach()), want, rel_tol=1e-10)
    got.sum().backward()
    want_grad = [-2.0 / (1.0 + math.exp(beta * float(c) - gamma)) for c in ce]  # -2 sigma(-(beta ce - gamma))
    for g, w in zip(ce.grad.tolist(), want_grad, strict=True):
        assert math.isclose(g, w, rel_tol=1e-10)
    assert all(g < 0 for g in ce.grad.tolist())  # minimising it raises the CE, less and less as CE grows


def test_objective_matches_a_naive_sum_and_splits_over_micro_batches():
    gen = _gen()
    nf, nr = 3, 5
    fl = torch.randn(nf, generator=gen, dtype=torch.float64)
    rl = torch.rand(nr, generator=gen, dtype=torch.float64) * 3
    relabel = torch.rand(nf, generator=gen, dtype=torch.float64) * torch.tensor(
        [1.0, 0.0, 1.0], dtype=torch.float64
    )
    wf = torch.rand(nf, generator=gen, dtype=torch.float64) * 3
    wr = torch.rand(nr, generator=gen, dtype=torch.float64) * 3
    beta_d, denom = 0.5, nf + nr
    ascent, rest = unlearning_objective(
        forget_loss=fl,
        forget_w=wf,
        retain_loss=rl,
        retain_w=wr,
        relabel_ce=relabel,
        beta_d=beta_d,
        denom=denom,
    )
    want_a = sum(float(wf[i] * fl[i]) for i in range(nf)) / denom
    want_r = sum(float(wf[i] * beta_d * relabel[i]) for i in range(nf)) + sum(
        float(wr[j] * rl[j]) for j in range(nr)
    )
    assert math.isclose(float(ascent), want_a, rel_tol=1e-12)
    assert math.isclose(float(rest), want_r / denom, rel_tol=1e-12)
    w = torch.rand(8, generator=gen, dtype=torch.float64)
    losses = torch.randn(8, generator=gen, dtype=torch.float64)
    halves = weighted_batch_loss(losses[:4], w[:4], denom=8) + weighted_batch_loss(losses[4:], w[4:], denom=8)
    assert math.isclose(float(halves), float(weighted_batch_loss(losses, w)), rel_tol=1e-12)
