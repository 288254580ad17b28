"""launch/influence.py on 2 gloo ranks (torchrun) equals the single-process stages; a rerun skips finished
stages; missing upstream stages give a clear error before any work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infl_dist_utils import (  # noqa: E402
    CONFIG,
    OVERRIDES,
    assert_weights_close,
    fresh_copy,
    load_cfg,
    load_launch_module,
    read_weights,
    torchrun_influence,
)


@pytest.mark.dist
def test_two_ranks_equal_one_rank(implanted_dir, reference_weights, tmp_path):
    run = fresh_copy(implanted_dir, tmp_path / "run")
    proc = torchrun_influence(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_weights_close(read_weights(run), reference_weights, atol=1e-6)
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert (stages["influence"]["status"], stages["influence"]["world_size"]) == ("done", 2)
    assert stages["weights"]["status"] == "done"
    assert "blocks: alltoall2d" in proc.stderr  # the 2D multi-rank block path ran, not the dense one
    assert len(list((run / "features").glob("shard-*.safetensors"))) == 34


def test_rerun_skips_finished_stages(implanted_dir, tmp_path):
    """Single process (no launcher): a second call finds both stages done and rewrites nothing."""
    launch = load_launch_module()
    run = fresh_copy(implanted_dir, tmp_path / "run")
    argv = ["--config", str(CONFIG), "--local_rank", "0", f"run_dir={run}", *OVERRIDES]
    assert launch.main(argv) == 0
    outputs = [*(run / "weights").rglob("*.jsonl"), *(run / "features").glob("shard-*")]
    before = {p: p.stat().st_mtime_ns for p in outputs}
    assert len(list((run / "features").glob("shard-*"))) == 2 * 34  # a .safetensors + a .json sidecar each
    assert launch.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in outputs} == before


def test_missing_implant_is_a_clear_error(implanted_dir, tmp_path):
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import readiness

    launch = load_launch_module()
    run = fresh_copy(implanted_dir, tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["stages"]["implant"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    problem = readiness(load_cfg(run), RunDir(run), "influence")
    assert problem is not None and "'implant' has not run" in problem and "--stages implant" in problem
    assert readiness(load_cfg(implanted_dir), RunDir(implanted_dir), "influence") is None
    assert launch.main(["--config", str(CONFIG), f"run_dir={run}", *OVERRIDES]) == 2
    assert not (run / "features").exists()
