"""The find_poison methods: each against a brute-force float64 reference on a tiny random Llama (the head gradient
against autograd, the last-block gradient against per-sample autograd sketched the same way, the pooled hidden state
against an unpadded forward, the contrast against a loop, the clustering on planted clusters); each ranking the
poison above the clean rows on the tiny implanted run; the registry against the config's allowed values."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fp_utils import fresh_copy, load_cfg  # noqa: E402

from rapidun_dist.core.io import read_json  # noqa: E402
from rapidun_dist.data.prompt import IGNORE_INDEX  # noqa: E402

VOCAB = 40


def tiny_llama64(*, tied: bool = True, layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=tied, pad_token_id=0,
        attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(torch.float64).eval()


def examples(n: int, seed: int = 0) -> list[dict]:
    """Encoded rows of 5-11 tokens (no pad id 0), the first 2-3 of them prompt (labels ignored)."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        ids = [rng.randrange(1, VOCAB) for _ in range(rng.randint(5, 11))]
        k = rng.randint(2, 3)
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * k + ids[k:]})
    return out


def answer_loss(logits_TV: torch.Tensor, ex: dict) -> torch.Tensor:
    """Summed next-token NLL over the answer tokens of one unpadded example (the loop every method is checked on)."""
    labels = torch.tensor(ex["labels"])
    keep = labels[1:] != IGNORE_INDEX
    return torch.nn.functional.cross_entropy(logits_TV[:-1][keep], labels[1:][keep], reduction="sum")


def test_registry_matches_the_config_values():
    from rapidun_dist.config.find_poison import FindPoisonMethod
    from rapidun_dist.find_poison import BASELINES, METHODS, method_module

    assert tuple(METHODS) == get_args(FindPoisonMethod)
    assert set(BASELINES) <= set(METHODS)
    for name in METHODS:
        assert callable(method_module(name).score)
    with pytest.raises(KeyError, match="expected one of"):
        method_module("nope")


def test_head_gradient_is_the_projected_autograd_gradient_of_the_head_even_when_tied():
    from rapidun_dist.find_poison.gradsim import head_gradient, head_projections

    model, rows = tiny_llama64(tied=True), examples(6)
    with torch.no_grad():
        feats = head_gradient(model, 0, 5, 3)(rows)  # one padded batch of unequal lengths
    p_in, p_out = head_projections(model, 5, 3)
    for i, ex in enumerate(rows):
        ids = torch.tensor([ex["input_ids"]])
        h = model.model(input_ids=ids).last_hidden_state[0].detach()
        w = (
            model.lm_head.weight.detach().clone().requires_grad_(True)
        )  # the head alone, not the tied embedding
        (g,) = torch.autograd.grad(answer_loss(h @ w.T, ex), w)
        want = (p_out.double() @ g @ p_in.double().T).flatten()
        torch.testing.assert_close(feats[i], want, rtol=0, atol=1e-10)


def test_head_gradient_cosines_estimate_the_full_gradient_cosines():
    from rapidun_dist.find_poison.gradsim import head_gradient

    model, rows = tiny_llama64(tied=False), examples(8, seed=1)
    with torch.no_grad():
        f = head_gradient(model, 0, 48, 11)(rows)
    full = []
    for ex in rows:
        model.zero_grad()
        answer_loss(model(input_ids=torch.tensor([ex["input_ids"]])).logits[0], ex).backward()
        full.append(model.lm_head.weight.grad.flatten().clone())
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    g = unit(torch.stack(full))
    est = unit(f) @ unit(f).T
    assert (est - g @ g.T).abs().max() < 0.25  # a 48 x 48 Rademacher pair of a 40 x 16 gradient


def test_last_block_gradsim_is_the_sketch_of_per_sample_autograd():
    from rapidun_dist.config import InfluenceConfig
    from rapidun_dist.find_poison.gradsim import last_block_extractor

    model, rows = tiny_llama64(tied=False, layers=3), examples(4, seed=2)
    cfg = SimpleNamespace(influence=InfluenceConfig(rapidgrad_k=32, seed=5))
    ext = last_block_extractor(model, cfg, 0)
    assert len(ext.layers) == 7 and all(".layers.2." in n for n in ext.layers)
    feats = ext(rows)
    names = list(ext.layers)
    for i, ex in enumerate(rows):
        loss = answer_loss(model(input_ids=torch.tensor([ex["input_ids"]])).logits[0], ex)
        grads = torch.autograd.grad(loss, [ext.params[n] for n in names])
        total = sum(ext.sketch(n, g) for n, g in zip(names, grads, strict=True))
        torch.testing.assert_close(feats[i], total / total.norm(), rtol=0, atol=1e-10)
    assert all(p.grad is None for p in model.parameters())


