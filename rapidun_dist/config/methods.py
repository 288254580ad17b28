"""The one registry of unlearning methods: what each one is, what it reads, and the rules it puts on the config.

Config validation, `rapidun validate`, the stages and the report read this table; the engine's loss code for a
method lives in `rapidun_dist/unlearn/methods/<name>.py` and takes its declared properties from here (a test
checks the two agree). The retraining baselines are methods too (`runs_on="retrain"`): they train the whole model
again on the rows left after the forget set is removed (rapidun_dist/training/retrain.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rapidun_dist.config.unlearn import UnlearnConfig

RunsOn = Literal["engine", "retrain"]


@dataclass(frozen=True, kw_only=True)
class MethodSpec:
    name: str
    doc: str
    """One line: what the method does (printed by `rapidun validate` and in the report's method table)."""
    runs_on: RunsOn = "engine"
    """engine: LoRA unlearning on the shared engine; retrain: a full fine-tune without the forget rows."""
    uses_influence: bool = False
    """Reads per-sample weights from the weights stage (so unlearning waits for it)."""
    weights_subdir: str = ""
    """Which weights the method reads: weights/ itself ("") or weights/<subdir>/ (an alternative recipe)."""
    uses_retain: bool = True
    """Descends on retain rows (False: their rows in the shared batches are skipped, the batches stay the same)."""
    ascent: bool = True
    """Has a forgetting term on the poisoned answers (False: relabel and retain descent only)."""
    knobs: tuple[str, ...] = ()
    """The `unlearn.*` keys only this method reads (beyond the shared optimisation keys)."""
    zero3: bool = True
    """Runs under ZeRO-3 (False: refused before any model is loaded, with `zero3_reason`)."""
    zero3_reason: str = ""


_SPECS = (
    MethodSpec(
        name="rapidun",
        doc="influence weights (FF - FR for forget rows, RR - RF for retain rows)",
        uses_influence=True,
    ),
    MethodSpec(name="uniform", doc="RapidUn's objective with all weights 1 (GA + GD)"),
    MethodSpec(
        name="self_only",
        doc="influence weights without the cross terms (FF, RR)",
        uses_influence=True,
        weights_subdir="self_only",
    ),
    MethodSpec(name="ga", doc="gradient ascent on the poisoned answers, no retain term", uses_retain=False),
    MethodSpec(name="relabel_only", doc="relabel + retain descent, no ascent", ascent=False),
    MethodSpec(name="graddiff", doc="-mean_F CE + mean_R CE (per-group means)"),
    MethodSpec(
        name="npo",
        doc="sequence-level log-likelihood ratio against the frozen starting model (+ retain CE)",
        knobs=("unlearn.npo_beta",),
    ),
    MethodSpec(
        name="simnpo",
        doc="length-normalised NPO without a reference model (+ retain CE)",
        knobs=("unlearn.simnpo_beta", "unlearn.simnpo_gamma"),
    ),
    MethodSpec(
        name="fisher",
        doc="SalUn saliency: top-p% adapter coordinates by forget/retain Fisher, masking the ascent term only",
        knobs=("unlearn.saliency_keep", "unlearn.saliency_warmup", "unlearn.saliency_rows"),
        zero3=False,
        zero3_reason=(
            "fisher with unlearn.zero_stage=3: its saliency needs whole per-sample LoRA gradients, which "
            "ZeRO-3 partitions across ranks; use unlearn.zero_stage<=2 (the LoRA state is small) or drop fisher"
        ),
    ),
    MethodSpec(
        name="loreun",
        doc="forget weights from the current losses of the whole forget set, refreshed every N steps",
        knobs=("unlearn.loreun_refresh", "unlearn.loreun_tau"),
    ),
    MethodSpec(
        name="rapidun_placebo",
        doc="rapidun's weights shuffled within each pack (same spread, no signal)",
        uses_influence=True,
    ),
    MethodSpec(
        name="retrain",
        doc="full fine-tune of the base model on the training set minus the forget pack (the cost baseline)",
        runs_on="retrain",
    ),
    MethodSpec(
        name="retrain_oracle",
        doc="full fine-tune on the training set minus every poisoned row (needs labels: experiment mode only)",
        runs_on="retrain",
    ),
)

METHOD_SPECS: dict[str, MethodSpec] = {s.name: s for s in _SPECS}
ALL_METHODS: tuple[str, ...] = tuple(METHOD_SPECS)
ENGINE_METHODS: tuple[str, ...] = tuple(n for n, s in METHOD_SPECS.items() if s.runs_on == "engine")
RETRAIN_METHODS: tuple[str, ...] = tuple(n for n, s in METHOD_SPECS.items() if s.runs_on == "retrain")
INFLUENCE_METHODS: tuple[str, ...] = tuple(n for n, s in METHOD_SPECS.items() if s.uses_influence)


def engine_methods(cfg) -> list[str]:
    """The configured methods that run on the unlearning engine (not the retrain baselines)."""
    return [m for m in cfg.methods if METHOD_SPECS[m].runs_on == "engine"]


def run_methods(cfg) -> list[str]:
    """The methods of this run: every configured one in experiment mode; no retrain baselines in clean mode (the
    user's training set carries no labels to retrain without)."""
    return list(cfg.methods) if cfg.mode == "experiment" else engine_methods(cfg)


def uses_influence(cfg) -> bool:
    """Whether any configured method reads the weights stage's outputs."""
    return any(METHOD_SPECS[m].uses_influence for m in cfg.methods)


def check_zero_stage(name: str, zero_stage: int) -> str | None:
    """The one rule for methods and ZeRO stages: the error for `name` at `zero_stage`, None when it runs."""
    spec = METHOD_SPECS[name]
    return spec.zero3_reason if zero_stage == 3 and not spec.zero3 else None


def method_rule_errors(cfg) -> list[str]:
    """What the configured methods refuse in this config (empty when every method can run)."""
    return [e for m in cfg.methods if (e := check_zero_stage(m, cfg.unlearn.zero_stage))]


def idle_knobs(cfg) -> list[str]:
    """Method knobs set away from their default while no configured method reads them (each a line for the
    user: the setting does nothing in this run)."""
    default, out = UnlearnConfig(), []
    for spec in METHOD_SPECS.values():
        if spec.name in cfg.methods:
            continue
        for key in spec.knobs:
            field = key.split(".", 1)[1]
            readers = [s.name for s in METHOD_SPECS.values() if key in s.knobs]
            if getattr(cfg.unlearn, field) != getattr(default, field) and not set(readers) & set(cfg.methods):
                out.append(
                    f"{key}={getattr(cfg.unlearn, field)} is read only by {', '.join(readers)}, not in methods"
                )
    return sorted(set(out))
