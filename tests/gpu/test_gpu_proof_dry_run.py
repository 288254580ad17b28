"""benchmarks/gpu_proof.sh: its CPU dry run end to end (slow, ~4 minutes on 2 cores), and the pieces that need none.

The dry run installs the checkout and .whl/ into a fresh venv on an image of .venv without DeepSpeed (the GPU
machine's situation), then runs every section with the Triton interpreter and ends with one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROOF_SCRIPTS = ["gpu_proof.py", "proof_common.py", "proof_kernels.py", "proof_stages.py", "proof_shape8b.py",
                 "gpu_check.py", "gpu_check_stages.py"]  # fmt: skip
SECTIONS = ["setup", "kernels", "stages", "shape_8b", "launcher"]


def test_proof_scripts_import_the_installed_package():
    """The device runs them against the installed package: none may put the checkout on sys.path."""
    for name in PROOF_SCRIPTS:
        text = (ROOT / "benchmarks" / name).read_text()
        assert "sys.path.insert" not in text and "sys.path.append" not in text, name


def test_summary_line_fails_a_section_whose_record_did_not_pass(tmp_path):
    """The closing line: the shell's exit code and the section's own record must both say pass."""
    for name, status in [("setup", "pass"), ("kernels", "pass"), ("stages", "fail")]:
        (tmp_path / f"{name}.json").write_text(json.dumps({"status": status, "figures": {"x": 1}}))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_proof.py"), "summary", "--out", str(tmp_path),
           "--seconds", "12.5", "--status", "setup=pass,kernels=timeout,stages=pass", "--dry-run"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    line = json.loads(run.stdout.strip().splitlines()[-1])
    assert line == {
        "dry_run": True,
        "sections": {"setup": "pass", "kernels": "timeout", "stages": "fail", "shape_8b": "not_run",
                     "launcher": "not_run"},
        "seconds": 12.5,
    }  # fmt: skip


def _wheels(tmp_path: Path) -> Path:
    """The checkout's .whl/ when built, else a fresh one (scripts/device_wheels.sh, from the package index)."""
    if (ROOT / ".whl" / "requirements.txt").is_file():
        return ROOT / ".whl"
    dest = tmp_path / "whl"
    subprocess.run(["bash", str(ROOT / "scripts" / "device_wheels.sh"), str(dest)], check=True, timeout=600)
    return dest


@pytest.mark.slow
def test_dry_run_passes_every_section(tmp_path):
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "RAPIDUN_WHEELS": str(_wheels(tmp_path)),
           "TMPDIR": str(tmp_path)}  # fmt: skip
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_proof.sh"), "--dry-run", str(out)], env=env,
                         capture_output=True, text=True, timeout=1500)  # fmt: skip
    log = (out / "proof.log").read_text() if (out / "proof.log").exists() else ""
    line = json.loads(run.stdout.strip().splitlines()[-1])
    assert line["dry_run"] is True and line["sections"] == dict.fromkeys(SECTIONS, "pass"), log[-6000:]
    assert set(line) == {"dry_run", "sections", "seconds"} and line["seconds"] < 900
    # what the sections proved, from their own records
    setup = json.loads((out / "setup.json").read_text())["checks"]
    assert (
        setup["image_lacks_deepspeed"]["ok"]
        and "/site/deepspeed/" in setup["deepspeed_from_wheels"]["origin"]
    )
    kernels = json.loads((out / "kernels.json").read_text())["checks"]
    assert (
        kernels["large_k topk"]["first_row_past_2_31"] == 2
        and kernels["large_k topk"]["queries_find_far_rows"]
    )
    stages = json.loads((out / "stages.json").read_text())["checks"]
    for zero, wrapper in [(2, "DeepSpeedZeroOptimizer"), (3, "DeepSpeedZeroOptimizer_Stage3")]:
        rt = stages[f"unlearn_zero{zero}"]
        assert (rt["first_exit"], rt["checkpoint_step"], rt["resumed_at"]) == (75, 2, 2)
        assert rt["metric_steps"] == [1, 2, 3, 4] and rt["optimizer"] == wrapper
    assert stages["implant"]["trained_dtypes"] == ["float32"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.json" for s in SECTIONS] + ["proof.log", "summary.json"]
    )