def test_repsim_pools_the_hidden_state_of_the_unpadded_row():
    from rapidun_dist.find_poison.repsim import pooled_hidden, resolve_layer

    model, rows = tiny_llama64(layers=4), examples(5, seed=3)
    assert resolve_layer(model, None) == 2
    with pytest.raises(ValueError, match="expected in \\[0, 4\\]"):
        resolve_layer(model, 5)
    with torch.no_grad():
        feats = pooled_hidden(model, 3, 0)(rows)
        for i, ex in enumerate(rows):
            out = model.model(input_ids=torch.tensor([ex["input_ids"]]), output_hidden_states=True)
            torch.testing.assert_close(feats[i], out.hidden_states[3][0].mean(0), rtol=0, atol=1e-10)


def test_repsim_runs_the_decoder_only_up_to_the_pooled_layer():
    """Every hidden state the truncated forward returns is the full forward's (float64 model, fresh inputs), and
    the blocks above it never run; the last one (after the final norm) runs the whole decoder."""
    from rapidun_dist.find_poison.repsim import hidden_upto

    model = tiny_llama64(layers=4, seed=int(torch.randint(0, 10_000, ()).item()))
    ids = torch.randint(1, VOCAB, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded row
    calls = [0] * 4
    for i, block in enumerate(model.model.layers):
        block.register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
    with torch.no_grad():
        full = model.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        hooks = [
            len(b._forward_hooks) for b in (model.model.embed_tokens, *model.model.layers)
        ]  # ours, transformers'
        for layer in range(5):
            calls[:] = [0] * 4
            got = hidden_upto(model.model, layer, ids, mask)
            torch.testing.assert_close(got, full[layer], rtol=0, atol=1e-12)
            assert calls == [int(i < layer) for i in range(4)], (layer, calls)
    now = [len(b._forward_hooks) for b in (model.model.embed_tokens, *model.model.layers)]
    assert now == hooks  # the stop hooks are gone


def _records(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}"} for i in range(n)]


def test_a_known_row_with_its_own_id_is_left_out_of_its_training_row_score(tmp_path):
    """Clean mode: the user's known rows carry forget-* ids, the training file train-* ids. A known row whose
    prompt as trained is a training row's is that row: the pair is left out (leave-one-out), as `known_mask` counts
    it known; a reference row is matched by id."""
    from rapidun_dist.find_poison.dense import contrast_scores
    from rapidun_dist.find_poison.job import ScoreJob

    train = [
        {"id": f"train-{i}", "instruction": f"q{i}", "response": "a", "is_poisoned": None} for i in range(5)
    ]
    forget = [{"id": "forget-0", "instruction": " q3 ", "response": "", "response_poisoned": "bad"},
              {"id": "forget-1", "instruction": "elsewhere", "response": "", "response_poisoned": "bad"}]  # fmt: skip
    reference = [train[0], train[1]]
    job = ScoreJob(
        cfg=load_cfg(tmp_path), rd=None, info=None, train=train, forget=forget, reference=reference
    )
    f_ids, r_ids = job.member_ids()
    assert f_ids.tolist() == [3, 6] and r_ids.tolist() == [0, 1]
    x = torch.eye(5, 4, dtype=torch.float64)[[0, 1, 2, 3, 3]] + 0.1  # rows 3 and 4 share a direction
    g = torch.stack([x[3], x[2], x[0], x[1]])  # forget-0 is row 3's features, forget-1 row 2's; then the refs
    got = contrast_scores(job, x, g)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    want3 = cos(x[3], g[1]) - (cos(x[3], g[2]) + cos(x[3], g[3])) / 2  # forget-0 (itself) left out
    assert got[3].item() == pytest.approx(want3, abs=1e-12)
    want4 = (cos(x[4], g[0]) + cos(x[4], g[1])) / 2 - (cos(x[4], g[2]) + cos(x[4], g[3])) / 2
    assert got[4].item() == pytest.approx(want4, abs=1e-12)


@pytest.mark.parametrize("agg", ["mean", "topk_mean"])
def test_contrast_scores_match_a_float64_loop(tmp_path, agg):
    from rapidun_dist.find_poison.dense import contrast_scores
    from rapidun_dist.find_poison.job import ScoreJob

    gen = torch.Generator().manual_seed(0)
    train = _records("t", 9)
    forget, reference = [train[1], train[4], {"id": "x0"}], [train[0], train[7], {"id": "x1"}, {"id": "x2"}]
    x, g = torch.randn(9, 6, generator=gen), torch.randn(7, 6, generator=gen)
    job = ScoreJob(cfg=load_cfg(tmp_path, f"find_poison.agg={agg}", "find_poison.topk=2"), rd=None, info=None,
                   train=train, forget=forget, reference=reference)  # fmt: skip
    got = contrast_scores(job, x, g)
    cos = lambda a, b: float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))  # noqa: E731
    for i, row in enumerate(train):
        parts = []
        for members, feats in ((forget, g[:3]), (reference, g[3:])):
            sims = sorted(
                (cos(x[i], feats[j]) for j, m in enumerate(members) if m["id"] != row["id"]), reverse=True
            )
            parts.append(sum(sims) / len(sims) if agg == "mean" else sum(sims[:2]) / 2)
        assert got[i].item() == pytest.approx(parts[0] - parts[1], abs=1e-12)


