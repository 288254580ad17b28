#!/usr/bin/env bash
# DeepSpeed hostfile ("host slots=N", one line per node) for the current SLURM allocation.
#
#   slurm/make_hostfile.sh [OUT]        (default OUT: ./hostfile-$SLURM_JOB_ID)
#
# Slots per node: $SLOTS_PER_NODE, else $SLURM_GPUS_ON_NODE, else 8. Nodes: `scontrol show hostnames`
# of $SLURM_JOB_NODELIST. Prints the path it wrote.
set -euo pipefail
nodelist=${SLURM_JOB_NODELIST:?make_hostfile.sh: SLURM_JOB_NODELIST is not set (run inside a SLURM job)}
out=${1:-hostfile-${SLURM_JOB_ID:-local}}
slots=${SLOTS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
[[ $slots =~ ^[1-9][0-9]*$ ]] || { echo "make_hostfile.sh: slots per node must be a positive integer, found '$slots'" >&2; exit 2; }
hosts=$(scontrol show hostnames "$nodelist")
[[ -n $hosts ]] || { echo "make_hostfile.sh: scontrol returned no hosts for '$nodelist'" >&2; exit 2; }
tmp=$(mktemp "$out.XXXXXX")
for h in $hosts; do echo "$h slots=$slots"; done > "$tmp"
mv "$tmp" "$out"
echo "$out"
