"""Data stage: loaders, schema, poisoning, the synthetic corpus, splits and packs (DESIGN section 4)."""

from rapidun_dist.data.loaders import (
    load_alpaca,
    load_dolly,
    load_generic,
    load_hub,
    load_prepared,
    load_split,
)
from rapidun_dist.data.poison import inject, poison_record
from rapidun_dist.data.prepare import is_prepared, prepare_data
from rapidun_dist.data.schema import DATA_FILES, PACKS, SPLITS, validate_record
from rapidun_dist.data.synthetic import generate_corpus, generate_target_pool

__all__ = [
    "DATA_FILES",
    "PACKS",
    "SPLITS",
    "generate_corpus",
    "generate_target_pool",
    "inject",
    "is_prepared",
    "load_alpaca",
    "load_dolly",
    "load_generic",
    "load_hub",
    "load_prepared",
    "load_split",
    "poison_record",
    "prepare_data",
    "validate_record",
]
