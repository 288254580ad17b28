"""The `influence` section: per-sample gradient features of the packs (docs/DESIGN.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rapidun_dist.config.checks import check, check_literal
from rapidun_dist.config.model import PROJECTIONS

TokenPositions = Literal["answer", "prompt", "all", "decision"]


@dataclass(kw_only=True)
class InfluenceConfig:
    """How the influence features are computed (the influence stage; find_poison, attribute, reweighting and the
    retrieval metric reuse these settings)."""

    estimator: Literal["tokenwise", "rapidgrad"] = "tokenwise"
    """Token-wise features (RapidUn) or the RapidIn-style per-sample sketch (baseline)."""
    target_modules: list[str] = field(default_factory=lambda: list(PROJECTIONS))
    """Linear layers whose gradients enter the features, matched by the last part of their name (default: the seven
    projections); L = transformer blocks x matched names."""
    k_in: int = 16
    """Token-wise: rows of each layer's input projection P_in (Rademacher, seeded); feature size K = L x k_out x
    k_in (>= 1)."""
    k_out: int = 16
    """Token-wise: rows of each layer's output-gradient projection P_out (>= 1); see k_in."""
    rapidgrad_k: int = 4096
    """estimator rapidgrad: sketch size K, the buckets of the hashed OPORP count sketch (>= 1)."""
    seed: int = 1234
    """Seeds the projections (token-wise) or the sketch's hash (rapidgrad); the same matrices on every rank and
    world size. The top-level `seed` is added to it."""
    batch_size: int = 16
    """Rows per forward / backward pass of feature extraction (influence stage, find_poison, reweighting, the
    retrieval metric): sets memory and speed."""
    shard_size: int = 256
    """Rows per feature shard file: the unit the ranks share out and a killed run resumes from."""
    tile_size: int = 4096
    """Column tile of the tiled all_gather path for the Gram blocks (rapidun_dist/influence/gram/blocks.py; 4096: within
    ~1.1x of a bare GEMM, benchmarks/results.md). The stage's own choice on several ranks (one all_reduce for
    `mean`, the 2D all_to_all for the pairwise aggregations) does not tile, so today it only has to be >= 1;
    results never depend on it."""
    backend: Literal["auto", "triton", "torch"] = "auto"
    """Kernel backend: Triton on CUDA fp32/bf16 tensors (auto), or the PyTorch reference."""
    positions: TokenPositions = "answer"
    """Tokens whose g_t (of the summed answer loss) enter token-wise features: answer | prompt | all tokens, or
    decision: only the first `decision_tokens` answer positions of each row (where the model decides whether to attack;
    the rest of the answer is continuation)."""
    decision_tokens: int = 2
    """positions decision: how many leading answer positions of each row are tracked (>= 1)."""
    contrast: Literal["none", "trigger"] = "none"
    """trigger: a forget row's feature is that of its triggered prompt with the poisoned answer minus that of its
    clean prompt with the same answer, renormalized per layer, so the shared answer text cancels (retain rows keep
    their plain features). Needs the trigger: prepared data, or `eval.triggers` in the clean job."""

    def __post_init__(self):
        check_literal(self, "influence")
        check(self.k_in >= 1 and self.k_out >= 1, "influence.k_in/k_out", "must be >= 1")
        check(len(self.target_modules) > 0, "influence.target_modules", "needs at least one module name")
        for name in ("batch_size", "shard_size", "tile_size", "rapidgrad_k", "decision_tokens"):
            check(
                getattr(self, name) >= 1, f"influence.{name}", f"expected >= 1, found {getattr(self, name)}"
            )
