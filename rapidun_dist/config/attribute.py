"""The `attribute` section: which prompt tokens carry the backdoor, and which strings trigger it
(rapidun_dist/attribution)."""

from __future__ import annotations

from dataclasses import dataclass

from rapidun_dist.config.checks import check


@dataclass(kw_only=True)
class AttributeConfig:
    """Token-level attribution and trigger finding (the `attribute` stage, rapidun_dist/attribution)."""

    top_k: int = 12
    """Ranked n-gram candidates that are verified by generation (>= 1)."""
    n_max: int = 4
    """Longest n-gram considered, in words (>= 1)."""
    match_rows: int = 3
    """Attribution: the m best-matching forget (and retain) rows a token is compared with (>= 1)."""
    ref_rows: int = 1024
    """At most this many forget and retain rows (evenly spaced) are matched against (>= 1)."""
    min_rows: int = 2
    """A candidate must occur in at least this many forget rows (>= 1)."""
    n_verify: int = 32
    """Clean prompts each candidate is inserted into (and forget prompts it is removed from) (>= 1)."""
    verify_asr: float = 0.8
    """Insert ASR at or above which a candidate counts as a verified trigger, in (0, 1]."""
    min_lift: float = 0.3
    """... and at least this far above the ASR of the same clean prompts without it, in [0, 1]."""
    batch_size: int = 16
    """Rows per token-score / saliency pass (>= 1)."""
    report_rows: int = 6
    """Forget rows rendered with per-token heat in attribution/report.md (>= 0)."""
    clean_triggers: bool = True
    """Clean mode without eval.triggers: run attribute before unlearning and use its verified triggers for the
    triggered evaluation prompts and self-relabel."""
    seed: int = 0
    """Seeds the random insertion positions of the verification."""

    def __post_init__(self):
        for name in ("top_k", "n_max", "min_rows", "n_verify", "batch_size", "match_rows", "ref_rows"):
            check(
                getattr(self, name) >= 1, f"attribute.{name}", f"expected >= 1, found {getattr(self, name)}"
            )
        check(self.report_rows >= 0, "attribute.report_rows", f"expected >= 0, found {self.report_rows}")
        check(
            0.0 < self.verify_asr <= 1.0,
            "attribute.verify_asr",
            f"expected in (0, 1], found {self.verify_asr}",
        )
        check(0.0 <= self.min_lift <= 1.0, "attribute.min_lift", f"expected in [0, 1], found {self.min_lift}")
