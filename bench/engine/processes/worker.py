"""One worker process: join the process group, run every algorithm of the invocation, stage the records.

Started by a launcher as `python -m bench.engine.processes.worker SPEC [RANK]`: the local launcher passes RANK and a
FileStore path in the spec; every other launcher passes neither and the worker reads its rank and world size
from the launcher's environment (`bench.engine.processes.env`) and meets the others as that launcher allows (`join`).
`swarmbench run` started by a launcher on every rank (`mpirun -np N swarmbench run`) uses the same `join` and
`train_all` in-process (`bench.run.orchestrate`).

Events to the parent (progress from rank 0, errors from any rank, rank 0's launch facts) are JSON lines on
stdout behind `EVENT_MARKER`, written with one `os.write` each; the parent finds the marker in its children's
output after stripping the launcher's rank tags. Records go to this rank's staging file.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from bench.base.errors import ResultsUnwritable, UserError, last_line
from bench.base.host import usable_cores
from bench.core.comm import PEER_LOSS_HINTS, make_comm, resolve_transport
from bench.core.devices import resolve_backend, resolve_device, synchronized_clock
from bench.core.protocol import Clock
from bench.core.topology import build_topology
from bench.engine.processes.env import LaunchEnv, detect, explicit_master, under_mpi
from bench.records.checkpoints import cell_folder, load_node_state, save_node_state
from bench.records.write import StagingWriter
from bench.training.config import RunConfig, failure_schedule
from bench.training.loop import Checkpoints, Failure, make_shards, run_cell, run_data, run_rounds

EVENT_MARKER = "@@swarmbench-event "
_EVENT_LINE_MAX = 3500  # below PIPE_BUF (4096): one atomic write, never interleaved with another process's
SLURM_PORT_BASE = 15000  # srun without MASTER_PORT: 15000 + job id % 10000 (below Linux's ephemeral range)

_event_lock = threading.Lock()
# Receiver for events when the ranks are not children of a swarmbench parent (`mpirun ... swarmbench run`):
# None means "write marker lines on stdout for the parent".
_event_sink: Callable[[dict[str, Any]], None] | None = None
_mpi_comm: Any = None  # MPI.COMM_WORLD once the rendezvous initialized MPI: failures then Abort the whole job
_fatal_hooks: list[Callable[[], None]] = []  # run before a helper thread ends the process (rank 0: mark failed)


def set_event_sink(sink: Callable[[dict[str, Any]], None] | None) -> None:
    global _event_sink
    _event_sink = sink


def add_fatal_hook(hook: Callable[[], None]) -> None:
    _fatal_hooks.append(hook)


def send_event(event: dict[str, Any]) -> None:
    """Send one event to whoever watches this rank: the in-process sink, else the parent via stdout."""
    with _event_lock:
        if _event_sink is not None:
            _event_sink(event)
            return
        line = json.dumps(event)
        if len(line) > _EVENT_LINE_MAX:
            event = {**event, "error": str(event.get("error", ""))[:1000]}
            line = json.dumps(event)[:_EVENT_LINE_MAX]
        sys.stdout.flush()  # keep ordinary output before the event that follows it
        os.write(1, (EVENT_MARKER + line + "\n").encode())


# How long a rank that saw an error that only says a peer went away (`PEER_LOSS_HINTS`: the root cause is that peer)
# waits before it ends the job: long enough for the launcher to see the rank that really died first and name it.
PEER_LOSS_GRACE_S = 3.0
KILLED_EXIT = 43  # the exit status of a rank that fails on purpose (`--fail`, `make stress`'s killed worlds)


def exit_killed() -> None:
    """End this process now, as a crash would: no cleanup, no goodbye to the peers, status KILLED_EXIT."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(KILLED_EXIT)


