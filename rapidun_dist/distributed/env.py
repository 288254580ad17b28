"""Process-group setup and thin, checked collective wrappers. The only module family that talks to
torch.distributed.

Rank discovery, first match wins:

1. torchrun / deepspeed: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (LOCAL_WORLD_SIZE from torchrun,
   LOCAL_SIZE from the deepspeed launcher).
2. SLURM (inside an `srun` step): SLURM_PROCID, SLURM_STEP_NUM_TASKS (else SLURM_NTASKS), SLURM_LOCALID;
   tasks per node from SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE (`2(x3),1` form) at SLURM_NODEID, else
   tasks / SLURM_NNODES; MASTER_ADDR from the env or the first host of SLURM_STEP_NODELIST / SLURM_NODELIST
   (`scontrol show hostnames` when available); MASTER_PORT from the env or 15000 + SLURM_JOB_ID mod 15000 (below
   the Linux ephemeral range 32768-60999, so no outgoing connection on the node can hold it).
3. MPI (mpiexec: OMPI_COMM_WORLD_SIZE or PMI_SIZE set): rank and size from mpi4py's COMM_WORLD;
   rank 0 picks a free port and broadcasts it with the address (127.0.0.1 when every rank shares a
   host, else rank 0's host name) unless MASTER_ADDR / MASTER_PORT are set.
4. Otherwise a single process: no process group, world size 1.

Whatever discovered them, `init_distributed` exports RANK, WORLD_SIZE, LOCAL_RANK (the GPU index it picked; the
local rank on CPU), LOCAL_WORLD_SIZE and, for several ranks, MASTER_ADDR / MASTER_PORT, so DeepSpeed (which asserts
on LOCAL_RANK) and anything else downstream sees one consistent layout.

Device (`distributed.device`): auto = cuda:LOCAL_RANK when CUDA is available, else cpu. Backend: NCCL on CUDA
devices, gloo otherwise (or as asked). Two timeouts: `init_timeout_s` for the rendezvous and the first collective
(NCCL builds its communicator there), then `collective_timeout_s` for every later collective.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from rapidun_dist.config import DistributedConfig
from rapidun_dist.core.errors import ConfigError
from rapidun_dist.core.logging import get_logger

DEFAULT_PORT = 29500
SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 15000  # ports 15000-29999: below the ephemeral range (32768+)
_LAST_CONFIG: DistributedConfig | None = None  # the config of the last init_distributed call that passed one
_TIMEOUTS_S: dict[str, float] = {}  # {"init", "collective"}: the default group's timeouts as last set here


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher told us: rank layout and rendezvous address."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # torchrun | slurm | mpi | single
    local_world_size: int = 1


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
    world = _int(env, "WORLD_SIZE")
    local_world = next((_int(env, k) for k in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE") if k in env), world)
    return LaunchEnv(
        rank=_int(env, "RANK"),
        world_size=world,
        local_rank=_int(env, "LOCAL_RANK", 0),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT", DEFAULT_PORT),
        source="torchrun",
        local_world_size=local_world,
    )


def slurm_tasks_per_node(spec: str) -> list[int]:
    """SLURM's compressed tasks-per-node list: `2(x3),1` -> [2, 2, 2, 1]."""
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ConfigError(f"SLURM tasks per node: cannot parse {spec!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def _slurm_local_world(env: Mapping[str, str], world: int) -> int:
    node = _int(env, "SLURM_NODEID", 0)
    for key in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if key in env:
            per_node = slurm_tasks_per_node(env[key])
            if node < len(per_node):
                return per_node[node]
    nodes = next((_int(env, k) for k in ("SLURM_STEP_NUM_NODES", "SLURM_NNODES") if k in env), 1)
    return max(1, -(-world // max(nodes, 1)))  # even split (exact when the tasks divide over the nodes)


def _from_slurm(env: Mapping[str, str]) -> LaunchEnv:
    world = _int(env, "SLURM_STEP_NUM_TASKS") if "SLURM_STEP_NUM_TASKS" in env else _int(env, "SLURM_NTASKS")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST")
    addr = env.get("MASTER_ADDR") or (first_slurm_host(nodelist) if nodelist else "127.0.0.1")
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else slurm_port(_int(env, "SLURM_JOB_ID", 0))
    return LaunchEnv(
        rank=_int(env, "SLURM_PROCID"),
        world_size=world,
        local_rank=_int(env, "SLURM_LOCALID", 0),
        master_addr=addr,
        master_port=port,
        source="slurm",
        local_world_size=_slurm_local_world(env, world),
    )


def slurm_port(job_id: int) -> int:
    """The rendezvous port of a SLURM job (slurm/nccl_env.sh computes the same)."""
    return SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN


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
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        master_addr=addr,
        master_port=port,
        source="mpi",
        local_world_size=hosts.count(hosts[rank]),
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
    if (
        le.world_size < 1
        or not 0 <= le.rank < le.world_size
        or le.local_rank < 0
        or not 1 <= le.local_world_size <= le.world_size
    ):
        raise ConfigError(
            f"inconsistent launch env from {le.source}: rank {le.rank}, world size {le.world_size}, "
            f"local rank {le.local_rank}, local world size {le.local_world_size}"
        )


def resolve_device(spec: str, local_rank: int) -> torch.device:
    """The rank's device for `distributed.device` (auto | cpu | cuda | cuda:N)."""
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"distributed.device={spec}: CUDA is not available on this machine (use auto or cpu)"
        )
    count = torch.cuda.device_count()
    index = local_rank % count if spec in ("auto", "cuda") else int(spec.split(":")[1])
    if index >= count:
        raise ConfigError(f"distributed.device={spec}: this process sees {count} CUDA device(s)")
    return torch.device("cuda", index)


def export_launch_env(le: LaunchEnv, device: torch.device) -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK (the GPU index picked; the local rank on CPU), LOCAL_WORLD_SIZE and, for several
    ranks, MASTER_ADDR / MASTER_PORT into os.environ, for DeepSpeed and anything else downstream."""
    os.environ.update(
        {
            "RANK": str(le.rank),
            "WORLD_SIZE": str(le.world_size),
            "LOCAL_RANK": str(device.index if device.type == "cuda" else le.local_rank),
            "LOCAL_WORLD_SIZE": str(le.local_world_size),
        }
    )
    if le.world_size > 1:
        os.environ.update({"MASTER_ADDR": le.master_addr, "MASTER_PORT": str(le.master_port)})


def _resolve_config(config: DistributedConfig | None, backend: str | None, timeout_s: float | None):
    """The config in force: the one passed, else the last one passed, else the defaults; `backend` / `timeout_s`
    (the older keyword form) override it."""
    global _LAST_CONFIG
    if config is not None:
        _LAST_CONFIG = config
    cfg = config or _LAST_CONFIG or DistributedConfig()
    if backend is not None or timeout_s is not None:
        from dataclasses import replace

        cfg = replace(
            cfg,
            backend=backend or cfg.backend,
            device="cpu" if backend == "gloo" and cfg.device == "auto" else cfg.device,
            init_timeout_s=timeout_s or cfg.init_timeout_s,
            collective_timeout_s=timeout_s or cfg.collective_timeout_s,
        )
    return cfg


def init_distributed(
    backend: str | None = None, *, timeout_s: float | None = None, config: DistributedConfig | None = None
) -> DistInfo:
    """Discover the rank layout, pick the rank's device, export the layout to the environment, and init the
    default process group (none for world size 1). Idempotent: a second call returns the same layout.

    `config` (the run's `distributed` section) sets device, backend and the two timeouts; without it the last
    config passed in this process is used (the defaults when none was). `backend` / `timeout_s` override it (a
    `timeout_s` sets both timeouts)."""
    cfg = _resolve_config(config, backend, timeout_s)
    le = discover_launch_env()
    _check_layout(le)
    device = resolve_device(cfg.device, le.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    export_launch_env(le, device)
    if le.world_size > 1 and not dist.is_initialized():
        _init_group(le, device, cfg)
    get_logger("distributed").info(
        f"distributed: {le.source}, rank {le.rank}/{le.world_size}, local {le.local_rank}/{le.local_world_size}, "
        f"device {device}"
    )
    return DistInfo(rank=le.rank, world_size=le.world_size, local_rank=le.local_rank, device=device)


def _backend(cfg: DistributedConfig, device: torch.device) -> str:
    return cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")


def _init_group(le: LaunchEnv, device: torch.device, cfg: DistributedConfig) -> None:
    """Rendezvous and a first barrier under the init timeout, then the collective timeout for everything after."""
    backend = _backend(cfg, device)
    dist.init_process_group(
        backend=backend,
        rank=le.rank,
        world_size=le.world_size,
        init_method=f"tcp://{le.master_addr}:{le.master_port}",
        timeout=timedelta(seconds=cfg.init_timeout_s),
    )
    _TIMEOUTS_S["init"] = cfg.init_timeout_s
    dist.barrier(**({"device_ids": [device.index]} if backend == "nccl" else {}))
    set_collective_timeout(cfg.collective_timeout_s)


def set_collective_timeout(seconds: float) -> None:
    """Set the default group's timeout for the collectives that follow (torch's `_set_pg_timeout`)."""
    try:
        from torch.distributed.distributed_c10d import _set_pg_timeout
    except ImportError:
        get_logger("distributed").warning(
            f"this torch cannot change a process group's timeout: collectives keep the init timeout "
            f"(distributed.collective_timeout_s={seconds} not applied)"
        )
        return
    _set_pg_timeout(timedelta(seconds=seconds))
    _TIMEOUTS_S["collective"] = seconds


def ensure_process_group(info: DistInfo) -> None:
    """A process group even for one process (DeepSpeed needs one): a group of one on a free loopback port.
    Several ranks: `init_distributed` made it already."""
    if dist.is_initialized():
        return
    if info.world_size > 1:
        raise RuntimeError("ensure_process_group: call init_distributed first (world size > 1)")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and "MASTER_PORT" in os.environ:
        # torchrun, also with one process: its agent serves the store at MASTER_ADDR:MASTER_PORT and the workers
        # join it as clients; on a port of our own a client would find no server and retry for 30 minutes
        addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"])
    else:
        addr, port = "127.0.0.1", free_port()
        os.environ.update({"MASTER_ADDR": addr, "MASTER_PORT": str(port)})
    backend = "nccl" if info.device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=0, world_size=1, init_method=f"tcp://{addr}:{port}")


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


SHARE_PREFIX = "rapidun/share"
_SHARED: dict[str, int] = {}  # hand-offs this process has made, per name (their store keys' sequence numbers)


def default_store():
    """The default process group's key-value store (the c10d rendezvous store)."""
    from torch.distributed import distributed_c10d

    getter = getattr(distributed_c10d, "_get_default_store", None)
    if getter is None:
        raise ConfigError(
            "this torch build does not expose the process group's store "
            "(torch.distributed.distributed_c10d._get_default_store); hand-offs between ranks need it"
        )
    return getter()


def hand_off(name: str, obj=None, *, src: int = 0, store=None):
    """`obj` from rank `src` on every rank (picklable objects of our own making only; `obj` may be a callable,
    called on `src` alone), through the process group's key-value store instead of a collective: `src` sets it and
    goes on at once, and each other rank reads it when it gets there (waiting up to `wait_timeout_s`). For a value
    one rank decides while the others are still busy (loading a model): a broadcast would hold `src` until every
    rank arrived. Every rank calls it with the same names in the same order, as with a collective; each call gets
    fresh keys (a per-name sequence number)."""
    import pickle

    if not name or "/" in name:
        raise ValueError(f"hand_off: name must be a non-empty string without '/'; found {name!r}")
    if not 0 <= src < world_size():
        raise ValueError(f"hand_off: src must be in [0, {world_size()}); found {src}")
    if world_size() == 1 and store is None:
        return obj() if callable(obj) else obj
    store = store if store is not None else default_store()
    _SHARED[name] = _SHARED.get(name, 0) + 1
    key = f"{SHARE_PREFIX}/{name}/{_SHARED[name]}"
    if rank() == src:
        value = obj() if callable(obj) else obj
        store.set(key, pickle.dumps(value))
        return value
    store.wait([key], timedelta(seconds=wait_timeout_s()))
    return pickle.loads(store.get(key))  # noqa: S301 - written by a rank of this job, as broadcast_object's


def wait_timeout_s() -> float:
    """How long a rank waits for another's one-off work (rank-0 file work, a list another rank decides): the
    group's init timeout, the longer of its two."""
    return _TIMEOUTS_S.get("init", _resolve_config(None, None, None).init_timeout_s)


def run_on_rank0(fn, *args, what: str = "rank-0 work", **kwargs):
    """`fn(*args, **kwargs)` on rank 0 alone, its result on every rank (picklable).

    For file work only rank 0 does (copying reused features, writing shared files) that may outlast
    `distributed.collective_timeout_s`: the other ranks wait in the result's broadcast, which runs under the
    group's init timeout (`distributed.init_timeout_s`); the collective timeout in force is restored after it. An
    exception on rank 0 is re-raised there and reaches the other ranks as a RuntimeError naming `what`, so no rank
    waits for a result that will not come."""
    if world_size() == 1:
        return fn(*args, **kwargs)
    wait_s = wait_timeout_s()
    restore_s = _TIMEOUTS_S.get("collective", _resolve_config(None, None, None).collective_timeout_s)
    result, error = None, None
    set_collective_timeout(wait_s)
    try:
        if rank() == 0:
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:
                error = e
        payload = broadcast_object(
            (result, None if error is None else f"{type(error).__name__}: {error}") if rank() == 0 else None
        )
    finally:
        set_collective_timeout(restore_s)
    if error is not None:
        raise error
    if payload[1] is not None:
        raise RuntimeError(f"{what} failed on rank 0: {payload[1]}")
    return payload[0]


def count_bytes(stats: dict | None, op: str, *, sent: int, recv: int, phase: str | None = None) -> None:
    """Add one call of collective `op` to `stats`: {op: {calls, bytes_sent, bytes_recv}} and, when `phase` is
    given, {"phase_bytes_recv": {phase: bytes}}. Bytes count data that crosses between ranks (a rank's own
    slice of an all_to_all is a local copy, not counted)."""
    if stats is None:
        return
    rec = stats.setdefault(op, {"calls": 0, "bytes_sent": 0, "bytes_recv": 0})
    rec["calls"] += 1
    rec["bytes_sent"] += int(sent)
    rec["bytes_recv"] += int(recv)
    if phase is not None:
        ph = stats.setdefault("phase_bytes_recv", {})
        ph[phase] = ph.get(phase, 0) + int(recv)


COLLECTIVES = ("all_gather", "all_to_all", "all_reduce")


def total_recv_bytes(stats: dict) -> int:
    """Bytes this rank received over every counted collective."""
    return sum(stats.get(op, {}).get("bytes_recv", 0) for op in COLLECTIVES)


def all_gather_tensor(
    t: torch.Tensor, *, expected_shape: tuple[int, ...], stats: dict | None = None, phase: str | None = None
) -> list[torch.Tensor]:
    """all_gather of equal-shape tensors; asserts the local shape first. Counts bytes into `stats`."""
    if tuple(t.shape) != tuple(expected_shape):
        raise RuntimeError(
            f"all_gather_tensor: expected local shape {tuple(expected_shape)}, found {tuple(t.shape)}"
        )
    w = world_size()
    nbytes = t.numel() * t.element_size()
    count_bytes(stats, "all_gather", sent=nbytes * (w - 1), recv=nbytes * (w - 1), phase=phase)
    if w == 1:
        return [t]
    _check_member("all_gather_tensor")
    out = [torch.empty_like(t) for _ in range(w)]
    dist.all_gather(out, t.contiguous())
    return out


def _check_a2a_send(send: list[torch.Tensor], op: str) -> None:
    w = world_size()
    if len(send) != w:
        raise RuntimeError(f"{op}: expected one send tensor per rank ({w}); found {len(send)}")
    t0 = send[0]
    for d, t in enumerate(send):
        if t.dtype != t0.dtype or t.device != t0.device or tuple(t.shape[1:]) != tuple(t0.shape[1:]):
            raise RuntimeError(
                f"{op}: send[{d}] is {t.dtype} {tuple(t.shape)} on {t.device}; every send tensor must share "
                f"dtype, device and trailing shape with send[0] ({t0.dtype} {tuple(t0.shape)} on {t0.device})"
            )


def all_to_all_tensors(
    send: list[torch.Tensor], recv_rows: list[int], *, stats: dict | None = None, phase: str | None = None
) -> list[torch.Tensor]:
    """send[d] ([rows_d, *tail]) goes to rank d; returns recv[s] ([recv_rows[s], *tail]) from rank s.

    Every rank passes the same dtype and trailing shape; `recv_rows` must match what the peers send (the
    callers derive both from a gathered layout). One all_to_all_single over a flat buffer: uneven and empty
    splits work on gloo and NCCL. Bytes counted: rows from / to other ranks only."""
    _check_a2a_send(send, "all_to_all_tensors")
    w, me = world_size(), rank()
    if len(recv_rows) != w:
        raise RuntimeError(f"all_to_all_tensors: expected {w} receive row counts; found {len(recv_rows)}")
    tail = tuple(send[0].shape[1:])
    row_numel = math.prod(tail)
    row_bytes = row_numel * send[0].element_size()
    sent = sum(t.shape[0] for d, t in enumerate(send) if d != me) * row_bytes
    recv = sum(r for s, r in enumerate(recv_rows) if s != me) * row_bytes
    count_bytes(stats, "all_to_all", sent=sent, recv=recv, phase=phase)
    if w == 1:
        if recv_rows[0] != send[0].shape[0]:
            raise RuntimeError(
                f"all_to_all_tensors: expect {recv_rows[0]} rows from myself, send {send[0].shape[0]}"
            )
        return [send[0]]
    _check_member("all_to_all_tensors")
    flat_in = torch.cat([t.reshape(-1) for t in send]) if row_numel else send[0].new_empty(0)
    flat_out = flat_in.new_empty(sum(recv_rows) * row_numel)
    dist.all_to_all_single(
        flat_out,
        flat_in.contiguous(),
        output_split_sizes=[r * row_numel for r in recv_rows],
        input_split_sizes=[t.shape[0] * row_numel for t in send],
    )
    return [chunk.reshape(-1, *tail) for chunk in flat_out.split([r * row_numel for r in recv_rows])]


def all_to_all_varsize(
    send: list[torch.Tensor], *, stats: dict | None = None, phase: str | None = None
) -> list[torch.Tensor]:
    """all_to_all_tensors when the receivers cannot know the sizes: row counts go first ([P] int64 each)."""
    _check_a2a_send(send, "all_to_all_varsize")
    dev = send[0].device
    sizes = [torch.tensor([t.shape[0]], dtype=torch.long, device=dev) for t in send]
    got = all_to_all_tensors(sizes, [1] * world_size(), stats=stats, phase=phase)
    return all_to_all_tensors(send, [int(g.item()) for g in got], stats=stats, phase=phase)


def all_reduce_sum_(t: torch.Tensor, *, stats: dict | None = None, phase: str | None = None) -> torch.Tensor:
    """In-place sum over ranks. Bytes counted with the ring model, 2 (P - 1) / P x the tensor per rank each way
    (what NCCL's ring and gloo's ring all-reduce move; tree or halving-doubling variants move about as much)."""
    w = world_size()
    moved = 2 * (w - 1) * t.numel() * t.element_size() // w
    count_bytes(stats, "all_reduce", sent=moved, recv=moved, phase=phase)
    if w > 1:
        _check_member("all_reduce_sum_")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Elementwise sum of `t` over ranks (a new tensor on t's device; `t` itself unchanged; a CPU tensor makes
    the round trip through the device an NCCL group needs)."""
    if world_size() == 1:
        return t.clone()
    out = t.detach().to(_collective_device(), copy=True)
    return all_reduce_sum_(out).to(t.device)


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
