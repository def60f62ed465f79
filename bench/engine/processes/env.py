"""Which launcher started this process, read from its environment variables.

`detect()` is a pure function of a mapping (default: `os.environ`) so every launcher can be tested with a fake
environment. Launchers are tried in a fixed order because some set each other's variables: `horovodrun --mpi`
runs `mpirun` (so Open MPI's variables are there too), and `srun` may also set PMI's.

| launcher   | variables read                                                                              |
|------------|---------------------------------------------------------------------------------------------|
| torchrun   | TORCHELASTIC_RUN_ID or RANK+WORLD_SIZE+LOCAL_RANK+MASTER_ADDR+MASTER_PORT; LOCAL_WORLD_SIZE  |
| horovodrun | HOROVOD_RANK, HOROVOD_SIZE, HOROVOD_LOCAL_RANK/SIZE, HOROVOD_GLOO_RENDEZVOUS_ADDR/PORT        |
| mpirun     | Open MPI: OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE                                     |
| mpiexec    | PMI (MPICH, Intel MPI): PMI_RANK, PMI_SIZE, MPI_LOCALRANKID/MPI_LOCALNRANKS                   |
| srun       | SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS), SLURM_LOCALID, SLURM_STEP_NODELIST      |

Only a job step started by `srun` counts as a SLURM launch: a batch script (`sbatch`) or an `salloc` shell also
has SLURM_PROCID=0 and SLURM_NTASKS, but it is one process, so SLURM_STEP_ID is required as well.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.base.errors import UserError


@dataclass(frozen=True)
class LaunchEnv:
    """One process's place in a launch made by an external launcher."""

    launcher: str  # torchrun | horovodrun | mpirun | mpiexec | srun
    rank: int
    world_size: int
    local_rank: int | None = None  # rank among the processes on this host, when the launcher says
    local_world_size: int | None = None  # processes on this host, when the launcher says
    num_hosts: int | None = None  # hosts taking part, when the launcher says
    hosts: tuple[str, ...] = field(default=())  # host names (SLURM's expanded node list), when known
    master_addr: str | None = None  # the launcher's own rendezvous address (torchrun), when known
    master_port: int | None = None
    job_id: str | None = None  # the launcher's job or run id, when it has one

    @property
    def single_host(self) -> bool | None:
        """True/False when the launcher tells whether every rank runs on this host; None when it does not."""
        if self.num_hosts is not None:
            return self.num_hosts == 1
        if self.local_world_size is not None:
            return self.local_world_size == self.world_size
        return None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hosts"] = list(self.hosts)
        return out


