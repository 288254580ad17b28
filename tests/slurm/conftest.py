"""The `fake_slurm` fixture (tests/slurm/slurm_fakes.py) for every test of this folder."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slurm_fakes import fake_slurm  # noqa: E402, F401 (a fixture)
