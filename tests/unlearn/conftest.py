"""Session fixtures for the unlearning tests: one tiny prepared run directory (prepare, implant, influence,
weights done in-process, about 10 s) shared by every test in this folder, and the one-process DeepSpeed set-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from unlearn_helpers import CONFIG, TINY, clean_job_overrides


@pytest.fixture(scope="session")
def prepared_run(tmp_path_factory) -> Path:
    """A run dir with prepare / implant / influence / weights done on a tiny Llama (about 10 s)."""
    from rapidun_dist.config import load_config
    from rapidun_dist.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("unlearn") / "base"
    cfg = load_config(CONFIG, [f"run_dir={root}", *TINY])
    run_pipeline(cfg, ["prepare", "implant", "influence", "weights"])
    return root


@pytest.fixture(scope="session")
def clean_job(prepared_run, tmp_path_factory) -> tuple[Path, list[str]]:
    """The clean job on the prepared run's implanted model (run dir, overrides): the known poisoned rows WITHOUT
    clean answers, an unlabelled training set, clean eval prompts and the seen trigger strings; prepare, find_poison
    (the clean job's retain pack leaves flagged rows out), influence and weights done (val_seen = val_clean prompts
    with a known trigger inserted)."""
    from rapidun_dist.config import load_config
    from rapidun_dist.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("clean") / "base"
    overrides = clean_job_overrides(prepared_run, tmp_path_factory.mktemp("clean_inputs"))
    cfg = load_config(CONFIG, [f"run_dir={root}", *TINY, *overrides])
    run_pipeline(cfg, ["prepare", "find_poison", "influence", "weights"])
    return root, overrides


@pytest.fixture(scope="session")
def single_process():
    """DeepSpeed builds a one-rank gloo group in this process; restore the environment and drop it afterwards."""
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["DS_ACCELERATOR"] = "cpu"
    yield
    from rapidun_dist.distributed import env as dist_env

    dist_env.destroy()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
