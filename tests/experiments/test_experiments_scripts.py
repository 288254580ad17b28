"""The benchmark scripts are not a second product: none edits sys.path (they import the installed package; what
they share lives in rapidun_dist.cli.experiments), and each one's command line still parses (`--help`, slow tier)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FOLDERS = (REPO / "benchmarks", REPO / "kernels" / "benchmarks")
PY_SCRIPTS = sorted(p for folder in FOLDERS for p in folder.rglob("*.py"))
SHELL_SCRIPTS = sorted(p for folder in FOLDERS for p in folder.rglob("*.sh"))
MODULES = {
    "proof_common.py",
    "proof_kernels.py",
    "proof_shape8b.py",
    "proof_stages.py",
}  # imported by gpu_proof.py


def sys_path_uses(source: str) -> list[int]:
    """Lines where the code touches `sys.path` (import sys ... sys.path.insert(...), sys.path[:0] = ..., or a
    `from sys import path`)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "path":
            if isinstance(node.value, ast.Name) and node.value.id == "sys":
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            lines += [node.lineno for a in node.names if a.name == "path"]
    return sorted(lines)


def test_the_check_finds_sys_path_edits():
    assert sys_path_uses("import sys\nsys.path.insert(0, 'x')\n") == [2]
    assert sys_path_uses("import sys\nx = 1\nsys.path[:0] = ['x']\n") == [3]
    assert sys_path_uses("from sys import path\npath.append('x')\n") == [1]
    assert sys_path_uses("import sys\nsys.argv[1:]\n") == []


def test_no_benchmark_script_edits_sys_path():
    assert len(PY_SCRIPTS) >= 20 and SHELL_SCRIPTS  # the folders were found
    found = {str(p.relative_to(REPO)): lines for p in PY_SCRIPTS if (lines := sys_path_uses(p.read_text()))}
    found |= {str(p.relative_to(REPO)): ["text"] for p in SHELL_SCRIPTS if "sys.path" in p.read_text()}
    assert not found, f"sys.path edited (line numbers): {found}"


@pytest.mark.slow  # each script imports torch: about 1 minute for all of them on 2 cores
@pytest.mark.parametrize("script", [p for p in PY_SCRIPTS if p.name not in MODULES], ids=lambda p: p.name)
def test_every_script_parses_its_command_line(script):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=180, env=env,
                         cwd=script.parent)  # fmt: skip
    assert run.returncode == 0 and "usage" in run.stdout.lower(), run.stderr[-2000:]
