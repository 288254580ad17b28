"""RapidGrad / OPORP baseline: the sketch against a manual sign/permute/bucket loop, and the whole estimator."""

from __future__ import annotations

import torch
from conftest import influence_cfg, random_examples, tiny_llama

from rapidun_dist.influence.features import RapidGradExtractor, make_extractor


def manual_sketch(v: torch.Tensor, perm: torch.Tensor, signs: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(k, dtype=v.dtype)
    for j in range(v.numel()):  # position j of the permuted signed vector falls into bucket j mod k
        src = int(perm[j])
        out[j % k] += signs[src] * v[src]
    return out


def test_sketch_of_a_known_vector():
    ext = RapidGradExtractor(
        tiny_llama(hidden=8, layers=1, dtype=torch.float32), influence_cfg(rapidgrad_k=16), pad_id=0
    )
    total = sum(p.numel() for p in ext.params)
    assert ext.perm.numel() == total and torch.equal(ext.perm.sort().values, torch.arange(total))
    assert set(ext.signs.unique().tolist()) == {-1.0, 1.0}
    v = torch.arange(total, dtype=torch.float64) % 7 - 3.0
    torch.testing.assert_close(ext.sketch(v), manual_sketch(v, ext.perm, ext.signs, 16), atol=1e-9, rtol=0)
    # the sketch preserves the squared norm in expectation; with exact signs it is a linear map
    w = torch.randn(total, dtype=torch.float64)
    torch.testing.assert_close(ext.sketch(2 * v - w), 2 * ext.sketch(v) - ext.sketch(w), atol=1e-9, rtol=0)


def test_same_seed_same_sketch_different_seed_different():
    model = tiny_llama(hidden=8, layers=1, dtype=torch.float32)
    a, b = (RapidGradExtractor(model, influence_cfg(seed=s), pad_id=0) for s in (1, 1))
    c = RapidGradExtractor(model, influence_cfg(seed=2), pad_id=0)
    assert torch.equal(a.perm, b.perm) and torch.equal(a.signs, b.signs)
    assert not torch.equal(a.perm, c.perm)


def test_estimator_equals_manual_normalized_gradient_sketch():
    model = tiny_llama(hidden=16, layers=1, dtype=torch.float64, seed=4)
    for p in model.parameters():  # frozen weights: the estimator must turn grads on for its tensors only
        p.requires_grad_(False)
    ext = make_extractor(model, influence_cfg(estimator="rapidgrad", rapidgrad_k=32), pad_id=0)
    assert isinstance(ext, RapidGradExtractor) and ext.dim == 32
    examples = random_examples(3, seed=9)
    feats = ext(examples)
    assert feats.shape == (3, 32)
    torch.testing.assert_close(
        feats.double().norm(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    for i, e in enumerate(examples):
        ids, labels = torch.tensor([e["input_ids"]]), torch.tensor(e["labels"])
        params = [p.detach().clone().requires_grad_(True) for p in ext.params]
        for lin, p in zip(ext.layers.values(), params, strict=True):
            lin.forward = lambda x, p=p: x @ p.T
        try:
            logits = model(input_ids=ids).logits[0]
            loss = torch.nn.functional.cross_entropy(
                logits[:-1], labels[1:], ignore_index=-100, reduction="sum"
            )
            grads = torch.autograd.grad(loss, params)
        finally:
            for lin in ext.layers.values():
                del lin.forward
        flat = torch.cat([g.flatten() / g.norm() for g in grads])
        ref = manual_sketch(flat, ext.perm, ext.signs.double(), 32)
        torch.testing.assert_close(feats[i].double(), ref / ref.norm(), atol=1e-5, rtol=0)
