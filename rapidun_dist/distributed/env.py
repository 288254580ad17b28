"""Process-group setup and thin, checked collective wrappers. The only module family that talks to
torch.distributed.

Rank discovery, first match wins:

1. torchrun / deepspeed: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
2. SLURM (inside an `srun` step): SLURM_PROCID, SLURM_STEP_NUM_TASKS (else SLURM_NTASKS), SLURM_LOCALID;
   MASTER_ADDR from the env or the first host of SLURM_STEP_NODELIST / SLURM_NODELIST (`scontrol show
   hostnames` when available); MASTER_PORT from the env or derived from SLURM_JOB_ID.
3. MPI (mpiexec: OMPI_COMM_WORLD_SIZE or PMI_SIZE set): rank and size from mpi4py's COMM_WORLD;
   rank 0 picks a free port and broadcasts it with the address (127.0.0.1 when every rank shares a
   host, else rank 0's host name) unless MASTER_ADDR / MASTER_PORT are set.
4. Otherwise a single process: no process group, world size 1.

Backend: NCCL when CUDA is available, gloo otherwise (or as asked).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rapidun_dist.errors import ConfigError
from rapidun_dist.logging import get_logger

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher told us: rank layout and rendezvous address."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # torchrun | slurm | mpi | single


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int:
    if key not in env:
        if default is None:
            raise ConfigError(f"environment variable {key} is required by this launcher but not set")
        return default
    try:
        return int(env[key])
    except ValueError:
        raise ConfigError(f"environment variable {key}: expected an integer, found {env[key]!r}") from None


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: `scontrol show hostnames` when available, else a local parse
    of the common forms (`node[01-04,07],other`)."""
    if shutil.which("scontrol"):
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ConfigError(f"SLURM node list: cannot parse {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    return prefix if ranges is None else prefix + ranges.split(",")[0].split("-")[0]


def _from_torchrun(env: Mapping[str, str]) -> LaunchEnv:
    return LaunchEnv(
        rank=_int(env, "RANK"),
        world_size=_int(env, "WORLD_SIZE"),
        local_rank=_int(env, "LOCAL_RANK", 0),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT", DEFAULT_PORT),
        source="torchrun",
    )


def _from_slurm(env: Mapping[str, str]) -> LaunchEnv:
    world = _int(env, "SLURM_STEP_NUM_TASKS") if "SLURM_STEP_NUM_TASKS" in env else _int(env, "SLURM_NTASKS")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST")
    addr = env.get("MASTER_ADDR") or (first_slurm_host(nodelist) if nodelist else "127.0.0.1")
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else 15000 + _int(env, "SLURM_JOB_ID", 0) % 20000
    return LaunchEnv(
        rank=_int(env, "SLURM_PROCID"),
        world_size=world,
        local_rank=_int(env, "SLURM_LOCALID", 0),
        master_addr=addr,
        master_port=port,
        source="slurm",
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _from_mpi(env: Mapping[str, str], comm) -> LaunchEnv:
    """Rank/size from an mpi4py communicator; rank 0 broadcasts the rendezvous address and port."""
    rank, world = comm.Get_rank(), comm.Get_size()
    hosts = comm.allgather(socket.gethostname())
    local_rank = sum(1 for h in hosts[:rank] if h == hosts[rank])
    addr_port = None
    if rank == 0:
        addr = env.get("MASTER_ADDR") or ("127.0.0.1" if len(set(hosts)) == 1 else hosts[0])
        addr_port = (addr, _int(env, "MASTER_PORT") if "MASTER_PORT" in env else free_port())
    addr, port = comm.bcast(addr_port, root=0)
    return LaunchEnv(
        rank=rank, world_size=world, local_rank=local_rank, master_addr=addr, master_port=port, source="mpi"
    )


def discover_launch_env(env: Mapping[str, str] | None = None, *, mpi_comm=None) -> LaunchEnv:
    """Work out rank layout from the launcher's environment (see the module docstring).

    `mpi_comm` stands in for mpi4py's COMM_WORLD (tests pass a fake)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return _from_torchrun(env)
    if "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env):
        return _from_slurm(env)
    if "OMPI_COMM_WORLD_SIZE" in env or "PMI_SIZE" in env:
        if mpi_comm is None:
            try:
                from mpi4py import MPI
            except ImportError:
                raise ConfigError(
                    "launched by mpiexec (OMPI_COMM_WORLD_SIZE/PMI_SIZE set) but mpi4py is not "
                    "installed; pip install 'rapidun_dist[mpi]'"
                ) from None
            mpi_comm = MPI.COMM_WORLD
        return _from_mpi(env, mpi_comm)
    return LaunchEnv(
        rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=DEFAULT_PORT, source="single"
    )


def _check_layout(le: LaunchEnv) -> None:
    if le.world_size < 1 or not 0 <= le.rank < le.world_size or le.local_rank < 0:
        raise ConfigError(
            f"inconsistent launch env from {le.source}: rank {le.rank}, world size {le.world_size}, "
            f"local rank {le.local_rank}"
        )


def init_distributed(backend: str | None = None, *, timeout_s: float = 1800.0) -> DistInfo:
    """Discover the rank layout, init the default process group (none for world size 1), pick the device."""
    le = discover_launch_env()
    _check_layout(le)
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    device = (
        torch.device("cuda", le.local_rank % max(torch.cuda.device_count(), 1))
        if use_cuda
        else torch.device("cpu")
    )
    if use_cuda:
        torch.cuda.set_device(device)
    if le.world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", le.master_addr)
        os.environ.setdefault("MASTER_PORT", str(le.master_port))
        from datetime import timedelta

        dist.init_process_group(
            backend=backend or ("nccl" if use_cuda else "gloo"),
            rank=le.rank,
            world_size=le.world_size,
            init_method=f"tcp://{le.master_addr}:{le.master_port}",
            timeout=timedelta(seconds=timeout_s),
        )
    get_logger("distributed").info(f"distributed: {le.source}, world {le.world_size}, device {device}")
    return DistInfo(rank=le.rank, world_size=le.world_size, local_rank=le.local_rank, device=device)


# ---------------------------------------------------------------------------------------------------
# checked wrappers: each works without a process group (world size 1)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def _check_member(op: str) -> None:
    if dist.is_initialized() and dist.get_rank() < 0:
        raise RuntimeError(f"{op}: this process is not a member of the default process group")


def barrier() -> None:
    if world_size() > 1:
        _check_member("barrier")
        dist.barrier()


def destroy() -> None:
    """Tear down the default process group, and DeepSpeed's cached clones of it: DeepSpeed keeps the group it
    cloned at module level, so a later `deepspeed.initialize` in the same process would use a dead group."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    import sys

    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is not None and hasattr(groups, "_WORLD_GROUP"):
        groups._WORLD_GROUP = None


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order (picklable objects of our own making only)."""
    if world_size() == 1:
        return [obj]
    _check_member("all_gather_object")
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """`obj` from rank `src` on every rank."""
    if not 0 <= src < world_size():
        raise ValueError(f"broadcast_object: src must be in [0, {world_size()}); found {src}")
    if world_size() == 1:
        return obj
    _check_member("broadcast_object")
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_tensor(
    t: torch.Tensor, *, expected_shape: tuple[int, ...], stats: dict | None = None
) -> list[torch.Tensor]:
    """all_gather of equal-shape tensors; asserts the local shape first. Counts bytes into `stats`."""
    if tuple(t.shape) != tuple(expected_shape):
        raise RuntimeError(
            f"all_gather_tensor: expected local shape {tuple(expected_shape)}, found {tuple(t.shape)}"
        )
    w = world_size()
    if stats is not None:
        rec = stats.setdefault("all_gather", {"calls": 0, "bytes_sent": 0, "bytes_recv": 0})
        nbytes = t.numel() * t.element_size()
        rec["calls"] += 1
        rec["bytes_sent"] += nbytes * (w - 1)
        rec["bytes_recv"] += nbytes * (w - 1)
    if w == 1:
        return [t]
    _check_member("all_gather_tensor")
    out = [torch.empty_like(t) for _ in range(w)]
    dist.all_gather(out, t.contiguous())
    return out


def all_reduce_max(x: int) -> int:
    """Max of an int over ranks."""
    if world_size() == 1:
        return x
    _check_member("all_reduce_max")
    t = torch.tensor([x], dtype=torch.long, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _collective_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
