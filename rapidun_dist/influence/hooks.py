"""Token projection at hook time (docs/DESIGN.md section 5): nothing of size d per token outlives its hook.

For every tracked linear y = W x, the forward hook projects the input once and keeps only the tracked
tokens' v_t = unit(P_in x_t) (k_in numbers per token); it registers a hook on the output that, during the
backward pass, projects the output gradient g_t = dL/dy_t to u_t = unit(P_out g_t) and adds the per-sample
sums of u_t v_t^T ([B, k_out, k_in]; the kernel `projected_outer_sums`). Layers that read the same input
(q/k/v, gate/up: `shared_input_groups`) are projected by one GEMM with their stacked P_in.

This works whether W is trainable or frozen (the output only needs to be part of the graph;
`enable_input_grads` makes the embeddings require grad so a fully frozen model still back-propagates),
under PEFT (the base linear inside a LoRA wrapper is tracked by its own name) and under ZeRO-3 (hooks see
full activations; `param.grad` is never read).
"""

from __future__ import annotations

import torch
from torch import nn

from rapidun_dist.core.errors import StageError
from rapidun_dist.influence.projection import ProjectionBank
from rapidun_dist.kernels import (
    TokenLayout,
    projected_outer_sums,
    segment_outer_sums,
    unit_projection,
    unit_rows,
)
from rapidun_dist.kernels._dispatch import accum_dtype, use_triton

# Sibling projections that read one input in the Llama / Mistral / Qwen families.
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


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


def shared_input_groups(layers: dict[str, nn.Linear]) -> list[list[str]]:
    """Tracked layers grouped by the input they read: siblings (same parent, one `SHARED_INPUTS` set, same
    d_in) form a group, every other layer is its own. At run time a member that receives a different
    tensor than its group's is projected on its own, so a wrong guess costs time, never correctness."""
    groups: dict[tuple, list[str]] = {}
    for name, mod in layers.items():
        parent, _, leaf = name.rpartition(".")
        family = next((i for i, fam in enumerate(SHARED_INPUTS) if leaf in fam), None)
        key = (parent, family, mod.in_features) if family is not None else (name,)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def enable_input_grads(model: nn.Module):
    """Make the input embeddings' output require grad (for frozen models). Returns the hook handle."""
    emb = model.get_input_embeddings()
    return emb.register_forward_hook(lambda m, a, out: out.requires_grad_(True))


class HookProjector:
    """Context manager over one forward + backward pass: `sums[name]` [B, k_out, k_in] per tracked layer.

    With `directions` ({name: D_l [k_out, k_in]}), the backward hooks also accumulate the per-token
    scores `raw_scores` [N, L] = u_tl^T D_l v_tl (torch path: u is needed per token), in layer order.
    """

    def __init__(
        self,
        layers: dict[str, nn.Linear],
        bank: ProjectionBank,
        layout: TokenLayout,
        *,
        backend: str = "auto",
        directions: dict[str, torch.Tensor] | None = None,
    ):
        self.layers, self.bank, self.layout, self.backend = layers, bank, layout, backend
        self.directions = directions
        self.group_of = {n: i for i, grp in enumerate(bank.groups) for n in grp}
        self.index = {n: i for i, n in enumerate(layers)}
        self.sums: dict[str, torch.Tensor] = {}
        self.raw_scores: torch.Tensor | None = None
        self._pending: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self._seen: set[str] = set()
        self._handles = []

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._forward_hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        self._pending.clear()

    def _forward_hook(self, name: str):
        def hook(module, args, output):
            if not output.requires_grad:  # no backward will follow (torch.no_grad, or nothing requires grad)
                return
            if name in self._seen:
                raise StageError(
                    f"tracked layer {name} ran twice in one pass: a module shared between positions, or gradient "
                    "checkpointing re-running the forward during backward (extract features in model.eval())"
                )
            self._seen.add(name)
            v = self._input_projection(name, args[0])
            output.register_hook(lambda g, name=name, v=v: self._backward(name, v, g))

        return hook

    def _input_projection(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """v = unit(P_in x) at the tracked rows [N, k_in]; one stacked GEMM serves a whole group."""
        gi = self.group_of[name]
        pending = self._pending.get(gi)
        if pending is not None and pending[0] is x and name in pending[1]:
            v = pending[1].pop(name)
            if not pending[1]:
                del self._pending[gi]
            return v
        members = self.bank.groups[gi]
        p_in, sizes = self.bank.p_in_stacked(gi, self._proj_dtype(x))
        units = self._unit_parts(x.reshape(-1, x.shape[-1]), p_in, sizes)
        parts = dict(zip(members, units, strict=True))
        v = parts.pop(name)
        if parts:
            self._pending[gi] = (x, parts)
        return v

    def _proj_dtype(self, x: torch.Tensor) -> torch.dtype:
        return x.dtype if self._triton(x) else accum_dtype(x.dtype)

    def _triton(self, t: torch.Tensor) -> bool:
        return self.directions is None and use_triton(self.backend, t)

    def _unit_parts(self, x_RD: torch.Tensor, p_in: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """Per member: unit rows of its slice of x P^T at the tracked rows, in P's dtype (the one the backward
        side reads: the model's dtype for the Triton kernel, the accumulation dtype for the reference)."""
        z = (x_RD.to(p_in.dtype) @ p_in.T)[self.layout.rows]
        acc = accum_dtype(z.dtype)
        return [unit_rows(part.to(acc)).to(p_in.dtype) for part in z.split(sizes, dim=1)]

    def _backward(self, name: str, v: torch.Tensor, grad: torch.Tensor) -> None:
        g = grad.reshape(-1, grad.shape[-1])
        if self.directions is None:
            p_out = self.bank.p_out(name, g.dtype if self._triton(g) else accum_dtype(g.dtype))
            self.sums[name] = projected_outer_sums(g, v, self.layout, p_out, backend=self.backend)
            return
        p_out = self.bank.p_out(name, accum_dtype(g.dtype))
        u = unit_projection(g, p_out, self.layout.rows)
        v = v.to(u.dtype)
        self.sums[name] = segment_outer_sums(u, v, self.layout)
        if self.raw_scores is None:
            self.raw_scores = u.new_zeros(self.layout.n_tokens, len(self.layers))
        direction = self.directions[name].to(device=u.device, dtype=u.dtype)
        self.raw_scores[:, self.index[name]] = ((u @ direction) * v).sum(dim=1)
