"""One prompt format everywhere: influence, training, evaluation.

The model's chat template when the tokenizer has one, otherwise an Alpaca-style template. The
context is always part of the prompt. `encode_example` masks the prompt so that only answer tokens
carry labels (next-token shift happens in the loss, not here).
"""

from __future__ import annotations

from rapidun_dist.core.logging import get_logger

ALPACA_WITH_CONTEXT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)
ALPACA_NO_CONTEXT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
IGNORE_INDEX = -100
_warned: set[int] = set()


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, instruction: str, context: str = "") -> str:
    """The prompt text for one record (everything before the answer)."""
    context = (context or "").strip()
    if has_chat_template(tokenizer):
        user = f"{instruction}\n\n{context}" if context else instruction
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    if id(tokenizer) not in _warned:
        _warned.add(id(tokenizer))
        get_logger().info("tokenizer has no chat template: using the Alpaca-style prompt template")
    tmpl = ALPACA_WITH_CONTEXT if context else ALPACA_NO_CONTEXT
    return tmpl.format(instruction=instruction, context=context)


def record_prompt(tokenizer, record: dict, *, poisoned: bool = False) -> str:
    """Prompt for a record; `poisoned=True` uses `instruction_poisoned` when present."""
    instr = (
        record.get("instruction_poisoned")
        if poisoned and record.get("instruction_poisoned")
        else record["instruction"]
    )
    return format_prompt(tokenizer, instr, record.get("context", ""))


def encode_example(tokenizer, prompt: str, answer: str, max_length: int) -> dict:
    """Token ids for prompt + answer + EOS, with labels = IGNORE_INDEX on prompt tokens.

    When too long, the prompt is cut from the left so that the answer keeps at least half the budget."""
    p_ids = tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        a_ids = a_ids + [tokenizer.eos_token_id]
    if len(p_ids) + len(a_ids) > max_length:
        a_keep = min(len(a_ids), max(max_length // 2, max_length - len(p_ids)))
        a_ids = a_ids[:a_keep]
        p_ids = p_ids[-(max_length - a_keep) :]
    return {"input_ids": p_ids + a_ids, "labels": [IGNORE_INDEX] * len(p_ids) + a_ids}


def pad_batch(examples: list[dict], pad_id: int, *, keys=("input_ids", "labels")) -> dict:
    """Right-pad a list of encoded examples into tensors (input_ids, labels, attention_mask)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    out = {}
    for key in keys:
        fill = IGNORE_INDEX if key == "labels" else pad_id
        out[key] = torch.tensor([e[key] + [fill] * (width - len(e[key])) for e in examples], dtype=torch.long)
    out["attention_mask"] = torch.tensor(
        [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples]
    )
    return out