def abort_job(code: int) -> None:
    """End this process now; under MPI end the whole job (mpirun then stops every rank at once)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _mpi_comm is not None:
        _mpi_comm.Abort(code)
    os._exit(code)


def end_failed_rank(code: int = 1) -> int:
    """After this rank failed and said why: under MPI end the whole job now (mpirun stops every rank instead
    of letting them wait for timeout_s; does not return); otherwise return the exit status."""
    if _mpi_comm is not None:
        abort_job(code)
    return code


def abort_from_thread(exc: BaseException, rank: int) -> None:
    """A helper thread failed: report it and end the whole process now, so peers are not left waiting."""
    traceback.print_exception(type(exc), exc, exc.__traceback__)
    send_event({"type": "error", "rank": rank, "error": last_line(exc)})
    for hook in _fatal_hooks:
        hook()
    abort_job(1)


# ---- rendezvous ------------------------------------------------------------------------------------------------


@dataclass
class Session:
    """This process's membership in the default torch.distributed process group."""

    rank: int
    world: int
    rendezvous: str  # how the ranks met, for meta.json
    hosts: list[str] = field(default_factory=list)  # host name of every rank, by rank
    devices: list[str] = field(default_factory=list)  # device of every rank, by rank
    env: LaunchEnv | None = None
    store_file: str | None = None  # a FileStore file this rank named and removes when done (rank 0)
    device: str = "cpu"  # this rank's torch device
    backend: str = "gloo"  # the default process group's backend

    def launch_facts(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "devices": self.devices,
            "rendezvous": self.rendezvous,
            "hosts": self.hosts,
            "env": self.env.to_dict() if self.env is not None else None,
        }

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        if self.store_file is not None:
            # Called after the final barrier: no rank uses the store any more. (FileStore would delete the file
            # itself when its last user lets go, but the process group's copies outlive the run.)
            Path(self.store_file).unlink(missing_ok=True)


def check_world(cfg, env: LaunchEnv) -> None:
    if env.world_size != cfg.nodes:
        raise UserError(
            f"--nodes {cfg.nodes} does not match the {env.world_size} ranks {env.launcher} started: "
            f"drop --nodes or pass --nodes {env.world_size}"
        )


def slurm_port(env: LaunchEnv) -> int:
    """A port every task of a SLURM step computes alike, from the job id."""
    job = int(env.job_id) if env.job_id and env.job_id.isdigit() else 0
    return SLURM_PORT_BASE + job % 10000


