"""What a stage's seconds count (rapidun_dist.core.timing): overhead blocks are counted by kind and reset per stage,
the manifest records them beside the wall seconds, and the cost is the difference."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from rapidun_dist import pipeline
from rapidun_dist.config import load_config
from rapidun_dist.core import timing
from rapidun_dist.core.io import read_json
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import get_stage

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml")


def test_overhead_counts_by_kind_and_take_resets():
    timing.take()
    with timing.overhead("imports"):
        time.sleep(0.02)
    with timing.overhead("report"):
        time.sleep(0.01)
    with timing.overhead("imports"):
        time.sleep(0.02)
    spent = timing.take()
    assert set(spent) == {"imports", "report"}
    assert spent["imports"] >= 0.04 and 0.01 <= spent["report"] < spent["imports"]
    assert timing.take() == {}
    with pytest.raises(ValueError, match="unknown kind 'plots'"):
        with timing.overhead("plots"):
            pass


def test_overhead_is_counted_when_the_block_raises():
    timing.take()
    with pytest.raises(RuntimeError):
        with timing.overhead("imports"):
            time.sleep(0.01)
            raise RuntimeError("boom")
    assert timing.take()["imports"] >= 0.01


def test_cost_seconds_of_a_record():
    assert timing.cost_seconds(None) is None and timing.cost_seconds({"status": "running"}) is None
    assert timing.cost_seconds({"seconds": 5.0}) == 5.0
    assert timing.cost_seconds({"seconds": 5.0, "overhead_seconds": {"imports": 3.0, "report": 0.5}}) == 1.5
    assert timing.cost_seconds({"seconds": 1.0, "overhead_seconds": {"imports": 1.2}}) == 0.0  # clock jitter


def test_run_stage_records_the_stages_overhead_only(tmp_path, monkeypatch):
    cfg = load_config(CONFIG, [f"run_dir={tmp_path / 'r'}"])
    rd = RunDir(cfg.run_dir)
    real = get_stage("prepare")

    def slow_run(ctx):
        with timing.overhead("report"):
            time.sleep(0.2)
        return real.run(ctx)

    with timing.overhead("imports"):  # before the stage: not its overhead
        time.sleep(0.05)
    monkeypatch.setattr(pipeline, "get_stage", lambda name: dataclasses.replace(real, run=slow_run))
    assert pipeline.run_stage(cfg, rd, "prepare")
    rec = read_json(rd.root / "manifest.json")["stages"]["prepare"]
    assert (
        set(rec["overhead_seconds"]) == {"report"}
        and 0.2 <= rec["overhead_seconds"]["report"] < rec["seconds"]
    )
    assert rd.stage_cost_seconds("prepare") == pytest.approx(
        rec["seconds"] - rec["overhead_seconds"]["report"]
    )
    assert rd.stage_seconds("prepare") == rec["seconds"]
