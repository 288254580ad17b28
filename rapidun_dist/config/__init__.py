"""Typed, validated run configuration.

A YAML file maps onto `RunConfig`; every section is a keyword-only dataclass validated in `__post_init__`, and
every field is documented by the docstring under it (`rapidun validate --doc KEY` prints it; docs/config.md lists
them all). One module per part:

    loader.py        strict YAML, dotted overrides (`unlearn.lr=1e-4`), type coercion, load_config, dump_config
    run.py           RunConfig (mode, run_dir, seed, methods, the sections) and the rules between sections
    data.py          DataConfig                 triggers.py   TriggerFamily, TriggerSpec
    model.py         ModelConfig, TinyModelConfig, PROJECTIONS
    train.py         TrainConfig (the `implant` section: implant and retrain fine-tuning)
    influence.py     InfluenceConfig            weights.py     WeightsConfig
    find_poison.py   FindPoisonConfig           unlearn.py     UnlearnConfig
    eval.py          EvalConfig, SampledEvalConfig, RelearnEvalConfig
    attribute.py     AttributeConfig            distributed.py DistributedConfig
    checks.py        check / check_literal (errors name the dotted key)
    defaults.py      experiment data the configs default to (the reference trigger families)
    methods.py       the method registry (MethodSpec, ALL_METHODS, ...)
    docs.py          key_docs: the documentation of any key, and docs/config.md

This module re-exports the public names, so `from rapidun_dist.config import X` works for all of them.
"""

from __future__ import annotations

from rapidun_dist.config.attribute import AttributeConfig
from rapidun_dist.config.data import DataConfig
from rapidun_dist.config.defaults import default_trigger_families
from rapidun_dist.config.distributed import DEVICE_SPEC, DistributedConfig
from rapidun_dist.config.eval import EvalConfig, RelearnEvalConfig, SampledEvalConfig
from rapidun_dist.config.find_poison import FindPoisonAgg, FindPoisonConfig, FindPoisonThreshold
from rapidun_dist.config.influence import InfluenceConfig, TokenPositions
from rapidun_dist.config.loader import (
    StrictLoader,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_yaml,
)
from rapidun_dist.config.methods import ALL_METHODS
from rapidun_dist.config.model import PROJECTIONS, ModelConfig, TinyModelConfig
from rapidun_dist.config.run import Mode, RunConfig
from rapidun_dist.config.train import TrainConfig
from rapidun_dist.config.triggers import InjectMode, TriggerFamily, TriggerSpec
from rapidun_dist.config.unlearn import Budget, UnlearnConfig, ZeroStage
from rapidun_dist.config.weights import WeightsConfig
from rapidun_dist.core.errors import ConfigError

__all__ = [
    "ALL_METHODS",
    "DEVICE_SPEC",
    "PROJECTIONS",
    "AttributeConfig",
    "Budget",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "EvalConfig",
    "FindPoisonAgg",
    "FindPoisonConfig",
    "FindPoisonThreshold",
    "InfluenceConfig",
    "InjectMode",
    "Mode",
    "ModelConfig",
    "RelearnEvalConfig",
    "RunConfig",
    "SampledEvalConfig",
    "StrictLoader",
    "TinyModelConfig",
    "TokenPositions",
    "TrainConfig",
    "TriggerFamily",
    "TriggerSpec",
    "UnlearnConfig",
    "WeightsConfig",
    "ZeroStage",
    "apply_overrides",
    "config_from_dict",
    "default_trigger_families",
    "dump_config",
    "load_config",
    "parse_yaml",
]
