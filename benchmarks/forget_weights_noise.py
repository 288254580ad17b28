"""Do the FR-based forget weights of RapidUn down-weight the mislabelled forget rows (clean rows the user listed as
poisoned)? Per run dir: mean / median forget weight of the truly poisoned and of the mislabelled rows
(data/forget_truth.jsonl against weights/forget_weights.jsonl), and the Mann-Whitney AUROC of "lower weight"
for mislabelled rows (1.0 = every mislabelled row weighs less than every poisoned one; 0.5 = no signal).

    python benchmarks/forget_weights_noise.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from rapidun_dist.core.io import read_jsonl
from rapidun_dist.evaluation import markdown as md


def auroc_lower(mis: list[float], poi: list[float]) -> float:
    """P(weight of a mislabelled row < weight of a poisoned row), ties counted 1/2: the AUROC of "lower weight"
    for the mislabelled rows (`evaluation.metrics.retrieval_metrics`, ranks with ties averaged)."""
    from rapidun_dist.evaluation.metrics import retrieval_metrics

    return retrieval_metrics([-w for w in mis + poi], [1] * len(mis) + [0] * len(poi))["auroc"]


def one(run: Path) -> dict:
    truth = {r["id"]: r.get("mislabelled", False) for r in read_jsonl(run / "data" / "forget_truth.jsonl")}
    w = {r["id"]: r["weight"] for r in read_jsonl(run / "weights" / "forget_weights.jsonl")}
    mis = [w[i] for i, m in truth.items() if m]
    poi = [w[i] for i, m in truth.items() if not m]
    return {
        "run": str(run),
        "n_poisoned": len(poi),
        "n_mislabelled": len(mis),
        "mean_poisoned": statistics.fmean(poi),
        "mean_mislabelled": statistics.fmean(mis) if mis else None,
        "median_poisoned": statistics.median(poi),
        "median_mislabelled": statistics.median(mis) if mis else None,
        "auroc_lower": auroc_lower(mis, poi) if mis and poi else None,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run dirs with data/ and weights/ done")
    argv = ap.parse_args(argv).runs
    header = ["run", "poisoned rows", "mislabelled rows", "mean w poisoned", "mean w mislabelled",
              "median w poisoned", "median w mislabelled", "P(w_mis < w_poi)"]  # fmt: skip
    body = []
    for run in argv:
        r = one(Path(run))
        body.append(
            [("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)) for v in r.values()]
        )
    print("\n".join(md.table(header, body)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
