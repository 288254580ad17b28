"""gpu_proof section 4, the 8B shape: a Llama-3-8B-shaped model (32 layers, hidden 4,096, random weights, no
download) built on the device in bf16, run at the settings of configs/llama3_8b_dolly15k.yaml:

- token-wise extraction at its influence.k_in, k_out, batch_size and model.max_length (tokens/s, peak memory;
  the feature width is 7 x 32 x k_out x k_in = 229,376);
- one LoRA step (unlearn.lora_r, lora_alpha, target_modules) with gradient checkpointing, at one GPU's share of
  unlearn.batch_size on 8 GPUs, AdamW on the adapter (seconds, peak memory);
- one batched greedy generation at eval.batch_size and eval.max_new_tokens (new tokens/s).

The dry run builds a tiny shape (2 layers, hidden 64) with the same code, on the CPU in fp32.
"""

from __future__ import annotations

import torch
from gpu_check import random_examples
from proof_common import REPO, Section, peak_gib, wall_ms

LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0}  # fmt: skip
TINY = {"hidden_size": 64, "intermediate_size": 224, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 1, "vocab_size": 512, "rope_theta": 500000.0}  # fmt: skip
GPUS_PER_NODE = 8  # the config's launch line: torchrun --nproc_per_node 8


def run(sec: Section, device: torch.device, dry_run: bool) -> None:
    from rapidun_dist.config import load_config

    cfg = load_config(REPO / "configs" / "llama3_8b_dolly15k.yaml")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = TINY if dry_run else LLAMA3_8B
    model = sec.step("build", build, sec, shape, device, dtype, cfg.model.max_length)
    if model is None:
        return
    sec.step("extraction", extraction, sec, model, cfg, shape, device)
    sec.step("generation", generation, sec, model, cfg, shape, device)  # before LoRA wraps the model
    sec.step("lora_step", lora_step, sec, model, cfg, shape, device)


def build(sec: Section, shape: dict, device: torch.device, dtype: torch.dtype, max_length: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **shape, max_position_embeddings=max(8192, 2 * max_length), tie_word_embeddings=False
    )
    torch.manual_seed(0)
    with torch.device(device):
        model, gib = peak_gib(lambda: LlamaForCausalLM._from_config(config, dtype=dtype), device)
    n_params = sum(p.numel() for p in model.parameters())
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    devices = sorted({p.device.type for p in model.parameters()})
    ok = dtypes == [str(dtype)] and devices == [device.type]
    sec.check("build", ok, params=n_params, dtypes=dtypes, devices=devices, weights_gib=gib)
    return model.eval() if ok else None


def extraction(sec: Section, model, cfg, shape: dict, device: torch.device) -> None:
    from rapidun_dist.influence import features

    batch, length = cfg.influence.batch_size, cfg.model.max_length
    examples = random_examples(batch, length, shape["vocab_size"])
    ext = features.make_extractor(model, cfg.influence, pad_id=0)
    feats, gib = peak_gib(lambda: ext(examples), device)
    ms = wall_ms(lambda: ext(examples), device, reps=2)
    n_tok = sum(int(features.answer_positions(torch.tensor([e["labels"]])).sum()) for e in examples)
    want = len(ext.layers) * cfg.influence.k_out * cfg.influence.k_in
    ok = tuple(feats.shape) == (batch, want) and bool(torch.isfinite(feats).all()) and feats.device == device
    figures = {"batch": batch, "length": length, "k_in": cfg.influence.k_in, "k_out": cfg.influence.k_out,
               "feature_width": want, "layers_tracked": len(ext.layers), "answer_tokens": n_tok, "ms": round(ms, 2),
               "tokens_per_s": round(n_tok / ms * 1e3, 1), "peak_gib": gib}  # fmt: skip
    sec.figure("extraction", figures)
    sec.check("extraction", ok, shape=list(feats.shape), **figures)


def lora_step(sec: Section, model, cfg, shape: dict, device: torch.device) -> None:
    from peft import LoraConfig, get_peft_model

    u = cfg.unlearn
    lora = LoraConfig(r=u.lora_r, lora_alpha=u.lora_alpha, lora_dropout=u.lora_dropout,
                      target_modules=list(u.target_modules), task_type="CAUSAL_LM")  # fmt: skip
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    peft_model = get_peft_model(model, lora).train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=u.lr)
    per_gpu = max(1, u.batch_size // GPUS_PER_NODE)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, shape["vocab_size"], (per_gpu, cfg.model.max_length), generator=gen).to(device)

    def step():
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    loss, gib = peak_gib(step, device)
    ms = wall_ms(step, device, reps=1)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    figures = {"per_gpu_batch": per_gpu, "length": cfg.model.max_length, "lora_r": u.lora_r,
               "trainable_params": trainable, "step_ms": round(ms, 1),
               "tokens_per_s": round(per_gpu * cfg.model.max_length / ms * 1e3, 1), "peak_gib": gib}  # fmt: skip
    sec.figure("lora_step", figures)
    sec.check(
        "lora_step",
        bool(torch.isfinite(loss)) and model.is_gradient_checkpointing,
        loss=float(loss),
        **figures,
    )


def generation(sec: Section, model, cfg, shape: dict, device: torch.device) -> None:
    from transformers import GenerationConfig

    from rapidun_dist.evaluation.generation import left_padded

    batch, new = cfg.eval.batch_size, cfg.eval.max_new_tokens
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, shape["vocab_size"], (int(n),), generator=gen).tolist()
               for n in torch.randint(32, 129, (batch,), generator=gen)]  # fmt: skip
    ids, mask = left_padded(prompts, 0, device)
    gcfg = GenerationConfig(
        max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None
    )

    def run_generate():
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, generation_config=gcfg)

    out, gib = peak_gib(run_generate, device)
    ms = wall_ms(run_generate, device, reps=1)
    figures = {"batch": batch, "new_tokens": new, "ms": round(ms, 1),
               "new_tokens_per_s": round(batch * new / ms * 1e3, 1), "peak_gib": gib}  # fmt: skip
    sec.figure("generation", figures)
    sec.check(
        "generation", tuple(out.shape) == (batch, ids.shape[1] + new) and out.device == device, **figures
    )
