# Sourced by the sbatch scripts: how the ranks of one job step start, and what happens on preemption.
#
#   source slurm/launch.sh
#   rapidun_launch SCRIPT [ARGS...]      # e.g. rapidun_launch launch/influence.py --config C run_dir=...
#
# LAUNCHER (environment, default torchrun):
#   torchrun   srun starts one torchrun per node (--ntasks-per-node=1, all the node's CPUs; slurm/torchrun_node.sh);
#              each starts GPUS_PER_NODE ranks, rendezvous c10d on the first node at MASTER_ADDR:MASTER_PORT.
#   srun       srun starts one task per GPU (SLURM_PROCID / SLURM_LOCALID give the ranks), CPUS_PER_RANK CPUs each.
#   deepspeed  the deepspeed launcher with a hostfile of the allocation (pdsh over ssh by default;
#              DS_LAUNCHER=slurm|openmpi|mpich), and a .deepspeed_env so the remote ranks get HF_*, NCCL_*,
#              TORCH_NCCL_*, OMP_NUM_THREADS, PYTHONPATH, LD_LIBRARY_PATH, PATH (pdsh forwards almost nothing);
#              no tokens or secrets in it (pdsh puts it on command lines), mode 600, removed when the step ends.
#
# CPUs: CPUS_PER_NODE = SLURM_CPUS_ON_NODE (what the job holds on the node, however it was cut into tasks), else
# SLURM_CPUS_PER_TASK x SLURM_NTASKS_PER_NODE; CPUS_PER_RANK = CPUS_PER_NODE / GPUS_PER_NODE = OMP_NUM_THREADS.
#
# Signals (slurm/README.md, "Preemption"): the sbatch header's `--signal=B:USR1@600` gives this shell SIGUSR1 ten
# minutes before the time limit, a preemption gives it SIGTERM. The trap below never signals srun (srun answers SIGTERM
# by SIGKILLing its tasks): it runs `scancel --signal=USR1 $SLURM_JOB_ID`, which makes slurmstepd deliver SIGUSR1 to
# the tasks of the job's steps (not to this batch shell); torchrun (--signals_to_handle ...SIGUSR1) forwards it to its
# workers and waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT (default 300 s here) before SIGKILL; every rank has
# rapidun_dist.distributed.preempt installed, checkpoints after the step in hand and exits. When the step has exited
# the trap's flag makes rapidun_step run `scontrol requeue $SLURM_JOB_ID`; the rerun resumes from the checkpoint.
# Bash 4.2 safe (no ${a[@]} of a possibly empty array under set -u, no wait -n, no namerefs).

source slurm/nccl_env.sh
PYTHON=${PYTHON:-python}
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
_gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-8}}
GPUS_PER_NODE=${GPUS_PER_NODE:-${_gpus##*:}}  # SLURM_GPUS_PER_NODE may read "h100:8"
if [[ -z ${CPUS_PER_NODE:-} ]]; then  # SLURM_CPUS_PER_TASK alone is per node (torchrun header) or per GPU (srun)
  if [[ -n ${SLURM_CPUS_ON_NODE:-} ]]; then
    CPUS_PER_NODE=$SLURM_CPUS_ON_NODE
  elif [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
    CPUS_PER_NODE=$((SLURM_CPUS_PER_TASK * ${SLURM_NTASKS_PER_NODE:-1}))
  else
    CPUS_PER_NODE=$GPUS_PER_NODE
  fi
fi
CPUS_PER_RANK=$((CPUS_PER_NODE / GPUS_PER_NODE > 0 ? CPUS_PER_NODE / GPUS_PER_NODE : 1))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$CPUS_PER_RANK}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-300}  # keep it below the --signal lead time
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-${SLURM_TMPDIR:-/tmp}/triton-${SLURM_JOB_ID:-${USER:-local}}}  # node-local
TORCHRUN_SIGNALS=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1  # torchrun forwards these to its workers
DEEPSPEED_ENV_PATTERN='^(HF_|HUGGING_FACE_|TRANSFORMERS_|NCCL_|TORCH_NCCL_|TRITON_CACHE_DIR$|TORCH_EXTENSIONS_DIR$|OMP_NUM_THREADS$|PYTHONPATH$|LD_LIBRARY_PATH$|PATH$|DS_ACCELERATOR$)'
DEEPSPEED_ENV_SECRET='(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|_KEY$)'  # never in the file (HF_TOKEN: see README)
DEEPSPEED_ENV_NOT_SECRET='_(PATH|FILE|DIR)$'  # HF_TOKEN_PATH names a file: forwarded