def detect(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """The launcher that started this process, or None when none did (a plain `swarmbench run`)."""
    env = os.environ if environ is None else environ
    for probe in (_torchrun, _horovodrun, _open_mpi, _pmi, _srun):
        found = probe(env)
        if found is not None:
            if not 0 <= found.rank < found.world_size:
                raise UserError(
                    f"{found.launcher} set rank {found.rank} for a world of {found.world_size}: "
                    "check the launcher's environment variables"
                )
            return found
    return None


def _int(env: Mapping[str, str], name: str, launcher: str) -> int:
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{launcher} set {name}={raw!r}, not an integer: check the launcher's environment") from None


def _opt_int(env: Mapping[str, str], name: str, launcher: str) -> int | None:
    return _int(env, name, launcher) if env.get(name, "").strip() else None


def _has(env: Mapping[str, str], *names: str) -> bool:
    return all(env.get(n, "").strip() for n in names)


def _torchrun(env: Mapping[str, str]) -> LaunchEnv | None:
    if not (
        _has(env, "TORCHELASTIC_RUN_ID") or _has(env, "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    ):
        return None
    if not _has(env, "RANK", "WORLD_SIZE"):
        return None  # TORCHELASTIC_RUN_ID alone (e.g. the torchrun agent itself) is not a worker
    name = "torchrun"
    local_world = _opt_int(env, "LOCAL_WORLD_SIZE", name)
    world = _int(env, "WORLD_SIZE", name)
    group_world = _opt_int(env, "GROUP_WORLD_SIZE", name)  # number of torchrun agents (hosts, usually)
    return LaunchEnv(
        launcher=name,
        rank=_int(env, "RANK", name),
        world_size=world,
        local_rank=_opt_int(env, "LOCAL_RANK", name),
        local_world_size=local_world,
        num_hosts=group_world,
        master_addr=env.get("MASTER_ADDR") or None,
        master_port=_opt_int(env, "MASTER_PORT", name),
        job_id=env.get("TORCHELASTIC_RUN_ID") or None,
    )


def _horovodrun(env: Mapping[str, str]) -> LaunchEnv | None:
    if not _has(env, "HOROVOD_RANK", "HOROVOD_SIZE"):
        return None
    name = "horovodrun"
    return LaunchEnv(
        launcher=name,
        rank=_int(env, "HOROVOD_RANK", name),
        world_size=_int(env, "HOROVOD_SIZE", name),
        local_rank=_opt_int(env, "HOROVOD_LOCAL_RANK", name),
        local_world_size=_opt_int(env, "HOROVOD_LOCAL_SIZE", name),
        num_hosts=_opt_int(env, "HOROVOD_CROSS_SIZE", name),
        master_addr=env.get("HOROVOD_GLOO_RENDEZVOUS_ADDR") or None,
        master_port=_opt_int(env, "HOROVOD_GLOO_RENDEZVOUS_PORT", name),
    )


def _open_mpi(env: Mapping[str, str]) -> LaunchEnv | None:
    if not _has(env, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
        return None
    name = "mpirun"
    return LaunchEnv(
        launcher=name,
        rank=_int(env, "OMPI_COMM_WORLD_RANK", name),
        world_size=_int(env, "OMPI_COMM_WORLD_SIZE", name),
        local_rank=_opt_int(env, "OMPI_COMM_WORLD_LOCAL_RANK", name),
        local_world_size=_opt_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", name),
        job_id=env.get("OMPI_MCA_ess_base_jobid") or None,
    )


def _pmi(env: Mapping[str, str]) -> LaunchEnv | None:
    if not _has(env, "PMI_RANK", "PMI_SIZE"):
        return None
    name = "mpiexec"
    return LaunchEnv(
        launcher=name,
        rank=_int(env, "PMI_RANK", name),
        world_size=_int(env, "PMI_SIZE", name),
        local_rank=_opt_int(env, "MPI_LOCALRANKID", name),
        local_world_size=_opt_int(env, "MPI_LOCALNRANKS", name),
        job_id=env.get("PMI_JOBID") or None,
    )


def _srun(env: Mapping[str, str]) -> LaunchEnv | None:
    if not _has(env, "SLURM_PROCID", "SLURM_STEP_ID"):
        return None
    name = "srun"
    if _has(env, "SLURM_STEP_NUM_TASKS"):
        world = _int(env, "SLURM_STEP_NUM_TASKS", name)
    elif _has(env, "SLURM_NTASKS"):
        world = _int(env, "SLURM_NTASKS", name)
    else:
        return None
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    hosts = tuple(expand_hostlist(nodelist)) if nodelist.strip() else ()
    num_hosts = _opt_int(env, "SLURM_STEP_NUM_NODES", name) or _opt_int(env, "SLURM_NNODES", name)
    if num_hosts is None and hosts:
        num_hosts = len(hosts)
    local_world = None
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or ""
    node_id = _opt_int(env, "SLURM_NODEID", name)
    if per_node.strip() and node_id is not None:
        counts = expand_tasks_per_node(per_node)
        if node_id < len(counts):
            local_world = counts[node_id]
    return LaunchEnv(
        launcher=name,
        rank=_int(env, "SLURM_PROCID", name),
        world_size=world,
        local_rank=_opt_int(env, "SLURM_LOCALID", name),
        local_world_size=local_world,
        num_hosts=num_hosts,
        hosts=hosts,
        job_id=env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or None,
    )


# ---- SLURM's compact lists ---------------------------------------------------------------------------------

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_hostlist(text: str) -> list[str]:
    """SLURM's compact host list -> host names, in order: 'node[01-03,07],login' -> node01 node02 node03 node07
    login. Several bracket groups in one name multiply out ('r[1-2]n[1-2]' -> r1n1 r1n2 r2n1 r2n2); zero padding
    follows the range's first number."""
    hosts: list[str] = []
    for item in _split_top_level(text.strip(), text):
        hosts.extend(_expand_item(item, text))
    return hosts


def _split_top_level(text: str, whole: str) -> list[str]:
    """Split on commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise UserError(f"host list '{whole}' has nested brackets: check SLURM_JOB_NODELIST")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise UserError(f"host list '{whole}' has an unmatched ']': check SLURM_JOB_NODELIST")
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise UserError(f"host list '{whole}' has an unmatched '[': check SLURM_JOB_NODELIST")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _expand_item(item: str, whole: str) -> list[str]:
    open_at = item.find("[")
    if open_at < 0:
        return [item]
    close_at = item.index("]", open_at)  # balanced: checked by _split_top_level
    prefix, body, rest = item[:open_at], item[open_at + 1 : close_at], item[close_at + 1 :]
    values: list[str] = []
    for part in body.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise UserError(f"host list '{whole}' has a bad range '{part}': check SLURM_JOB_NODELIST")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise UserError(f"host list '{whole}' has a descending range '{part}': check SLURM_JOB_NODELIST")
        width = len(lo)
        values.extend(f"{n:0{width}d}" for n in range(int(lo), int(hi) + 1))
    tails = _expand_item(rest, whole) if rest else [""]
    return [f"{prefix}{v}{tail}" for v in values for tail in tails]


_TASKS = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def expand_tasks_per_node(text: str) -> list[int]:
    """SLURM's tasks-per-node list -> one count per node: '2(x3),1' -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in text.split(","):
        m = _TASKS.match(part.strip())
        if not m:
            raise UserError(f"tasks-per-node list '{text}' has a bad entry '{part}': check SLURM_TASKS_PER_NODE")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts


MPI_LAUNCHERS = ("mpirun", "mpiexec")  # Open MPI's and MPICH/Hydra's (PMI) process managers


def under_mpi(launcher: str) -> bool:
    """Ranks started by an MPI process manager, with mpi4py at hand: they are MPI ranks (what the rma transport
    needs). The one answer for the parent predicting the transport and for the workers resolving it."""
    return launcher in MPI_LAUNCHERS and importlib.util.find_spec("mpi4py") is not None


def explicit_master(cfg) -> tuple[str | None, int | None]:
    """--master-addr/--master-port, else MASTER_ADDR/MASTER_PORT from the environment."""
    addr = getattr(cfg, "master_addr", None) or os.environ.get("MASTER_ADDR") or None
    port = getattr(cfg, "master_port", None)
    if port is None and os.environ.get("MASTER_PORT", "").strip():
        raw = os.environ["MASTER_PORT"]
        try:
            port = int(raw)
        except ValueError:
            raise UserError(
                f"MASTER_PORT={raw!r} is not a port number: set it to a free port on rank 0's host"
            ) from None
    return addr, port
