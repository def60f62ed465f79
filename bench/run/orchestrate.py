"""`swarmbench run`: validate everything, then launch, then write the results contract and print the tables.

Two ways in:
- a plain `swarmbench run`: this process is the parent; it validates, writes meta.json, starts the workers
  with the chosen launcher (`bench.engine.processes.launchers.LAUNCHERS`), watches them and finalizes the results;
- `mpirun -np N swarmbench run ...` (or torchrun, srun, horovodrun): every rank runs this command, detects the
  launcher (`bench.engine.processes.env`) and becomes a worker itself (`execute_launched`). Rank 0 decides the results
  folder, prints progress and finalizes; the other ranks print nothing but errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from bench.base.console import RunUI
from bench.base.errors import UserError
from bench.base.files import atomic_write_json
from bench.base.signals import Interrupted, deferred, stop_signals
from bench.core.comm import resolve_transport
from bench.core.models import build_model
from bench.engine.processes import worker
from bench.engine.processes.env import detect, under_mpi
from bench.engine.processes.launchers import LAUNCHERS, check_launcher
from bench.engine.processes.spawn import PEER_LOSS_HINTS, Outcome, launch
from bench.records.tables import print_tables
from bench.records.write import build_meta, finalize, now_iso
from bench.run.outcome import (
    claimed_out_dir,
    interrupted_lines,
    run_status,
    statuses_for,
    unwritable,
    write_results,
)
from bench.run.resume import CellCheckpoint, Resume, keep_records, partial_rows
from bench.run.simulate import execute_sim
from bench.training.config import RunConfig, load_toml, parse_set
from bench.training.loop import make_shards, run_data


def preflight(cfg: RunConfig) -> None:
    """Checks that need the data and the model: done before anything is written."""

    dataset = run_data(cfg, download=cfg.download)
    build_model(cfg.model, dataset.input_shape, dataset.num_classes, cfg.seed)
    make_shards(cfg, dataset)


def nodes_from_launcher(given: dict[str, Any], config_file: str | None, sets: tuple[str, ...]) -> dict[str, Any]:
    """Under a launcher (`mpirun -np 3 swarmbench run`), --nodes defaults to the launcher's world size; a value
    given anywhere (option, config file, --set) is kept and later checked against it."""

    env = detect()
    if env is None or "nodes" in given:
        return given

    if (config_file and "nodes" in load_toml(config_file)) or "nodes" in parse_set(sets):
        return given
    return {**given, "nodes": env.world_size}


def execute(
    cfg: RunConfig, out: str | None, argv: list[str], interactive: bool | None = None, resume: Resume | None = None
) -> int:
    """Run every selected algorithm under one launch; returns the process exit status (0 ok, 1 failed). A SIGINT or
    SIGTERM stops the workers, writes the results so far (status interrupted) and raises `Interrupted`. `resume`:
    continue that interrupted run in its own folder (`bench.run.resume`)."""
    if cfg.engine == "sim":  # virtual nodes in this process (bench.engine.sim.cluster); no launcher involved
        return execute_sim(cfg, out, argv, interactive, resume)

    env = detect()
    if env is not None:
        if resume is not None:
            raise UserError(
                f"--resume under {env.launcher}: start `swarmbench run --resume DIR` without a launcher around it "
                "(it starts the workers the way the interrupted run did)"
            )
        return execute_launched(cfg, env, out, argv)

    check_launcher(cfg)
    # What the workers will resolve too (they see the same launcher): an impossible transport fails here.
    launcher = LAUNCHERS[cfg.launcher]
    transport = resolve_transport(cfg.transport, under_mpi=under_mpi(cfg.launcher), single_host=launcher.single_host)
    with claimed_out_dir(out, resume=resume is not None) as out_dir:
        preflight(cfg)
        return _launch_and_write(cfg, launcher, transport, out_dir, argv, interactive, resume)


class _CheckpointingUI:
    """The launch's UI, and DIR/checkpoint.json updated at every cell rank 0 reports done (after a barrier: every
    rank's records of that cell are written by then)."""

    def __init__(self, ui, checkpoint: CellCheckpoint) -> None:
        self.ui, self.checkpoint = ui, checkpoint

    def event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "cell_done" and not event.get("resumed"):
            self.checkpoint.cell_done(event["algorithm"], event["round"])
        elif event.get("type") == "checkpoint":  # every node's state of this epoch is saved
            self.checkpoint.epoch_done(event["algorithm"], event["round"], event["epoch"])
            return
        self.ui.event(event)

    def worker_line(self, rank: int, line: str) -> None:
        self.ui.worker_line(rank, line)


def _rank_file(row: dict[str, Any]) -> str:
    """The staging file of a record row: its rank's (rank 0 writes the rows of no rank)."""
    return f"rank{row.get('rank') or 0}.jsonl"


