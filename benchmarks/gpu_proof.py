"""The Python side of benchmarks/gpu_proof.sh (run that script; this one is its sections).

    python benchmarks/gpu_proof.py gate --out OUT --site SITE [--dry-run] [--image-had-deepspeed 0|1]
    python benchmarks/gpu_proof.py {kernels,stages,shape_8b,launcher} --out OUT [--dry-run] [--work DIR]
    python benchmarks/gpu_proof.py summary --out OUT --seconds S --status setup=pass,kernels=timeout,...

Each section writes OUT/<section>.json as it goes and exits 0 when every check passed. The package is the
installed one (gpu_proof.sh installs it, not editable, into a target folder on PYTHONPATH); the sibling
modules are found because Python puts a script's own folder first on the path; the checkout is never on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from proof_common import REPO, Section

SECTIONS = ("setup", "kernels", "stages", "shape_8b", "launcher")


def resolve_device(dry_run: bool) -> torch.device:
    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_proof: no CUDA device (use --dry-run on a CPU machine)")
    return torch.device("cuda", 0)


def gate(sec: Section, site: Path, dry_run: bool, image_had_deepspeed: bool) -> None:
    """The import gate: the installed package and the wheel-installed DeepSpeed import, from the target folder."""
    import deepspeed
    import peft
    import transformers
    from deepspeed.accelerator import get_accelerator

    import rapidun_dist
    import rapidun_dist.kernels  # noqa: F401

    def inside(module) -> bool:
        return Path(module.__file__).resolve().is_relative_to(site.resolve())

    origins = {m.__name__: m.__file__ for m in (deepspeed, peft, transformers, rapidun_dist)}
    if dry_run:  # the dry run's image must lack it, or the wheel install would prove nothing
        sec.check("image_lacks_deepspeed", not image_had_deepspeed)
    else:  # the device's image has none today; if a later one has, the wheels' copy still wins (PYTHONPATH)
        sec.figure("image_had_deepspeed", image_had_deepspeed)
    sec.check("rapidun_dist_installed", inside(rapidun_dist) and not Path(rapidun_dist.__file__).resolve()
              .is_relative_to(REPO), origin=origins["rapidun_dist"])  # fmt: skip
    sec.check(
        "deepspeed_from_wheels", inside(deepspeed), origin=origins["deepspeed"], version=deepspeed.__version__
    )
    accelerator = get_accelerator().device_name()
    want = "cpu" if dry_run else "cuda"
    sec.check("deepspeed_accelerator", accelerator == want, accelerator=accelerator)
    if not dry_run:
        sec.check("cuda_visible", torch.cuda.is_available(), name=torch.cuda.get_device_name(0),
                  bf16=torch.cuda.is_bf16_supported())  # fmt: skip


def launcher(sec: Section, device: torch.device, work: Path) -> None:
    """torchrun --standalone --nproc_per_node 1 launch/run.py ... through unlearn (torchrun is this module)."""
    from proof_stages import EXTRA, TINY

    from rapidun_dist.core.io import read_json

    run = work / "launch_run"
    stages = "prepare,implant,influence,weights,unlearn"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(REPO / "launch" / "run.py"), "--config", str(REPO / "configs" / "tiny_cpu.yaml"), f"run_dir={run}",
           *TINY, *EXTRA, f"distributed.device={device.type}", "--stages", stages]  # fmt: skip
    launch_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launch_vars}
    print("[launcher]", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, cwd=work, stdout=sys.stdout, stderr=sys.stderr, timeout=600)
    summary = run / "unlearn" / "summary.json"
    stats = (
        read_json(run / "model" / "train_stats.json") if (run / "model" / "train_stats.json").exists() else {}
    )
    want = "bfloat16" if device.type == "cuda" else "float32"
    ok = proc.returncode == 0 and summary.exists() and (run / "unlearn" / "adapter").is_dir()
    sec.check("torchrun_through_unlearn", ok and stats.get("param_dtypes") == [want], exit=proc.returncode,
              stages=stages, implant_dtypes=stats.get("param_dtypes"), unlearn_summary=summary.exists())  # fmt: skip


def summary(out: Path, seconds: float, statuses: dict[str, str], dry_run: bool) -> dict:
    """The closing line: each section's status (the shell's exit code and the section's own record agree)."""
    sections, figures = {}, {}
    for name in SECTIONS:
        path = out / f"{name}.json"
        record = json.loads(path.read_text()) if path.exists() else {}
        status = statuses.get(name, "not_run")
        if status == "pass" and record.get("status") != "pass":
            status = "fail"
        sections[name] = status
        figures[name] = record.get("figures") or None
    figures["stages"] = {k: {f: v.get(f) for f in ("optimizer", "resumed_at", "bf16")}
                         for k, v in _checks(out, "stages").items() if k.startswith("unlearn")} or None  # fmt: skip
    line = {"dry_run": dry_run, "sections": sections, "seconds": round(seconds, 1)}
    if not dry_run:
        line["figures"] = {k: v for k, v in figures.items() if v}
    (out / "summary.json").write_text(json.dumps({**line, "figures": figures}, indent=1))
    return line


def _checks(out: Path, name: str) -> dict:
    path = out / f"{name}.json"
    return json.loads(path.read_text()).get("checks", {}) if path.exists() else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "section", choices=["gate", "kernels", "stages", "shape_8b", "launcher", "summary", "unlearn-child"]
    )
    p.add_argument("--out", type=Path)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--work", type=Path, help="scratch folder (run directories)")
    p.add_argument("--site", type=Path, help="gate: the folder the package and wheels were installed into")
    p.add_argument("--image-had-deepspeed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--status", default="", help="summary: name=status,...")
    p.add_argument("--run", type=Path)  # unlearn-child
    p.add_argument("--zero", type=int)
    p.add_argument("--device")
    p.add_argument("--info", type=Path)
    p.add_argument("--marker", type=Path)
    a = p.parse_args(argv)
    if a.section == "unlearn-child":
        from proof_stages import unlearn_child

        return unlearn_child(a.run, a.zero, torch.device(a.device), a.info, a.marker)
    if a.section == "summary":
        statuses = dict(kv.split("=", 1) for kv in a.status.split(",") if kv)
        print(json.dumps(summary(a.out, a.seconds, statuses, a.dry_run)), flush=True)
        return 0
    device = resolve_device(a.dry_run)
    sec = Section(a.out, "setup" if a.section == "gate" else a.section, dry_run=a.dry_run, device=device)
    if a.section == "gate":
        sec.step("imports", gate, sec, a.site, a.dry_run, bool(a.image_had_deepspeed))
    elif a.section == "kernels":
        from proof_kernels import run

        sec.step("kernels", run, sec, device, a.dry_run)
    elif a.section == "stages":
        from proof_stages import run

        sec.step("stages", run, sec, device, a.work)
    elif a.section == "shape_8b":
        from proof_shape8b import run

        sec.step("shape_8b", run, sec, device, a.dry_run)
    else:
        sec.step("launcher", launcher, sec, device, a.work)
    return sec.finish()


if __name__ == "__main__":
    sys.exit(main())
