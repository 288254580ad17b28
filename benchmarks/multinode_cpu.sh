#!/usr/bin/env bash
# Cluster launches proven on one CPU machine (issue 9, section 2): every run below is a real multi-process job of
# launch/influence.py or launch/unlearn.py on the tiny config (gloo, one thread per rank), checked against one
# process on the same run directory.
#
#   bash benchmarks/multinode_cpu.sh                 # run, print, publish the "multinode_cpu" section of results.md
#   bash benchmarks/multinode_cpu.sh --check         # run and check only (tests/distributed/test_dist_multinode.py)
#
# 1. two "nodes": two `torchrun --nnodes 2 --node_rank 0|1 --nproc_per_node 1 --rdzv_backend c10d
#    --rdzv_endpoint 127.0.0.1:PORT` processes (LOCAL_RANK 0 on both, as on two hosts) run launch/influence.py,
#    then launch/unlearn.py; influence weights must equal one process (1e-6) and the adapter must equal one process
#    with unlearn.grad_accum=2 (the same micro-batches) within 1e-6.
# 2. srun emulation: two processes started with only SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, SLURM_NNODES,
#    SLURM_NODEID, SLURM_JOB_ID, SLURM_STEP_NODELIST (plus PATH, HOME, PYTHONPATH and the CPU settings; a fake
#    `scontrol` on PATH resolves the node list) run launch/unlearn.py: a loadable adapter that has trained, equal to
#    the two-node adapter.
# 3. `deepspeed --hostfile` (two entries, localhost and 127.0.0.1) `--no_ssh --node_rank 0|1`, one launcher per
#    "node" as on a cluster without ssh: the adapter again.
# Exit status 1 when a check fails. Wall seconds are printed for orientation only (shared 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-write}
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
BIN=$(dirname "$PY")
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 PYTHONPATH=$REPO
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$REPO/.venv/torch_extensions}  # private: no rebuild races
WORK=$(mktemp -d)
trap '[[ ${KEEP:-0} == 1 ]] && echo "kept $WORK" || rm -rf "$WORK"' EXIT  # KEEP=1 keeps the run dirs and logs
CONFIG=configs/tiny_cpu.yaml
TINY=(data.n_synthetic=400 data.n_val=20 data.n_test_clean=20 data.n_test_seen=12 data.n_test_ood=12
  data.forget_fraction=0.5 implant.max_steps=5 model.tiny.hidden_size=32 model.tiny.intermediate_size=64
  model.tiny.vocab_size=400 model.max_length=64 influence.shard_size=4 influence.tile_size=16)
UNLEARN=("methods=[rapidun]" unlearn.max_steps=4 unlearn.eval_every=0 unlearn.lora_dropout=0 unlearn.batch_size=8
  unlearn.lr=5e-3 unlearn.zero_stage=0)
OUT=$WORK/summary.txt
: > "$OUT"

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
note() { echo "$*" | tee -a "$OUT"; }
timed() {  # LABEL LOG CMD...: run CMD (output to LOG), record its wall seconds
  local label=$1 log=$2 t0 rc=0 ms
  shift 2
  t0=$(date +%s%N)
  "$@" > "$log" 2>&1 || rc=$?
  ms=$((($(date +%s%N) - t0) / 1000000))
  note "- $label: $((ms / 1000)).$((ms % 1000 / 100)) s wall, exit $rc"
  return "$rc"
}
both() {  # LOG FUNC ARGS0... -- ARGS1...: FUNC ARGS0 and FUNC ARGS1 at once (two "nodes"); fails if either fails
  local log=$1 fn=$2 args0=() rc0=0 rc1=0 p0 p1
  shift 2
  while [[ $1 != -- ]]; do args0+=("$1"); shift; done
  shift
  "$fn" "${args0[@]}" > "$log.0" 2>&1 &
  p0=$!
  "$fn" "$@" > "$log.1" 2>&1 &
  p1=$!
  wait "$p0" || rc0=$?
  wait "$p1" || rc1=$?
  if [[ $rc0 != 0 || $rc1 != 0 ]]; then tail -n 30 "$log.0" "$log.1"; return 1; fi
}
torchrun_node() {  # NODE PORT SCRIPT RUN ARGS...
  local node=$1 port=$2 script=$3 run=$4
  shift 4
  "$PY" -m torch.distributed.run --nnodes 2 --node_rank "$node" --nproc_per_node 1 --rdzv_backend c10d \
    --rdzv_endpoint "127.0.0.1:$port" --rdzv_id "job$port" "$script" --config "$CONFIG" "run_dir=$run" \
    "${TINY[@]}" "$@"
}
two_nodes() {  # SCRIPT RUN ARGS...
  local script=$1 run=$2 port
  shift 2
  port=$(free_port)
  both "$run.log" torchrun_node 0 "$port" "$script" "$run" "$@" -- 1 "$port" "$script" "$run" "$@"
}

