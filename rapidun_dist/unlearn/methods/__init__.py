"""Every unlearning method, one module each, on the one engine and loop (docs/DESIGN.md section 7).

`build_method(name, ...)` is all the engine knows: it never names a method. A method module owns its loss
terms, its weights and its hooks (`base.Method`). What each method is (its doc, whether it reads the weights, its ZeRO rule)
is declared once in the registry, `rapidun_dist.config.methods`; the retraining baselines are registered there
too but are not engine methods (they train the whole model again, rapidun_dist/training/retrain.py)."""

from __future__ import annotations

from rapidun_dist.config.methods import ENGINE_METHODS
from rapidun_dist.config.methods import check_zero_stage as zero_stage_problem
from rapidun_dist.core.errors import ConfigError
from rapidun_dist.unlearn.methods.base import BatchShape, ForgetTerms, Method, MethodContext
from rapidun_dist.unlearn.methods.fisher import Fisher
from rapidun_dist.unlearn.methods.ga import GA
from rapidun_dist.unlearn.methods.graddiff import GradDiff
from rapidun_dist.unlearn.methods.loreun import LoReUn
from rapidun_dist.unlearn.methods.npo import NPO
from rapidun_dist.unlearn.methods.rapidun import RapidUn
from rapidun_dist.unlearn.methods.rapidun_placebo import RapidUnPlacebo
from rapidun_dist.unlearn.methods.relabel_only import RelabelOnly
from rapidun_dist.unlearn.methods.self_only import SelfOnly
from rapidun_dist.unlearn.methods.simnpo import SimNPO
from rapidun_dist.unlearn.methods.uniform import Uniform

_ALL = (RapidUn, Uniform, SelfOnly, GA, RelabelOnly, GradDiff, NPO, SimNPO, Fisher, LoReUn, RapidUnPlacebo)
METHODS: dict[str, type[Method]] = {m.name: m for m in _ALL}
if set(METHODS) != set(ENGINE_METHODS):  # the registry and the loss code must name the same methods
    raise ImportError(f"engine methods {sorted(METHODS)} != registry {sorted(ENGINE_METHODS)}")
__all__ = ["METHODS", "BatchShape", "ForgetTerms", "Method", "MethodContext", "build_method", "method_class"]


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(
            f"method {name!r} does not run on the unlearning engine; known: {', '.join(METHODS)}"
        )
    return METHODS[name]


def build_method(name: str, u, shape: BatchShape, n_forget: int, n_retain: int) -> Method:
    return method_class(name)(u, shape, n_forget, n_retain)


def check_zero_stage(name: str, zero_stage: int) -> None:
    """Raise the registry's ZeRO rule for `name` (rapidun_dist/validate.py checks the same before any stage)."""
    method_class(name)
    problem = zero_stage_problem(name, zero_stage)
    if problem:
        raise ConfigError(f"method {problem}")
