"""Session fixtures for the multi-rank influence tests: one prepared + implanted tiny run dir, and its
single-process influence + weights result (the reference every multi-rank run must reproduce)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infl_dist_utils import fresh_copy, load_cfg, read_weights  # noqa: E402


@pytest.fixture(scope="session")
def implanted_dir(tmp_path_factory) -> Path:
    """A run dir with prepare + implant done (built once per session, never modified: copy it)."""
    from rapidun_dist.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("implanted") / "run"
    run_pipeline(load_cfg(root), ["prepare", "implant"])
    return root


@pytest.fixture(scope="session")
def reference_weights(implanted_dir, tmp_path_factory) -> dict[str, list[dict]]:
    """Weights from the single-process path (dense scores) on a copy of the implanted dir."""
    from rapidun_dist.pipeline import run_pipeline

    run = fresh_copy(implanted_dir, tmp_path_factory.mktemp("reference") / "run")
    run_pipeline(load_cfg(run), ["influence", "weights"])
    return read_weights(run)