def _launch_and_write(
    cfg: RunConfig, launcher, transport: str, out_dir: Path, argv: list[str], interactive, resume: Resume | None
) -> int:
    run_id = out_dir.name
    meta = build_meta(cfg, run_id=run_id, argv=argv, engine="processes", backend="gloo", transport=transport)
    meta["launch"] = {"mode": "spawned"}
    done: frozenset[tuple[str, int]] = frozenset()
    partial = None
    if resume is not None:
        keep_records(resume, _rank_file, partial_rows(resume, cfg.nodes))
        meta.update(resume.meta_facts())
        done, partial = resume.done, resume.partial
    checkpoint = CellCheckpoint(out_dir, done, partial)
    # From here on a signal stops the run cleanly: the results so far are written with status interrupted.
    with stop_signals():
        try:
            atomic_write_json(out_dir / "meta.json", meta)
        except OSError as exc:
            raise unwritable(out_dir, exc) from exc
        with RunUI(cfg.algorithms, interactive) as ui:
            try:
                checkpointing = _CheckpointingUI(ui, checkpoint)
                outcome = launch(launcher, cfg, out_dir, run_id, checkpointing, transport, done, partial)
            except Interrupted as exc:  # between two steps of the launch: nothing is left running
                outcome = Outcome(interrupted=exc.name)
        # A Ctrl-C from here on lets the results be finished first (a second one still exits at once).
        with deferred():
            failed_rank, error = outcome.root_cause() if outcome.failed else (None, "")
            who = "the launcher" if failed_rank == -1 else f"rank {failed_rank}"
            failure = (who, error) if outcome.failed else None
            statuses, reasons = statuses_for(cfg, outcome.started, outcome.done, failure, outcome.interrupted)
            meta["hosts"] = outcome.launch.pop("hosts", None)
            meta["transport"] = outcome.launch.pop("transport", transport)
            meta["backend"] = outcome.launch.pop("backend", meta["backend"])
            meta["devices"] = outcome.launch.pop("devices", None)
            meta["launch"].update(outcome.launch)
            status = run_status(outcome.failed, outcome.interrupted)
            summary = write_results(out_dir, cfg, meta, statuses, reasons, status)
            checkpoint.finish(status)
    ui.console.print(f"results: {out_dir}")
    print_tables(summary, ui.console)
    if outcome.interrupted:
        for line in interrupted_lines(out_dir, outcome.interrupted):
            ui.console.print(line, markup=False, highlight=False, soft_wrap=True)
        raise Interrupted(getattr(signal, outcome.interrupted))
    if outcome.failed:
        from rich.markup import escape

        ui.console.print(f"[bold red]failed:[/] {escape(who)}: {escape(error)}", highlight=False)
        return 1
    return 0


# ---- started by a launcher on every rank ------------------------------------------------------------------------


class RankZeroResults:
    """Rank 0's side of a launched run: progress seen, and the results written exactly once (the main thread,
    a SIGTERM from the launcher or a failing helper thread may each be first)."""

    def __init__(self, cfg: RunConfig, out_dir: Path, meta: dict[str, Any]) -> None:
        self.cfg, self.out_dir, self.meta = cfg, out_dir, meta
        self.started: list[str] = []
        self.done: list[str] = []
        self._lock = threading.Lock()
        self._finished = False

    def event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "cell_start":
            self.started.append(event["algorithm"])
        elif event.get("type") == "cell_done":
            self.done.append(event["algorithm"])

    def finish(self, failure: tuple[str, str] | None) -> Any:
        """Write the results (status failed when `failure` is (who, error)); None if already written."""

        with self._lock:
            if self._finished:
                return None
            self._finished = True
            statuses, reasons = statuses_for(self.cfg, self.started, self.done, failure)
            if failure:
                # First the status alone (fast): the launcher may SIGKILL us before the tables are written.
                quick = {**self.meta, "status": "failed", "ended_at": now_iso()}
                quick["algorithms"] = {n: {"status": statuses[n], "reason": reasons[n]} for n in self.cfg.algorithms}
                atomic_write_json(self.out_dir / "meta.json", quick)
            return finalize(self.out_dir, self.cfg, self.meta, statuses, reasons, run_status(failure is not None, None))


def execute_launched(cfg: RunConfig, env, out: str | None, argv: list[str]) -> int:
    """One rank of `mpirun -np N swarmbench run ...` (or torchrun, srun, horovodrun). Rank 0 holds the results
    folder's lock until it ends."""
    with contextlib.ExitStack() as claim:
        return _execute_launched(cfg, env, out, argv, claim)


