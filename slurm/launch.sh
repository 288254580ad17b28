# Sourced by the sbatch scripts: how the ranks of one job step start, and what happens on preemption.
#
#   source slurm/launch.sh
#   rapidun_launch SCRIPT [ARGS...]      # e.g. rapidun_launch launch/influence.py --config C run_dir=...
#
# LAUNCHER (environment, default torchrun):
#   torchrun   srun starts one torchrun per node (--ntasks-per-node=1, all the node's CPUs); each starts
#              GPUS_PER_NODE ranks, rendezvous c10d on the first node at MASTER_ADDR:MASTER_PORT.
#   srun       srun starts one task per GPU (SLURM_PROCID / SLURM_LOCALID give the ranks).
#   deepspeed  the deepspeed launcher with a hostfile of the allocation (pdsh over ssh by default;
#              DS_LAUNCHER=slurm|openmpi|mpich), and a .deepspeed_env so the remote ranks get HF_*, NCCL_*,
#              TORCH_NCCL_*, OMP_NUM_THREADS, PYTHONPATH, LD_LIBRARY_PATH, PATH (pdsh forwards almost nothing).
#
# Preemption: with `#SBATCH --signal=B:USR1@SECONDS` the batch shell gets SIGUSR1 before the time limit (and SLURM
# sends SIGTERM when it preempts the job): the trap forwards SIGTERM to the step (srun passes it to the tasks,
# torchrun to its workers), the ranks checkpoint at the next step boundary and exit, and the job is requeued; the
# rerun resumes. TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default here 150 s) is how long torchrun waits for that before
# SIGKILL. Bash 4.2 safe (no ${a[@]} of a possibly empty array under set -u, no wait -n, no namerefs).

source slurm/nccl_env.sh
PYTHON=${PYTHON:-python}
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
_gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-8}}
GPUS_PER_NODE=${GPUS_PER_NODE:-${_gpus##*:}}  # SLURM_GPUS_PER_NODE may read "h100:8"
CPUS_PER_NODE=${SLURM_CPUS_PER_TASK:-$GPUS_PER_NODE}  # the batch step's task is the node's one task
CPUS_PER_RANK=$((CPUS_PER_NODE / GPUS_PER_NODE > 0 ? CPUS_PER_NODE / GPUS_PER_NODE : 1))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$CPUS_PER_RANK}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-150}
DEEPSPEED_ENV_PATTERN='^(HF_|HUGGING_FACE_|TRANSFORMERS_|NCCL_|TORCH_NCCL_|TORCH_EXTENSIONS_DIR$|OMP_NUM_THREADS$|PYTHONPATH$|LD_LIBRARY_PATH$|PATH$|DS_ACCELERATOR$)'

write_deepspeed_env() {  # FILE: every variable matching DEEPSPEED_ENV_PATTERN as NAME=VALUE (one per line)
  local out=$1 name
  : > "$out"
  for name in $(compgen -e); do
    if [[ $name =~ $DEEPSPEED_ENV_PATTERN && ${!name} != *$'\n'* ]]; then
      printf '%s=%s\n' "$name" "${!name}" >> "$out"
    fi
  done
}

rapidun_launch() {
  local script=$1
  shift
  case ${LAUNCHER:-torchrun} in
    torchrun)
      export SRUN_CPUS_PER_TASK=$CPUS_PER_NODE  # srun no longer inherits --cpus-per-task (SLURM >= 22.05)
      rapidun_step srun --kill-on-bad-exit=1 --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 \
        "$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
        --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
        --max_restarts 0 "$script" "$@"
      ;;
    srun)
      export SRUN_CPUS_PER_TASK=$CPUS_PER_RANK
      rapidun_step srun --kill-on-bad-exit=1 --nodes="$NNODES" --ntasks=$((NNODES * GPUS_PER_NODE)) \
        --ntasks-per-node="$GPUS_PER_NODE" "$PYTHON" "$script" "$@"
      ;;
    deepspeed)
      local hostfile
      hostfile=$(SLOTS_PER_NODE=$GPUS_PER_NODE bash slurm/make_hostfile.sh "hostfile-${SLURM_JOB_ID}")
      export DS_ENV_FILE=$PWD/.deepspeed_env-${SLURM_JOB_ID}  # read by the deepspeed runner (absolute path)
      write_deepspeed_env "$DS_ENV_FILE"
      rapidun_step deepspeed --hostfile "$hostfile" --launcher "${DS_LAUNCHER:-pdsh}" \
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$script" "$@"
      ;;
    *)
      echo "launch.sh: LAUNCHER must be torchrun, srun or deepspeed, found '${LAUNCHER}'" >&2
      return 2
      ;;
  esac
}

rapidun_step() {  # run "$@" in the background, forward SIGUSR1/SIGTERM to it as SIGTERM, requeue when signalled
  local rc=0
  RAPIDUN_SIGNALLED=0
  "$@" &
  RAPIDUN_STEP_PID=$!
  trap 'RAPIDUN_SIGNALLED=1; echo "launch.sh: signal received: SIGTERM to the step so the ranks checkpoint" >&2; kill -TERM "$RAPIDUN_STEP_PID" 2>/dev/null || true' USR1 TERM
  wait "$RAPIDUN_STEP_PID" || rc=$?
  while kill -0 "$RAPIDUN_STEP_PID" 2>/dev/null; do  # a trap interrupts wait: wait again for the real exit
    rc=0
    wait "$RAPIDUN_STEP_PID" || rc=$?
  done
  trap - USR1 TERM
  if [[ $RAPIDUN_SIGNALLED == 1 ]]; then
    echo "launch.sh: step ended with $rc after the signal; requeueing job ${SLURM_JOB_ID} to resume" >&2
    scontrol requeue "$SLURM_JOB_ID" || true
  fi
  return "$rc"
}
