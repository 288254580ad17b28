"""Triton kernels for token-wise influence, each beside a PyTorch reference with the same signature.

Documentation and benchmarks: the top-level `kernels/` folder of the repository (not a Python package).
"""

from rapidun_dist.kernels.cosine_sums import grouped_cosine_sums, grouped_cosine_sums_reference
from rapidun_dist.kernels.cosine_topk import cosine_topk, cosine_topk_reference, merge_topk
from rapidun_dist.kernels.token_projection import (
    TokenLayout,
    fused_token_projection,
    fused_token_projection_reference,
    projected_outer_sums,
    projected_outer_sums_reference,
    segment_outer_sums,
    unit_projection,
    unit_rows,
)

__all__ = [
    "TokenLayout",
    "cosine_topk",
    "cosine_topk_reference",
    "fused_token_projection",
    "fused_token_projection_reference",
    "grouped_cosine_sums",
    "grouped_cosine_sums_reference",
    "merge_topk",
    "projected_outer_sums",
    "projected_outer_sums_reference",
    "segment_outer_sums",
    "unit_projection",
    "unit_rows",
]
