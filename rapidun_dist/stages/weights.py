"""weights: directional scores -> fused scores -> robust, bounded, mean-one per-sample weights (DESIGN section 6),
for RapidUn (the config's fusion) and the self-only ablation (beta = delta = 0). Rank-0 math on the scores."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.io import read_jsonl
from rapidun_dist.logging import get_logger
from rapidun_dist.rundir import RunDir
from rapidun_dist.stages.base import Stage

log = get_logger("influence")


def read_scores(path: Path) -> tuple[dict, list[str], list[str]]:
    rows = read_jsonl(path)
    f = [r for r in rows if r["pack"] == "forget"]
    r_ = [r for r in rows if r["pack"] == "retain"]
    t = lambda rs, k: torch.tensor([x[k] for x in rs], dtype=torch.float64)
    return (
        {"ff": t(f, "self"), "fr": t(f, "cross"), "rr": t(r_, "self"), "rf": t(r_, "cross")},
        [x["id"] for x in f],
        [x["id"] for x in r_],
    )


def run(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.evaluation.plots import histogram
    from rapidun_dist.weights.rapidin import score_rows, weight_rows, write_weights
    from rapidun_dist.weights.robust import fuse_and_weight

    scores, f_ids, r_ids = read_scores(rd.influence / "scores.jsonl")
    outputs = []
    for out_dir, wcfg in (
        (rd.weights, cfg.weights),
        (rd.weights / "self_only", replace(cfg.weights, beta=0.0, delta=0.0)),
    ):
        fw, rw, fused = fuse_and_weight(scores, wcfg)
        f_rows, r_rows = weight_rows(fw, f_ids), weight_rows(rw, r_ids)
        write_weights(out_dir, f_rows, r_rows, scores_rows=score_rows(scores, fused, f_rows, r_rows))
        outputs += [out_dir / "forget_weights.jsonl", out_dir / "retain_weights.jsonl"]
    fw, rw = (
        torch.tensor([r["weight"] for r in read_jsonl(rd.weights / n)])
        for n in ("forget_weights.jsonl", "retain_weights.jsonl")
    )
    histogram(
        rd.weights / "weights.png",
        "RapidUn per-sample weights",
        {"forget": fw.tolist(), "retain": rw.tolist()},
        bins=30,
    )
    log.info(_weight_summary(fw, rw))
    return outputs


def _weight_summary(fw: torch.Tensor, rw: torch.Tensor) -> str:
    q = lambda w: (
        f"min {w.min():.3f} median {w.median():.3f} max {w.max():.3f} distinct {len(set(w.tolist()))}"
    )
    return f"weights: forget {q(fw)}; retain {q(rw)}"


STAGE = Stage(
    name="weights",
    doc="fuse the directional scores into robust, bounded, mean-one per-sample weights",
    config_keys=("weights",),
    reads=("influence/scores.jsonl",),
    writes=("weights/forget_weights.jsonl", "weights/retain_weights.jsonl", "weights/self_only/"),
    requires=("influence",),
    run=run,
)
