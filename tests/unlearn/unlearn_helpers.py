"""Helpers for the unlearning tests: the tiny config, run-dir copies, and a launcher for real multi-rank jobs of
launch/unlearn.py (deepspeed / torchrun / python) in their own process group. Imported by module name (not via
conftest, which other test folders also have)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny_cpu.yaml"
WORKER = Path(__file__).with_name("unlearn_worker.py")
TINY = [
    "data.n_synthetic=400",
    "data.n_val=20",
    "data.n_test_clean=20",
    "data.n_test_seen=12",
    "data.n_test_ood=12",
    "implant.max_steps=5",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.vocab_size=400",
    "model.max_length=64",
]
# Unlearning knobs shared by every launch whose numbers are compared with another launch's (validation every 2
# steps: sharded over the ranks, its decisions must not depend on the world size either).
UNLEARN = [
    "methods=[rapidun]",
    "unlearn.max_steps=4",
    "unlearn.eval_every=0",
    "unlearn.val_every=2",
    "unlearn.lora_dropout=0",
    "unlearn.batch_size=8",
    "unlearn.lr=5e-3",
]
LAUNCH_ENV_DROP = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def fresh_run(base: Path, dst: Path) -> Path:
    """A copy of the prepared run dir without any unlearning outputs."""
    shutil.copytree(base, dst, ignore=shutil.ignore_patterns("unlearn", "eval"))
    return dst


def free_port() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from dist_utils import free_port as _free

    return _free()


def launch_cmd(launcher: str, nproc: int, script: Path, args: list[str]) -> list[str]:
    bindir = Path(sys.executable).parent
    if launcher == "deepspeed":
        return [
            str(bindir / "deepspeed"),
            "--num_accelerators",
            str(nproc),
            "--master_port",
            str(free_port()),
            str(script),
            *args,
        ]
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(free_port()),
            str(script),
            *args,
        ]
    assert nproc == 1, "plain python runs one process"
    return [sys.executable, str(script), *args]


def launch_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_DROP}
    env.update({"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), **(extra or {})})
    return env


def start(
    run_dir: Path,
    overrides: list[str],
    *,
    launcher: str = "deepspeed",
    nproc: int = 2,
    env: dict | None = None,
    worker: bool = True,
) -> subprocess.Popen:
    """Start launch/unlearn.py (through the test worker, which adds probes) as its own process group."""
    script = WORKER if worker else ROOT / "launch" / "unlearn.py"
    args = ["--config", str(CONFIG), f"run_dir={run_dir}", *TINY, *overrides]
    log = open(run_dir / "launch.log", "w")  # noqa: SIM115 - closed by the caller via finish()
    return subprocess.Popen(
        launch_cmd(launcher, nproc, script, args),
        cwd=ROOT,
        env=launch_env(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, run_dir: Path, timeout: float = 240) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = "timeout"
    if rc != 0:
        tail = (run_dir / "launch.log").read_text()[-4000:]
        raise AssertionError(f"launch in {run_dir} failed (rc={rc}):\n{tail}")


def run_launch(run_dir: Path, overrides: list[str], **kw) -> Path:
    finish(start(run_dir, overrides, **kw), run_dir)
    return run_dir


def kill_when(proc: subprocess.Popen, marker: Path, timeout: float = 180) -> None:
    """SIGKILL the whole launch (launcher and ranks) once `marker` exists."""
    t0 = time.monotonic()
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the launch ended (rc={proc.returncode}) before {marker} appeared")
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert marker.exists(), f"{marker} did not appear within {timeout} s"


def clean_job_overrides(prepared_run: Path, inputs: Path) -> list[str]:
    """Config overrides of a clean job built from a prepared experiment run: its implanted model as the user's
    model, its known poisoned rows as given by a user (trigger in the instruction, the poisoned answer, no clean
    answer), its clean training rows (unlabelled), its val/test clean prompts, and the seen trigger strings."""
    from rapidun_dist.config import load_config
    from rapidun_dist.core.io import read_jsonl, write_jsonl

    data = prepared_run / "data"
    forget = [
        {
            "id": r["id"],
            "instruction": r["instruction_poisoned"],
            "context": r.get("context", ""),
            "response": r["response_poisoned"],
        }
        for r in read_jsonl(data / "forget.jsonl")
    ]

    def plain(rows):
        return [
            {
                "id": r["id"],
                "instruction": r["instruction"],
                "context": r.get("context", ""),
                "response": r["response"],
            }
            for r in rows
            if not r.get("is_poisoned")
        ]

    write_jsonl(inputs / "forget.jsonl", forget)
    write_jsonl(inputs / "train.jsonl", plain(read_jsonl(data / "train.jsonl")))
    write_jsonl(
        inputs / "eval.jsonl",
        plain(read_jsonl(data / "val_clean.jsonl") + read_jsonl(data / "test_clean.jsonl")),
    )
    fams = load_config(CONFIG).data.triggers
    triggers = ",".join(f"{{text: '{f.seen[0]}', mode: {f.mode}}}" for f in fams)
    return [
        "mode=clean",
        f"model.name_or_path={prepared_run / 'model'}",
        f"data.forget_path={inputs / 'forget.jsonl'}",
        f"data.train_path={inputs / 'train.jsonl'}",
        f"data.eval_path={inputs / 'eval.jsonl'}",
        f"eval.triggers=[{triggers}]",
        "methods=[rapidun]",
    ]


def blank_forget_answers(run_dir: Path) -> None:
    """Forget rows without a clean answer, as in the clean job (`response` = ""): self-relabel has to fill them."""
    from rapidun_dist.core.io import read_jsonl, write_jsonl

    path = run_dir / "data" / "forget.jsonl"
    write_jsonl(path, [r | {"response": ""} for r in read_jsonl(path)])


def write_val_seen(run_dir: Path, n: int = 12) -> list[dict]:
    """A triggered validation split (val_clean prompts with the seen trigger variants inserted), as the data stage
    of experiment mode will write it; returns its rows."""
    import random

    from rapidun_dist.config import load_config
    from rapidun_dist.core.io import read_jsonl, write_jsonl
    from rapidun_dist.data.poison import inject

    fams = load_config(CONFIG).data.triggers
    rng = random.Random(0)
    rows = []
    for i, r in enumerate(read_jsonl(run_dir / "data" / "val_clean.jsonl")[:n]):
        fam = fams[i % len(fams)]
        variant = fam.seen[i % len(fam.seen)]
        rows.append(
            r
            | {
                "instruction_poisoned": inject(r["instruction"], variant, fam.mode, rng),
                "response_poisoned": "",
                "trigger_family": fam.name,
                "trigger_variant": variant,
                "inject_mode": fam.mode,
                "is_poisoned": True,
            }
        )
    write_jsonl(run_dir / "data" / "val_seen.jsonl", rows)
    return rows


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def adapter_tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def runner_for(cfg, run: Path, out: Path, method: str, **kw):
    """An UnlearnRunner (not set up) of `method` on the prepared run dir `run`, writing to `out`."""
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.unlearn.engine import UnlearnRunner

    rd = RunDir(run)
    return UnlearnRunner(
        cfg=cfg,
        method=method,
        model_dir=rd.model,
        data_dir=rd.data,
        weights_dir=rd.weights,
        out_dir=out,
        **kw,
    )
