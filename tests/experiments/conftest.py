"""Fixtures for the experiments tests (helpers in exp_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from exp_helpers import SPEC

from rapidun_dist.cli.experiments.spec import load_spec


@pytest.fixture
def bench(tmp_path) -> Path:
    """A benchmarks/ folder with specs/mini.yaml."""
    bench = tmp_path / "benchmarks"
    (bench / "specs").mkdir(parents=True)
    (bench / "specs" / "mini.yaml").write_text(SPEC)
    return bench


@pytest.fixture
def spec(bench):
    return load_spec(bench / "specs" / "mini.yaml")