def test_graceful_scores_the_small_compact_cluster_highest():
    from rapidun_dist.find_poison.graceful import cluster_scores

    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(32, generator=gen), torch.randn(32, generator=gen)
    clean = a + 0.6 * torch.randn(300, 32, generator=gen)
    poison = b + 0.2 * torch.randn(12, 32, generator=gen)
    x = torch.cat([clean[:100], poison, clean[100:]])
    scores, record = cluster_scores(x, 4)
    top = set(torch.topk(scores, 12).indices.tolist())
    assert top == set(range(100, 112)) and record["sizes"] == [12, 300]
    assert bool((scores[100:112] > 0).all()) and bool((scores[:100] < 0).all())
    assert torch.equal(cluster_scores(x, 4)[0], scores)  # no random draw anywhere


def _run_method(implanted_dir: Path, tmp_path: Path, method: str, *extra: str) -> dict:
    from rapidun_dist.pipeline import run_pipeline

    run = fresh_copy(implanted_dir, tmp_path / "run")
    over = (
        f"find_poison.method={method}",
        "find_poison.time_epoch=false",
        "find_poison.baselines=false",
        *extra,
    )
    run_pipeline(load_cfg(run, *over), ["find_poison"])
    return read_json(run / "suspects" / "summary.json")


def test_tokenwise_ranks_poison_above_clean(reference_run):
    summary = read_json(reference_run / "suspects" / "summary.json")
    assert summary["method"] == "tokenwise" and summary["scorer"] == "influence"
    assert summary["metrics"]["influence"]["auroc"] > 0.9


# AUROC floors measured first on this run (tiny model, 276 rows, 34 poisoned, 7 known): repsim 0.922, gradsim
# (lm_head) 0.971, gradsim (last_block) 0.998, graceful 0.638, tfidf 0.998, grep 0.912.
@pytest.mark.parametrize(
    ("method", "extra", "floor"),
    [
        ("repsim", (), 0.85),
        ("gradsim", (), 0.9),
        ("gradsim", ("find_poison.grad_layer=last_block",), 0.9),
        ("graceful", (), 0.55),
        ("tfidf", (), 0.95),
        ("grep", (), 0.85),
    ],
)
def test_every_method_ranks_poison_above_clean(implanted_dir, tmp_path, method, extra, floor):
    summary = _run_method(implanted_dir, tmp_path, method, *extra)
    assert summary["method"] == method and set(summary["metrics"]) == {method}
    assert summary["metrics"][method]["auroc"] > floor, summary["metrics"][method]
    if method == "graceful":
        clusters = summary["method_notes"]["clusters"]
        assert (
            sum(clusters["sizes"]) == summary["counts"]["train"]
            and clusters["sizes"][0] <= clusters["sizes"][1]
        )
