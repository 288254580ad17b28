"""Find the rest of the poison (docs/DESIGN.md section 11): the scoring methods, the threshold rules and the metrics.

One module per method (`find_poison.method`), each exposing `score(job: ScoreJob) -> torch.Tensor | None`: every
row of `job.train` scored (float64 [n] on rank 0, None on the other ranks; every rank calls it). The stage applies
the same threshold rule to whichever method scored (`suspects.py`).

    tokenwise   token-wise influence features, contrast of the forget and reference groups   (tokenwise.py)
    repsim      mean-pooled hidden states of one layer, forward only, the same contrast     (repsim.py)
    gradsim     per-sample gradients, no token normalisation (LM head or last block), same  (gradsim.py)
    graceful    output-layer gradients of every row clustered in two; no known row used     (graceful.py)
    tfidf       TF-IDF cosine of the rows as trained, the same contrast                     (tfidf.py)
    grep        how many known trigger strings the prompt holds                             (grep.py)

`twostage.py` is the cheap first pass (repsim over every row, then the method on the top candidates only);
`cost.py` times one fine-tuning epoch of the same model beside them; `dense.py` is what the dense-feature methods
share (rows sliced over ranks, the float64 group contrast).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class MethodSpec:
    """A find_poison method: its config name, its module, the scorer name its scores carry in the outputs, and
    whether it reads the model (the lexical ones do not)."""

    name: str
    module: str
    scorer: str
    needs_model: bool
    doc: str


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("tokenwise", "tokenwise", "influence", True, "token-wise influence with the forget rows"),
        MethodSpec(
            "repsim", "repsim", "repsim", True, "hidden-state cosine with the forget rows (forward only)"
        ),
        MethodSpec("gradsim", "gradsim", "gradsim", True, "per-sample gradient cosine with the forget rows"),
        MethodSpec(
            "graceful", "graceful", "graceful", True, "output-layer gradients clustered, no known row"
        ),
        MethodSpec("tfidf", "tfidf", "tfidf", False, "TF-IDF cosine with the forget rows"),
        MethodSpec("grep", "grep", "grep", False, "known trigger strings in the prompt"),
    )
}
BASELINES = ("tfidf", "grep")  # scored beside the chosen method when find_poison.baselines is on


def method_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise KeyError(f"find_poison.method: expected one of {', '.join(METHODS)}, found {name!r}")
    return METHODS[name]


def method_module(name: str) -> ModuleType:
    """The module that scores with method `name` (imported when used: the lexical ones need no torch model code)."""
    return importlib.import_module(f"rapidun_dist.find_poison.{method_spec(name).module}")


def scorer_name(method: str) -> str:
    return method_spec(method).scorer
