"""Attribution scores against a naive float64 autograd computation that never touches the hooks.

Naive path: every tracked linear computes y[:, t] = W_t x[:, t] with its own copy W_t per position, so autograd
gives G_t = dL/dW_t at each prompt position t of one example alone (no padding, no batch). Then phi_t =
unit(P_out G_t P_in^T), per layer S = sum_t phi_t, the feature f = concat_l unit(S_l) / sqrt(L), the direction
d = mean forget f - mean retain f, and s_t = sum_l <phi_tl, d_l> / (||S_l|| sqrt(L)). Saliency: <e_t, dL/de_t> of
one example alone.
"""

from __future__ import annotations

import os
import random
import types
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from rapidun_dist.attribution.scores import (
    PromptTokens,
    attribution_extractor,
    best_matches,
    contrast_direction,
    feature_sum,
    input_saliency,
    match_scores,
    token_attribution,
    token_features,
)
from rapidun_dist.config import InfluenceConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.data.prompt import IGNORE_INDEX


def rms_norm_in_input_dtype(norm, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm's formula without its float32 cast (transformers computes it in float32 for any input)."""
    return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))


def eager_attention_in_input_dtype(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention without its float32 softmax (registered as "eager_input_dtype")."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = query @ key.transpose(2, 3) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    weights = torch.softmax(scores, dim=-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


def tiny_llama(seed: int, vocab: int = 40):
    """A float64 Llama that stays float64 everywhere. transformers' Llama computes RMSNorm and the eager
    attention's softmax in float32 whatever the model dtype; two float64 paths that differ by an ulp before such
    a cast now and then round to different float32 values (~6e-8 relative), far past the 1e-10 these tests
    allow. Here both run in the input dtype. (Eager, not SDPA: SDPA's CPU kernel leaves ~1e-20 of rounding in
    the first position's query gradient, which is exactly 0 in exact arithmetic; unit normalization would turn
    it into a whole token feature in one path and not the other.)"""
    from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    AttentionInterface.register("eager_input_dtype", eager_attention_in_input_dtype)
    AttentionMaskInterface.register("eager_input_dtype", eager_mask)  # the additive causal mask eager builds
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0,
        attn_implementation="eager_input_dtype",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    for module in model.modules():
        if isinstance(module, LlamaRMSNorm):
            module.forward = types.MethodType(rms_norm_in_input_dtype, module)
    return model.eval()


def random_rows(n: int, rng: random.Random, vocab: int = 40) -> list[PromptTokens]:
    """Random rows whose first two tokens differ. A row opening with a run of one token is degenerate: every
    position of the run sees identical values, so its attention output does not depend on its query and the
    q_proj (and k_proj) gradients there are exactly 0 in exact arithmetic; float64 leaves ~1e-16 of rounding,
    which unit normalization turns into a whole (arbitrary) token feature, a different one in each path."""
    rows = []
    for _ in range(n):
        n_prompt, n_answer = rng.randint(3, 7), rng.randint(2, 5)
        ids = [rng.randrange(1, vocab) for _ in range(n_prompt + n_answer)]
        while ids[1] == ids[0]:
            ids[1] = rng.randrange(1, vocab)
        example = {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]}
        rows.append(
            PromptTokens(example=example, texts=[f" w{i}" for i in ids[:n_prompt]], content=[True] * n_prompt)
        )
    return rows


@contextmanager
def per_position_weights(layers: dict, n_pos: int):
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


def naive_phis(model, ext, row: PromptTokens) -> dict[str, torch.Tensor]:
    """{layer: unit phi_t [n_prompt, k_out * k_in]} at the prompt positions of one example alone."""
    ids = torch.tensor([row.example["input_ids"]])
    labels = torch.tensor(row.example["labels"])
    with per_position_weights(ext.layers, ids.shape[1]) as copies:
        logits = model(input_ids=ids).logits[0]
        loss = F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")
        grads = torch.autograd.grad(loss, list(copies.values()))
    out = {}
    for name, g_TOI in zip(copies, grads, strict=True):
        p_in, p_out = ext.proj[name]
        phi = (p_out @ g_TOI[: row.n_prompt] @ p_in.T).flatten(1)
        out[name] = unit(phi)  # a position the loss does not reach (g_t = 0) contributes a zero phi
    return out


def unit(z: torch.Tensor) -> torch.Tensor:
    n = z.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, z / n.clamp_min(1e-300), torch.zeros_like(z))


def naive_feature(phis: dict) -> torch.Tensor:
    parts = [unit(p.sum(0)) for p in phis.values()]
    return torch.cat(parts) / len(parts) ** 0.5


def naive_scores(phis: dict, direction: torch.Tensor) -> torch.Tensor:
    total, start = 0.0, 0
    for p in phis.values():
        d = direction[start : start + p.shape[1]]
        norm = p.sum(0).norm()
        total = total + ((p @ d) / norm if norm > 0 else 0.0 * (p @ d))
        start += p.shape[1]
    return total / len(phis) ** 0.5


