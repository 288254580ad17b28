"""Triton kernels for token-wise influence, each beside a PyTorch reference with the same signature.

Import as `rapidun_dist.kernels` (pyproject maps this folder there; it is not a top-level package).
"""

from rapidun_dist.kernels.cosine_sums import grouped_cosine_sums, grouped_cosine_sums_reference
from rapidun_dist.kernels.cosine_topk import cosine_topk, cosine_topk_reference, merge_topk
from rapidun_dist.kernels.token_projection import fused_token_projection, fused_token_projection_reference

__all__ = [
    "cosine_topk",
    "cosine_topk_reference",
    "merge_topk",
    "fused_token_projection",
    "fused_token_projection_reference",
    "grouped_cosine_sums",
    "grouped_cosine_sums_reference",
]
