"""The unlearn stage asks the shared file system which methods are done on rank 0 only (2 gloo ranks).

Fault injection: in the spawned rank 1 only, `stages.unlearn._is_done` is replaced by a liar that sees no summary
at all (a file system lagging behind rank 0's), and counts its calls. Rank 0 sees `ga` done (its summary carries
the stage's fingerprint) and `graddiff` not. Both ranks must skip `ga`, run `graddiff` together (a collective
DeepSpeed job: a rank that ran `ga` instead would meet the other in the wrong job) and finish; rank 1 never asks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for dist_utils
from dist_utils import run_distributed  # noqa: E402
from unlearn_helpers import CONFIG, TINY, fresh_run  # noqa: E402

pytestmark = pytest.mark.dist
OVERRIDES = [
    "methods=[ga,graddiff]",
    "unlearn.max_steps=2",
    "unlearn.eval_every=0",
    "unlearn.val_every=0",
    "unlearn.lora_dropout=0",
    "unlearn.batch_size=8",
]


def _cfg(run: Path):
    from rapidun_dist.config import load_config

    return load_config(CONFIG, [f"run_dir={run}", *TINY, *OVERRIDES])


def _stage_with_lagging_rank1(rank: int, world: int, run: str) -> dict:
    import rapidun_dist.stages.unlearn as unlearn
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import stage_context

    real, asked = unlearn._is_done, [0]

    def is_done(summary: Path, fp: str) -> bool:
        asked[0] += 1
        return False if rank == 1 else real(summary, fp)

    unlearn._is_done = is_done  # this spawned process only
    outputs = unlearn.run(stage_context(_cfg(Path(run)), RunDir(run), "unlearn"))
    return {"asked": asked[0], "outputs": [str(p) for p in outputs]}


def test_ranks_skip_and_run_the_methods_rank0_sees(prepared_run, tmp_path):
    from rapidun_dist.core.io import read_json, write_json
    from rapidun_dist.run.layout import method_dir
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import stage_context

    run = fresh_run(prepared_run, tmp_path / "run")
    rd = RunDir(run)
    fp = stage_context(_cfg(run), rd, "unlearn").fingerprint
    ga = method_dir(rd, "ga") / "summary.json"
    write_json(ga, {"method": "ga", "fingerprint": fp, "marker": "done before"})
    r0, r1 = run_distributed(_stage_with_lagging_rank1, 2, str(run))
    assert r1["asked"] == 0 and r0["asked"] == 2  # rank 0 alone checked both methods
    assert r0["outputs"] == r1["outputs"]
    assert read_json(ga)["marker"] == "done before"  # skipped on both ranks
    summary = read_json(method_dir(rd, "graddiff") / "summary.json")
    assert summary["fingerprint"] == fp and summary["steps"] == 2
    assert (method_dir(rd, "graddiff") / "adapter" / "adapter_model.safetensors").is_file()
    assert not (method_dir(rd, "ga") / "adapter").exists()