@pytest.fixture(scope="module")
def setup():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"attribution setup seed {seed}")  # shown with a failure: the inputs are fresh on every run
    rng = random.Random(seed)
    model = tiny_llama(seed % 1000)
    cfg = InfluenceConfig(k_in=4, k_out=3, seed=rng.randrange(1000), backend="torch", positions="answer")
    ext = attribution_extractor(model, cfg, pad_id=0)
    ext.proj = {n: (p.double(), q.double()) for n, (p, q) in ext.proj.items()}
    return model, ext, random_rows(5, rng), random_rows(6, rng)


def test_the_float64_test_model_is_the_stock_llama():
    """Only the float32 islands differ: the same weights under transformers' own eager attention and RMSNorm
    give the same logits to float32 precision, with and without padding."""
    from transformers import LlamaForCausalLM

    model = tiny_llama(7)
    stock = LlamaForCausalLM(
        model.config.__class__(**{**model.config.to_dict(), "attn_implementation": "eager"})
    )
    stock.load_state_dict(model.state_dict())
    ids = torch.randint(1, 40, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        ref = stock.double().eval()(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(got[keep], ref[keep], atol=1e-5, rtol=1e-5)
    assert (got[keep] - ref[keep]).abs().max() > 0  # the stock model does round to float32 somewhere


def test_token_scores_match_naive_per_position_autograd(setup):
    model, ext, forget, retain = setup
    assert ext.spec()["positions"] == "prompt"
    sum_f = feature_sum(ext, [r.example for r in forget], batch_size=2)
    sum_r = feature_sum(ext, [r.example for r in retain], batch_size=4)
    direction = contrast_direction(sum_f, len(forget), sum_r, len(retain))
    phis_f = [naive_phis(model, ext, r) for r in forget]
    phis_r = [naive_phis(model, ext, r) for r in retain]
    ref_dir = torch.stack([naive_feature(p) for p in phis_f]).mean(0) - torch.stack(
        [naive_feature(p) for p in phis_r]
    ).mean(0)
    torch.testing.assert_close(direction, ref_dir, atol=1e-10, rtol=0)
    scores = token_attribution(ext, forget, direction, batch_size=3)  # padded batches of mixed lengths
    for row, got, phis in zip(forget, scores, phis_f, strict=True):
        assert len(got) == row.n_prompt
        torch.testing.assert_close(
            torch.tensor(got, dtype=torch.float64), naive_scores(phis, ref_dir), atol=1e-10, rtol=0
        )
        # the prompt tokens' scores split the row's alignment with the direction exactly
        assert abs(sum(got) - float(naive_feature(phis) @ ref_dir)) < 1e-10


def test_saliency_matches_one_example_autograd(setup):
    model, _, forget, _ = setup
    got = input_saliency(model, forget, pad_id=0, batch_size=3)
    for row, sal in zip(forget, got, strict=True):
        ids = torch.tensor([row.example["input_ids"]])
        e = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=e).logits[0]
        labels = torch.tensor(row.example["labels"])
        loss = F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")
        (g,) = torch.autograd.grad(loss, [e])
        ref = (e * g).sum(-1)[0, : row.n_prompt]
        torch.testing.assert_close(torch.tensor(sal, dtype=torch.float64), ref.detach(), atol=1e-10, rtol=0)


def naive_token_feature(phis: dict, row: PromptTokens) -> torch.Tensor:
    """phi_t = concat_l unit phi_tl / sqrt(L) at the row's instruction tokens."""
    keep = torch.tensor(row.content)
    return torch.cat([p[keep] for p in phis.values()], dim=1) / len(phis) ** 0.5


def test_per_token_features_match_naive_autograd(setup):
    model, ext, forget, _ = setup
    got = token_features(ext, forget, batch_size=3)
    for row, feats in zip(forget, got, strict=True):
        ref = naive_token_feature(naive_phis(model, ext, row), row)
        assert feats.shape == (sum(row.content), ext.dim)
        torch.testing.assert_close(feats.double(), ref, atol=1e-6, rtol=0)  # features are stored in float32


def test_match_scores_by_definition():
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    forget = [torch.randn(n, 5, generator=gen, dtype=torch.float64) for n in (3, 1, 4, 2)]
    retain = [
        torch.randn(n, 5, generator=gen, dtype=torch.float64) for n in (2, 0, 3)
    ]  # an empty row is skipped
    got = match_scores(forget[0], forget, retain, own=0, m=2)
    for t, q in enumerate(forget[0]):
        bf = sorted((float((q @ r.T).max()) for r in forget[1:]), reverse=True)[:2]
        br = sorted((float((q @ r.T).max()) for r in retain if len(r)), reverse=True)[:2]
        assert abs(float(got[t]) - (sum(bf) / 2 - sum(br) / 2)) < 1e-12
    assert best_matches(forget[1], forget).shape == (1, 4)
    with pytest.raises(DataError, match="no reference rows"):
        best_matches(forget[1], [retain[1]])


def test_direction_needs_both_packs():
    with pytest.raises(DataError, match="forget and retain"):
        contrast_direction(torch.zeros(3), 0, torch.zeros(3), 2)
