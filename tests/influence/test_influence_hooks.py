"""Hook-time projection: frozen or trainable weights, PEFT LoRA, shared-input groups, what the hooks keep,
and the device every tensor of the pass lives on."""

from __future__ import annotations

import pytest
import torch
from conftest import influence_cfg, random_examples, tiny_llama

from rapidun_dist.influence.features import TokenwiseExtractor
from rapidun_dist.influence.hooks import HookProjector, shared_input_groups, tracked_linears
from rapidun_dist.influence.projection import ProjectionBank
from rapidun_dist.kernels import TokenLayout

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def extractor64(model, **kw) -> TokenwiseExtractor:
    ext = TokenwiseExtractor(model, influence_cfg(**kw), pad_id=0)
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


def test_groups_are_qkv_and_gate_up_siblings():
    model = tiny_llama(layers=2, seed=0)
    groups = shared_input_groups(
        tracked_linears(model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    )
    leaves = sorted(tuple(n.split(".")[-1] for n in g) for g in groups)
    assert leaves == sorted(
        [("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)] * 2
    )
    assert all(len({n.rsplit(".", 1)[0] for n in g}) == 1 for g in groups)  # never across blocks


def test_stacked_projection_equals_one_projection_per_layer():
    model = tiny_llama(layers=2, seed=5)
    examples = random_examples(4, seed=6)
    grouped = extractor64(model)
    single = extractor64(model)
    single.groups = [[n] for n in single.layers]
    single.proj = grouped.proj  # rebuilds the bank with singleton groups, same matrices
    assert len(grouped.groups) < len(single.groups)
    torch.testing.assert_close(grouped(examples), single(examples), atol=1e-12, rtol=0)


class _TwoInputs(torch.nn.Module):
    """q_proj and k_proj are siblings by name but read different tensors: the group guess must not leak."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj = torch.nn.Linear(6, 5).double(), torch.nn.Linear(6, 4).double()

    def forward(self, x):
        return self.q_proj(x).sum() + (self.k_proj(2 * x + 1) ** 2).sum()


def test_a_sibling_with_another_input_is_projected_on_its_own():
    model = _TwoInputs()
    layers = tracked_linears(model, ["q_proj", "k_proj"])
    assert shared_input_groups(layers) == [["q_proj", "k_proj"]]
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    layout = TokenLayout.from_mask(torch.tensor([[True, False, True], [True, True, True]]))
    mats = {
        n: (torch.randn(3, 6).double(), torch.randn(2, m.out_features).double()) for n, m in layers.items()
    }
    results = []
    for groups in ([["q_proj", "k_proj"]], [["q_proj"], ["k_proj"]]):
        with HookProjector(layers, ProjectionBank(mats, groups), layout, backend="torch") as hp:
            model(x).backward()
        results.append(hp.sums)
    for name in layers:
        torch.testing.assert_close(results[0][name], results[1][name], atol=1e-12, rtol=0)


def test_hooks_keep_only_k_numbers_per_tracked_token_between_passes():
    model = tiny_llama(layers=1, seed=2)
    ext = extractor64(model, k_in=4, k_out=3)
    examples = random_examples(3, seed=1)
    held = []
    real_backward = HookProjector._backward

    def spy(self, name, v, grad):
        held.append((name, tuple(v.shape)))
        return real_backward(self, name, v, grad)

    HookProjector._backward = spy
    try:
        feats = ext(examples)
    finally:
        HookProjector._backward = real_backward
    n_tracked = sum(
        sum(1 for t in range(len(e["labels"]) - 1) if e["labels"][t + 1] != -100) for e in examples
    )
    assert sorted(n for n, _ in held) == sorted(ext.layers)  # one backward per layer, each with its v
    assert {shape for _, shape in held} == {(n_tracked, 4)}  # [N, k_in]: nothing of size d
    assert feats.shape == (3, ext.dim)


@pytest.mark.parametrize("device", DEVICES)
def test_every_tensor_of_the_pass_is_on_the_model_device(device):
    model = tiny_llama(layers=1, seed=3, dtype=torch.float32).to(device)
    ext = TokenwiseExtractor(model, influence_cfg(), pad_id=0)
    seen = []

    def check(module, args):
        for t in list(args) + list(module.parameters(recurse=False)):
            if isinstance(t, torch.Tensor):
                assert t.device.type == device, f"{type(module).__name__} got a tensor on {t.device}"
                seen.append(module)

    handles = [m.register_forward_pre_hook(check) for m in model.modules()]
    real_backward = HookProjector._backward

    def spy(self, name, v, grad):
        assert v.device.type == grad.device.type == self.layout.rows.device.type == device
        out = real_backward(self, name, v, grad)
        assert self.sums[name].device.type == device
        return out

    HookProjector._backward = spy
    try:
        feats = ext(random_examples(2, seed=2))
    finally:
        HookProjector._backward = real_backward
        for h in handles:
            h.remove()
    assert feats.device.type == device and seen
    assert all(p.device.type == device for mats in ext.proj.values() for p in mats)


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
