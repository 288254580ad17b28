#!/usr/bin/env bash
# The Alpaca-57k stress test through the real stages (issue 10), on 2 CPU ranks:
#
#   bash benchmarks/alpaca57k.sh OUT_DIR [key=value ...]      e.g. bash benchmarks/alpaca57k.sh runs/a57k
#
# prepare -> implant (OUT_DIR/known) -> find_poison over every training row (2 ranks) -> influence + weights ->
# unlearn from the known rows only; then OUT_DIR/expanded shares prepare/implant/find_poison with it
# (benchmarks/alpaca57k.py fork) and runs influence + weights -> unlearn from the expanded set -> retrain on train
# minus the flagged rows; evaluate both. Ends with one JSON line (rows, known, find_poison, methods,
# speedup_vs_retrain, peak_rss_mib_per_rank, recv_bytes_per_rank, wall_s) and makes its section the current
# "alpaca57k" one of benchmarks/results.md (the replaced one goes to benchmarks/results_archive.md; RESULTS=FILE
# appends it to FILE instead, RESULTS= skips it). Overrides go to every step (the dist
# test runs a scaled-down copy this way). REAL_ALPACA=path picks the real Alpaca sample (default
# ../shared/data/alpaca/alpaca_5000.json; REAL_ALPACA= for the generated corpus only). NPROC=2 ranks.
set -euo pipefail
OUT=${1:?usage: bash benchmarks/alpaca57k.sh OUT_DIR [key=value ...]}
OUT_ARG=$OUT  # as given: the command in the results section (OUT itself becomes absolute below)
shift
cd "$(dirname "$0")/.."
PY=${PYTHON:-$PWD/.venv/bin/python}
CFG=${CONFIG:-configs/alpaca57k_cpu.yaml}
NPROC=${NPROC:-2}
RESULTS=${RESULTS-publish}
REAL_ALPACA=${REAL_ALPACA-../shared/data/alpaca/alpaca_5000.json}
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/timings.jsonl"
T0=$($PY -c 'import time; print(time.time())')
TIME=$(command -v /usr/bin/time || true)

step() {  # step NAME RANKS CMD...: run, log to OUT/NAME.log, record wall seconds and peak RSS of the largest process
  local name=$1 ranks=$2; shift 2
  local t0 rss=null
  t0=$($PY -c 'import time; print(time.time())')
  echo "[alpaca57k] $name: $*" >&2
  if [ -n "$TIME" ]; then
    "$TIME" -f "%M" -o "$OUT/$name.rss" "$@" > "$OUT/$name.log" 2>&1 || { tail -40 "$OUT/$name.log" >&2; exit 1; }
    rss=$(( $(tail -1 "$OUT/$name.rss") / 1024 ))
  else
    "$@" > "$OUT/$name.log" 2>&1 || { tail -40 "$OUT/$name.log" >&2; exit 1; }
  fi
  $PY -c "import json,sys,time; print(json.dumps({'step': sys.argv[1], 'ranks': int(sys.argv[2]), 'wall_s': time.time() - float(sys.argv[3]), 'max_rss_mib': None if sys.argv[4] == 'null' else int(sys.argv[4])}))" \
    "$name" "$ranks" "$t0" "$rss" >> "$OUT/timings.jsonl"
}
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")  # --standalone: a free port

DATA_ARGS=$($PY benchmarks/alpaca57k.py corpus "$OUT" --config "$CFG" --real "$REAL_ALPACA" "$@")
read -r -a DATA <<< "$DATA_ARGS"
KNOWN=(run_dir="$OUT/known" "${DATA[@]}" "$@" methods=[rapidun])
EXPANDED=(run_dir="$OUT/expanded" "${DATA[@]}" "$@" find_poison.expand=true methods=[rapidun,retrain])

step prepare_implant 1 "$PY" -m rapidun_dist.cli run "$CFG" "${KNOWN[@]}" --stages prepare,implant
step find_poison "$NPROC" "${TORCHRUN[@]}" launch/find_poison.py --config "$CFG" "${KNOWN[@]}"
step known_influence_weights "$NPROC" "${TORCHRUN[@]}" launch/influence.py --config "$CFG" "${KNOWN[@]}"
step known_unlearn "$NPROC" "${TORCHRUN[@]}" launch/unlearn.py --config "$CFG" "${KNOWN[@]}"
$PY benchmarks/alpaca57k.py fork "$OUT/known" "$OUT/expanded"
step expanded_influence_weights "$NPROC" "${TORCHRUN[@]}" launch/influence.py --config "$CFG" "${EXPANDED[@]}"
step expanded_unlearn_retrain "$NPROC" "${TORCHRUN[@]}" launch/unlearn.py --config "$CFG" "${EXPANDED[@]}"
step known_evaluate 1 "$PY" -m rapidun_dist.cli run "$CFG" "${KNOWN[@]}" --stages evaluate
step expanded_evaluate 1 "$PY" -m rapidun_dist.cli run "$CFG" "${EXPANDED[@]}" --stages evaluate

if [ "$RESULTS" = publish ]; then WHERE=(--publish); elif [ -n "$RESULTS" ]; then WHERE=(--results "$RESULTS"); else WHERE=(); fi
$PY benchmarks/alpaca57k.py summarize "$OUT" --wall-start "$T0" ${WHERE[@]+"${WHERE[@]}"} \
  --command "bash benchmarks/alpaca57k.sh $OUT_ARG${*:+ $*}"
