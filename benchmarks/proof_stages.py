"""gpu_proof section 3, stages: every stage of a run on the device, on a tiny Llama and a small synthetic corpus.

prepare, implant (DeepSpeed fine-tune; the dtypes it records are those of the weights that trained: bf16 on
CUDA), find_poison, influence and weights run in this process under the placement hooks of gpu_check_stages
(every module's inputs, parameters and buffers on the device). Then unlearn under ZeRO-2 and under ZeRO-3, each
as a preemption round trip in child processes: the first child is sent a real SIGTERM (the parent's
os.kill) while it waits at the end of optimizer step 2, checkpoints through rapidun_dist.distributed.preempt
and exits; the second, the same command, resumes from step 2 and finishes. Each child reports the DeepSpeed
optimizer wrapper that ran (type(engine.optimizer).__name__), bf16, and the parameters' dtypes and devices.
Last, evaluate on the ZeRO-2 run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from gpu_check_stages import TINY, Watch, Watched
from proof_common import REPO, Section

PREEMPTED = 75  # the child's exit status when the unlearn stage stopped on the signal (EX_TEMPFAIL)
STEPS, SIGNAL_AT = 4, 2
EXTRA = [
    "methods=[rapidun]",
    f"unlearn.max_steps={STEPS}",
    "unlearn.eval_every=0",
    "unlearn.val_rows=16",
    "unlearn.batch_size=8",
    "unlearn.self_relabel_max_new_tokens=8",
    "eval.retrieval_rows=16",
]
ZERO_WRAPPERS = {2: "DeepSpeedZeroOptimizer", 3: "DeepSpeedZeroOptimizer_Stage3"}
UPSTREAM = ("prepare", "implant", "influence", "find_poison", "weights")  # run on the base, in this order


def stage_config(run: Path, device: torch.device, extra=()):
    from rapidun_dist.config import load_config

    overrides = [f"run_dir={run}", *TINY, *EXTRA, f"distributed.device={device}", *extra]
    return load_config(REPO / "configs" / "tiny_cpu.yaml", overrides)


def run(sec: Section, device: torch.device, work: Path) -> None:
    from rapidun_dist.run.rundir import RunDir

    base = work / "run"
    cfg = stage_config(base, device)
    rd = RunDir(base)
    for stage in (
        UPSTREAM
    ):  # influence first: find_poison would hand it its features, and influence would run no model
        if not sec.step(stage, watched_stage, sec, cfg, rd, stage, device):
            return  # a later stage needs this one's outputs
    for zero in (2, 3):
        sec.step(f"unlearn_zero{zero}", unlearn_round_trip, sec, device, base, work / f"run_z{zero}", zero)
    sec.step("evaluate", watched_stage, sec, stage_config(work / "run_z2", device), RunDir(work / "run_z2"),
             "evaluate", device)  # fmt: skip


def watched_stage(sec: Section, cfg, rd, stage: str, device: torch.device) -> bool:
    from rapidun_dist.core.io import read_json
    from rapidun_dist.pipeline import run_stage

    watch = Watch(device)
    t0 = time.perf_counter()
    with Watched(watch):
        run_stage(cfg, rd, stage, force=True)
    info = {"seconds": round(time.perf_counter() - t0, 2), "hook_calls": watch.calls,
            "violations": watch.violations, "param_dtypes": sorted(watch.dtypes),
            "adapter_dtypes": sorted(watch.adapter_dtypes)}  # fmt: skip
    ok = not watch.violations and (watch.calls > 0 or stage in ("prepare", "weights"))  # those run no model
    want = "torch.bfloat16" if device.type == "cuda" else "torch.float32"  # model.dtype auto
    ok = ok and watch.dtypes <= {want}
    if stage == "implant":
        stats = read_json(rd.model / "train_stats.json")
        info |= {"trained_dtypes": stats["param_dtypes"], "losses": stats["losses"]}
        ok = ok and stats["param_dtypes"] == [want.removeprefix("torch.")]
    return sec.check(stage, ok, **info)


def unlearn_round_trip(sec: Section, device: torch.device, base: Path, run: Path, zero: int) -> None:
    from rapidun_dist.cli.experiments.runner import done_stages
    from rapidun_dist.core.io import read_json, read_jsonl
    from rapidun_dist.run.rundir import RunDir

    src = RunDir(base)  # a fork of the base's upstream stages: each round trip unlearns from the same start
    src.fork(run, done_stages(src, UPSTREAM), replace=True)
    first, second = run / "child1.json", run / "child2.json"
    marker = run / "at_step.txt"
    rc1 = _child(device, run, zero, first, marker=marker)
    ready = read_json(run / "unlearn" / "checkpoints" / "ready.json")
    rc2 = _child(device, run, zero, second)
    a, b = read_json(first), read_json(second)
    steps = [r["step"] for r in read_jsonl(run / "unlearn" / "metrics.jsonl")]
    want_dtype = "torch.bfloat16" if device.type == "cuda" else "torch.float32"
    ok = rc1 == PREEMPTED and ready["step"] == SIGNAL_AT and rc2 == 0 and b["start_step"] == SIGNAL_AT
    ok = ok and a["start_step"] == 0 and steps == list(range(1, STEPS + 1))
    ok = ok and a["optimizer"] == b["optimizer"] == ZERO_WRAPPERS[zero]
    ok = ok and b["backbone_dtypes"] == [want_dtype] and b["bf16"] == (device.type == "cuda")
    ok = ok and not a["violations"] and not b["violations"] and b["devices"] == [device.type]
    sec.check(f"unlearn_zero{zero}", ok, first_exit=rc1, checkpoint_step=ready["step"], second_exit=rc2,
              resumed_at=b["start_step"], metric_steps=steps, optimizer=b["optimizer"], bf16=b["bf16"],
              backbone_dtypes=b["backbone_dtypes"], devices=b["devices"], seconds=[a["seconds"], b["seconds"]])  # fmt: skip


def _child(device: torch.device, run: Path, zero: int, info: Path, *, marker: Path | None = None) -> int:
    """One unlearn run in a child process; with `marker`, SIGTERM it once it waits at step SIGNAL_AT."""
    cmd = [sys.executable, str(Path(__file__).with_name("gpu_proof.py")), "unlearn-child", "--run", str(run),
           "--zero", str(zero), "--device", str(device), "--info", str(info)]  # fmt: skip
    if marker is not None:
        cmd += ["--marker", str(marker)]
    launch_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launch_vars}  # this process's group keeps its port
    proc = subprocess.Popen(cmd, stdout=sys.stdout, stderr=sys.stderr, env=env)
    if marker is not None:
        deadline = time.time() + 300
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # what SLURM or torchrun sends on preemption
    try:
        return proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def unlearn_child(run: Path, zero: int, device: torch.device, info_path: Path, marker: Path | None) -> int:
    """The child: the unlearn stage as a launcher runs it (preempt handler installed), instrumented from outside
    the library: after step SIGNAL_AT it announces itself in `marker` and waits for the signal."""
    from rapidun_dist.core.errors import StageError
    from rapidun_dist.distributed import preempt
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.unlearn.engine import UnlearnRunner

    preempt.install()
    info: dict = {"start_step": None, "optimizer": None}
    watch, real_step, t0 = Watch(device), UnlearnRunner._optimizer_step, time.perf_counter()

    def step(self, batch, done: int) -> dict:
        row = real_step(self, batch, done)
        if info["optimizer"] is None:
            params = list(self.engine.module.parameters())
            info.update(optimizer=type(self.engine.optimizer).__name__, start_step=self.start_step,
                        bf16=bool(self.engine.bfloat16_enabled()),
                        backbone_dtypes=sorted({str(p.dtype) for p in params if not p.requires_grad}),
                        devices=sorted({p.device.type for p in params}))  # fmt: skip
        if marker is not None and done == SIGNAL_AT:
            marker.write_text(str(os.getpid()))
            deadline = time.time() + 120
            while not preempt.requested() and time.time() < deadline:
                time.sleep(0.05)
        return row

    UnlearnRunner._optimizer_step = step
    cfg = stage_config(run, device, [f"unlearn.zero_stage={zero}"])
    rc = 0
    try:
        with Watched(watch):
            run_stage(cfg, RunDir(run), "unlearn")
    except StageError as e:
        if "preempted" not in str(e):
            raise
        rc = PREEMPTED
    info |= {"violations": watch.violations, "hook_calls": watch.calls,
             "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    info_path.write_text(json.dumps(info, indent=1))
    return rc