def _execute_launched(cfg: RunConfig, env, out: str | None, argv: list[str], claim: contextlib.ExitStack) -> int:
    import torch.distributed as dist

    worker.check_world(cfg, env)
    if cfg.launcher not in ("local", env.launcher):
        raise UserError(
            f"this run was started by {env.launcher}, which already started the workers: drop --launcher {cfg.launcher}"
        )
    if cfg.checkpoint_every:
        raise UserError(
            f"--checkpoint-every: a run that {env.launcher} started on every rank cannot be resumed; let swarmbench "
            "start the workers (swarmbench run --launcher NAME ...) or drop --checkpoint-every"
        )
    cfg = dataclasses.replace(cfg, launcher=env.launcher)
    rank0 = env.rank == 0
    preflight(cfg)  # every rank checks the same things: a bad input fails everywhere alike

    resolve_transport(cfg.transport, under_mpi=under_mpi(env.launcher), single_host=True)  # only for its UserError
    decision: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    if rank0:
        try:
            decision["out_dir"] = str(claim.enter_context(claimed_out_dir(out)))
        except UserError as exc:
            decision["error"] = str(exc)
        else:
            # Before the rendezvous, which may initialize MPI: build_meta runs git in a child process.
            meta = build_meta(
                cfg,
                run_id=Path(decision["out_dir"]).name,
                argv=argv,
                engine="processes",
                backend="gloo",
                transport="p2p",
            )
    worker.set_event_sink(_print_error)
    session = worker.join(cfg, env)
    shared = [decision]
    dist.broadcast_object_list(shared, src=0)  # rank 0's verdict and folder name, to every rank
    decision = shared[0]
    if "error" in decision:
        session.close()
        raise UserError(decision["error"])
    out_dir = Path(decision["out_dir"])
    transport = worker.session_transport(cfg, session)
    if rank0:
        meta["transport"] = transport
        meta["hosts"] = session.hosts
        meta["backend"], meta["devices"] = session.backend, session.devices
        facts = {k: v for k, v in session.launch_facts().items() if k not in ("hosts", "backend", "devices")}
        meta["launch"] = {"mode": "external", **facts}
        atomic_write_json(out_dir / "meta.json", meta)
    dist.barrier()
    seen: list[Any] = [None] * session.world
    dist.all_gather_object(seen, (out_dir / "meta.json").is_file())
    if not all(seen):
        blind = sorted({session.hosts[r] for r, ok in enumerate(seen) if not ok})
        if rank0:
            (out_dir / "meta.json").unlink()  # the folder itself goes with the claim if this run created it
        session.close()
        raise UserError(
            f"results folder '{out_dir}' is not visible on {', '.join(blind)}: "
            "put --out on a filesystem every host shares"
        )
    my_host = session.hosts[session.rank]
    threads = worker.threads_per_rank(session.hosts.count(my_host))
    if rank0:
        return _rank_zero(cfg, session, out_dir, meta, threads, transport)
    try:
        worker.train_all(cfg, session, out_dir, out_dir.name, threads, lambda event: None, transport)
    except BaseException as exc:
        return _rank_failed(session.rank, exc)
    session.close()
    return 0


def _rank_zero(cfg: RunConfig, session, out_dir: Path, meta: dict[str, Any], threads: int, transport: str) -> int:
    from rich.console import Console

    results = RankZeroResults(cfg, out_dir, meta)
    ui = RunUI(cfg.algorithms, interactive=False)  # plain lines: launchers forward output line by line
    # mpirun gives its ranks a pseudo-terminal even when its own output goes to a file: no colour codes.
    console = Console(highlight=False, width=180, force_terminal=False)

    def send(event: dict[str, Any]) -> None:
        results.event(event)
        ui.event(event)

    def on_fatal() -> None:
        results.finish(("rank 0", "a helper thread failed (see the error above)"))

    worker.add_fatal_hook(on_fatal)
    _finish_on_sigterm(results)
    try:
        worker.train_all(cfg, session, out_dir, out_dir.name, threads, send, transport)
    except BaseException as exc:
        traceback.print_exc()
        error = worker.last_line(exc)
        print(f"error: rank 0: {error}", file=sys.stderr, flush=True)
        if any(hint in error for hint in PEER_LOSS_HINTS):
            error = f"lost a peer that failed first (its error is in the launcher's output): {error}"
        try:
            results.finish(("rank 0", error))
            print(f"results (failed): {out_dir}", flush=True)
        finally:
            worker.end_failed_rank(1)  # under MPI: Abort, so no rank waits for timeout_s
        return 1
    session.close()
    summary = results.finish(None)
    console.print(f"results: {out_dir}")
    print_tables(summary, console)
    return 0


def _rank_failed(rank: int, exc: BaseException) -> int:

    traceback.print_exc()
    print(f"error: rank {rank}: {worker.last_line(exc)}", file=sys.stderr, flush=True)
    return worker.end_failed_rank(1)


def _print_error(event: dict[str, Any]) -> None:
    """Events of ranks that have no parent to report to: only errors are shown (on stderr)."""
    if event.get("type") == "error":
        print(f"error: rank {event.get('rank')}: {event.get('error')}", file=sys.stderr, flush=True)


def _finish_on_sigterm(results: RankZeroResults) -> None:
    """A launcher stops the survivors of a failed rank with SIGTERM (then SIGKILL about a second later under
    Open MPI). Python runs signal handlers only between bytecodes, and the main thread may sit in a blocking
    collective, so a thread woken through the signal wakeup fd writes the failed status and ends the process."""
    if threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the thread below does the work
    signal.set_wakeup_fd(write_fd)

    def wait() -> None:
        while True:
            data = os.read(read_fd, 64)
            if signal.SIGTERM in data:
                break
        results.finish(("rank 0", "stopped by the launcher (SIGTERM): another rank failed, see its error above"))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(143)

    threading.Thread(target=wait, name="sigterm", daemon=True).start()
