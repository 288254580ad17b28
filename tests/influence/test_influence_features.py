"""Token-wise features against a naive float64 autograd computation that never touches the hooks.

Naive path: every tracked linear temporarily computes y[:, t] = W_t x[:, t] with its own copy W_t of the weight
per position, so autograd returns G_t = dL/dW_t, the weight gradient restricted to position t. Then
phi_t = vec(P_out G_t P_in^T), unit per token, mean over tracked positions, unit per layer, concat / sqrt(L).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from conftest import PROJ_NAMES, influence_cfg, random_examples, tiny_llama

from rapidun_dist.data.prompt import IGNORE_INDEX
from rapidun_dist.influence.features import TokenwiseExtractor, answer_positions


@contextmanager
def per_position_weights(layers: dict, n_pos: int):
    """Each linear uses W_t (a [T, d_out, d_in] leaf) at position t; yields {name: W_t}."""
    copies = {}
    for name, lin in layers.items():
        w = lin.weight.detach().expand(n_pos, *lin.weight.shape).clone().requires_grad_(True)
        copies[name] = w
        lin.forward = lambda x, w=w, b=lin.bias: torch.einsum("toi,bti->bto", w, x) + (0 if b is None else b)
    try:
        yield copies
    finally:
        for lin in layers.values():
            del lin.forward


def naive_positions(labels: list[int], positions: str) -> torch.Tensor:
    """Tracked position indices by the definitions: t predicts an answer token / t is a prompt token / any t."""
    if positions == "answer":
        return torch.tensor([t for t in range(len(labels) - 1) if labels[t + 1] != IGNORE_INDEX])
    if positions.startswith("decision"):  # "decision<n>": the first n answer positions
        return naive_positions(labels, "answer")[: int(positions.removeprefix("decision"))]
    if positions == "prompt":
        return torch.tensor([t for t in range(len(labels)) if labels[t] == IGNORE_INDEX])
    return torch.arange(len(labels))


def naive_token_grads(
    model, layers: dict, example: dict, positions: str = "answer"
) -> tuple[dict, torch.Tensor]:
    """({name: G [T, d_out, d_in]}, tracked position indices) for one example, summed shifted CE."""
    ids = torch.tensor([example["input_ids"]])
    labels = torch.tensor(example["labels"])
    with per_position_weights(layers, ids.shape[1]) as copies:
        logits = model(input_ids=ids).logits[0]
        loss = F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")
        grads = torch.autograd.grad(loss, list(copies.values()))
    return dict(zip(copies, grads, strict=True)), naive_positions(example["labels"], positions)


def unit(z: torch.Tensor) -> torch.Tensor:
    n = z.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, z / n.clamp_min(1e-300), torch.zeros_like(z))


def naive_feature(grads: dict, tracked: torch.Tensor, proj: dict | None) -> torch.Tensor:
    parts = []
    for name, g_TOI in grads.items():
        g = g_TOI[tracked]
        phi = g if proj is None else proj[name][1] @ g @ proj[name][0].T
        parts.append(unit(unit(phi.flatten(1)).mean(0)))
    return torch.cat(parts) / len(parts) ** 0.5


def float64_extractor(model, **kw) -> TokenwiseExtractor:
    ext = TokenwiseExtractor(model, influence_cfg(**kw), pad_id=0)
    ext.proj = {n: (p.double(), q.double()) for n, (p, q) in ext.proj.items()}
    return ext


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama(hidden=16, layers=2, seed=3)
    examples = random_examples(3, seed=11)
    ext = float64_extractor(model)
    naive = [naive_token_grads(model, ext.layers, e) for e in examples]
    return model, examples, ext, naive


def test_tracked_layers_are_every_projection(setup):
    _, _, ext, _ = setup
    expected = {
        f"model.layers.{i}.{'self_attn' if p[0] in 'qkvo' else 'mlp'}.{p}"
        for i in range(2)
        for p in PROJ_NAMES
    }
    assert set(ext.layers) == expected


def test_answer_positions_are_shifted_labels():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX], [IGNORE_INDEX, 3, 4, 7, 8]])
    expected = torch.tensor([[False, True, True, False, False], [True, True, True, True, False]])
    assert torch.equal(answer_positions(labels), expected)


def test_features_match_naive_autograd(setup):
    _, examples, ext, naive = setup
    feats = ext(examples)
    assert feats.dtype == torch.float64
    ref = torch.stack([naive_feature(g, t, ext.proj) for g, t in naive])
    torch.testing.assert_close(feats, ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(
        feats.norm(dim=1), torch.ones(len(examples), dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(feats @ feats.T, ref @ ref.T, atol=1e-10, rtol=0)


def test_features_do_not_depend_on_batching(setup):
    _, examples, ext, _ = setup
    together = ext(examples)
    alone = torch.cat([ext([e]) for e in examples])
    torch.testing.assert_close(together, alone, atol=1e-12, rtol=0)


def test_identity_projections_give_exact_frobenius_cosines(setup):
    _, examples, _, naive = setup
    model = setup[0]
    ext = float64_extractor(model)
    ext.proj = {
        n: (torch.eye(m.in_features, dtype=torch.float64), torch.eye(m.out_features, dtype=torch.float64))
        for n, m in ext.layers.items()
    }
    feats = ext(examples)
    # exact: per layer m_l = mean_t G_t / ||G_t||_F, inner product = (1/L) sum_l <m_il, m_jl>_F / (||m_il|| ||m_jl||)
    means = [
        {n: (g[t] / g[t].norm(dim=(1, 2), keepdim=True)).mean(0) for n, g in grads.items()}
        for grads, t in naive
    ]
    n_layers = len(ext.layers)
    for i in range(len(examples)):
        for j in range(len(examples)):
            exact = sum(
                (means[i][n] * means[j][n]).sum() / (means[i][n].norm() * means[j][n].norm())
                for n in ext.layers
            )
            assert abs(float(feats[i] @ feats[j]) - float(exact) / n_layers) < 1e-10


def test_extraction_leaves_parameters_untouched(setup):
    model, examples, ext, _ = setup
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ext(examples[:2])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_sample_without_answer_tokens_gives_zero_feature():
    model = tiny_llama(hidden=16, layers=1, seed=1)
    ext = float64_extractor(model)
    examples = random_examples(2, seed=5)
    examples[1] = {
        "input_ids": examples[1]["input_ids"],
        "labels": [IGNORE_INDEX] * len(examples[1]["labels"]),
    }
    feats = ext(examples)
    assert float(feats[1].abs().max()) == 0.0
    assert abs(float(feats[0].norm()) - 1.0) < 1e-12


@pytest.mark.parametrize("positions", ["prompt", "all"])
def test_prompt_and_all_positions_match_naive_autograd(setup, positions):
    model, examples, _, _ = setup
    ext = float64_extractor(model, positions=positions)
    assert ext.spec()["positions"] == positions
    naive = [naive_token_grads(model, ext.layers, e, positions) for e in examples]
    ref = torch.stack([naive_feature(g, t, ext.proj) for g, t in naive])
    torch.testing.assert_close(ext(examples), ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_decision_positions_match_naive_autograd(setup, n):
    """positions decision: the first n answer positions of each row, against per-position autograd in float64."""
    model, examples, _, _ = setup
    ext = float64_extractor(model, positions="decision", decision_tokens=n)
    assert ext.spec()["positions"] == "decision" and ext.spec()["decision_tokens"] == n
    naive = [naive_token_grads(model, ext.layers, e, f"decision{n}") for e in examples]
    assert all(
        len(t) == min(n, len(naive_positions(e["labels"], "answer")))
        for (_, t), e in zip(naive, examples, strict=True)
    )
    ref = torch.stack([naive_feature(g, t, ext.proj) for g, t in naive])
    torch.testing.assert_close(ext(examples), ref, atol=1e-10, rtol=0)
    if n == 1:  # fewer tracked tokens give other features than the whole answer
        assert not torch.allclose(ext(examples), float64_extractor(model)(examples), atol=1e-3)


def naive_token_scores(grads: dict, tracked: torch.Tensor, proj: dict, directions: dict) -> torch.Tensor:
    """s_t = sum_l <unit(phi_tl), D_l>_F / (||sum_t unit(phi_tl)|| sqrt(L)) from per-position weight gradients."""
    total = torch.zeros(len(tracked), dtype=torch.float64)
    for name, g_TOI in grads.items():
        phi = unit((proj[name][1] @ g_TOI[tracked] @ proj[name][0].T).flatten(1))  # [T, k_out * k_in]
        total += (phi @ directions[name].flatten()) / phi.sum(0).norm()
    return total / len(grads) ** 0.5


@pytest.mark.parametrize("positions", ["answer", "prompt"])
def test_token_scores_match_naive_per_position_autograd(setup, positions):
    model, examples, _, _ = setup
    ext = float64_extractor(model)
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    direction = torch.randn(ext.dim, generator=gen, dtype=torch.float64)
    dirs = ext.layer_directions(direction)
    out = ext.token_scores(examples, dirs, positions=positions)
    for i, e in enumerate(examples):
        grads, tracked = naive_token_grads(model, ext.layers, e, positions)
        assert torch.equal(out.tracked[i].nonzero().squeeze(1), tracked)
        torch.testing.assert_close(
            out.scores[i, tracked], naive_token_scores(grads, tracked, ext.proj, dirs), atol=1e-10, rtol=0
        )
        assert bool((out.scores[i][~out.tracked[i]] == 0).all())
    # the token scores split the sample score exactly, and the features are those of the same positions
    torch.testing.assert_close(out.scores.sum(1), out.features @ direction, atol=1e-10, rtol=0)
    torch.testing.assert_close(
        out.features, float64_extractor(model, positions=positions)(examples), atol=1e-12, rtol=0
    )


def test_spec_names_everything_that_changes_the_features(setup):
    model = setup[0]
    base = float64_extractor(model).spec()
    for key in ("estimator", "k_in", "k_out", "seed", "layers", "positions", "compute_dtype", "version"):
        assert key in base
    for kw in ({"k_in": 5}, {"k_out": 2}, {"seed": 8}, {"positions": "all"}, {"target_modules": ["q_proj"]}):
        assert float64_extractor(model, **kw).spec() != base, kw
