"""Hooks capture x_t and g_t whether weights are frozen or trainable, and under a PEFT LoRA wrapper."""

from __future__ import annotations

import torch
from conftest import influence_cfg, random_examples, tiny_llama

from rapidun_dist.influence.features import TokenwiseExtractor
from rapidun_dist.influence.hooks import GradientCapture, enable_input_grads, tracked_linears


def extractor64(model) -> TokenwiseExtractor:
    ext = TokenwiseExtractor(model, influence_cfg(), pad_id=0)
    ext.proj = {n: (p.double(), q.double()) for n, (p, q) in ext.proj.items()}
    return ext


def test_frozen_weights_give_the_same_features_as_trainable():
    model = tiny_llama(layers=1, seed=2)
    examples = random_examples(3, seed=4)
    trainable = extractor64(model)(examples)
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = extractor64(model)(examples)
    torch.testing.assert_close(frozen, trainable, atol=1e-12, rtol=0)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_capture_records_inputs_and_output_grads_of_a_frozen_model():
    model = tiny_llama(layers=1, seed=2)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = tracked_linears(model, ["down_proj"])
    ids = torch.tensor([random_examples(1, seed=1)[0]["input_ids"]])
    handle = enable_input_grads(model)
    try:
        with GradientCapture(layers) as cap:
            out = model(input_ids=ids)
            out.logits[0, -1, 3].backward()
            (name,) = layers
            x, g = cap.inputs[name], cap.grads[name]
    finally:
        handle.remove()
    assert x.shape == (1, ids.shape[1], 32) and g.shape == (1, ids.shape[1], 16)
    # d logit / d y_t: only the last position feeds the last logit, through the final norm and lm_head
    assert float(g[0, :-1].abs().max()) == 0.0 and float(g[0, -1].abs().max()) > 0
    assert not cap.inputs and not cap.grads  # cleared on exit


def test_peft_lora_tracks_base_layers_and_matches_the_plain_model():
    from peft import LoraConfig, get_peft_model

    plain = tiny_llama(layers=1, seed=6)
    examples = random_examples(2, seed=8)
    ref_ext = extractor64(plain)
    ref = ref_ext(examples)
    lora = get_peft_model(
        tiny_llama(layers=1, seed=6),
        LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    ext = extractor64(lora)
    assert len(ext.layers) == len(ref_ext.layers) == 7
    assert all(type(m) is torch.nn.Linear for m in ext.layers.values())
    assert not any("lora_" in n or n.endswith("base_layer") for n in ext.layers)
    # same projections by layer (names carry the PEFT prefix); LoRA B starts at zero, so the gradients agree
    assert all(n.startswith("base_model.model.") for n in ext.layers)
    ext.proj = {n: ref_ext.proj[n.removeprefix("base_model.model.")] for n in ext.proj}
    torch.testing.assert_close(ext(examples), ref, atol=1e-10, rtol=0)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # the wrapper's trainable set is restored
    assert all(p.grad is None for p in lora.parameters())
