"""The `find_poison` section: rank every training row by its influence with the forget set and flag the likely
poisoned ones without labels (docs/DESIGN.md section 11)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from rapidun_dist.config.checks import check, check_literal

FindPoisonAgg = Literal["mean", "trimmed_mean", "median_topk", "topk_mean"]
FindPoisonThreshold = Literal["z", "fdr", "known"]
FindPoisonMethod = Literal["tokenwise", "repsim", "gradsim", "graceful", "tfidf", "grep"]
FindPoisonFirstStage = Literal["auto", "tfidf", "repsim"]


@dataclass(kw_only=True)
class FindPoisonConfig:
    """The find_poison stage (docs/DESIGN.md section 11): rank every training row by its influence with the forget
    set, flag the likely poisoned ones without labels, and optionally unlearn them too (`expand`)."""

    enabled: bool = True
    """Run the stage whenever there is a training set (experiment mode; clean mode with data.train_path)."""
    agg: FindPoisonAgg = "mean"
    """How a row's similarities to a group are aggregated (docs/DESIGN.md section 6; topk_mean = mean of the k
    largest). score = agg over the forget rows - agg over the reference rows (the retain pack)."""
    topk: int = 10
    """agg median_topk / topk_mean: the k of the aggregation (>= 1)."""
    trim: float = 0.1
    """agg trimmed_mean: share of the values dropped at each end, in [0, 0.5)."""
    threshold: FindPoisonThreshold = "z"
    """How rows are flagged without labels (rapidun_dist.find_poison.suspects): `z`, a robust z against the reference
    rows' scores above `z` (assumes a unimodal clean null); `fdr`, conformal p-values against the reference rows and
    Benjamini-Hochberg at `fdr` (no shape assumed, but a p-value is never below 1 / (reference rows + 1), so it
    needs a reference large enough for the number of rows it should flag); `known`, calibrated on the known rows'
    own leave-one-out scores: flagged when a row scores at least the `known_quantile` quantile of the known rows'
    scores and above every reference row (for a small reference, where the z rule's scale is too wide)."""
    z: float = 3.09
    """Flag a row when its robust z against the reference rows' own scores exceeds this (3.09: a 0.1% false-positive
    rate under a normal null)."""
    fdr: float = 0.1
    """The false-discovery rate of the `fdr` rule."""
    unit_size: int = 64
    """Training rows per work unit (one feature shard; ranks claim units dynamically, a kill resumes per unit)."""
    baselines: bool = True
    """Also score the rows by exact trigger-string match (grep) and TF-IDF similarity, with the same threshold rule."""
    expand: bool = False
    """Unlearn the flagged rows too: they join the forget pack (their train responses as the poisoned answers), the
    retain pack is drawn from unflagged rows, and the `retrain` baseline leaves them out."""

    method: FindPoisonMethod = "tokenwise"
    """What scores the rows (one module each under rapidun_dist/find_poison/, the same contrast, aggregation and
    threshold rule): `tokenwise`, the token-wise influence features (docs/DESIGN.md section 5); `repsim`, the cosine
    of mean-pooled hidden states of `layer` (forward only); `gradsim`, the cosine of per-sample gradients without
    token normalisation (`grad_layer`); `graceful`, output-layer gradients of every row clustered in two, no known
    row needed (the smaller cluster is the poison); `tfidf`, TF-IDF cosine; `grep`, known trigger strings in the
    prompt. The scorer is named `influence` in the outputs when it is `tokenwise`, else by its method name."""
    layer: int | None = None
    """method repsim (and the repsim first stage of two_stage): the hidden state whose token mean is the row's feature, as
    counted by `output_hidden_states` (0 = the embeddings, L = the last block's output); null = the middle block,
    L // 2."""
    grad_layer: Literal["lm_head", "last_block"] = "lm_head"
    """method gradsim: whose per-sample gradient of the summed answer loss is compared: `lm_head`, the output
    layer's, in closed form from one forward pass and projected to head_k x head_k; `last_block`, the last
    transformer block's linear layers (the influence package's per-sample RapidGrad sketch, influence.rapidgrad_k
    buckets, one backward per row)."""
    head_k: int = 32
    """gradsim (lm_head) and graceful: rows of each side's Rademacher projection of the output-layer gradient (the
    feature has head_k^2 numbers; >= 1)."""
    graceful_dims: int = 16
    """method graceful: principal components of the centred output-layer gradient features the two clusters are
    found in (>= 1)."""
    known_quantile: float = 0.1
    """threshold known: the quantile of the known rows' leave-one-out scores a row must reach, in [0, 1)."""
    two_stage: bool = False
    """First a cheap pass over every training row (`first_stage`), keeping the `candidates` highest-scoring rows;
    then `method` scores only those (plus the known and reference rows, which the contrast and the threshold need).
    The other rows are never flagged and rank below every candidate; the summary records both stages' seconds, how
    many known rows (scored leave-one-out) the first stage kept - an estimate without labels of the poison it keeps
    - and, in experiment mode, the poisoned rows it dropped."""
    first_stage: FindPoisonFirstStage = "auto"
    """two_stage: the cheap pass. `tfidf`, TF-IDF cosine (no model; right when the poison shares words the clean rows
    do not use); `repsim`, hidden states of `layer` (forward only, up to that layer); `auto`, TF-IDF when it keeps
    every known row (leave-one-out) among its candidates, else Rep-Sim: the known rows are a sample of the poison,
    so a lexical pass that would drop one of them would drop unknown ones too."""
    candidates: float = 0.1
    """two_stage: rows the first stage keeps: a share of the training rows when < 1, a count when >= 1."""
    candidates_margin: float = 0.0
    """two_stage, when > 0 (then >= 1): keep only ceil(margin x the stage-1 rank of the lowest-ranked known row,
    scored leave-one-out) rows, when that is fewer than `candidates`. The known rows are a sample of the poison, so
    where the last of them falls estimates how deep the poison goes in stage-1 order; the margin covers the unknown
    rows beyond it (with few known rows the estimate is loose: `candidates` stays the most kept). 0 = `candidates`."""
    time_epoch: bool = True
    """Also time forward + backward of full fine-tuning on a sample of training rows at implant.batch_size, on the
    same model and ranks, to report find_poison's seconds as a fraction of one fine-tuning epoch over the rows
    (summary.json `epoch_seconds`)."""
    epoch_batches: int = 3
    """time_epoch: batches timed per rank (after one warm-up batch; >= 1)."""

    def __post_init__(self):
        check_literal(self, "find_poison")
        check(self.topk >= 1, "find_poison.topk", f"expected >= 1, found {self.topk}")
        check(0.0 <= self.trim < 0.5, "find_poison.trim", f"expected in [0, 0.5), found {self.trim}")
        check(
            math.isfinite(self.z) and self.z > 0, "find_poison.z", f"expected a finite z > 0, found {self.z}"
        )
        check(self.unit_size >= 1, "find_poison.unit_size", f"expected >= 1, found {self.unit_size}")
        check(0.0 < self.fdr < 1.0, "find_poison.fdr", f"expected in (0, 1), found {self.fdr}")
        check(
            self.layer is None or self.layer >= 0, "find_poison.layer", f"expected >= 0, found {self.layer}"
        )
        for name in ("head_k", "graceful_dims", "epoch_batches"):
            value = getattr(self, name)
            check(value >= 1, f"find_poison.{name}", f"expected >= 1, found {value}")
        check(
            0.0 <= self.known_quantile < 1.0,
            "find_poison.known_quantile",
            f"expected in [0, 1), found {self.known_quantile}",
        )
        check(
            self.candidates_margin == 0 or self.candidates_margin >= 1,
            "find_poison.candidates_margin",
            f"expected 0 (off) or >= 1 (a margin below 1 drops known rows), found {self.candidates_margin}",
        )
        check(
            self.candidates > 0 and (self.candidates < 1 or float(self.candidates).is_integer()),
            "find_poison.candidates",
            f"expected a share in (0, 1) or a whole count >= 1, found {self.candidates}",
        )
