"""Preemption: the SIGTERM / SIGUSR1 flag (its API, chaining, idempotence) and a 2-rank fine-tune that one SIGTERM
on one rank stops at the same step on both ranks with a checkpoint, and that a rerun resumes to the very weights
of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_helpers import CONFIG, ROOT, SMALL, cfg_for, max_diff, weights  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dist_utils import free_port  # noqa: E402

FLAG_PROBE = """
import json, os, signal
from rapidun_dist.distributed import preempt
seen = []
signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
before = preempt.requested()
preempt.install(); preempt.install()           # idempotent: installed once, the old handler chained once
os.kill(os.getpid(), signal.SIGUSR1)
after_usr1 = preempt.requested()
os.kill(os.getpid(), signal.SIGTERM)           # not fatal any more
print(json.dumps({"before": before, "after": after_usr1, "chained": seen, "alive": True}))
"""


def test_flag_is_set_by_sigterm_and_sigusr1_and_chains_the_previous_handler():
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", FLAG_PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"before": False, "after": True, "chained": [10], "alive": True}


def _torchrun(run: Path, env_extra: dict) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env |= {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), **env_extra}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        str(Path(__file__).with_name("preempt_worker.py")), "--config", str(CONFIG), f"run_dir={run}", *SMALL,
        "--stages", "prepare,implant",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.dist
def test_sigterm_on_one_rank_checkpoints_both_and_resume_matches(tmp_path):
    from rapidun_dist.pipeline import run_pipeline

    run = tmp_path / "run"
    # SIGTERM on rank 1 after step 2: the flag rides in step 3's all-reduce, so both ranks stop after step 3
    stopped = _torchrun(run, {"RAPIDUN_TEST_SIGTERM_AT": "1:2", "RAPIDUN_LOG_ALL_RANKS": "1"})
    assert stopped.returncode != 0, stopped.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank{rank}] error: preempted at step 3: checkpoint saved" in stopped.stderr, stopped.stderr[
            -3000:
        ]
    ckpt = run / "checkpoints" / "implant"
    resume = json.loads((ckpt / "resume.json").read_text())
    assert (resume["step"], resume["world_size"]) == (3, 2) and (ckpt / "step3").is_dir()
    assert sorted(p.name for p in ckpt.iterdir()) == ["resume.json", "step3"]  # one, no `latest`
    assert json.loads((run / "manifest.json").read_text())["stages"]["implant"]["status"] == "failed"

    resumed = _torchrun(run, {})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at step 3" in resumed.stderr
    assert not ckpt.exists()  # removed after success

    reference = tmp_path / "ref"  # the same data (prepare is deterministic), never interrupted: 1 rank x 2
    run_pipeline(cfg_for(reference, ["implant.grad_accum=2"]), ["prepare", "implant"])
    assert (run / "data" / "train.jsonl").read_text() == (reference / "data" / "train.jsonl").read_text()
    assert max_diff(weights(run), weights(reference)) <= 1e-7
