"""generate(..., sampling=Sampling(...)): samples follow softmax(logits / T), are reproducible in the seed, leave the
caller's RNG alone, come prompt-major, and reduce to greedy as T -> 0; tensors go to the model's device."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from rapidun_dist.core.errors import ConfigError
from rapidun_dist.data.prompt import format_prompt
from rapidun_dist.evaluation.generation import Sampling, generate

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


def _prompts(tokenizer, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = "the fox river moon sea poem colors capital France aliens galaxy name write summarize".split()
    return [format_prompt(tokenizer, " ".join(rng.choices(words, k=rng.randint(1, 10)))) for _ in range(n)]


@pytest.fixture
def peaked(model_factory):
    """A tiny Llama whose next-token distribution is peaked enough to compare sample frequencies with."""
    model = model_factory(seed=random.SystemRandom().randrange(1000))
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)
    return model


def test_first_token_frequencies_follow_the_tempered_softmax(tokenizer, peaked):
    prompt = _prompts(tokenizer, 1, seed=5)[0]
    temperature, n = 0.7, 1200
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(peaked(input_ids=ids).logits[0, -1].double() / temperature, dim=-1)
    expected: dict[str, float] = {}  # several tokens may decode to the same text: add their probabilities
    for tok, p in enumerate(probs.tolist()):
        text = tokenizer.decode([tok], skip_special_tokens=True)
        expected[text] = expected.get(text, 0.0) + p
    texts = generate(
        peaked,
        tokenizer,
        [prompt],
        max_new_tokens=1,
        batch_size=1000,
        sampling=Sampling(temperature=temperature, num_samples=n, seed=11),
    )
    assert len(texts) == n
    seen = {t: texts.count(t) / n for t in set(texts)}
    assert min(expected[t] for t in seen) > 1e-6  # nothing sampled that the model gives no mass
    for text, p in sorted(expected.items(), key=lambda kv: -kv[1])[:5]:
        freq = seen.get(text, 0.0)
        assert abs(freq - p) <= 4 * (p * (1 - p) / n) ** 0.5 + 1e-3, (text, freq, p)


def test_seeded_reproducible_and_rng_untouched(tokenizer, tiny_model):
    prompts = _prompts(tokenizer, 6, seed=1)
    kw = {"max_new_tokens": 5, "batch_size": 4}
    state = torch.get_rng_state()
    a = generate(tiny_model, tokenizer, prompts, **kw, sampling=Sampling(num_samples=3, seed=7))
    assert torch.equal(torch.get_rng_state(), state)
    b = generate(tiny_model, tokenizer, prompts, **kw, sampling=Sampling(num_samples=3, seed=7))
    c = generate(tiny_model, tokenizer, prompts, **kw, sampling=Sampling(num_samples=3, seed=8))
    assert a == b and a != c and len(a) == 18


def test_cold_sampling_is_greedy_and_prompt_major(tokenizer, tiny_model):
    prompts = _prompts(tokenizer, 5, seed=2)
    greedy = generate(tiny_model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    cold = generate(
        tiny_model,
        tokenizer,
        prompts,
        max_new_tokens=6,
        batch_size=3,
        sampling=Sampling(temperature=1e-4, num_samples=2, seed=0),
    )
    assert cold == [g for g in greedy for _ in range(2)]


def test_sampling_options_are_validated():
    for bad in ({"temperature": 0.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"num_samples": 0}):
        with pytest.raises(ConfigError, match="sampling"):
            Sampling(**bad)


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_runs_on_the_model_device(tokenizer, tiny_model, device):
    model = copy.deepcopy(tiny_model).to(device=device, dtype=torch.float32)
    out = generate(
        model,
        tokenizer,
        _prompts(tokenizer, 3, seed=4),
        max_new_tokens=4,
        batch_size=2,
        sampling=Sampling(num_samples=2, seed=1),
    )
    assert len(out) == 6 and all(isinstance(t, str) for t in out)
