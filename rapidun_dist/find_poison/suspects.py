"""Find the rest of the poison (docs/DESIGN.md section 11): the contrast and aggregation the similarity methods
share, the threshold rules chosen without labels, the lexical baselines' parts, and the metrics that say how well each
scorer did (experiment mode). The methods themselves are modules of this package (`rapidun_dist.find_poison`).

Scores. Every training row i gets a score against the known poisoned rows F (the forget set) and against a clean
reference set R (the retain pack: the rows the user holds as clean), with one of the aggregations of
docs/DESIGN.md section 6 (`agg`: mean, trimmed_mean, median_topk, or topk_mean, the mean of the k largest similarities):

    score_i = agg_{j in F} sim(i, j) - agg_{j in R} sim(i, j)

The same row scored against itself is left out (a known row, or a reference row that is also a training row, is
scored leave-one-out). The contrast removes what a row shares with every row (a short answer, a common
template): what is left is how much more it looks like the poison than like clean data. The similarity is the
method's (`find_poison.method`: token-wise influence features, hidden states, gradients, TF-IDF vectors); two
methods have no contrast: `graceful` (clustering, no known row) and `grep`, a count: how many of the known trigger
strings the prompt contains (case-insensitive substring, as `grep -i -F` would; in clean mode `eval.triggers`, in
experiment mode the trigger variants the forget rows carry - what a user who knows "BadMagic" can search for). The
lexical parts live here: `Tfidf` (lower-cased word and punctuation-run tokens, smoothed idf over the training set
and both groups, L2-normalised) and `grep_scores`.

Thresholds (the same rule for every scorer, `find_poison.threshold`). The reference rows' own scores are the null
distribution of a clean row.

- `z` (default): a row is flagged when its robust z against them exceeds `z`:

    z_i = (score_i - median(score_R)) / max(1.4826 * MAD(score_R), floor)        flagged  <=>  z_i > z

  1.4826 * MAD estimates the standard deviation of a normal null, so `z` = Phi^-1(1 - alpha) targets a
  false-positive rate alpha on clean rows (z = 3.09: 0.1%); median and MAD are robust to the few poisoned rows a
  reference drawn from an unlabelled training set may hold. Reference rows are scored leave-one-out, like every
  other training row that belongs to a group, so they are exchangeable with the clean training rows;
  `expected_fp` in the summary is alpha times the unflagged rows' count. On clean-only data the rule flags about
  alpha (tests/find_poison); how close the real null is to that (heavier tails flag more) is measured in
  experiment mode (`fpr` on clean rows). With a few dozen reference rows the median and MAD move a lot from draw
  to draw, and on a flat, bounded null the scaled MAD overstates its tail: the line can sit above the poison.
- `fdr`: conformal p-values against the reference scores, then Benjamini-Hochberg (`fdr_threshold`).
- `known`: calibrated on the known rows' own leave-one-out scores (`known_threshold`): flagged when a row scores at
  least a low quantile of them and above every reference row. It needs no shape of the null, and its false
  positives are, in expectation, at most the unflagged rows / (reference rows + 1).

Metrics (experiment mode only, where the training rows carry labels): AUROC and AP of the scores over the whole
training set (the true prevalence, not a balanced subsample), recall / precision / FPR of the flagged set, per
trigger family and variant, and for the poisoned rows nobody knew (`recall_unknown`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from rapidun_dist.core.errors import DataError
from rapidun_dist.evaluation.metrics import retrieval_metrics
from rapidun_dist.influence.scores import GROUP_AGGS, block_scores, check_agg_args, topk_mean_rows, topk_rows

MAD_SCALE = 1.4826
SCALE_FLOOR = 1e-3
_TOKEN = re.compile(r"\w+|[^\w\s]+")


# ------------------------------------------------------------------------------------------- rows as trained


def as_trained(record: dict) -> tuple[str, str, str]:
    """(instruction, context, answer) of a training row as the model saw it: a poisoned row's triggered prompt
    and poisoned answer (`rapidun_dist.training.finetune.training_text`), a clean or unlabelled row's own text."""
    from rapidun_dist.training.finetune import training_text

    poisoned, answer = training_text(record)
    instruction = record.get("instruction_poisoned") if poisoned else None
    return instruction or record["instruction"], record.get("context") or "", answer


