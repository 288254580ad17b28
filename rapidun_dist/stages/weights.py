"""weights: directional scores -> fused scores -> robust, bounded, mean-one per-sample weights (docs/DESIGN.md section 6),
for RapidUn (the config's fusion) and the self-only ablation (beta = delta = 0). Rank-0 math on the scores.

Options (`weights.*`): `shrink` (z shrunk by the split-half reliability; needs the half scores the influence stage
writes with it), `retain_score: at_risk`, and `relabel_weights` (uniform | self: the relabel term of forget rows
gets its own weights, in forget_relabel_weights.jsonl; rapidun scales the ascent by the fused weights alone).

With a contaminated retain pack (`data.retain_contamination`, truth in data/retain_truth.jsonl) the stage also
writes weights/contamination.json: per fusion the mean weight of the retain rows that are in truth poisoned and of
the clean ones. That file is for the reader; no weight depends on the truth."""

from __future__ import annotations

from pathlib import Path

import torch

from rapidun_dist.core import timing
from rapidun_dist.core.io import read_jsonl
from rapidun_dist.core.logging import get_logger
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages.base import Stage, StageContext
from rapidun_dist.weights.recipe import (
    contamination_means,
    read_scores,
    self_only_config,
    write_relabel_weights,
)

log = get_logger("influence")


def run(ctx: StageContext) -> list[Path]:
    cfg, rd = ctx.cfg, ctx.rd
    from rapidun_dist.weights.rapidin import score_rows, weight_rows, write_weights
    from rapidun_dist.weights.robust import fuse_and_weight

    scores, f_ids, r_ids, halves = read_scores(rd.influence / "scores.jsonl")
    outputs, per_fusion = [], {}
    for out_dir, wcfg in (
        (rd.weights, cfg.weights),
        (rd.weights / "self_only", self_only_config(cfg.weights)),
    ):
        fw, rw, fused = fuse_and_weight(scores, wcfg, halves)
        f_rows, r_rows = weight_rows(fw, f_ids), weight_rows(rw, r_ids)
        per_fusion["rapidun" if out_dir == rd.weights else out_dir.name] = rw
        write_weights(out_dir, f_rows, r_rows, scores_rows=score_rows(scores, fused, f_rows, r_rows))
        outputs += [out_dir / "forget_weights.jsonl", out_dir / "retain_weights.jsonl"]
        relabel = write_relabel_weights(out_dir, wcfg, scores, halves, f_ids)
        outputs += [relabel] if relabel else []
        if wcfg.shrink:
            log.info(
                f"weights{'/' + out_dir.name if out_dir != rd.weights else ''}: shrink lambda forget "
                f"{fused['shrink_f']:.3f}, retain {fused['shrink_r']:.3f}"
            )
    fw, rw = (
        torch.tensor([r["weight"] for r in read_jsonl(rd.weights / n)])
        for n in ("forget_weights.jsonl", "retain_weights.jsonl")
    )
    with timing.overhead("report"):  # a plot for the reader, not part of the weights' cost
        from rapidun_dist.evaluation.plots import histogram

        histogram(
            rd.weights / "weights.png",
            "RapidUn per-sample weights",
            {"forget": fw.tolist(), "retain": rw.tolist()},
            bins=30,
        )
    log.info(_weight_summary(fw, rw))
    return outputs + write_contamination(rd, r_ids, per_fusion)


def write_contamination(rd: RunDir, r_ids: list[str], per_fusion: dict[str, torch.Tensor]) -> list[Path]:
    """weights/contamination.json when data/retain_truth.jsonl names contaminated retain rows (else nothing, and
    a stale file is removed)."""
    from rapidun_dist.core.io import write_json

    path, truth = rd.weights / "contamination.json", rd.data / "retain_truth.jsonl"
    bad = {r["id"] for r in read_jsonl(truth) if r.get("contaminated")} if truth.is_file() else set()
    if not bad:
        path.unlink(missing_ok=True)
        return []
    out = {name: contamination_means(r_ids, rw, bad) for name, rw in per_fusion.items()}
    write_json(path, out)
    m = out["rapidun"]
    log.info(
        f"weights: {m['n_contaminated']} contaminated retain rows, mean weight {m['mean_contaminated']:.3f} "
        f"against {m['mean_clean']:.3f} for the {m['n_clean']} clean ones"
    )
    return [path]


def _weight_summary(fw: torch.Tensor, rw: torch.Tensor) -> str:
    q = lambda w: (
        f"min {w.min():.3f} median {w.median():.3f} max {w.max():.3f} distinct {len(set(w.tolist()))}"
    )
    return f"weights: forget {q(fw)}; retain {q(rw)}"


STAGE = Stage(
    name="weights",
    doc="fuse the directional scores into robust, bounded, mean-one per-sample weights",
    config_keys=("weights",),
    reads=("influence/scores.jsonl", "data/retain_truth.jsonl (for contamination.json only)"),
    writes=(
        "weights/forget_weights.jsonl",
        "weights/retain_weights.jsonl",
        "weights/self_only/",
        "weights/contamination.json (contaminated retain pack)",
    ),
    requires=("influence",),
    run=run,
)