note "### commands (tiny config: ${TINY[*]})"
# 0. a prepared, implanted run dir (one process)
timed "prepare + implant, 1 process: launch/run.py --stages prepare,implant" "$WORK/base.log" \
  "$PY" launch/run.py --config "$CONFIG" "run_dir=$WORK/base" "${TINY[@]}" --stages prepare,implant
cp -r "$WORK/base" "$WORK/infl1"
cp -r "$WORK/base" "$WORK/infl2"

# 1a. influence: one process vs two nodes
timed "influence + weights, 1 process: python launch/influence.py" "$WORK/infl1.log" \
  "$PY" launch/influence.py --config "$CONFIG" "run_dir=$WORK/infl1" "${TINY[@]}"
timed "influence + weights, 2 nodes: torchrun --nnodes 2 --node_rank 0|1 --nproc_per_node 1 --rdzv_backend c10d" \
  "$WORK/infl2.both.log" two_nodes launch/influence.py "$WORK/infl2"

# 1b. unlearning: one process (grad_accum 2) vs two nodes (grad_accum 1), on the 1-process influence result
for d in ul1 ul2 ulslurm ulds; do cp -r "$WORK/infl1" "$WORK/$d"; done
timed "unlearn, 1 process, unlearn.grad_accum=2: python launch/unlearn.py" "$WORK/ul1.log" \
  "$PY" launch/unlearn.py --config "$CONFIG" "run_dir=$WORK/ul1" "${TINY[@]}" "${UNLEARN[@]}" unlearn.grad_accum=2
timed "unlearn, 2 nodes: torchrun --nnodes 2 ... launch/unlearn.py" "$WORK/ul2.both.log" \
  two_nodes launch/unlearn.py "$WORK/ul2" "${UNLEARN[@]}"

# 2. srun emulation: SLURM variables only
mkdir -p "$WORK/bin"
printf '#!/usr/bin/env bash\n[[ $1 == show && $2 == hostnames ]] && echo 127.0.0.1\n' > "$WORK/bin/scontrol"
chmod +x "$WORK/bin/scontrol"
JOB=$("$PY" -c '
import random, socket
for _ in range(100):
    job = random.randint(1, 10**6)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 15000 + job % 15000)); print(job); break
        except OSError:
            pass')
srun_task() {  # RANK: the environment srun gives a task of `srun -N2 --ntasks-per-node=1`, nothing else
  env -i "PATH=$WORK/bin:$PATH" "HOME=$HOME" "PYTHONPATH=$REPO" OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu \
    "TORCH_EXTENSIONS_DIR=$TORCH_EXTENSIONS_DIR" "SLURM_PROCID=$1" SLURM_LOCALID=0 SLURM_NTASKS=2 SLURM_NNODES=2 \
    "SLURM_NODEID=$1" "SLURM_JOB_ID=$JOB" SLURM_STEP_NODELIST=node-a,node-b \
    "$PY" launch/unlearn.py --config "$CONFIG" "run_dir=$WORK/ulslurm" "${TINY[@]}" "${UNLEARN[@]}"
}
timed "unlearn, srun emulation (2 tasks, SLURM_* only, fake scontrol): python launch/unlearn.py" \
  "$WORK/ulslurm.both.log" both "$WORK/ulslurm.log" srun_task 0 -- 1

# 3. deepspeed --hostfile --no_ssh, one launcher per "node"
printf 'localhost slots=1\n127.0.0.1 slots=1\n' > "$WORK/hostfile"
DSPORT=$(free_port)
ds_node() {
  "$BIN/deepspeed" --hostfile "$WORK/hostfile" --no_ssh --node_rank "$1" --master_addr 127.0.0.1 \
    --master_port "$DSPORT" launch/unlearn.py --config "$CONFIG" "run_dir=$WORK/ulds" "${TINY[@]}" "${UNLEARN[@]}"
}
timed "unlearn, deepspeed --hostfile (localhost, 127.0.0.1) --no_ssh --node_rank 0|1" "$WORK/ulds.both.log" \
  both "$WORK/ulds.log" ds_node 0 -- 1

"$PY" - "$WORK" "$OUT" <<'PY'
import json, sys
from pathlib import Path

import torch
from safetensors.torch import load_file