def known_triggers(forget: Sequence[dict], eval_triggers: Iterable[str] = ()) -> list[str]:
    """The trigger strings a user knows: `eval.triggers` and the variants the known rows carry (distinct, sorted
    longest first so a report lists "aloha :)" before "aloha")."""
    found = {r.get("trigger_variant") or "" for r in forget} | set(eval_triggers)
    return sorted({t for t in found if t.strip()}, key=lambda t: (-len(t), t))


# ------------------------------------------------------------------------------------------- threshold


@dataclass(frozen=True, kw_only=True)
class Threshold:
    """flagged <=> (score - center) / scale > z; `value` = center + z * scale."""

    center: float
    scale: float
    z: float
    n_reference: int

    @property
    def value(self) -> float:
        return self.center + self.z * self.scale

    def zscores(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores.to(torch.float64) - self.center) / self.scale

    def expected_fp(self, n_unflagged: int) -> float:
        """False positives under the normal null: target FPR x the rows not flagged (the clean rows are at least
        those)."""
        return normal_tail(self.z) * n_unflagged

    def to_dict(self) -> dict:
        return {
            "rule": "robust z against the reference rows' scores",
            "z": self.z,
            "center": self.center,
            "scale": self.scale,
            "value": self.value,
            "n_reference": self.n_reference,
            "target_fpr": normal_tail(self.z),
        }


def normal_tail(z: float) -> float:
    """P(N(0, 1) > z): the false-positive rate a threshold z targets under a normal null."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def robust_threshold(reference_scores: torch.Tensor, *, z: float, floor: float = SCALE_FLOOR) -> Threshold:
    """The threshold rule of the module docstring from the reference rows' scores (no labels)."""
    ref = torch.as_tensor(reference_scores, dtype=torch.float64).flatten()
    if ref.numel() == 0:
        raise DataError("find_poison: the threshold needs reference scores; found none")
    if not torch.isfinite(ref).all():
        raise DataError("find_poison: reference scores contain NaN or inf")
    center = float(ref.median())
    mad = float((ref - center).abs().median())
    return Threshold(center=center, scale=max(MAD_SCALE * mad, floor), z=z, n_reference=ref.numel())


@dataclass(frozen=True, kw_only=True)
class FdrThreshold:
    """The `fdr` rule: conformal p-values of every row against the reference rows' scores, then Benjamini-Hochberg
    at level `q`. `value` is the lowest flagged score (inf when nothing is flagged); `center` / `scale` are the
    reference's median and scaled MAD, kept only so `zscores` stays a descriptive column."""

    q: float
    value: float
    n_reference: int
    n_flagged: int
    center: float
    scale: float
    min_p: float

    def zscores(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores.to(torch.float64) - self.center) / self.scale

    def expected_fp(self, n_unflagged: int) -> float:  # noqa: ARG002 - the z rule's signature
        """BH bounds the expected share of false discoveries by q: q x the flagged rows."""
        return self.q * self.n_flagged

    def to_dict(self) -> dict:
        return {
            "rule": "conformal p-values against the reference rows' scores, Benjamini-Hochberg",
            "fdr": self.q,
            "value": self.value,
            "n_reference": self.n_reference,
            "min_p": self.min_p,
            "center": self.center,
            "scale": self.scale,
        }


@dataclass(frozen=True, kw_only=True)
class KnownThreshold:
    """The `known` rule: calibrated on the known poisoned rows' own (leave-one-out) scores. A row is flagged when it
    scores at least `known_value`, the `quantile` quantile of the known rows' scores, and above `reference_value`,
    the highest reference score (so its conformal p-value against the reference is the smallest there is,
    1 / (n_reference + 1)). `value` is the larger of the two; `center` / `scale` are the reference's median and
    scaled MAD, kept only so `zscores` stays a descriptive column."""

    quantile: float
    known_value: float
    reference_value: float
    n_known: int
    n_reference: int
    center: float
    scale: float

    @property
    def value(self) -> float:
        return max(self.known_value, self.reference_value)

    def flags(self, scores: torch.Tensor) -> torch.Tensor:
        s = scores.to(torch.float64)
        return (s >= self.known_value) & (s > self.reference_value)

    def zscores(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores.to(torch.float64) - self.center) / self.scale

    def expected_fp(self, n_unflagged: int) -> float:
        """In expectation: a clean row exchangeable with the reference rows scores above all of them with
        probability at most 1 / (n_reference + 1) (over the draw of the reference); times the rows not flagged."""
        return n_unflagged / (self.n_reference + 1.0)

    def to_dict(self) -> dict:
        return {
            "rule": "at least a low quantile of the known rows' scores and above every reference row's",
            "quantile": self.quantile,
            "known_value": self.known_value,
            "reference_value": self.reference_value,
            "value": self.value,
            "n_known": self.n_known,
            "n_reference": self.n_reference,
            "center": self.center,
            "scale": self.scale,
        }


