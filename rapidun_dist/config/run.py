"""`RunConfig`, the whole config (one YAML file), and the rules that tie sections together."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from rapidun_dist.config.attribute import AttributeConfig
from rapidun_dist.config.checks import check, check_literal
from rapidun_dist.config.data import DataConfig
from rapidun_dist.config.distributed import DistributedConfig
from rapidun_dist.config.eval import EvalConfig
from rapidun_dist.config.find_poison import FindPoisonConfig
from rapidun_dist.config.influence import InfluenceConfig
from rapidun_dist.config.methods import ALL_METHODS
from rapidun_dist.config.model import ModelConfig
from rapidun_dist.config.train import TrainConfig
from rapidun_dist.config.unlearn import UnlearnConfig
from rapidun_dist.config.weights import WeightsConfig

Mode = Literal["experiment", "clean"]


@dataclass(kw_only=True)
class RunConfig:
    """A run: its mode, folder, seed and methods, and one section per part of the pipeline."""

    mode: Mode = "experiment"
    """experiment: poison, implant, clean and compare (labels known); clean: the user's own model and data."""
    run_dir: str = "runs/default"
    """The run's folder (data, model, features, weights, adapters, report, manifest.json), relative to the launch
    directory; a rerun skips every stage whose outputs there are complete and current."""
    seed: int = 0
    """One knob for a seed sweep: added to every component seed (data, implant, influence projection, unlearning)
    when the config is built, then reset to 0, so the resolved config.yaml records the seeds actually used."""
    methods: list[str] = field(default_factory=lambda: ["rapidun"])
    """Unlearning methods to run and compare, each once: names from the method registry
    (rapidun_dist/config/methods.py, ALL_METHODS); clean mode skips the retrain baselines (they need labels)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the rows come from, how they are poisoned (experiment mode), split and packed."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to backdoor (experiment mode) or to clean (clean mode), and how it is loaded."""
    implant: TrainConfig = field(default_factory=TrainConfig)
    """The full fine-tune (experiment mode only): the implant stage and the retrain baselines."""
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    """The per-sample gradient features of the packs (and of the training rows for find_poison)."""
    find_poison: FindPoisonConfig = field(default_factory=FindPoisonConfig)
    """Flag the likely poisoned training rows without labels; optionally unlearn them too."""
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    """From the Gram blocks of the features to one weight per forget and retain row."""
    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    """Weighted LoRA unlearning: optimisation, protocol, method knobs and the stop rule."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Generation, the judge, the metrics, and the clean job's known triggers."""
    attribute: AttributeConfig = field(default_factory=AttributeConfig)
    """Token attribution and trigger finding (the attribute stage)."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Where each rank runs and how long it waits for the others."""

    def __post_init__(self):
        check_literal(self, "config")
        check(bool(str(self.run_dir).strip()), "run_dir", "expected a non-empty path")
        check_methods(self.methods)
        check_sections_together(self)
        if self.seed:
            for section in (self.data, self.implant, self.influence, self.unlearn):
                section.seed += self.seed
            self.seed = 0

    def seeds(self) -> dict[str, int]:
        """The component seeds of this run (what a seed sweep varies)."""
        return {k: getattr(self, k).seed for k in ("data", "implant", "influence", "unlearn")}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_methods(methods: list[str]) -> None:
    """At least one method, each known to the registry, none twice."""
    check(len(methods) > 0, "methods", "expected at least one method")
    for m in methods:
        check(m in ALL_METHODS, "methods", f"unknown method {m!r}; known: {', '.join(ALL_METHODS)}")
    check(len(methods) == len(set(methods)), "methods", "duplicate entries")


def check_sections_together(cfg: RunConfig) -> None:
    """The rules that tie two sections (or a section and the mode) together. Rules that need the world size or the
    inputs live in rapidun_dist/validate.py."""
    check(
        not (cfg.influence.contrast == "trigger" and cfg.mode == "clean" and not cfg.eval.triggers),
        "influence.contrast",
        "trigger contrast needs the trigger: the clean job must name it in eval.triggers",
    )
    check(
        cfg.mode == "experiment" or cfg.data.retain_contamination == 0.0,
        "data.retain_contamination",
        f"experiment mode only, found {cfg.data.retain_contamination} with mode=clean: the clean job's retain "
        "rows come from the unlabelled data.train_path, so they hold whatever poison find_poison misses; to "
        "study that, turn find_poison off (find_poison.enabled=false) or loosen its threshold (find_poison.z)",
    )