write_deepspeed_env() {  # FILE: every variable matching DEEPSPEED_ENV_PATTERN, no secret, as NAME=VALUE (mode 600)
  local out=$1 name
  (umask 077 && : > "$out")
  chmod 600 "$out"
  for name in $(compgen -e); do
    if [[ $name =~ $DEEPSPEED_ENV_SECRET && ! $name =~ $DEEPSPEED_ENV_NOT_SECRET ]]; then continue; fi
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
        bash slurm/torchrun_node.sh "$PYTHON" --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
        --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
        --max_restarts 0 --signals_to_handle "$TORCHRUN_SIGNALS" "$script" "$@"
      ;;
    srun)
      export SRUN_CPUS_PER_TASK=$CPUS_PER_RANK
      rapidun_step srun --kill-on-bad-exit=1 --nodes="$NNODES" --ntasks=$((NNODES * GPUS_PER_NODE)) \
        --ntasks-per-node="$GPUS_PER_NODE" "$PYTHON" "$script" "$@"
      ;;
    deepspeed)
      local hostfile
      hostfile=$(SLOTS_PER_NODE=$GPUS_PER_NODE bash slurm/make_hostfile.sh "hostfile-${SLURM_JOB_ID}")
      local rc=0
      export DS_ENV_FILE=$PWD/.deepspeed_env-${SLURM_JOB_ID}  # read by the deepspeed runner (absolute path)
      write_deepspeed_env "$DS_ENV_FILE"
      rapidun_step deepspeed --hostfile "$hostfile" --launcher "${DS_LAUNCHER:-pdsh}" \
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$script" "$@" || rc=$?
      rm -f "$DS_ENV_FILE"
      return "$rc"
      ;;
    *)
      echo "launch.sh: LAUNCHER must be torchrun, srun or deepspeed, found '${LAUNCHER}'" >&2
      return 2
      ;;
  esac
}

rapidun_signal() {  # SIGNAME: the trap of the batch shell; signal the tasks of the running step, never srun itself
  RAPIDUN_SIGNALLED=1
  if [[ -z ${RAPIDUN_STEP_PID:-} ]] || ! kill -0 "$RAPIDUN_STEP_PID" 2> /dev/null; then
    echo "launch.sh: SIG$1 received between steps: no new step starts; the job is requeued" >&2
  elif [[ ${LAUNCHER:-torchrun} == deepspeed && ${DS_LAUNCHER:-pdsh} != slurm ]]; then
    # pdsh's ranks are no SLURM step: scancel cannot reach them; the runner's SIGTERM handler tears them down
    echo "launch.sh: SIG$1 received: SIGTERM to the deepspeed runner (its ranks may not checkpoint)" >&2
    kill -TERM "$RAPIDUN_STEP_PID" 2> /dev/null || true
  else
    echo "launch.sh: SIG$1 received: scancel --signal=USR1 ${SLURM_JOB_ID} (the steps' tasks checkpoint and exit)" >&2
    if ! scancel --signal=USR1 "$SLURM_JOB_ID"; then  # srun passes SIGUSR1 on to its tasks (not so SIGTERM)
      echo "launch.sh: scancel failed: SIGUSR1 to the step's launcher instead (srun forwards it)" >&2
      kill -USR1 "$RAPIDUN_STEP_PID" 2> /dev/null || true
    fi
  fi
}

rapidun_requeue() {
  if [[ ${RAPIDUN_REQUEUED:-0} == 0 ]]; then
    RAPIDUN_REQUEUED=1
    echo "launch.sh: requeueing job ${SLURM_JOB_ID} to resume from the checkpoints" >&2
    scontrol requeue "$SLURM_JOB_ID" || echo "launch.sh: scontrol requeue ${SLURM_JOB_ID} failed" >&2
  fi
}

RAPIDUN_SIGNALLED=0
trap 'rapidun_signal USR1' USR1  # for the whole job, also between steps (an untrapped SIGUSR1 kills the shell)
trap 'rapidun_signal TERM' TERM

rapidun_step() {  # run "$@" (the job step) in the background; after a signal, requeue once it has exited
  local rc=0
  if [[ $RAPIDUN_SIGNALLED == 1 ]]; then
    rapidun_requeue
    return 1
  fi
  "$@" &
  RAPIDUN_STEP_PID=$!
  wait "$RAPIDUN_STEP_PID" || rc=$?
  while kill -0 "$RAPIDUN_STEP_PID" 2> /dev/null; do  # a trap interrupts wait: wait again for the real exit
    rc=0
    wait "$RAPIDUN_STEP_PID" || rc=$?
  done
  RAPIDUN_STEP_PID=
  if [[ $RAPIDUN_SIGNALLED == 1 ]]; then
    echo "launch.sh: step ended with $rc after the signal" >&2
    rapidun_requeue
    return $((rc == 0 ? 1 : rc))  # the job is requeued: run no further step in this allocation
  fi
  return "$rc"
}