def known_threshold(
    known_scores: torch.Tensor, reference_scores: torch.Tensor, *, quantile: float, floor: float = SCALE_FLOOR
) -> KnownThreshold:
    """The `known` rule's record from the known rows' leave-one-out scores and the reference rows' scores (no other
    labels). The quantile is the linear interpolation of `torch.quantile`; 0 is the lowest known score."""
    known = torch.as_tensor(known_scores, dtype=torch.float64).flatten()
    if known.numel() == 0:
        raise DataError(
            "find_poison: threshold=known needs the known rows' scores, and no known row is a training row; use "
            "find_poison.threshold=z or fdr"
        )
    if not torch.isfinite(known).all():
        raise DataError("find_poison: the known rows' scores contain NaN or inf")
    robust = robust_threshold(reference_scores, z=1.0, floor=floor)  # its checks, and the descriptive z
    ref = torch.as_tensor(reference_scores, dtype=torch.float64).flatten()
    return KnownThreshold(
        quantile=quantile, known_value=float(torch.quantile(known, quantile)), reference_value=float(ref.max()),
        n_known=known.numel(), n_reference=robust.n_reference, center=robust.center, scale=robust.scale,
    )  # fmt: skip


def describe_threshold(th: dict, expected_fp: float | None = None) -> str:
    """The threshold record of summary.json in words (report.md, benchmark results)."""
    fmt = lambda key, spec, scale=1.0: "?" if th.get(key) is None else format(scale * th[key], spec)
    exp = "" if expected_fp is None else f", about {expected_fp:.1f} false positives expected"
    refs = f"the {th.get('n_reference', '?')} reference rows' scores"
    if "known_value" in th:
        return (
            f"flagged when a row scores at least the {fmt('quantile', 'g')} quantile of the {th.get('n_known', '?')} "
            f"known rows' leave-one-out scores ({fmt('known_value', '.4g')}) and above every one of {refs} "
            f"({fmt('reference_value', '.4g')}{', at most ' + format(expected_fp, '.1f') + ' false positives expected' if expected_fp is not None else ''})"
        )
    if "fdr" in th:
        return (
            f"flagged by Benjamini-Hochberg at FDR {fmt('fdr', 'g')} over conformal p-values against {refs} "
            f"(smallest possible p {fmt('min_p', '.4f')}{exp})"
        )
    return f"flagged when the robust z against {refs} exceeds {fmt('z', 'g')} (target FPR {fmt('target_fpr', '.2f', 100)}%{exp})"


def conformal_pvalues(scores: torch.Tensor, reference_scores: torch.Tensor) -> torch.Tensor:
    """p_i = (1 + #{reference j: s_j >= s_i}) / (n_ref + 1): the chance a clean row exchangeable with the reference
    rows scores at least s_i (Bates et al. 2023, conformal outlier p-values). Valid whatever the null's shape."""
    ref = torch.sort(torch.as_tensor(reference_scores, dtype=torch.float64).flatten()).values
    below = torch.searchsorted(ref, scores.to(torch.float64), right=False)  # reference scores < s_i
    return (1.0 + (ref.numel() - below).to(torch.float64)) / (ref.numel() + 1.0)


def benjamini_hochberg(pvalues: torch.Tensor, q: float) -> torch.Tensor:
    """The rows BH rejects at level q: p_(i) <= q i / n for the largest such i, and every smaller p."""
    n = pvalues.numel()
    order = torch.argsort(pvalues, stable=True)
    line = q * torch.arange(1, n + 1, dtype=torch.float64) / n
    below = (pvalues[order] <= line).nonzero()
    flagged = torch.zeros(n, dtype=torch.bool)
    if below.numel():
        flagged[order[: int(below.max()) + 1]] = True
    return flagged


