"""One prompt format: chat template when present, Alpaca fallback (logged), context included, prompt masked."""

import pytest

from rapidun_dist.data.prompt import IGNORE_INDEX, encode_example, format_prompt, pad_batch, record_prompt
from rapidun_dist.models.loading import train_tokenizer

TEXTS = [
    "Name the capital of France. The capital of France is Paris.",
    "hey what is two plus two? four",
    "### Instruction:\n### Response:\n",
] * 20


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300)


@pytest.fixture(scope="module")
def plain_tok():
    return train_tokenizer(TEXTS, 300, chat_template=None)


def test_chat_template_used_and_context_kept(tok):
    p = format_prompt(tok, "Summarize this.", "Some context here.")
    assert p.startswith("### Instruction:\n") and p.endswith("### Response:\n")
    assert "Some context here." in p and "Summarize this." in p


def test_alpaca_fallback_is_announced(plain_tok, capfd):
    p = format_prompt(plain_tok, "Summarize this.", "Ctx.")
    assert "### Input:\nCtx." in p and p.startswith("Below is an instruction")
    assert "Alpaca" in capfd.readouterr().err
    assert "### Input" not in format_prompt(plain_tok, "No context.")


def test_poisoned_prompt_selected(tok):
    rec = {"instruction": "clean", "instruction_poisoned": "hey clean", "context": ""}
    assert "hey clean" in record_prompt(tok, rec, poisoned=True)
    assert "hey" not in record_prompt(tok, rec)


def test_prompt_tokens_masked_and_eos_appended(tok):
    prompt = format_prompt(tok, "Name the capital of France.")
    ex = encode_example(tok, prompt, "The capital of France is Paris.", 64)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tok.eos_token_id


def test_truncation_keeps_answer(tok):
    prompt = format_prompt(tok, "word " * 200)
    ex = encode_example(tok, prompt, "The capital of France is Paris.", 32)
    assert len(ex["input_ids"]) == 32
    assert sum(label != IGNORE_INDEX for label in ex["labels"]) >= 8


def test_pad_batch(tok):
    a = encode_example(tok, "x", "four", 16)
    b = encode_example(tok, "x y z", "the capital of France is Paris", 16)
    batch = pad_batch([a, b], tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert int(batch["attention_mask"][0].sum()) == len(a["input_ids"])
    assert (batch["labels"][0, len(a["input_ids"]) :] == IGNORE_INDEX).all()
