"""Forward/backward capture of linear-layer inputs x_t and output gradients g_t = dL/dy_t.

Works whether the weight is trainable or frozen (the output only needs to be part of the graph;
`enable_input_grads` makes the embeddings require grad so a fully frozen model still back-propagates),
under PEFT (the base linear inside a LoRA wrapper is tracked by its own name) and under ZeRO-3
(hooks see full activations; `param.grad` is never read).
"""

from __future__ import annotations

import torch
from torch import nn


def tracked_linears(model: nn.Module, target_modules: list[str]) -> dict[str, nn.Linear]:
    """Linear layers whose qualified name ends with one of `target_modules` (LoRA base layers resolved)."""
    found = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or ".lora_" in name:
            continue
        short = name[: -len(".base_layer")] if name.endswith(".base_layer") else name
        if short.split(".")[-1] in target_modules:
            found[short] = mod
    if not found:
        raise ValueError(f"no nn.Linear named like {target_modules} in the model")
    return found


class GradientCapture:
    """Context manager: records, per tracked layer, the input [B, T, d_in] and the output gradient [B, T, d_out]."""

    def __init__(self, layers: dict[str, nn.Linear]):
        self.layers = layers
        self.inputs: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self._handles = []

    def _forward_hook(self, name):
        def hook(module, args, output):
            self.inputs[name] = args[0].detach()
            if output.requires_grad:
                output.register_hook(lambda g: self.grads.__setitem__(name, g.detach()))

        return hook

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._forward_hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()

    def clear(self):
        self.inputs.clear()
        self.grads.clear()


def enable_input_grads(model: nn.Module):
    """Make the input embeddings' output require grad (for frozen models). Returns the hook handle."""
    emb = model.get_input_embeddings()
    return emb.register_forward_hook(lambda m, a, out: out.requires_grad_(True))
