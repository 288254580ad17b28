"""A placement guard for the device tests: proves that a stage puts its model and every input on the configured
device, in a way that can fail on a CPU-only machine (where host and device are the same memory).

Inside `placement_guard(device)`:

1. The process default device is `meta` (a `torch.device("meta")` context). A tensor created without an explicit
   device - `torch.zeros(n)`, `torch.tensor(list)`, a model built or loaded outside a `torch.device(...)` context,
   PEFT adapters created that way - lands on meta, holds no data, and fails the checks below or the first op that
   mixes it with real tensors. On a GPU such a tensor would silently land on the CPU.
2. Host batches are marked: `rapidun_dist.data.prompt.pad_batch` (the one host-side batch builder every stage uses)
   returns `HostTensor`s. `.to(device)` (or `.to(other_tensor)`) returns a plain tensor; anything computed from a
   HostTensor stays one; an op mixing a HostTensor with a plain tensor of the computation raises, as a CPU tensor
   meeting a CUDA tensor would. So a batch that is never moved is caught even when the device is the CPU.
3. Every module of every model passed to `watch()` gets a forward pre-hook asserting that each tensor argument and
   each of its own parameters and buffers is on `device` and is not a HostTensor.

What it cannot see on a CPU: a tensor created explicitly on the host (`device="cpu"`) and used on the device
without a move - on a CPU machine that is the device. The GPU run of benchmarks/gpu_check_stages.py covers it.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import torch


class PlacementError(AssertionError):
    """A tensor of the computation is not on the configured device."""


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


def _moves(func, args, kwargs) -> bool:
    """Does this call move a tensor to a device (`.to(device)`, `.to(tensor)`, `.cuda()`)?"""
    if func is torch.Tensor.cuda:
        return True
    if func is not torch.Tensor.to:
        return False
    if "device" in kwargs or any(isinstance(a, torch.Tensor) for a in args[1:]):
        return True
    return any(isinstance(a, (torch.device, str, int)) and not isinstance(a, bool) for a in args[1:])


class HostTensor(torch.Tensor):
    """A batch tensor built on the host and not yet moved to the device."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _moves(func, args, kwargs):
            out = super().__torch_function__(func, types, args, kwargs)
            return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out
        flat = list(_tensors(args)) + list(_tensors(kwargs))
        plain = [t for t in flat if not isinstance(t, HostTensor) and t.dim() > 0]
        if plain and any(isinstance(t, HostTensor) and t.dim() > 0 for t in flat):
            raise PlacementError(
                f"{getattr(func, '__name__', func)}: a host batch tensor (never moved to the device) meets a "
                f"tensor on {plain[0].device}"
            )
        return super().__torch_function__(func, types, args, kwargs)


@dataclass
class Guard:
    device: torch.device
    calls: int = 0
    violations: list[str] = field(default_factory=list)
    handles: list = field(default_factory=list)

    def _fail(self, msg: str) -> None:
        self.violations.append(msg)
        raise PlacementError(msg)

    def _check(self, where: str, t: torch.Tensor) -> None:
        if isinstance(t, HostTensor):
            self._fail(f"{where}: a host batch tensor {tuple(t.shape)} was never moved to {self.device}")
        if t.device != self.device:
            self._fail(f"{where}: tensor {tuple(t.shape)} on {t.device}, expected {self.device}")

    def watch(self, model) -> None:
        """Pre-hooks on every module of `model`: inputs, parameters and buffers on the device."""
        for name, module in model.named_modules():
            self.handles.append(
                module.register_forward_pre_hook(self._hook(name or "model"), with_kwargs=True)
            )

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            self.calls += 1
            for t in _tensors(args):
                self._check(f"{name} input", t)
            for t in _tensors(kwargs):
                self._check(f"{name} input", t)
            for pname, p in list(module.named_parameters(recurse=False)) + list(
                module.named_buffers(recurse=False)
            ):
                self._check(f"{name}.{pname}", p)

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _host_pad_batch(original):
    def pad_batch(*args, **kwargs):
        with torch.device("cpu"):  # the host, named: then marked as not yet on the device
            out = original(*args, **kwargs)
        return {k: v.as_subclass(HostTensor) for k, v in out.items()}

    return pad_batch


@contextlib.contextmanager
def placement_guard(device, monkeypatch, *, watch_models=None, meta_default: bool = True):
    """Run the body with the default device on meta (unless `meta_default=False`: hooks and host marking only),
    host batches marked, and `watch_models(guard)` (a callable installed by the caller) wrapping whatever loads
    a model so that every model gets watched."""
    from rapidun_dist.data import prompt

    guard = Guard(torch.device(device))
    _replace_everywhere(prompt.pad_batch, _host_pad_batch(prompt.pad_batch), "pad_batch", monkeypatch)
    if watch_models is not None:
        watch_models(guard)
    try:
        with torch.device("meta") if meta_default else contextlib.nullcontext():
            yield guard
    finally:
        guard.close()


def watch_loaded_models(guard: Guard, monkeypatch) -> None:
    """Watch every model the stages build or load (the loaders in rapidun_dist.models.loading, the PEFT wrapper
    and DeepSpeed's engine module), wherever they were imported."""
    import rapidun_dist.models.loading as loading

    def wrap(fn, pick):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            guard.watch(pick(out))
            return out

        return wrapped

    import peft

    original_peft = peft.get_peft_model

    def get_peft_model(*args, **kwargs):  # the unlearning engine wraps its model here
        out = original_peft(*args, **kwargs)
        guard.watch(out)
        return out

    monkeypatch.setattr(peft, "get_peft_model", get_peft_model)
    targets = {
        "load_saved": lambda out: out[0],
        "load_pretrained": lambda out: out,
        "build_tiny_model": lambda out: out,
        "with_adapter": lambda out: out,
    }
    for name, pick in targets.items():
        original = getattr(loading, name)
        _replace_everywhere(original, wrap(original, pick), name, monkeypatch)


def _replace_everywhere(original, replacement, name: str, monkeypatch) -> None:
    """Point every rapidun_dist module's `name` that is `original` (imported by name or not) at `replacement`."""
    modules = [m for m in list(sys.modules.values()) if getattr(m, "__name__", "").startswith("rapidun_dist")]
    for mod in [m for m in modules if getattr(m, name, None) is original]:
        monkeypatch.setattr(mod, name, replacement)


def stage_guard(monkeypatch):
    """guard(device) -> the placement guard as a context, with every model the stages load watched (import the
    modules whose loaders should be wrapped before calling this)."""

    def make(device: str):
        return placement_guard(
            device, monkeypatch, watch_models=lambda g: watch_loaded_models(g, monkeypatch)
        )

    return make


def assert_clean(guard: Guard) -> None:
    """No placement violation, and the check was not vacuous."""
    assert guard.violations == []
    assert guard.calls > 0, "no forward ran under the guard: the check would have been vacuous"
