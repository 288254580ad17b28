#!/usr/bin/env bash
# One node's torchrun, started by `srun --ntasks-per-node=1` from slurm/launch.sh (LAUNCHER=torchrun):
#
#   srun ... bash slurm/torchrun_node.sh PYTHON [torchrun options] SCRIPT [ARGS...]
#
# Adds what torchrun would otherwise guess from host names:
#   --rdzv_conf is_host=1|0   1 only on the node SLURM calls $RAPIDUN_RDZV_NODE (the rendezvous node: the first of the
#                             allocation), compared by SLURM node name; without it torchrun hosts the c10d store
#                             where the endpoint matches the machine's hostname or IPs, and no node may match
#   --local_addr ADDR         this node's IPv4 (its SLURM node name resolved by getent, else the first address of
#                             `hostname -I`): the agent that becomes rank 0 publishes it as the workers' MASTER_ADDR,
#                             which otherwise is its FQDN, unresolvable on some clusters
# SIGUSR1 reaches the workers: launch.sh passes --signals_to_handle with SIGUSR1 (torch >= 2.9 forwards it).
set -euo pipefail
python=$1
shift
is_host=0
if [[ ${SLURMD_NODENAME:-} == "${RAPIDUN_RDZV_NODE:?torchrun_node.sh: RAPIDUN_RDZV_NODE is not set}" ]]; then
  is_host=1
fi
addr=$(getent ahostsv4 "${SLURMD_NODENAME:-$(hostname)}" 2> /dev/null | awk 'NR == 1 {print $1}') || true
if [[ -z $addr ]]; then addr=$(hostname -I 2> /dev/null | awk '{print $1}') || true; fi
local_addr=()
if [[ -n $addr ]]; then local_addr=(--local_addr "$addr"); fi
exec "$python" -m torch.distributed.run --rdzv_conf "is_host=$is_host" ${local_addr[@]+"${local_addr[@]}"} "$@"