work, out = Path(sys.argv[1]), Path(sys.argv[2])
FILES = ("forget_weights.jsonl", "retain_weights.jsonl", "self_only/forget_weights.jsonl", "self_only/retain_weights.jsonl")
failed = []


def note(line):
    print(line)
    with open(out, "a") as f:
        f.write(line + "\n")


def weights(run):
    return {n: [json.loads(x) for x in (run / "weights" / n).read_text().splitlines()] for n in FILES}


def adapter(run):
    return load_file(str(run / "unlearn" / "adapter" / "adapter_model.safetensors"))


def check(what, value, tol):
    ok = value <= tol
    note(f"| {what} | {value:.3g} | {tol:g} | {'pass' if ok else 'FAIL'} |")
    if not ok:
        failed.append(what)


note("\n| check | measured | bound | result |\n|---|---|---|---|")
w1, w2 = weights(work / "infl1"), weights(work / "infl2")
assert all([r["id"] for r in w1[n]] == [r["id"] for r in w2[n]] for n in FILES)
dw = max(abs(a["weight"] - b["weight"]) for n in FILES for a, b in zip(w1[n], w2[n], strict=True))
check("influence weights, 2 nodes vs 1 process: max abs difference", dw, 1e-6)
manifest = json.loads((work / "infl2" / "manifest.json").read_text())["stages"]["influence"]
check("influence stage world_size recorded, 2 nodes (2 - value)", 2 - manifest["world_size"], 0)
a1, a2, a_s, a_d = (adapter(work / d) for d in ("ul1", "ul2", "ulslurm", "ulds"))
diff = lambda x, y: max(float((x[k] - y[k]).abs().max()) for k in x)
check("adapter, 2 nodes vs 1 process x grad_accum 2: max abs difference", diff(a1, a2), 1e-6)
check("adapter, srun emulation vs 2 nodes: max abs difference", diff(a_s, a2), 1e-6)
check("adapter, deepspeed --no_ssh vs 2 nodes: max abs difference", diff(a_d, a2), 1e-6)
lora_b = [float(v.abs().max()) for k, v in a_s.items() if "lora_B" in k]
check("srun emulation: lora_B matrices that did not move (count)", sum(b == 0 for b in lora_b), 0)
steps = [json.loads(x)["step"] for x in (work / "ulslurm" / "unlearn" / "metrics.jsonl").read_text().splitlines()]
check("srun emulation: metrics rows missing of 4 steps", 4 - len(steps), 0)

from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained(str(work / "ulslurm" / "model"))
model = PeftModel.from_pretrained(base, str(work / "ulslurm" / "unlearn" / "adapter")).eval()
ids = torch.tensor([[1, 5, 9, 13, 2]], device="cpu")
with torch.no_grad():
    with_adapter = model(input_ids=ids).logits
    with model.disable_adapter():
        without = model(input_ids=ids).logits
check("srun emulation adapter loads with PeftModel; logits unchanged by it (1 = unchanged)",
      float(torch.equal(with_adapter, without)), 0)
seen = (work / "ulslurm.log.0").read_text()
check("srun emulation: rank 0 discovered its layout from SLURM_* (1 = no log line)",
      float("distributed: slurm, rank 0/2, local 0/1" not in seen), 0)
for name in ("ul2", "ulslurm", "ulds"):
    rec = json.loads((work / name / "manifest.json").read_text())["stages"]["unlearn"]
    check(f"{name}: unlearn stage world_size recorded (2 - value)", 2 - rec["world_size"], 0)
note(f"\nfirst losses, 2 nodes: {[round(json.loads(x)['loss'], 6) for x in (work / 'ul2' / 'unlearn' / 'metrics.jsonl').read_text().splitlines()]}")
sys.exit(1 if failed else 0)
PY
status=$?
if [[ $MODE == write && $status == 0 ]]; then
  {
    echo
    echo "## Multi-node launches on one CPU machine, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "\`bash benchmarks/multinode_cpu.sh\` - $(uname -m), $(getconf _NPROCESSORS_ONLN) cores shared with other jobs (load $(cut -d' ' -f1 /proc/loadavg)),"
    echo "$("$PY" -c 'import torch, deepspeed, transformers; print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}")' 2>/dev/null), gloo, one thread per rank."
    echo "Wall seconds include process start-up and imports and are distorted by the shared load: orientation only."
    echo
    cat "$OUT"
  } | "$PY" -m rapidun_dist.cli.experiments publish multinode_cpu --bench benchmarks  # the old one -> results_archive.md
fi
exit "$status"
