"""Backend dispatch, package mapping and the benchmark / GPU-check scripts (dry runs on CPU)."""

from __future__ import annotations

import csv as csv_module
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import rapidun_dist.kernels.token_projection as token_projection
from rapidun_dist.kernels import cosine_topk, fused_token_projection, grouped_cosine_sums

REPO = Path(__file__).resolve().parents[2]
cosine_topk_module = sys.modules["rapidun_dist.kernels.cosine_topk"]  # the package attribute is the function


def _projection_inputs():
    x, g = torch.randn(7, 12), torch.randn(7, 10)
    return x, g, torch.tensor([0, 3, 7]), torch.randn(4, 12), torch.randn(5, 10)


def _poison_triton_modules(monkeypatch):
    """Any call into a Triton launcher fails loudly."""
    for name, fn in [
        ("token_projection_triton", "projected_outer_sums_triton"),
        ("cosine_topk_triton", "cosine_topk_triton"),
    ]:
        fake = types.ModuleType(f"rapidun_dist.kernels.{name}")
        setattr(fake, fn, lambda *a, **k: pytest.fail("the Triton path was taken"))
        monkeypatch.setitem(sys.modules, f"rapidun_dist.kernels.{name}", fake)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_auto_uses_reference_on_cpu(monkeypatch, dtype):
    _poison_triton_modules(monkeypatch)
    calls = []
    real_tp, real_ct = (
        token_projection.projected_outer_sums_reference,
        cosine_topk_module.cosine_topk_reference,
    )
    monkeypatch.setattr(
        token_projection,
        "projected_outer_sums_reference",
        lambda *a, **k: calls.append("tp") or real_tp(*a, **k),
    )
    monkeypatch.setattr(
        cosine_topk_module, "cosine_topk_reference", lambda *a, **k: calls.append("ct") or real_ct(*a, **k)
    )
    x, g, offsets, p_in, p_out = (t.to(dtype) if t.is_floating_point() else t for t in _projection_inputs())
    assert fused_token_projection(x, g, offsets, p_in, p_out).shape == (2, 5, 4)
    assert cosine_topk(x, x, 3)[0].shape == (7, 3)
    assert grouped_cosine_sums(x, x, torch.tensor([0, 1, 0, 1, 1, 0, 0]), 2, self_offset=0).shape == (7, 2)
    assert calls == ["tp", "ct"]


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _poison_triton_modules(monkeypatch)
    x, g, offsets, p_in, p_out = _projection_inputs()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused_token_projection(x, g, offsets, p_in, p_out, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        cosine_topk(x, x, 2, backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        fused_token_projection(x, g, offsets, p_in, p_out, backend="cuda")


def test_kernels_folder_is_not_a_top_level_package(tmp_path):
    """The kernels live in `rapidun_dist/kernels/`; from outside the checkout plain `import kernels` finds
    Hugging Face's package (a transformers dependency) or nothing, never the repository's folder."""
    code = (
        "import importlib.util as u, json; s = u.find_spec('kernels'); "
        "print(json.dumps([s and s.origin, u.find_spec('rapidun_dist.kernels').origin]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert run.returncode == 0, run.stderr
    top, mapped = json.loads(run.stdout)
    assert Path(mapped).resolve() == REPO / "rapidun_dist" / "kernels" / "__init__.py"
    assert top is None or not Path(top).resolve().is_relative_to(REPO / "kernels"), top


def test_gpu_check_dry_run(tmp_path):
    """The GPU script's every section on CPU: ceilings, every fp32 config of both kernels (interpreted)
    against float64, timings, and the whole extraction with its device-placement checks."""
    out = tmp_path / "gpu_check.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["interpreted"] is True and not report["errors"]
    assert report["ceilings"]["copy_bytes_per_s"] > 0 and report["ceilings"]["gemm_flops_per_s"] > 0
    import rapidun_dist.kernels.cosine_topk_triton as ctt
    import rapidun_dist.kernels.token_projection_triton as tpt

    rows = report["correctness"]
    assert all(row["ok"] for row in rows), rows
    checked = {(r["kernel"], tuple(r["config"].values())) for r in rows}
    fp32 = {
        ("token_outer_sums", c)
        for c in tpt.configs_for("float32", 64, 64) + tpt.configs_for("float32", 128, 128)
    }
    fp32 |= {("cosine_topk", c) for c in ctt.configs_for("float32")}
    assert checked == fp32  # every fp32 config of both kernels, not only one
    assert {r["path"] for r in report["timings"]} == {"floor_gemm", "torch", "triton"}
    assert all(r["ms"] > 0 for r in report["timings"])
    paths = {r["path"]: r for r in report["extraction"]}
    assert paths["device_placement"]["ok"] and paths["device_placement"]["hooks"] > 0
    assert {"tokenwise_auto", "tokenwise_torch", "floor", "rapidgrad"} <= set(paths)
    assert run.stdout.rstrip().splitlines()[-1].endswith("all checks passed")


@pytest.mark.parametrize("script", ["bench_token_projection.py", "bench_cosine_topk.py"])
def test_benchmark_quick_appends_csv(tmp_path, script):
    csv = tmp_path / "results.csv"
    csv.write_text("date,hardware,torch\nearlier,row,kept\n")
    cmd = [
        sys.executable,
        str(REPO / "kernels" / "benchmarks" / script),
        "--quick",
        "--tiny",
        "--csv",
        str(csv),
    ]
    run = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = csv.read_text().splitlines()
    assert lines[:2] == ["date,hardware,torch", "earlier,row,kept"] and len(lines) >= 4
    rows = list(csv_module.reader(lines[2:]))
    assert {r[7] for r in rows} >= {"gemm-floor", "torch"} and all(float(r[8]) > 0 for r in rows), lines