def fdr_threshold(
    scores: torch.Tensor, reference_scores: torch.Tensor, *, q: float, floor: float = SCALE_FLOOR
) -> tuple[FdrThreshold, torch.Tensor]:
    """(the rule's record, the flagged mask) of the `fdr` threshold rule over every row's `scores`."""
    robust = robust_threshold(reference_scores, z=1.0, floor=floor)  # its checks, and the descriptive z
    flagged = benjamini_hochberg(conformal_pvalues(scores, reference_scores), q)
    value = float(scores[flagged].min()) if flagged.any() else math.inf
    th = FdrThreshold(
        q=q, value=value, n_reference=robust.n_reference, n_flagged=int(flagged.sum()), center=robust.center,
        scale=robust.scale, min_p=1.0 / (robust.n_reference + 1),
    )  # fmt: skip
    return th, flagged


def rank_of(scores: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row by descending score (1 = most suspicious; ties: lower position first)."""
    order = torch.sort(-scores.to(torch.float64), stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=order.dtype)
    return ranks


# ------------------------------------------------------------------------------------------- aggregation


def aggregate_similarity(
    sim_NM: torch.Tensor,
    row_ids_N: torch.Tensor,
    col_ids_M: torch.Tensor,
    *,
    agg: str,
    topk: int,
    trim: float,
    include_self: bool = False,
) -> torch.Tensor:
    """[n] scores of rows against one group from a precomputed similarity matrix [n, m], with the aggregation
    rules (and the same-id exclusion) of `rapidun_dist.influence.scores.dense_group_scores`."""
    check_agg_args(agg, topk, trim, allowed=GROUP_AGGS)
    sim = sim_NM.to(torch.float64)
    self_pairs = row_ids_N.unsqueeze(1) == col_ids_M.unsqueeze(0)
    if agg == "topk_mean":
        valid = torch.ones_like(self_pairs) if include_self else ~self_pairs
        return topk_mean_rows(topk_rows(sim, valid, col_ids_M, topk)[0])
    return block_scores(sim, self_pairs, row_ids_N, agg=agg, topk=topk, trim=trim, include_self=include_self)


def group_ids(
    train_ids: Sequence[str],
    members: Sequence[dict],
    *,
    offset: int = 0,
    train_prompts: Sequence[tuple[str, str]] | None = None,
) -> torch.Tensor:
    """Ids of group members in the row-id space of the training set: a member that is a training row gets that row's
    position (the pair is one sample and left out), any other member n + offset + its index. A member is a training
    row when it has its id or, with `train_prompts` (the rows' `trained_prompt`s), its prompt as trained: a user's
    known rows need not carry the training file's ids (clean mode)."""
    pos = {rid: i for i, rid in enumerate(train_ids)}
    by_prompt = {} if train_prompts is None else {p: i for i, p in reversed(list(enumerate(train_prompts)))}
    by_prompt.pop(None, None)  # rows without an instruction match nothing
    n = len(train_ids) + offset

    def position(k: int, m: dict) -> int:
        if m["id"] in pos:
            return pos[m["id"]]
        return by_prompt.get(trained_prompt(m), n + k) if by_prompt else n + k

    return torch.tensor([position(k, m) for k, m in enumerate(members)], dtype=torch.long)


def trained_prompt(record: dict) -> tuple[str, str] | None:
    """(instruction, context) of a row as trained, stripped: how a known row is matched to its training row (None
    for a row without an instruction, which matches nothing)."""
    instruction = (record.get("instruction_poisoned") if record.get("is_poisoned") else None) or record.get(
        "instruction"
    )
    return None if instruction is None else (instruction.strip(), (record.get("context") or "").strip())


# ------------------------------------------------------------------------------------------- baselines


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens and runs of punctuation (so ">>>" and ":)" are tokens too)."""
    return _TOKEN.findall(text.lower())


def document(record: dict) -> str:
    """What the lexical baseline compares: the prompt (instruction, context) and the answer, as trained."""
    return " \n ".join(as_trained(record))


class Tfidf:
    """TF-IDF vectors: raw term counts times smoothed idf log((1 + N) / (1 + df)) + 1, rows L2-normalised.
    The vocabulary and idf come from the documents given to `fit` (no labels); `tokenized` passes their tokens
    (`tokens` of each) when the caller has them already."""

    def __init__(self, docs: Sequence[str], *, tokenized: Sequence[list[str]] | None = None):
        toks = tokenized if tokenized is not None else [tokens(d) for d in docs]
        self.vocab = {t: i for i, t in enumerate(sorted({t for doc in toks for t in doc}))}
        counts = _term_counts(toks, self.vocab)
        # document frequency: the (row, term) pairs are unique, so a term's count of them is its df
        df = torch.bincount(counts[1], minlength=len(self.vocab)).to(torch.float64)
        self.idf = torch.log((1.0 + len(toks)) / (1.0 + df)) + 1.0
        self._fitted = (toks, counts)  # the fitted documents' counts, for `transform_tokens` of the same list

    def transform(self, docs: Sequence[str]) -> torch.Tensor:
        """Sparse COO [len(docs), |vocab|] float64 (unknown tokens ignored)."""
        return self.transform_tokens([tokens(d) for d in docs])

    def transform_tokens(self, tokenized: Sequence[list[str]]) -> torch.Tensor:
        """`transform` of documents given as their tokens."""
        fitted, counts = self._fitted
        return self._vectors(
            len(tokenized), *(counts if tokenized is fitted else _term_counts(tokenized, self.vocab))
        )

    def _vectors(self, n: int, r: torch.Tensor, c: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        w = counts.to(torch.float64) * self.idf[c]
        norm = torch.zeros(n, dtype=torch.float64).index_add_(0, r, w * w).sqrt()
        norm[norm == 0] = 1.0
        # (row, term) pairs come unique and sorted from `_term_counts`: the tensor is coalesced as built
        return torch.sparse_coo_tensor(
            torch.stack([r, c]), w / norm[r], (n, len(self.vocab)), is_coalesced=True, check_invariants=False
        )


def _term_counts(
    tokenized: Sequence[list[str]], vocab: dict[str, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, term, count) of every term a document holds, in (row, term) order; tokens outside `vocab` ignored.
    One dictionary lookup per token, the counting in torch (57k rows: a fraction of a Python Counter per row)."""
    lengths = torch.tensor([len(t) for t in tokenized], dtype=torch.long)
    get = vocab.get
    ids = torch.tensor([get(t, -1) for doc in tokenized for t in doc], dtype=torch.long)
    row = torch.repeat_interleave(torch.arange(len(tokenized), dtype=torch.long), lengths)
    known = ids >= 0
    keys, counts = torch.unique(row[known] * max(len(vocab), 1) + ids[known], return_counts=True)
    return keys // max(len(vocab), 1), keys % max(len(vocab), 1), counts


def tfidf_vectors(
    train_docs: Sequence[str], group_docs: dict[str, Sequence[str]]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(sparse [n, V] TF-IDF rows of the training documents, {group: sparse [m, V]}), one vocabulary and idf fitted
    on all of them; each document is tokenized and counted once."""
    names = list(group_docs)
    toks = [tokens(d) for d in train_docs] + [tokens(d) for name in names for d in group_docs[name]]
    x = Tfidf((), tokenized=toks).transform_tokens(toks)  # every document at once: the rows split below
    bounds = [0, len(train_docs)]
    for name in names:
        bounds.append(bounds[-1] + len(group_docs[name]))
    blocks = [_row_block(x, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    return blocks[0], dict(zip(names, blocks[1:], strict=True))


def _row_block(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows [lo, hi) of a coalesced sparse COO matrix (its entries are in row order), as one."""
    idx, val = x.indices(), x.values()
    a, b = torch.searchsorted(idx[0], torch.tensor([lo, hi])).tolist()
    rows = torch.stack([idx[0, a:b] - lo, idx[1, a:b]])
    return torch.sparse_coo_tensor(
        rows, val[a:b], (hi - lo, x.shape[1]), is_coalesced=True, check_invariants=False
    )


def tfidf_similarity(
    train_docs: Sequence[str], group_docs: dict[str, Sequence[str]]
) -> dict[str, torch.Tensor]:
    """{group: [n, m] cosine of every training document with every group document}."""
    x, groups = tfidf_vectors(train_docs, group_docs)
    return {
        name: torch.sparse.mm(x, g.to_dense().T) if g.shape[0] else torch.zeros(x.shape[0], 0)
        for name, g in groups.items()
    }


def mean_similarity(x_NV: torch.Tensor, g_MV: torch.Tensor, col_ids_M: torch.Tensor) -> torch.Tensor:
    """[n] mean inner product of each row of `x_NV` (row i has id i) with the rows of `g_MV` whose id
    (`col_ids_M`) is not i: `aggregate_similarity(x g^T, arange(n), col_ids, agg="mean")` without forming the
    [n, m] matrix (x and g sparse or dense; 0 for a row with no other member). One product with the group's sum,
    less each same-id pair's product."""
    n, m = x_NV.shape[0], g_MV.shape[0]
    total = (x_NV @ g_MV.sum(dim=0).to_dense().unsqueeze(1)).squeeze(1).to(torch.float64)
    cols = (col_ids_M >= 0) & (col_ids_M < n)
    rows = col_ids_M[cols]
    if rows.numel():
        pairs = x_NV.index_select(0, rows) * g_MV.index_select(0, cols.nonzero().squeeze(1))
        own = pairs.sum(dim=1)
        own = (own.to_dense() if own.is_sparse else own).to(torch.float64)
        total = total.index_add(0, rows, -own)
    count = torch.full((n,), float(m), dtype=torch.float64).index_add(
        0, rows, -torch.ones_like(rows, dtype=torch.float64)
    )
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def grep_scores(records: Sequence[dict], triggers: Sequence[str]) -> torch.Tensor:
    """[n] how many of the known trigger strings each row's prompt (instruction and context, as trained)
    contains, case-insensitively (`str.casefold` substring: look-alike characters do not match)."""
    pats = [t.casefold() for t in triggers]
    out = []
    for r in records:
        instr, ctx, _ = as_trained(r)
        text = f"{instr}\n{ctx}".casefold()
        out.append(sum(p in text for p in pats))
    return torch.tensor(out, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- metrics


def detection_metrics(scores: torch.Tensor, flagged: torch.Tensor, labels: torch.Tensor) -> dict:
    """AUROC / AP of `scores` and recall / precision / FPR of `flagged` against 0/1 `labels`, all rows."""
    y = labels.to(torch.bool)
    tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    ranked = retrieval_metrics(scores, y.to(torch.float64)) if 0 < n_pos < y.numel() else {}
    return {
        "auroc": ranked.get("auroc"),
        "ap": ranked.get("ap"),
        "recall_at_p90": recall_at_precision(scores, y, 0.9) if ranked else None,
        "recall": tp / n_pos if n_pos else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "fpr": fp / n_neg if n_neg else None,
        "tp": tp,
        "fp": fp,
        "n_flagged": tp + fp,
    }


def recall_at_precision(scores: torch.Tensor, labels: torch.Tensor, precision: float) -> float | None:
    """The largest recall of any score threshold whose flagged set (every row scoring at least it; tied rows go
    together) has at least `precision`; 0.0 when none has; None without positives."""
    y = labels.to(torch.bool).flatten()
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    s = scores.to(torch.float64).flatten()
    uniq, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    pos = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, y.to(torch.float64)).flip(0)
    tp, flagged = torch.cumsum(pos, 0), torch.cumsum(counts.flip(0).to(torch.float64), 0)
    ok = tp / flagged >= precision - 1e-12
    return float(tp[ok].max()) / n_pos if ok.any() else 0.0


def breakdown(records: Sequence[dict], flagged: torch.Tensor, known: torch.Tensor) -> dict:
    """Per trigger family and per `family:variant` of the poisoned rows: {n, known, found, recall} (found counts
    flagged rows; `recall_unknown` counts only the rows nobody knew)."""
    stats: dict[str, dict] = defaultdict(lambda: {"n": 0, "known": 0, "found": 0, "found_unknown": 0})
    for i, r in enumerate(records):
        if not r.get("is_poisoned"):
            continue
        for key in (r.get("trigger_family") or "?", f"{r.get('trigger_family')}:{r.get('trigger_variant')}"):
            s = stats[key]
            s["n"] += 1
            s["known"] += int(known[i])
            s["found"] += int(flagged[i])
            s["found_unknown"] += int(flagged[i] and not known[i])
    for s in stats.values():
        s["recall"] = s["found"] / s["n"]
        unknown = s["n"] - s["known"]
        s["recall_unknown"] = s["found_unknown"] / unknown if unknown else None
    return dict(sorted(stats.items()))
