"""sm_90 proof without a GPU: every autotune config of every kernel compiles ahead of time for the H100/H200
with wgmma (HGMMA) in the bf16 configs and no register spills (kernels/benchmarks/aot_sm90.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "kernels" / "benchmarks" / "aot_sm90.py"


def test_aot_variants_are_exactly_the_configs_the_launchers_tune_over():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import aot_sm90
    finally:
        sys.path.remove(str(SCRIPT.parent))
    import rapidun_dist.kernels.cosine_topk_triton as ctt
    import rapidun_dist.kernels.token_projection_triton as tpt

    variants = aot_sm90.variants()
    kinds = {v["kernel"] for v in variants}
    assert kinds == {"token_outer_sums", "token_edge_fixup", "cosine_topk"}
    tuned = {
        ("token_outer_sums", (c.kwargs["BLOCK_T"], c.kwargs["BLOCK_D"], c.num_warps, c.num_stages))
        for c in tpt.CONFIGS
    }
    tuned |= {("cosine_topk", (*c.kwargs.values(), c.num_warps, c.num_stages)) for c in ctt.CONFIGS}
    compiled = {
        (v["kernel"], tuple(v["config"].values())) for v in variants if v["kernel"] != "token_edge_fixup"
    }
    assert compiled == tuned  # nothing autotuned that the AOT check does not compile, and nothing extra
    assert {v["dtype"] for v in variants} >= {"bfloat16", "float32"}


@pytest.mark.slow
def test_every_config_compiles_for_sm90_without_spills_and_bf16_uses_wgmma():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--json"], capture_output=True, text=True, timeout=3000, env=env
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [json.loads(ln) for ln in run.stdout.splitlines() if ln.startswith("{")]
    rows, summary = lines[:-1], lines[-1]
    assert set(summary) == {"configs", "spilling", "wgmma_bf16_configs"} and summary["configs"] == len(rows)
    assert summary["spilling"] == 0, [r for r in rows if r["spills"]]
    assert all(r["fits_shared"] for r in rows), [r for r in rows if not r["fits_shared"]]
    bf16 = [r for r in rows if r["dtype"] == "bfloat16"]
    assert bf16 and summary["wgmma_bf16_configs"] == len(bf16) and all(r["hgmma"] > 0 for r in bf16)
    dots = [r for r in rows if r["kernel"] != "token_edge_fixup"]
    assert all(r["hgmma"] > 0 and r["hmma"] == 0 for r in dots)  # fp32 runs as tf32 wgmma too
