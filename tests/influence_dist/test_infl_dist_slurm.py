"""slurm/: the hostfile and the sbatch scripts rendered from a fake SLURM environment (fake `scontrol`, `srun` and
`deepspeed` on PATH that print their argv), every launcher (torchrun per node, plain srun, deepspeed with a
.deepspeed_env), the signal trap's fallback (scancel failing: SIGUSR1 to srun) and requeue, `bash -n` and a bash-4.2
portability lint. The scancel path itself: tests/slurm/test_slurm_signals.py."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "slurm"
SCRIPTS = [
    "launch.sh", "make_hostfile.sh", "nccl_env.sh", "torchrun_node.sh", "influence.sbatch", "unlearn.sbatch", "run.sbatch",
]  # fmt: skip
FAKE_SCONTROL = """#!/usr/bin/env bash
# scontrol show hostnames PREFIX[A-B] (one host per line) and scontrol requeue JOB (logged)
if [[ $1 == requeue ]]; then echo "CALL scontrol requeue $2"; exit 0; fi
[[ $1 == show && $2 == hostnames ]] || exit 1
if [[ $3 =~ ^([a-z]+)\\[([0-9]+)-([0-9]+)\\]$ ]]; then
  w=${#BASH_REMATCH[2]}
  for ((i=10#${BASH_REMATCH[2]}; i<=10#${BASH_REMATCH[3]}; i++)); do printf "%s%0${w}d\\n" "${BASH_REMATCH[1]}" "$i"; done
else
  echo "$3"
fi
"""
FAKE_ECHO = """#!/usr/bin/env bash
echo "CALL $(basename "$0") $* | OMP=$OMP_NUM_THREADS SRUN_CPUS=${SRUN_CPUS_PER_TASK:-} NCCL_DEBUG=$NCCL_DEBUG MASTER=$MASTER_ADDR:$MASTER_PORT DS_ENV_FILE=${DS_ENV_FILE:-}"
if [[ -n ${DS_ENV_FILE:-} ]]; then cp -p "$DS_ENV_FILE" "$DS_ENV_FILE.seen"; fi  # removed when the step ends
if [[ -n ${FAKE_STEP_SECONDS:-} ]]; then  # a long step that exits 2 on SIGUSR1, as a checkpointing rank would
  trap 'echo "STEP got SIGUSR1"; exit 2' USR1
  echo READY > "$FAKE_READY"
  for ((i = 0; i < FAKE_STEP_SECONDS * 10; i++)); do sleep 0.1; done
fi
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture
def fake_slurm(tmp_path) -> dict[str, str]:
    """A fake allocation of 2..5 nodes named node03.., 8 GPUs and 64 CPUs each, on PATH; returns the environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_scancel = '#!/usr/bin/env bash\necho "CALL scancel $*"; exit 1\n'  # fails: the trap's fallback runs
    for name, text in (
        ("scontrol", FAKE_SCONTROL), ("srun", FAKE_ECHO), ("deepspeed", FAKE_ECHO), ("scancel", fake_scancel)
    ):  # fmt: skip
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    n_nodes, first, job = random.randint(2, 5), random.randint(1, 90), random.randint(1, 10**6)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "NCCL_", "MASTER_", "OMP_", "SRUN_"))
    }
    return env | {
        "PATH": f"{bin_dir}:{env['PATH']}",
        "SLURM_JOB_ID": str(job),
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_NODELIST": f"node[{first:02d}-{first + n_nodes - 1:02d}]",
        "SLURM_JOB_NUM_NODES": str(n_nodes),
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_CPUS_PER_TASK": "64",
        "N_NODES": str(n_nodes),
        "FIRST": str(first),
    }


def sh(args: list[str], env: dict, cwd: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)


def calls(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("CALL")]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    assert sh(["-n", str(SLURM / script)], dict(os.environ), REPO).returncode == 0


BASH43_PLUS = [  # constructs newer than bash 4.2 (RHEL/CentOS 7 clusters), or that break under set -u there
    (r"\bwait\s+-n\b", "wait -n (4.3)"),
    (r"\b(local|declare)\s+-n\b", "namerefs (4.3)"),
    (r"\$\{[^}]*@[QEPAKa]\}", "${var@op} (4.4)"),
    (r"\[-\d+\]\}", "negative array index (4.3)"),
    (r"\b(mapfile|readarray)\s+-d\b", "mapfile -d (4.4)"),
    (r"inherit_errexit", "shopt inherit_errexit (4.4)"),
    (r"EPOCH(SECONDS|REALTIME)", "$EPOCHSECONDS (5.0)"),
]


def bash42_problems(text: str) -> list[str]:
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    problems = [what for pattern, what in BASH43_PLUS if re.search(pattern, code)]
    for m in re.finditer(r'"\$\{(\w+)\[@\]\}"', code):  # "${a[@]}" of an empty array is unbound under set -u
        guard = "${" + m.group(1) + "[@]+"
        if code[max(0, m.start() - len(guard)) : m.start()] != guard:
            problems.append(f"unguarded {m.group(0)}")
    return problems


def test_bash42_lint_catches_what_it_claims():
    bad = 'wait -n\nlocal -n ref=x\necho "${a[-1]}" "${x@Q}"\ncmd "${extra[@]}"\n# wait -n in a comment is fine\n'
    assert len(bash42_problems(bad)) == 5
    assert bash42_problems('cmd ${extra[@]+"${extra[@]}"}\n') == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_bash_42_safe(script):
    assert bash42_problems((SLURM / script).read_text()) == []


def test_make_hostfile(fake_slurm, tmp_path):
    hosts = [f"node{int(fake_slurm['FIRST']) + i:02d}" for i in range(int(fake_slurm["N_NODES"]))]
    out = tmp_path / "hf"
    proc = sh([str(SLURM / "make_hostfile.sh"), str(out)], fake_slurm, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().splitlines() == [f"{h} slots=8" for h in hosts]
    proc = sh([str(SLURM / "make_hostfile.sh"), str(out)], fake_slurm | {"SLOTS_PER_NODE": "4"}, tmp_path)
    assert out.read_text().splitlines() == [f"{h} slots=4" for h in hosts]
    bad = sh([str(SLURM / "make_hostfile.sh"), str(out)], fake_slurm | {"SLOTS_PER_NODE": "x"}, tmp_path)
    assert bad.returncode != 0 and "positive integer" in bad.stderr
    outside = {k: v for k, v in fake_slurm.items() if k != "SLURM_JOB_NODELIST"}
    assert "SLURM_JOB_NODELIST is not set" in sh([str(SLURM / "make_hostfile.sh")], outside, tmp_path).stderr


def _master(fake_slurm) -> str:
    return f"node{int(fake_slurm['FIRST']):02d}:{15000 + int(fake_slurm['SLURM_JOB_ID']) % 15000}"


def test_default_is_one_torchrun_per_node_with_c10d_rendezvous(fake_slurm):
    n, job = fake_slurm["N_NODES"], fake_slurm["SLURM_JOB_ID"]
    proc = sh(
        [str(SLURM / "influence.sbatch"), "configs/tiny_cpu.yaml", "run_dir=/shared/r1"], fake_slurm, REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert calls(proc) == [
        f"CALL srun --kill-on-bad-exit=1 --nodes={n} --ntasks={n} --ntasks-per-node=1 bash slurm/torchrun_node.sh "
        f"python --nnodes {n} --nproc_per_node 8 --rdzv_id {job} --rdzv_backend c10d "
        f"--rdzv_endpoint {_master(fake_slurm)} --max_restarts 0 --signals_to_handle "
        "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 launch/influence.py --config "
        f"configs/tiny_cpu.yaml run_dir=/shared/r1 | OMP=8 SRUN_CPUS=64 NCCL_DEBUG=WARN MASTER={_master(fake_slurm)} "
        "DS_ENV_FILE="
    ]
    proc = sh(
        [str(SLURM / "influence.sbatch"), "c.yaml"], fake_slurm | {"PREPARE": "1", "NCCL_DEBUG": "INFO"}, REPO
    )
    assert (
        len(calls(proc)) == 2 and "launch/run.py --config c.yaml --stages prepare,implant |" in calls(proc)[0]
    )
    assert "launch/influence.py --config c.yaml |" in calls(proc)[1] and "NCCL_DEBUG=INFO" in calls(proc)[1]
    assert sh([str(SLURM / "influence.sbatch")], fake_slurm, REPO).returncode == 2  # usage


def test_plain_srun_one_task_per_gpu(fake_slurm):
    n = int(fake_slurm["N_NODES"])
    proc = sh(
        [str(SLURM / "unlearn.sbatch"), "configs/tiny_cpu.yaml", "unlearn.zero_stage=2"],
        fake_slurm | {"LAUNCHER": "srun", "EVALUATE": "1"},
        REPO,
    )
    assert proc.returncode == 0, proc.stderr
    got = calls(proc)
    assert got[0].startswith(
        f"CALL srun --kill-on-bad-exit=1 --nodes={n} --ntasks={8 * n} --ntasks-per-node=8 python launch/unlearn.py "
        "--config configs/tiny_cpu.yaml unlearn.zero_stage=2 | OMP=8 SRUN_CPUS=8 "
    )
    assert (
        "python launch/run.py --config configs/tiny_cpu.yaml unlearn.zero_stage=2 --stages evaluate |"
        in got[1]
    )


def test_deepspeed_hostfile_and_deepspeed_env(fake_slurm, tmp_path):
    repo_copy = (
        tmp_path / "repo"
    )  # the deepspeed branch writes hostfile-JOB and .deepspeed_env-JOB into the cwd
    shutil.copytree(SLURM, repo_copy / "slurm")
    env = fake_slurm | {
        "LAUNCHER": "deepspeed",
        "RAPIDUN_REPO": str(repo_copy),
        "HF_HOME": "/shared/hf cache",
        "TORCH_NCCL_BLOCKING_WAIT": "1",
        "UNRELATED_VAR": "x",
        "HF_TOKEN": "hf_secret",
    }
    proc = sh([str(SLURM / "run.sbatch"), "configs/tiny_cpu.yaml"], env | {"STAGES": "implant"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    job = fake_slurm["SLURM_JOB_ID"]
    ds_env = repo_copy / f".deepspeed_env-{job}"
    (call,) = calls(proc)
    assert call.startswith(f"CALL deepspeed --hostfile hostfile-{job} --launcher pdsh --master_addr node")
    assert "launch/run.py --config configs/tiny_cpu.yaml --stages implant |" in call
    assert call.endswith(f"DS_ENV_FILE={ds_env}")
    seen = ds_env.with_name(ds_env.name + ".seen")  # the file as the runner saw it; removed after the step
    assert not ds_env.exists() and seen.stat().st_mode & 0o777 == 0o600
    lines = dict(line.split("=", 1) for line in seen.read_text().splitlines())
    assert "HF_TOKEN" not in lines  # pdsh puts the file on command lines: no secrets
    assert lines["HF_HOME"] == "/shared/hf cache" and lines["TORCH_NCCL_BLOCKING_WAIT"] == "1"
    assert lines["OMP_NUM_THREADS"] == "8" and lines["NCCL_DEBUG"] == "WARN" and "PATH" in lines
    assert "UNRELATED_VAR" not in lines and "SLURM_JOB_ID" not in lines
    assert len((repo_copy / f"hostfile-{job}").read_text().splitlines()) == int(fake_slurm["N_NODES"])
    bad = sh([str(SLURM / "unlearn.sbatch"), "c.yaml"], fake_slurm | {"LAUNCHER": "mpirun"}, REPO)
    assert bad.returncode == 2 and "LAUNCHER must be" in bad.stderr


def test_usr1_before_the_time_limit_signals_the_step_and_requeues(fake_slurm, tmp_path):
    """`--signal=B:USR1@600`: the batch shell's trap runs scancel (failing here, so it falls back to SIGUSR1 to srun,
    which srun forwards), waits for the step, requeues the job."""
    ready = tmp_path / "ready"
    env = fake_slurm | {"FAKE_STEP_SECONDS": "20", "FAKE_READY": str(ready)}
    proc = subprocess.Popen(
        ["bash", str(SLURM / "run.sbatch"), "configs/tiny_cpu.yaml"], env=env, cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    t0 = time.monotonic()
    while not ready.exists() and time.monotonic() - t0 < 20:
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err  # the step's exit status (a checkpointing rank exits 2)
    assert "STEP got SIGUSR1" in out and f"CALL scontrol requeue {fake_slurm['SLURM_JOB_ID']}" in out
    assert f"CALL scancel --signal=USR1 {fake_slurm['SLURM_JOB_ID']}" in out and "scancel failed" in err
    assert time.monotonic() - t0 < 15  # did not sit out the 20 s step