def join(
    cfg, env: LaunchEnv | None, *, rank: int | None = None, store_path: str | None = None, scratch: str | None = None
) -> Session:
    """Init the default gloo process group; `env` None means the local launcher (FileStore, `rank` given).
    `scratch`: a folder for rendezvous files that the parent removes after the launch (default: the temp dir)."""
    import torch.distributed as dist

    timeout = timedelta(seconds=cfg.timeout_s)
    # One GPU per local rank; NCCL only when every rank on this host has a GPU of its own.
    if env is None:
        local_rank, local_world = rank, cfg.nodes
    else:
        local_rank = env.local_rank if env.local_rank is not None else env.rank
        local_world = env.local_world_size or env.world_size
    device = resolve_device(cfg.device, local_rank or 0)
    gpus = max(1, _cuda_count()) if device.type == "cuda" else 1
    backend = resolve_backend(cfg.backend, device, ranks_per_gpu=-(-local_world // gpus))
    if env is None:
        assert rank is not None and store_path is not None
        store = dist.FileStore(store_path, cfg.nodes)
        dist.init_process_group(backend, store=store, rank=rank, world_size=cfg.nodes, timeout=timeout)
        session = Session(rank, cfg.nodes, "filestore (local launcher)")
    else:
        check_world(cfg, env)
        session = Session(env.rank, env.world_size, "", env=env)
        session.rendezvous = _join_launched(cfg, env, session, timeout, scratch or tempfile.gettempdir(), backend)
    session.device, session.backend = str(device), backend
    facts: list[Any] = [None] * session.world
    dist.all_gather_object(facts, (socket.gethostname(), str(device)))
    session.hosts = [str(h) for h, _ in facts]
    session.devices = [str(d) for _, d in facts]
    return session


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def _join_launched(cfg, env: LaunchEnv, session: Session, timeout: timedelta, scratch: str, backend: str) -> str:
    import torch.distributed as dist

    rank, world = env.rank, env.world_size
    if env.launcher == "torchrun":
        # torchrun's agent hosts a TCPStore at MASTER_ADDR:MASTER_PORT; env:// joins it.
        if env.single_host:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
        return f"torchrun store at {env.master_addr}:{env.master_port}"
    addr, port = explicit_master(cfg)
    gather, name = None, ""
    if env.launcher in ("mpirun", "mpiexec"):
        # Even with an explicit address: MPI initialized means a failing rank can Abort the whole job.
        gather, name = _mpi_gather(env)
    if env.launcher == "srun" and not (addr and port):
        # Every task derives the same address (first node of the step) and port (from the job id).
        if env.single_host:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            addr = addr or "127.0.0.1"
        if not addr and not env.hosts:
            raise UserError("srun did not set SLURM_STEP_NODELIST: set MASTER_ADDR (or --master-addr) to rank 0's host")
        addr = addr or env.hosts[0]
        port = port or slurm_port(env)
    if addr or port:
        if not (addr and port):
            raise UserError(
                "a rendezvous needs both an address and a port: set --master-addr and --master-port "
                "(or MASTER_ADDR and MASTER_PORT)"
            )
        store = dist.TCPStore(addr, port, world, is_master=rank == 0, timeout=timeout, wait_for_workers=False)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        return f"TCPStore at {addr}:{port}"
    if gather is None and env.launcher == "horovodrun":
        gather, name = _horovod_gather()
    if gather is None:
        raise UserError(
            f"the {world} ranks {env.launcher} started cannot find each other: install mpi4py "
            "(pip install mpi4py) or set MASTER_ADDR and MASTER_PORT (or --master-addr/--master-port) "
            "to rank 0's host and a free port"
        )
    names = gather(socket.gethostname())
    if len(set(names)) == 1:
        # One host: a FileStore at a path rank 0 names; gloo stays on loopback and nothing listens on a port.
        import secrets

        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        path = os.path.join(scratch, f"swarmbench-rdzv-{secrets.token_hex(8)}") if rank == 0 else None
        path = gather(path)[0]
        store = dist.FileStore(path, world)
        if rank == 0:
            session.store_file = path
        how = f"FileStore, path shared with {name}"
    else:
        if rank == 0:
            addr = _advertised_address()
            store = dist.TCPStore(addr, 0, world, is_master=True, timeout=timeout, wait_for_workers=False)
            where = gather((addr, store.port))[0]
        else:
            where = gather(None)[0]
            store = dist.TCPStore(where[0], where[1], world, is_master=False, timeout=timeout)
        how = f"TCPStore at {where[0]}:{where[1]}, address shared with {name}"
    if name == "Horovod" and cfg.allreduce_impl != "horovod":
        import horovod.torch as hvd

        hvd.shutdown()  # only needed to meet: its background thread would compete with training for the cores
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return how


def _mpi_gather(env: LaunchEnv) -> tuple[Callable[[Any], list[Any]] | None, str]:
    """mpi4py's allgather (works before torch.distributed does), when mpi4py is there and sees this job."""
    import importlib.util

    global _mpi_comm
    if importlib.util.find_spec("mpi4py") is None:
        return None, ""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() != env.world_size:
        return None, ""  # mpi4py is built for another MPI than the launcher's: it sees a world of one
    _mpi_comm = comm
    return comm.allgather, "mpi4py"


def _horovod_gather() -> tuple[Callable[[Any], list[Any]] | None, str]:
    """Horovod's allgather, under horovodrun --gloo (where there is no MPI)."""
    import importlib.util

    if importlib.util.find_spec("horovod") is None:
        return None, ""
    import horovod.torch as hvd

    hvd.init()
    calls = iter(range(1 << 30))

    def gather(obj: Any) -> list[Any]:
        # Horovod matches collectives across ranks by name, and its default name is the object's type,
        # which differs when only rank 0 has something to share: name every call alike on every rank.
        return hvd.allgather_object(obj, name=f"swarmbench.rendezvous.{next(calls)}")

    return gather, "Horovod"


def _advertised_address() -> str:
    """This host's address as other hosts should reach it: the first non-loopback IPv4 of its name."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return name
    for info in infos:
        addr = str(info[4][0])
        if not addr.startswith("127."):
            return addr
    return name


# ---- training ----------------------------------------------------------------------------------------------


def session_transport(cfg, session: Session) -> str:
    """The one-sided transport for this launch ("p2p" or "rma"), the same on every rank."""

    return resolve_transport(
        cfg.transport,
        under_mpi=session.env is not None and under_mpi(session.env.launcher),
        single_host=len(set(session.hosts)) == 1,
    )


def train_all(
    cfg,
    session: Session,
    out_dir: Path,
    run_id: str,
    threads: int,
    send: Callable[[dict[str, Any]], None],
    transport: str,
    done: frozenset[tuple[str, int]] = frozenset(),
    partial: dict[str, Any] | None = None,
    dead_dir: str | None = None,
) -> bool:
    """Run every algorithm of the invocation on this rank, each of its --repeat rounds in turn (`run_rounds`),
    but the cells in `done` (finished by the run this one resumes); records to the staging file, rank 0's progress
    to `send`. Every cell ends with a barrier, so every rank's records of a cell are written when rank 0 reports
    it done (what a checkpoint relies on), and so is every staging file when this returns on rank 0. With
    --checkpoint-every, nodes save their state inside a cell; `partial` ({algorithm, round, epoch}) is the cell
    and epoch a resumed run starts from. `dead_dir` (`--on-failure continue`): where the launch marks the ranks
    that died; the survivors then go on without them. Returns whether every rank was alive at the end."""
    import torch

    rank, world = session.rank, session.world
    torch.set_num_threads(threads)
    device = torch.device(session.device)
    topology = build_topology(cfg.topology, world, degree=cfg.degree, seed=cfg.seed)
    clock: Clock = WallClock(device)
    comm = make_comm(
        transport,
        rank,
        world,
        topology,
        cfg.timeout_s,
        cfg.allreduce_impl,
        on_responder_error=abort_from_thread,
        now=clock.now,  # comm timers synchronize the device too, or an enqueued allreduce would look free
        dead_dir=dead_dir,
    )
    dataset = run_data(cfg)
    shards = make_shards(cfg, dataset)
    writer = StagingWriter(out_dir, rank, run_id, world)
    number = 0  # the round of the running cell

    def emit(event: dict[str, Any]) -> None:
        nonlocal number
        if event["type"] == "record":
            writer.write(event)
            return
        if event["type"] == "cell_start":
            number = event["round"]
        elif event["type"] == "checkpoint":
            writer.log.sync()  # this rank's rows up to the checkpoint are on disk (the fence came after)
        if rank == comm.alive()[0]:  # rank 0, or after a failure the first survivor
            send(event)

    import torch.distributed as dist

    fail_at = failure_schedule(cfg, cfg.epochs * shards.steps_per_epoch).fail_at.get(rank)

    def crash() -> None:
        """`--fail`: this rank's records so far are kept, the launch hears why (with --on-failure stop: it ends
        there; with continue it sees the exit status), and the process ends as a crash."""
        writer.log.sync()
        if dead_dir is None:
            send_event({"type": "error", "rank": rank, "error": f"failed at step {fail_at} (--fail)"})
        exit_killed()

    failure = Failure(fail_at, crash) if fail_at is not None else None

    def run_one(name: str, out: Callable[[dict[str, Any]], None]) -> None:
        run_cell(cfg, name, dataset, shards, rank, comm, clock, device, out, node_checkpoints(name), failure=failure)
        if dead_dir is None:
            dist.barrier()
            return
        comm.fence()  # among the survivors
        alive = comm.alive()
        if rank == alive[0]:  # a rank killed from outside left no record of it: the first survivor writes one
            for dead in sorted(set(range(world)) - set(alive)):
                row = {"type": "record", "algorithm": name, "rank": dead, "epoch": None, "step": None}
                writer.write({**row, "metric": "node_failed", "value": -1.0, "round": number})

    def node_checkpoints(name: str) -> Checkpoints | None:
        if not cfg.checkpoint_every:
            return None
        folder = cell_folder(out_dir, name, number)
        resumed = None
        if partial and (partial["algorithm"], partial["round"]) == (name, number):
            resumed = load_node_state(folder, rank, partial["epoch"])

        def save(epoch: int, state: dict[str, Any]) -> None:
            writer.log.sync()
            save_node_state(folder, rank, epoch, state)

        return Checkpoints(cfg.checkpoint_every, save, resumed)

    try:
        # The rounds run on these same workers and process group: one launch, no restart between rounds.
        run_rounds(cfg, emit, run_one, done)
        comm.close()
    finally:
        writer.close()
    if dead_dir is None:
        dist.barrier()
        return True
    comm.fence()
    return len(comm.alive()) == world


def threads_per_rank(local_ranks: int | None) -> int:
    """This host's cores split evenly over the ranks on it (as the local launcher does), and never more than the
    cores this process may run on (a launcher that binds each rank to its own cores, e.g. srun --cpus-per-task)."""
    split = (os.cpu_count() or 1) // max(1, local_ranks or 1)
    return max(1, min(split, usable_cores()))


def run_worker(spec: dict[str, Any], rank: int | None, env: LaunchEnv | None) -> None:

    cfg = RunConfig.from_dict(spec["config"])
    session = join(cfg, env, rank=rank, store_path=spec.get("store"), scratch=spec.get("scratch"))
    transport = spec.get("transport") or session_transport(cfg, session)
    if session.rank == 0:
        send_event({"type": "launch", "transport": transport, **session.launch_facts()})
    out_dir, threads = Path(spec["out_dir"]), int(spec.get("threads", 1))
    done = frozenset((str(a), int(r)) for a, r in spec.get("done", ()))
    dead_dir = spec.get("dead_dir")
    everyone = train_all(
        cfg, session, out_dir, spec["run_id"], threads, send_event, transport, done, spec.get("partial"), dead_dir
    )
    # Only after success, and with every rank alive: otherwise the process ends without waiting on peers that may
    # be gone (destroying the process group would).
    if everyone:
        session.close()


class WallClock:
    """The real engine's clock: wall time, read after the device has finished its queued work (CUDA kernels and
    NCCL collectives are asynchronous); compute is simply run (and timed by the loop)."""

    def __init__(self, device: torch.device) -> None:
        self.now = synchronized_clock(device)

    def compute(self):
        import contextlib

        return contextlib.nullcontext()


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.engine.processes.worker SPEC [RANK]`: exit 0, or 1 after reporting the error to the parent."""
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    rank: int = int(args[1]) if len(args) > 1 else -1
    try:
        env = None
        if len(args) == 1:
            env = detect()
            if env is None:
                raise UserError("no launcher environment found: start workers with `swarmbench run --launcher NAME`")
            rank = env.rank
        run_worker(spec, rank if env is None else None, env)
    except BaseException as exc:
        if not isinstance(exc, ResultsUnwritable):  # a full disk is not a bug: its one line says it all
            traceback.print_exc()
        message = last_line(exc)
        send_event({"type": "error", "rank": rank, "error": message})
        if _mpi_comm is not None and any(h in message for h in PEER_LOSS_HINTS):
            time.sleep(PEER_LOSS_GRACE_S)  # let mpirun report the rank that died before our Abort ends the job
        return end_failed_rank(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
