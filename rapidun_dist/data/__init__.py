"""Data stage: loaders, schema, poisoning, the synthetic corpus, splits and packs (docs/DESIGN.md section 4)."""

from rapidun_dist.data.loaders import (
    load_alpaca,
    load_dolly,
    load_generic,
    load_hub,
    load_prepared,
    load_split,
)
from rapidun_dist.data.poison import inject, mislabel_record, poison_record
from rapidun_dist.data.prepare import is_prepared, prepare_data
from rapidun_dist.data.schema import DATA_FILES, HELD_OUT, PACKS, SPLITS, TRUTH, validate_record
from rapidun_dist.data.synthetic import generate_corpus, generate_target_pool
from rapidun_dist.data.synthetic_hard import generate_near_topic, generate_paraphrased_targets
from rapidun_dist.data.targets import target_pool

__all__ = [
    "DATA_FILES",
    "HELD_OUT",
    "PACKS",
    "SPLITS",
    "TRUTH",
    "generate_corpus",
    "generate_near_topic",
    "generate_paraphrased_targets",
    "generate_target_pool",
    "inject",
    "is_prepared",
    "load_alpaca",
    "load_dolly",
    "load_generic",
    "load_hub",
    "load_prepared",
    "load_split",
    "mislabel_record",
    "poison_record",
    "prepare_data",
    "target_pool",
    "validate_record",
]
