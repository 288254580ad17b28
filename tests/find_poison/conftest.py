"""Session fixtures for the find_poison tests: one prepared + implanted small run dir (never modified: copy it)
and its single-process find_poison result (the reference every multi-rank run must reproduce)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fp_utils import fresh_copy, load_cfg  # noqa: E402


@pytest.fixture(scope="session")
def implanted_dir(tmp_path_factory) -> Path:
    from rapidun_dist.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("fp_implanted") / "run"
    run_pipeline(load_cfg(root), ["prepare", "implant"])
    return root


@pytest.fixture(scope="session")
def reference_run(implanted_dir, tmp_path_factory) -> Path:
    """find_poison on one process, on a copy of the implanted dir."""
    from rapidun_dist.pipeline import run_pipeline

    run = fresh_copy(implanted_dir, tmp_path_factory.mktemp("fp_reference") / "run")
    run_pipeline(load_cfg(run), ["find_poison"])
    return run
