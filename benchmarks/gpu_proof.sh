#!/usr/bin/env bash
# One prepared proof run on a single H100 or H200 (at most 8 minutes: every section under its own `timeout`),
# or the same sections on this CPU machine with the same code paths (--dry-run: the Triton interpreter, tiny
# shapes, device cpu; under 15 minutes on 2 cores).
#
#   bash scripts/device_wheels.sh                      # here, once: .whl/ (git-ignored, ~7 MB)
#   bash benchmarks/gpu_proof.sh --dry-run OUT         # here: must end with every section "pass"
#   bash benchmarks/gpu_proof.sh OUT                   # on the GPU machine
#
# The device command (the device tool's run, with carry: [".whl"], timeout_s 600):
#   bash benchmarks/gpu_proof.sh $OUT
# (the tool sends the checkout; `carry` adds the ignored .whl/ folder; the script installs from it itself).
#
# Sections, each writing OUT/<section>.json as it finishes (OUT/proof.log has every section's output):
#   1 setup (50 s)     the package, not editable and without dependencies, and DeepSpeed + its import-time
#                      dependencies from .whl/ into one target folder on PYTHONPATH (no network), then the
#                      import gate (deepspeed, peft, transformers, rapidun_dist.kernels, from that folder)
#   2 kernels (115 s)  Triton projections (bf16, fp32) and top-k against float64, timings against torch, large K
#   3 stages (150 s)   prepare .. evaluate on the device; unlearn under ZeRO-2 and ZeRO-3 with a SIGTERM round trip
#   4 shape_8b (90 s)  a 32-layer Llama-3-8B-shaped bf16 model: extraction, a LoRA step (GC), a batched generation
#   5 launcher (75 s)  torchrun --standalone --nproc_per_node 1 launch/run.py ... through unlearn
# Last line (also OUT/summary.json, with the figures):
#   {"dry_run": false, "sections": {"setup": "pass", ...}, "seconds": S, "figures": {...}}
#
# The environment is the device's: its python3 (torch, transformers, peft, accelerate, triton; no deepspeed, hjson
# or pydantic) plus one `pip install --no-index --no-deps --target SITE` of the checkout and of .whl/. The dry run
# builds the same kind of environment here, so the wheel install is exercised, not bypassed: a fresh venv
# (without pip or packages of its own) whose only site folder is an "image" of the checkout's .venv with
# deepspeed, hjson, pydantic, pydantic_core, annotated_types, typing_inspection and rapidun_dist left out
# (symbolic links to every other entry); the gate fails if deepspeed is importable before the wheels go in.
set -uo pipefail

DRY=0
OUT=
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -*) echo "usage: bash benchmarks/gpu_proof.sh [--dry-run] OUT" >&2; exit 2 ;;
    *) OUT=$arg ;;
  esac
done
[ -n "$OUT" ] || { echo "usage: bash benchmarks/gpu_proof.sh [--dry-run] OUT" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WHL=${RAPIDUN_WHEELS:-$REPO/.whl}
T0=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_proof.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SITE=$WORK/site
LOG=$OUT/proof.log
: >"$LOG"
declare -A STATUS

log() { echo "[gpu_proof $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

# section NAME LIMIT_S CMD...: runs CMD under `timeout`, output to proof.log; pass | fail | timeout
section() {
  local name=$1 limit=$2
  shift 2
  log "section $name (limit ${limit}s)"
  local t=$(date +%s)
  timeout -k 10 "$limit" bash -c '"$@"' section "$@" >>"$LOG" 2>&1 # "$@": an exported function
  local rc=$?
  case $rc in
    0) STATUS[$name]=pass ;;
    124 | 137) STATUS[$name]=timeout ;;
    *) STATUS[$name]=fail ;;
  esac
  log "section $name: ${STATUS[$name]} (exit $rc, $(($(date +%s) - t)) s)"
}

