"""Session fixture for the unlearning tests: one tiny prepared run directory (prepare, implant, influence,
weights done in-process, about 10 s) shared by every test in this folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from unlearn_helpers import CONFIG, TINY


@pytest.fixture(scope="session")
def prepared_run(tmp_path_factory) -> Path:
    """A run dir with prepare / implant / influence / weights done on a tiny Llama (about 10 s)."""
    from rapidun_dist.config import load_config
    from rapidun_dist.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("unlearn") / "base"
    cfg = load_config(CONFIG, [f"run_dir={root}", *TINY])
    run_pipeline(cfg, ["prepare", "implant", "influence", "weights"])
    return root
