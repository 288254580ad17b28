"""Helpers of the experiments tests: a small spec over the embedded default, and finished runs made without running
anything (manifest records with the registry's fingerprints, a report with chosen numbers)."""

from __future__ import annotations

import random
from pathlib import Path

from rapidun_dist.cli.experiments.runner import cell_config
from rapidun_dist.core.io import write_json
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import default_stages, fingerprint

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny_cpu.yaml"
SPEC = f"""
title: A small study
config: {CONFIG}
seeds: [0, 1, 2]
methods: [rapidun, uniform]
reference: uniform
overrides: [unlearn.lr=1e-3]
cells:
  a:
    label: case A
    overrides: [data.retain_contamination=0]
  b:
    label: case B
    methods: [rapidun, rapidun_placebo, uniform]
    overrides: [data.retain_contamination=0.1]
table:
  columns: {{asr_seen: ASR seen, ppl_ratio: PPL ratio, answer_seen.answered: answered}}
  pairs: [[rapidun_placebo, rapidun]]
  paired: [asr_seen, ppl_ratio]
notes: The reading.
"""


def fake_report(methods, seed: int, rng: random.Random) -> dict:
    def entry(asr: float, ppl: float) -> dict:
        answered = rng.randint(150, 250)
        return {"asr_seen": asr, "asr_ood": rng.uniform(0, 0.1), "clean_ppl": ppl, "judge_fpr": 0.0, "n_seen": 300,
                "n_ood": 300, "n_clean": 120, "seconds": {"unlearn": rng.uniform(2, 5), "total": 5.0},
                "answer_seen": {"answered": {"p": answered / 300, "k": answered, "n": 300, "lo": 0.4, "hi": 0.9}}}  # fmt: skip

    return {
        "mode": "experiment",
        "protocol": {"seed": f"data={seed}"},
        "before": entry(rng.uniform(0.9, 1.0), 2.0),
        "methods": {m: entry(rng.randrange(0, 30) / 300, rng.uniform(2.02, 2.1)) for m in methods},
    }


def complete_run(cfg, report: dict | None = None) -> RunDir:
    """Record every default stage of `cfg` done in its run dir, as the driver would (fingerprints chained through
    the outputs); evaluate writes `report` as eval/report.json."""
    rd = RunDir(cfg.run_dir)
    for stage in default_stages(cfg):
        fp = fingerprint(stage.name, cfg.to_dict(), rd.manifest()["stages"])
        rec = rd.start(stage.name, fp)
        if stage.name == "evaluate" and report is not None:
            out = rd.eval / "report.json"
            write_json(out, report)
        else:
            out = rd.root / stage.name / "out.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(f"{stage.name} {cfg.seed}\n")
        rd.finish(stage.name, rec, [out])
    return rd


def complete_spec(spec, out: Path, rng: random.Random, cells=None) -> dict:
    """Every (cell, seed) of `spec` finished under `out`; returns {(cell, seed): report}."""
    reports = {}
    for cell in spec.cells:
        if cells is not None and cell.name not in cells:
            continue
        for seed in spec.seeds:
            report = fake_report(cell.methods, seed, rng)
            complete_run(cell_config(spec, cell, seed, out / cell.name / f"s{seed}"), report)
            reports[(cell.name, seed)] = report
    return reports
