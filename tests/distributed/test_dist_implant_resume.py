"""implant.save_every: the implant stage of the small config, SIGKILLed (no warning, no handler runs) after a periodic
checkpoint, then SIGKILLed again while it writes the next one (a torn step folder that resume.json does not name),
resumes from the latest complete checkpoint and ends with the weights of an uninterrupted run.

The test runs this file as the stage's launcher (`python test_dist_implant_resume.py --config ...`); two environment
hooks keep the test's timing out of library code:
  RAPIDUN_TEST_PAUSE_AT=S       after optimizer step S the process sleeps until it is killed (the run cannot finish
                                before the test's SIGKILL lands)
  RAPIDUN_TEST_KILL_IN_SAVE=S   while step S's checkpoint is being made current: half of its model-state file is cut
                                away, then the process SIGKILLs itself, before resume.json is replaced
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS, EVERY = 14, 4  # checkpoints at steps 4, 8 and 12


def _install_hooks() -> None:
    import rapidun_dist.training.checkpoint as checkpoint
    import rapidun_dist.training.finetune as train

    pause_at = int(os.environ.get("RAPIDUN_TEST_PAUSE_AT", "0"))
    kill_in_save = int(os.environ.get("RAPIDUN_TEST_KILL_IN_SAVE", "0"))
    base_progress, base_mark = train.Progress, checkpoint.mark_ready

    class PausingProgress(base_progress):
        def update(self, n: int = 1, **extra) -> None:
            super().update(n, **extra)
            step = self.done + STEPS - self.total  # the absolute step, also after a resume
            if pause_at and step == pause_at:
                while True:
                    time.sleep(1)

    def killing_mark(ckpt_dir: Path, meta: dict, marker: str = checkpoint.READY) -> None:
        if meta["step"] == kill_in_save:
            states = ckpt_dir / meta["tag"] / "mp_rank_00_model_states.pt"
            os.truncate(states, states.stat().st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        base_mark(ckpt_dir, meta, marker)

    train.Progress, checkpoint.mark_ready = PausingProgress, killing_mark


def _worker_main() -> int:
    import importlib.util

    _install_hooks()
    spec = importlib.util.spec_from_file_location("launch_run", ROOT / "launch" / "run.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    return launch.main(sys.argv[1:])


def _cmd(run: Path) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stage_helpers import CONFIG, SMALL

    over = [f"implant.max_steps={STEPS}", f"implant.save_every={EVERY}"]
    return [sys.executable, __file__, "--config", str(CONFIG), f"run_dir={run}", *SMALL, *over]


def _env(**hooks: str) -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    return env | {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), **hooks}


def _run(run: Path, stages: str, **hooks: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_cmd(run), "--stages", stages],
        cwd=ROOT,
        env=_env(**hooks),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _resume_meta(ckpt: Path) -> dict | None:
    try:
        return json.loads((ckpt / "resume.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _kill_after_checkpoint(run: Path, step: int, log: Path) -> None:
    """Start the implant stage paused at step+2, poll until resume.json names step `step`, SIGKILL it."""
    ckpt = run / "checkpoints" / "implant"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*_cmd(run), "--stages", "implant"],
            cwd=ROOT,
            env=_env(RAPIDUN_TEST_PAUSE_AT=str(step + 2)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            while (_resume_meta(ckpt) or {}).get("step") != step:
                assert proc.poll() is None, (
                    f"the implant run exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
                )
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.dist
def test_implant_killed_after_a_periodic_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stage_helpers import max_diff, weights

    ref, run = tmp_path / "ref", tmp_path / "run"
    prep = _run(ref, "prepare")
    assert prep.returncode == 0, prep.stderr[-3000:]
    shutil.copytree(ref, run)  # the same data for both
    done = _run(ref, "implant")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (ref / "checkpoints" / "implant").exists()  # removed after success

    ckpt = run / "checkpoints" / "implant"
    # 1. SIGKILL somewhere after the step-8 checkpoint (4 was written, then replaced): one checkpoint on disk
    _kill_after_checkpoint(run, 8, tmp_path / "killed.log")
    meta = _resume_meta(ckpt)
    assert (meta["tag"], meta["step"], meta["world_size"]) == ("step8", 8, 1)
    assert sorted(p.name for p in ckpt.iterdir()) == ["resume.json", "step8"]

    # 2. resumes at 8, dies by SIGKILL while step 12's checkpoint is half-written: resume.json still names step 8
    torn = _run(run, "implant", RAPIDUN_TEST_KILL_IN_SAVE="12")
    assert torn.returncode == -signal.SIGKILL, torn.stderr[-3000:]
    assert "at step 8" in torn.stderr and "resumed from" in torn.stderr, torn.stderr[-3000:]
    assert _resume_meta(ckpt)["tag"] == "step8" and (ckpt / "step12").is_dir()

    # 3. a plain rerun resumes from step 8 (not the torn 12), finishes, removes the checkpoints
    final = _run(run, "implant")
    assert final.returncode == 0, final.stderr[-3000:]
    assert "at step 8" in final.stderr and "resumed from" in final.stderr, final.stderr[-3000:]
    assert not ckpt.exists()
    diff = max_diff(weights(run), weights(ref))
    print(f"max abs weight difference, killed twice and resumed vs uninterrupted: {diff:.3g}")
    assert diff <= 1e-6
    steps = json.loads((run / "model" / "train_stats.json").read_text())["steps"]
    assert steps == STEPS


if __name__ == "__main__":
    sys.exit(_worker_main())
