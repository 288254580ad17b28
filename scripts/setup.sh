#!/usr/bin/env bash
# Create .venv and install rapidun_dist with its dependencies.
#
#   bash scripts/setup.sh            # runtime + dev extras
#
# CPU machines get the pinned CPU torch wheel (torch==2.13.0). A machine that already
# has a CUDA torch in the active Python (or RAPIDUN_KEEP_TORCH=1) keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RAPIDUN_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  if [ "${RAPIDUN_KEEP_TORCH:-0}" = 1 ] || "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "[setup] reusing the system torch (CUDA build or RAPIDUN_KEEP_TORCH=1)"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
PIP="$VENV/bin/python -m pip"
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT

if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  TV=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
  echo "[setup] keeping torch $TV"
else
  echo "[setup] installing the CPU torch pin"
  $PIP install -q "torch==2.13.0"
  TV=2.13.0
fi
echo "torch==$TV" > "$CONSTRAINTS"
$PIP install -q -c "$CONSTRAINTS" -e ".[dev]"
# The closing line names what the declared ranges resolved to today. It runs from the repository root, as a user
# working from the checkout would, so a top-level folder shadowing a dependency fails the setup here, loudly.
"$VENV/bin/python" - <<'PY'
from importlib.metadata import PackageNotFoundError, version
import transformers, peft, deepspeed, rapidun_dist.kernels  # noqa: F401  (imports, not just metadata)
from transformers import LlamaForCausalLM  # noqa: F401  (pulls Hugging Face's `kernels` on transformers 5)
names = ["torch", "transformers", "tokenizers", "peft", "accelerate", "datasets", "deepspeed", "triton", "kernels"]
found = []
for name in names:
    try:
        found.append(f"{name} {version(name)}")
    except PackageNotFoundError:
        found.append(f"{name} -")
print("[setup] done:", ", ".join(found))
PY
