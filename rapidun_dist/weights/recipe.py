"""The weights recipe: pack features -> directional scores -> fused scores -> robust, bounded, mean-one weights.

One implementation, called by the weights stage (from the influence stage's scores), by dynamic reweighting inside
unlearning (`unlearn.reweight_every`, from the current adapter's features) and by the weight experiments:

- `weights_from_features(f_FK, r_RK, wcfg, spec)`: the whole recipe on dense features (one process);
- `weights_from_scores`-level pieces: `fuse_and_weight` (rapidun_dist.weights.robust) on the four blocks,
  `relabel_weights` for the relabel term, `self_only_config` for the self-only ablation;
- `half_columns`: the split halves `weights.shrink` measures the scores' reliability on.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from rapidun_dist.config import WeightsConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.core.io import read_jsonl, write_jsonl
from rapidun_dist.influence.scores import dense_directional_scores
from rapidun_dist.weights.robust import fuse_and_weight


def score_kwargs(w: WeightsConfig) -> dict:
    """The aggregation settings of `weights.*` that the directional scores take."""
    return dict(agg=w.agg, topk=w.topk, trim=w.trim, include_self=w.include_self, topk_frac=w.topk_frac)


def half_columns(spec: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature columns of the two split halves `weights.shrink` scores: the blocks of the even and of the odd
    tracked layers (token-wise features are per-layer blocks), or the even and odd sketch bins (RapidGrad)."""
    dim = int(spec["dim"])
    n_blocks = len(spec["layers"]) if spec.get("estimator") == "tokenwise" else dim
    if n_blocks < 2:
        raise DataError("weights.shrink needs at least two tracked layers to split the features in halves")
    block = torch.arange(dim) // (dim // n_blocks)
    return (block % 2 == 0).nonzero().squeeze(1), (block % 2 == 1).nonzero().squeeze(1)


def weights_from_features(
    f_FK: torch.Tensor, r_RK: torch.Tensor, w: WeightsConfig, spec: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict]:
    """(forget weights, retain weights, relabel weights or None, fused) of dense pack features: the directional
    scores, their split halves when `weights.shrink`, the fusion and the robust mapping. `spec`: the feature
    store's spec (dim, layers, estimator), for the halves."""
    kw = score_kwargs(w)
    scores = dense_directional_scores(f_FK, r_RK, **kw)
    halves = None
    if w.shrink:
        halves = tuple(dense_directional_scores(f_FK[:, c], r_RK[:, c], **kw) for c in half_columns(spec))
    fw, rw, fused = fuse_and_weight(scores, w, halves)
    return fw, rw, relabel_weights(w, scores, halves, len(fw)), fused


def read_scores(path: Path) -> tuple[dict, list[str], list[str], tuple[dict, dict] | None]:
    """(scores {ff, fr, rr, rf}, forget ids, retain ids, split-half scores or None when not stored)."""
    rows = read_jsonl(path)
    f = [r for r in rows if r["pack"] == "forget"]
    r_ = [r for r in rows if r["pack"] == "retain"]
    t = lambda rs, k: torch.tensor([x[k] for x in rs], dtype=torch.float64)
    blocks = lambda sfx: {
        "ff": t(f, f"self{sfx}"),
        "fr": t(f, f"cross{sfx}"),
        "rr": t(r_, f"self{sfx}"),
        "rf": t(r_, f"cross{sfx}"),
    }
    halves = (blocks("_a"), blocks("_b")) if rows and "self_a" in rows[0] else None
    return blocks(""), [x["id"] for x in f], [x["id"] for x in r_], halves


def self_only_config(cfg: WeightsConfig) -> WeightsConfig:
    """The self-only ablation's fusion (beta = delta = 0: FF for forget rows, RR for retain rows)."""
    return replace(cfg, beta=0.0, delta=0.0)


def relabel_config(cfg: WeightsConfig) -> WeightsConfig | None:
    """The fusion of the relabel-term weights (`weights.relabel_weights`): None for `same` (the ascent's) and
    `uniform` (all 1), the self-only fusion (beta = 0) for `self`."""
    return replace(cfg, beta=0.0) if cfg.relabel_weights == "self" else None


def write_relabel_weights(
    out_dir: Path, wcfg: WeightsConfig, scores: dict, halves, f_ids: list
) -> Path | None:
    """forget_relabel_weights.jsonl (the relabel term's weights, rapidun reads it), or remove a stale one."""
    from rapidun_dist.weights.rapidin import RELABEL_WEIGHTS, weight_rows

    path = out_dir / RELABEL_WEIGHTS
    fw = relabel_weights(wcfg, scores, halves, len(f_ids))
    if fw is None:
        path.unlink(missing_ok=True)
        return None
    write_jsonl(path, weight_rows(fw, f_ids))
    return path


def relabel_weights(wcfg: WeightsConfig, scores: dict, halves, n_forget: int) -> torch.Tensor | None:
    """The relabel term's forget weights under `weights.relabel_weights` (None for `same`: the ascent's)."""
    if wcfg.relabel_weights == "same":
        return None
    rcfg = relabel_config(wcfg)
    return (
        torch.ones(n_forget, dtype=torch.float64)
        if rcfg is None
        else fuse_and_weight(scores, rcfg, halves)[0]
    )


def contamination_means(r_ids: list[str], rw: torch.Tensor, contaminated: set[str]) -> dict:
    """{"n_contaminated", "n_clean", "mean_contaminated", "mean_clean"} of the retain weights `rw` (None for an
    empty group)."""
    mask = torch.tensor([i in contaminated for i in r_ids], dtype=torch.bool)
    mean = lambda w: float(w.double().mean()) if w.numel() else None  # noqa: E731
    return {
        "n_contaminated": int(mask.sum()),
        "n_clean": int((~mask).sum()),
        "mean_contaminated": mean(rw[mask]),
        "mean_clean": mean(rw[~mask]),
    }
