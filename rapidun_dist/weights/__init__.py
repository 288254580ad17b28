"""Directional scores, fusion and robust per-sample weights (docs/DESIGN.md section 6)."""

from rapidun_dist.influence.scores import dense_directional_scores, split_directional
from rapidun_dist.weights.rapidin import (
    main_weights_from_rapidin,
    reference_config,
    weights_from_rapidin_dir,
    write_weights,
)
from rapidun_dist.weights.robust import fuse_and_weight, robust_scale, weights_from_scores

__all__ = [
    "dense_directional_scores",
    "fuse_and_weight",
    "main_weights_from_rapidin",
    "reference_config",
    "robust_scale",
    "split_directional",
    "weights_from_rapidin_dir",
    "weights_from_scores",
    "write_weights",
]
