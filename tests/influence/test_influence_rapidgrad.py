"""RapidGrad / OPORP baseline: hashed codes, the per-tensor sketch against a manual loop, the whole estimator
against autograd, bounded state, and the device it runs on."""

from __future__ import annotations

import pytest
import torch
from conftest import influence_cfg, random_examples, tiny_llama

import rapidun_dist.influence.features as features
from rapidun_dist.influence.features import RapidGradExtractor, hashed_codes, make_extractor

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def manual_sketch(v: torch.Tensor, codes: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(k, dtype=torch.float64)
    for j in range(v.numel()):  # element j goes to bucket code >> 1 with sign -1 when code & 1
        c = int(codes[j])
        out[c >> 1] += (-1.0 if c & 1 else 1.0) * float(v[j])
    return out / v.double().norm()


def test_codes_are_deterministic_per_seed_and_name_and_chunkable():
    whole = hashed_codes(3, "layers.0.q_proj", 0, 5000, 64, "cpu")
    assert torch.equal(whole, hashed_codes(3, "layers.0.q_proj", 0, 5000, 64, "cpu"))
    assert torch.equal(whole[1234:4321], hashed_codes(3, "layers.0.q_proj", 1234, 4321, 64, "cpu"))
    assert not torch.equal(whole, hashed_codes(4, "layers.0.q_proj", 0, 5000, 64, "cpu"))
    assert not torch.equal(whole, hashed_codes(3, "layers.1.q_proj", 0, 5000, 64, "cpu"))


def test_codes_spread_over_buckets_and_signs():
    k, n = 37, 200_000
    codes = hashed_codes(0, "w", 0, n, k, "cpu")
    buckets, signs = codes >> 1, codes & 1
    assert int(buckets.min()) == 0 and int(buckets.max()) == k - 1
    counts = torch.bincount(buckets, minlength=k).double()
    chi2 = float(((counts - n / k) ** 2 / (n / k)).sum())
    assert chi2 < 100, chi2  # 36 degrees of freedom: the 1e-6 tail is about 85
    assert abs(float(signs.double().mean()) - 0.5) < 0.01
    # sign and bucket independent: each bucket about half negative
    neg = torch.bincount(buckets[signs == 1], minlength=k).double() / counts
    assert float((neg - 0.5).abs().max()) < 0.05


def test_sketch_matches_a_manual_loop_and_does_not_depend_on_chunks_or_cache(monkeypatch):
    ext = RapidGradExtractor(tiny_llama(hidden=8, layers=1), influence_cfg(rapidgrad_k=16), pad_id=0)
    name = next(iter(ext.params))
    v = torch.randn(7, 9, dtype=torch.float64)
    codes = hashed_codes(ext.cfg.seed, name, 0, v.numel(), 16, "cpu")
    ref = manual_sketch(v.flatten(), codes, 16)
    torch.testing.assert_close(ext.sketch(name, v), ref, atol=1e-12, rtol=0)
    assert name in ext._codes and ext._codes[name].dtype == torch.int32  # cached
    monkeypatch.setattr(features, "HASH_CHUNK", 10)
    uncached = RapidGradExtractor(ext.model, ext.cfg, pad_id=0, cache_bytes=0)
    torch.testing.assert_close(uncached.sketch(name, v), ref, atol=1e-12, rtol=0)
    assert not uncached._codes
    assert float(ext.sketch(name, torch.zeros(3, 3, dtype=torch.float64)).abs().max()) == 0.0


def test_sketch_inner_products_are_unbiased():
    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(300, generator=gen, dtype=torch.float64),
        torch.randn(300, generator=gen, dtype=torch.float64),
    )
    y = 0.6 * x + 0.8 * y * x.norm() / y.norm()
    exact = float(x @ y / (x.norm() * y.norm()))
    est = []
    model = tiny_llama(hidden=8, layers=1)
    for seed in range(400):
        ext = RapidGradExtractor(model, influence_cfg(rapidgrad_k=32, seed=seed), pad_id=0)
        est.append(float(ext.sketch("w", x) @ ext.sketch("w", y)))
    est = torch.tensor(est, dtype=torch.float64)
    assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / len(est) ** 0.5 + 1e-9
    assert float(est.std()) > 0


def test_estimator_equals_manual_normalized_gradient_sketch():
    model = tiny_llama(hidden=16, layers=1, dtype=torch.float64, seed=4)
    for p in model.parameters():  # frozen weights: the estimator must turn grads on for its tensors only
        p.requires_grad_(False)
    ext = make_extractor(model, influence_cfg(estimator="rapidgrad", rapidgrad_k=32), pad_id=0)
    assert isinstance(ext, RapidGradExtractor) and ext.dim == 32
    assert ext.spec()["estimator"] == "rapidgrad" and ext.spec()["k"] == 32
    examples = random_examples(3, seed=9)
    feats = ext(examples)
    assert feats.shape == (3, 32) and feats.dtype == torch.float64
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    for i, e in enumerate(examples):
        ids, labels = torch.tensor([e["input_ids"]]), torch.tensor(e["labels"])
        params = {n: p.detach().clone().requires_grad_(True) for n, p in ext.params.items()}
        for lin, p in zip(ext.layers.values(), params.values(), strict=True):
            lin.forward = lambda x, p=p: x @ p.T
        try:
            logits = model(input_ids=ids).logits[0]
            loss = torch.nn.functional.cross_entropy(
                logits[:-1], labels[1:], ignore_index=-100, reduction="sum"
            )
            grads = torch.autograd.grad(loss, list(params.values()))
        finally:
            for lin in ext.layers.values():
                del lin.forward
        total = sum(
            manual_sketch(g.flatten(), hashed_codes(ext.cfg.seed, n, 0, g.numel(), 32, "cpu"), 32)
            for n, g in zip(params, grads, strict=True)
        )
        torch.testing.assert_close(feats[i], total / total.norm(), atol=1e-10, rtol=0)


def test_other_trainable_parameters_and_existing_grads_are_left_alone():
    model = tiny_llama(hidden=16, layers=1, dtype=torch.float64, seed=1)
    ext = RapidGradExtractor(model, influence_cfg(rapidgrad_k=16), pad_id=0)
    weight = next(iter(ext.params.values()))
    weight.grad = torch.full_like(weight, 7.0)
    embed = model.get_input_embeddings().weight
    ext(random_examples(2, seed=3))
    assert torch.equal(weight.grad, torch.full_like(weight, 7.0))
    assert embed.requires_grad and embed.grad is None  # trainable but not tracked: no grad computed
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_sketch_state_and_features_live_on_the_model_device(device):
    model = tiny_llama(hidden=16, layers=1, dtype=torch.float32, seed=2).to(device)
    ext = RapidGradExtractor(model, influence_cfg(rapidgrad_k=16), pad_id=0)
    feats = ext(random_examples(2, seed=5))
    assert feats.device.type == device
    assert ext._codes and all(c.device.type == device for c in ext._codes.values())
