#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint (ruff), and run the default test suite: unit + dist (multi-process gloo) tests.
# Heavier tests are marked `slow` (and `gpu`) and skipped here: `.venv/bin/pytest -m slow` runs them.
#
#   bash scripts/test.sh              # everything but slow/gpu
#   bash scripts/test.sh tests/core   # extra pytest arguments pass through
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
# DeepSpeed JIT-builds its CPU comm op on first use; keep the build with this venv (a cache shared with another
# venv rebuilds it, minutes each time) and put the venv's ninja on PATH for it.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions} PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check . && .venv/bin/ruff format --check .
exec .venv/bin/pytest -q "$@"
