# Sourced by slurm/launch.sh: NCCL, threading and rendezvous settings shared by every rank. Each value can be set
# before `sbatch` (the job inherits the submit environment) to override the default here.
#
# NCCL_DEBUG         WARN by default; INFO prints the rings/trees and the transport chosen (IB vs socket):
#                    use it once on a new cluster, then go back to WARN (INFO is verbose on 100s of ranks).
# NCCL_SOCKET_IFNAME interface for bootstrap and socket traffic; "^lo,docker" excludes loopback and docker
#                    bridges. Set it explicitly (e.g. ib0, eth0, bond0) if ranks hang at init.
# NCCL_IB_HCA        which InfiniBand HCAs to use, e.g. "mlx5_0,mlx5_1" or "=mlx5_0:1"; unset = all.
# NCCL_IB_DISABLE    1 forces TCP sockets (slow; for debugging a broken fabric only).
# NCCL_IB_GID_INDEX  RoCE clusters usually need 3 (RoCE v2); leave unset on native InfiniBand.
# NCCL_IB_TIMEOUT    raise (e.g. 22) on large or congested fabrics if you see IB timeouts.
# TORCH_NCCL_ASYNC_ERROR_HANDLING: 1 = a failed or timed-out collective aborts the job instead of hanging.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-^lo,docker}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
for var in NCCL_IB_HCA NCCL_IB_DISABLE NCCL_IB_GID_INDEX NCCL_IB_TIMEOUT; do
  if [[ -n ${!var:-} ]]; then export "${var?}"; fi
done
# rendezvous: the first node of the allocation, and a port derived from the job id - the same on every rank and
# after a requeue, 15000-29999 (below the Linux ephemeral range 32768-60999, so no outgoing connection holds it;
# rapidun_dist.distributed.env.slurm_port computes the same)
# MASTER_ADDR: the first node's IPv4 (getent; its SLURM name when that does not resolve), so no node depends on
# matching host names; RAPIDUN_RDZV_NODE: its SLURM name (slurm/torchrun_node.sh hosts the c10d store there).
export RAPIDUN_RDZV_NODE=${RAPIDUN_RDZV_NODE:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
if [[ -z ${MASTER_ADDR:-} ]]; then
  MASTER_ADDR=$(getent ahostsv4 "$RAPIDUN_RDZV_NODE" 2> /dev/null | awk 'NR == 1 {print $1}') || true
  export MASTER_ADDR=${MASTER_ADDR:-$RAPIDUN_RDZV_NODE}
fi
export MASTER_PORT=${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 15000))}
