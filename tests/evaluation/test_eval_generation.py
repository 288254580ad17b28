"""generate(): batched greedy generation with left padding equals a one-prompt-at-a-time greedy loop."""

from __future__ import annotations

import random

import pytest
import torch

from rapidun_dist.core.errors import ConfigError
from rapidun_dist.data.prompt import format_prompt
from rapidun_dist.evaluation.generation import generate


def manual_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Reference: no batching, no padding, no KV cache; full forward pass per new token."""
    ids = tokenizer(prompt)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
            nxt = int(logits.argmax())
            new.append(nxt)
            if nxt == tokenizer.eos_token_id:
                break
    return tokenizer.decode(new, skip_special_tokens=True)


def random_prompts(tokenizer, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = "the fox river moon sea poem colors capital France aliens galaxy name write summarize".split()
    return [format_prompt(tokenizer, " ".join(rng.choices(words, k=rng.randint(1, 12)))) for _ in range(n)]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_generate_matches_manual_loop(tokenizer, tiny_model, batch_size):
    prompts = random_prompts(tokenizer, 7, seed=batch_size)
    expected = [manual_greedy(tiny_model, tokenizer, p, 6) for p in prompts]
    got = generate(tiny_model, tokenizer, prompts, max_new_tokens=6, batch_size=batch_size)
    assert got == expected
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1  # padding really happened


def test_generate_stops_at_eos_and_returns_only_new_text(tokenizer, tiny_model):
    prompts = random_prompts(tokenizer, 3, seed=11)
    with torch.no_grad():  # force EOS as the first greedy token: the answer must be empty
        bias = tiny_model.lm_head.weight.new_zeros(len(tokenizer))
        bias[tokenizer.eos_token_id] = 1e4
        tiny_model.lm_head.bias = torch.nn.Parameter(bias)
    try:
        assert generate(tiny_model, tokenizer, prompts, max_new_tokens=5, batch_size=2) == ["", "", ""]
    finally:
        tiny_model.lm_head.bias = None
    out = generate(tiny_model, tokenizer, prompts, max_new_tokens=5, batch_size=2)
    assert all(not o.startswith(p[:10]) for o, p in zip(out, prompts, strict=True))


def test_generate_restores_tokenizer_and_mode(tokenizer, tiny_model):
    pad, side = tokenizer.pad_token, tokenizer.padding_side
    tokenizer.pad_token = None  # falls back to EOS while generating
    tiny_model.train()
    try:
        out = generate(
            tiny_model, tokenizer, random_prompts(tokenizer, 4, seed=3), max_new_tokens=3, batch_size=4
        )
        assert len(out) == 4
        assert tokenizer.pad_token is None and tokenizer.padding_side == side
        assert tiny_model.training
    finally:
        tokenizer.pad_token = pad
        tiny_model.eval()


def test_generate_peft_model(tokenizer, model_factory):
    from peft import LoraConfig, get_peft_model

    base = model_factory(seed=5)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    prompts = random_prompts(tokenizer, 5, seed=7)
    expected = [manual_greedy(model, tokenizer, p, 5) for p in prompts]
    assert generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=4) == expected
    with model.disable_adapter():  # the adapter is live: the base model answers differently
        assert [manual_greedy(model, tokenizer, p, 5) for p in prompts] != expected


def test_generate_rejects_bad_arguments(tokenizer, tiny_model):
    assert generate(tiny_model, tokenizer, [], max_new_tokens=3, batch_size=2) == []
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate(tiny_model, tokenizer, ["x"], max_new_tokens=0, batch_size=2)