# The "image": on the device its python3; on the dry run a venv on top of the checkout's .venv, less DeepSpeed
# and its import-time dependencies and less the editable rapidun_dist.
make_image() {
  local src base
  src=$("$REPO/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
  base=$("$REPO/.venv/bin/python" -c 'import sys; print(sys._base_executable)') || return 1
  mkdir -p "$WORK/image"
  for entry in "$src"/*; do
    case $(basename "$entry" | tr '[:upper:]' '[:lower:]') in
      deepspeed* | hjson* | pydantic* | annotated_types* | typing_inspection* | rapidun_dist* | __editable__*rapidun*) ;;
      *) ln -s "$entry" "$WORK/image/" ;;
    esac
  done
  "$base" -m venv --without-pip "$WORK/venv" || return 1
  local venv_site
  venv_site=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import site; site.addsitedir('$WORK/image')" >"$venv_site/image.pth"
}

install_and_gate() {
  local had_ds
  "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("deepspeed") is not None)'
  had_ds=$?
  [ -f "$WHL/requirements.txt" ] || { echo "no $WHL/requirements.txt: run bash scripts/device_wheels.sh" >&2; return 1; }
  # the checkout (not editable, no dependencies, built with the image's setuptools from a copy of its sources, so
  # no stale build/ of the checkout leaks in and nothing is written there) and the wheels, by name: pip picks the
  # pydantic_core wheel whose tags match this Python
  mkdir -p "$WORK/src" && cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/rapidun_dist" "$WORK/src/" || return 1
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --disable-pip-version-check --target "$SITE" --find-links "$WHL" -r "$WHL/requirements.txt" "$WORK/src" ||
    return 1
  (cd "$WORK" && "$PY" "$REPO/benchmarks/gpu_proof.py" gate --out "$OUT" --site "$SITE" \
    --image-had-deepspeed "$had_ds" ${DRY_FLAG})
}

DRY_FLAG=
if [ "$DRY" = 1 ]; then
  DRY_FLAG=--dry-run
  export TRITON_INTERPRET=1 DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  # DeepSpeed's CPU backend JIT-compiles its shm_comm op (~100 s on 2 cores) once per fresh install, as a bare
  # machine would; a cache of its own keeps the checkout's .venv/torch_extensions (the test suite's) untouched
  export TORCH_EXTENSIONS_DIR=$WORK/torch_extensions
  make_image >>"$LOG" 2>&1 || { log "could not build the dry run's image venv"; exit 1; }
  PY=$WORK/venv/bin/python
  export PATH="$PATH:$REPO/.venv/bin" # ninja for the JIT build, where the system has none (the image has one)
else
  PY=${PYTHON:-python3}
fi
export PYTHONPATH=$SITE PYTHONUNBUFFERED=1
cd "$WORK" # never the checkout: `import rapidun_dist` must find the installed package
log "$( [ "$DRY" = 1 ] && echo "dry run" || echo "device run"): python $("$PY" -c 'import sys; print(sys.version.split()[0])'), out $OUT"

run_py() { "$PY" "$REPO/benchmarks/gpu_proof.py" "$@" --out "$OUT" --work "$WORK" $DRY_FLAG; }
export -f install_and_gate run_py
export REPO OUT WHL WORK SITE PY DRY_FLAG
# limits: the device's (50 + 115 + 150 + 90 + 75 = 480 s), or the dry run's on 2 CPU cores
if [ "$DRY" = 1 ]; then LIMITS=(120 240 300 150 200); else LIMITS=(50 115 150 90 75); fi
section setup "${LIMITS[0]}" install_and_gate
if [ -f "$SITE/rapidun_dist/__init__.py" ]; then # installed: each section stands on its own from here
  section kernels "${LIMITS[1]}" run_py kernels
  section stages "${LIMITS[2]}" run_py stages
  section shape_8b "${LIMITS[3]}" run_py shape_8b
  section launcher "${LIMITS[4]}" run_py launcher
fi
STATUS_ARG=$(for s in "${!STATUS[@]}"; do printf '%s=%s,' "$s" "${STATUS[$s]}"; done)
"$PY" "$REPO/benchmarks/gpu_proof.py" summary --out "$OUT" --seconds $(($(date +%s) - T0)) \
  --status "$STATUS_ARG" $DRY_FLAG | tee -a "$LOG"
