"""Start the workers and watch them: the local launcher's N processes, or one launcher command (mpirun, ...).

Every child's stdout+stderr is read line by line. Launchers tag their workers' lines with the rank
(`launch.BRACKET_TAG`, `launch.SRUN_TAG`); `StreamParser` strips the tags and reassembles lines that a launcher
forwarded in several chunks. A line holding `worker.EVENT_MARKER` is an event (rank 0's progress, any rank's
error); every other line is shown with its rank. One mechanism for every launcher: no extra file descriptors,
sockets or files, and it works wherever the launcher forwards output.

Interruption: SIGINT (Ctrl-C) or SIGTERM to this process stops every child and everything it started the same way
(SIGTERM, then SIGKILL) and the outcome says which signal; a second signal SIGKILLs them all and exits at once.

Watchdog: if a child exits with an error, or a rank reports an error and its launcher does not end the job by
itself within ERROR_GRACE_S, every child and everything it started is stopped (SIGTERM, then SIGKILL after
KILL_GRACE_S) so that nobody hangs in a collective; the launch reports the failed rank and its error.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.base.signals import Interrupted, stop_signals
from bench.engine.processes.launchers import Launcher, build_argv, require_binary, worker_command
from bench.engine.processes.worker import EVENT_MARKER, KILLED_EXIT, PEER_LOSS_HINTS, threads_per_rank

KILL_GRACE_S = 3.0  # SIGTERM -> SIGKILL; keeps "others stopped within 10 s" with room to spare
ERROR_GRACE_S = 2.0  # a rank reported an error: its launcher has this long to end the job itself


class LaunchUI(Protocol):
    def event(self, event: dict[str, Any]) -> None: ...
    def worker_line(self, rank: int, line: str) -> None: ...


@dataclass
class Outcome:
    """What the launch saw: per-algorithm progress from rank 0, and every failure, in order of arrival."""

    started: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)  # rank -> its last error line (-1: the launcher)
    signalled: list[int] = field(default_factory=list)  # ranks killed by a signal
    last_lines: dict[int, str] = field(default_factory=dict)
    launch: dict[str, Any] = field(default_factory=dict)  # rank 0's launch facts (rendezvous, hosts, env)
    interrupted: str | None = None  # the signal that stopped the launch ("SIGINT", "SIGTERM"), if one did
    lost: list[int] = field(default_factory=list)  # ranks that died and the others went on without (continue)

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    def root_cause(self) -> tuple[int, str]:
        """The failure to report: a rank killed by a signal, else the first error that is not merely a
        peer noticing that another rank went away, else the first error."""
        for rank in self.signalled:
            return rank, self.errors[rank]
        for rank, msg in self.errors.items():
            if rank >= 0 and not any(h in msg for h in PEER_LOSS_HINTS):
                return rank, msg
        for rank, msg in self.errors.items():
            if not any(h in msg for h in PEER_LOSS_HINTS):
                return rank, msg
        return next(iter(self.errors.items()))


class StreamParser:
    """Physical output lines of one child -> (rank, line) pairs; rank None is the launcher's own output.

    With a tag pattern, a physical line is a run of segments each starting with a rank tag; every segment but
    the last is a chunk of that rank's line still in progress (launchers forward output in chunks and tag every
    chunk, so another rank's line can land in the middle of it).
    """

    def __init__(self, tag: re.Pattern | None, default_rank: int | None) -> None:
        self.tag = tag
        self.default_rank = default_rank
        self.partial: dict[int | None, str] = {}

    def feed(self, physical: str) -> list[tuple[int | None, str]]:
        if self.tag is None:
            return [(self.default_rank, physical)]
        matches = list(self.tag.finditer(physical))
        if not matches:
            segments: list[tuple[int | None, str]] = [(self.default_rank, physical)]
        else:
            # Untagged text before the first tag is the launcher's own (a chunk of its line in progress).
            segments = [(self.default_rank, physical[: matches[0].start()])] if matches[0].start() > 0 else []
            for i, m in enumerate(matches):
                end = matches[i + 1].start() if i + 1 < len(matches) else len(physical)
                segments.append((int(m.group(1)), physical[m.end() : end]))
        *chunks, (last_rank, last_text) = segments
        for r, text in chunks:
            self.partial[r] = self.partial.get(r, "") + text
        return [(last_rank, self.partial.pop(last_rank, "") + last_text)]


def split_event(line: str) -> tuple[str, dict[str, Any] | None]:
    """(text before the event marker, the event) or (line, None) when the line holds no well-formed event."""
    at = line.find(EVENT_MARKER)
    if at < 0:
        return line, None
    try:
        event = json.loads(line[at + len(EVENT_MARKER) :])
    except json.JSONDecodeError:
        return line, None
    return line[:at], event if isinstance(event, dict) else None


_MPIRUN_DEATH = re.compile(r"process rank (\d+) with PID \d+ on node \S+ exited on signal (\d+)")
_SRUN_DEATH = re.compile(r"task (\d+): (Killed|Terminated|Segmentation fault|Aborted)")
_TORCHRUN_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_TORCHRUN_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


class LauncherLog:
    """Reads a launcher's own lines for the rank whose death it reports (the rank itself cannot say)."""

    def __init__(self) -> None:
        self.root_cause = False  # inside torchrun's "Root Cause" block
        self.rank: int | None = None

    def feed(self, line: str, outcome: Outcome) -> None:
        m = _MPIRUN_DEATH.search(line)
        if m:
            self._signalled(outcome, int(m.group(1)), int(m.group(2)))
            return
        m = _SRUN_DEATH.search(line)
        if m:
            outcome.signalled.append(int(m.group(1)))
            outcome.errors[int(m.group(1))] = m.group(2).lower()
            return
        if "Root Cause" in line:
            self.root_cause = True
        elif self.root_cause and _TORCHRUN_RANK.match(line):
            self.rank = int(_TORCHRUN_RANK.match(line).group(1))  # type: ignore[union-attr]
        elif self.root_cause and self.rank is not None and _TORCHRUN_EXIT.match(line):
            code = int(_TORCHRUN_EXIT.match(line).group(1))  # type: ignore[union-attr]
            if code < 0:
                self._signalled(outcome, self.rank, -code)
            else:
                outcome.errors.setdefault(self.rank, f"exited with status {code}")
            self.root_cause, self.rank = False, None

    @staticmethod
    def _signalled(outcome: Outcome, rank: int, signum: int) -> None:
        if rank in outcome.signalled:
            return
        outcome.signalled.append(rank)
        outcome.errors[rank] = f"killed by signal {_signal_name(signum)}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def worker_env(nodes: int, *, loopback: bool = True) -> tuple[dict[str, str], int]:
    env = dict(os.environ)
    if loopback:
        # Loopback only: a launch on this host never listens on an external interface.
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    threads = threads_per_rank(nodes)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PYTHONUNBUFFERED"] = "1"
    return env, threads


@dataclass
class Child:
    proc: subprocess.Popen
    rank: int | None  # the local launcher's worker rank; None for a launcher command (ranks come from tags)
    parser: StreamParser


def _spec(
    cfg,
    out_dir: Path,
    run_id: str,
    threads: int,
    store: str | None,
    transport: str,
    scratch: str,
    done=frozenset(),
    partial: dict[str, Any] | None = None,
) -> dict:
    spec: dict[str, Any] = {
        "config": cfg.to_dict(),
        "done": sorted(list(cell) for cell in done),  # cells an interrupted run finished: not run again
        "partial": partial,  # the cell and epoch a resumed run starts from (`--checkpoint-every`), or None
        "out_dir": str(out_dir),
        "run_id": run_id,
        "threads": threads,
        "transport": transport,
        "scratch": scratch,  # removed with everything in it once the launch is over, failed or not
    }
    if store is not None:
        spec["store"] = store
        if cfg.on_failure == "continue":  # the ranks that die are marked here, the survivors go on (local launcher)
            spec["dead_dir"] = str(Path(scratch) / "dead")
    return spec


def launch(
    launcher: Launcher,
    cfg,
    out_dir: Path,
    run_id: str,
    ui: LaunchUI,
    transport: str = "p2p",
    done=frozenset(),
    partial: dict[str, Any] | None = None,
) -> Outcome:
    """Start cfg.nodes workers with `launcher` and watch them to the end: the `local` launcher spawns one process
    per rank itself, the others run one launcher command. The cells in `done` (algorithm, round) are not run
    (`swarmbench run --resume`), and `partial` ({algorithm, round, epoch}) is the epoch checkpoint to start from."""
    if launcher.binary is None:
        return launch_local(cfg, out_dir, run_id, ui, transport, done, partial)
    return launch_with(launcher, cfg, out_dir, run_id, ui, transport, done, partial)


def launch_local(
    cfg, out_dir: Path, run_id: str, ui: LaunchUI, transport: str = "p2p", done=frozenset(), partial=None
) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="swarmbench-") as tmp:
        env, threads = worker_env(cfg.nodes)
        spec_path = Path(tmp) / "spec.json"
        store = str(Path(tmp) / "store")
        spec_path.write_text(json.dumps(_spec(cfg, out_dir, run_id, threads, store, transport, tmp, done, partial)))
        children: list[Child] = []
        try:
            for rank in range(cfg.nodes):
                argv = [sys.executable, "-m", "bench.engine.processes.worker", str(spec_path), str(rank)]
                children.append(Child(_popen(argv, env), rank, StreamParser(None, rank)))
        except KeyboardInterrupt as exc:  # stopped while starting them: stop the ones started, report it
            _stop(children)
            return Outcome(interrupted=exc.name if isinstance(exc, Interrupted) else "SIGINT")
        except BaseException:
            _stop(children)
            raise
        dead_dir = Path(tmp) / "dead" if cfg.on_failure == "continue" else None
        return _supervise(children, ui, "local", dead_dir)


def launch_with(
    launcher: Launcher,
    cfg,
    out_dir: Path,
    run_id: str,
    ui: LaunchUI,
    transport: str = "p2p",
    done=frozenset(),
    partial=None,
) -> Outcome:
    """Start the workers with one launcher command (mpirun, torchrun, ...) and watch it."""
    binary = require_binary(launcher)
    with tempfile.TemporaryDirectory(prefix="swarmbench-") as tmp:
        # srun may place ranks on other hosts: there gloo must not be pinned to loopback.
        env, threads = worker_env(cfg.nodes, loopback=launcher.name != "srun")
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(_spec(cfg, out_dir, run_id, threads, None, transport, tmp, done, partial)))
        argv = build_argv(launcher, binary, cfg.nodes, worker_command(spec_path), Path(tmp))
        child = Child(_popen(argv, env), None, StreamParser(launcher.tag, None))
        outcome = _supervise([child], ui, launcher.name)
        outcome.launch["command"] = argv
        return outcome


def _popen(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # its own process group: stopping it never signals us
    )


def _supervise(children: list[Child], ui: LaunchUI, name: str, dead_dir: Path | None = None) -> Outcome:
    outcome = Outcome()
    items: queue.Queue = queue.Queue()
    pumps = [threading.Thread(target=_pump, args=(c, items), daemon=True) for c in children]
    for t in pumps:
        t.start()
    # The children live in sessions of their own (so a launcher's teardown never signals us, and a terminal's
    # Ctrl-C reaches only this process): a SIGINT or SIGTERM to this process must stop them explicitly, or they
    # would run on as orphans; a second one kills them outright (`_kill_now`) before this process exits.
    try:
        with stop_signals(force=lambda: _kill_now(children)):
            try:
                _watch(children, pumps, items, ui, outcome, name, dead_dir)
            except KeyboardInterrupt as exc:
                outcome.interrupted = exc.name if isinstance(exc, Interrupted) else "SIGINT"
                _stop(children)
    finally:
        for t in pumps:
            t.join(timeout=5)
        _drain(items, ui, outcome, name, LauncherLog())
    return outcome


def _pump(child: Child, items: queue.Queue) -> None:
    """Turn a child's output into ("line", rank, text) and ("event", event) items, in order."""
    assert child.proc.stdout is not None
    for raw in child.proc.stdout:
        physical = raw.decode(errors="replace").rstrip("\r\n")
        for rank, line in child.parser.feed(physical):
            text, event = split_event(line)
            if text.strip():
                items.put(("line", rank, text.rstrip()))
            if event is not None:
                items.put(("event", event))


def _drain(items: queue.Queue, ui: LaunchUI, outcome: Outcome, name: str, log: LauncherLog) -> None:
    while True:
        try:
            item = items.get_nowait()
        except queue.Empty:
            return
        _dispatch(item, ui, outcome, name, log)


def _dispatch(item: tuple, ui: LaunchUI, outcome: Outcome, name: str, log: LauncherLog) -> None:
    if item[0] == "event":
        _handle(item[1], ui, outcome)
        return
    _, rank, line = item
    if rank is None:
        log.feed(line, outcome)
        outcome.last_lines[-1] = line
        _launcher_line(ui, name, line)
    else:
        outcome.last_lines[rank] = line
        ui.worker_line(rank, line)


def _launcher_line(ui: LaunchUI, name: str, line: str) -> None:
    """A launcher's own message (not a worker's), shown as `[mpirun] ...`."""
    show = getattr(ui, "launcher_line", None)
    if callable(show):
        show(name, line)
        return
    console = getattr(ui, "console", None)
    if console is not None:
        console.print(f"[{name}] {line}", markup=False, highlight=False, soft_wrap=True)
    else:
        print(f"[{name}] {line}", flush=True)


def _watch(
    children: list[Child],
    pumps: list[threading.Thread],
    items: queue.Queue,
    ui: LaunchUI,
    outcome: Outcome,
    name: str,
    dead_dir: Path | None = None,
) -> None:
    """Watch the children to the end. `dead_dir` (`--on-failure continue`): a rank that ends as a crash (the exit
    status of `--fail`, or a signal) is marked dead there and the others go on without it."""
    log = LauncherLog()
    stopped = False
    error_deadline: float | None = None
    while True:
        try:
            item = items.get(timeout=0.1)
        except queue.Empty:
            item = None  # nothing this tick: go on and check on the children
        if item is not None:
            _dispatch(item, ui, outcome, name, log)
            _drain(items, ui, outcome, name, log)
        codes = [c.proc.poll() for c in children]
        if not stopped:
            bad = [(c, code) for c, code in zip(children, codes, strict=True) if code not in (None, 0)]
            if dead_dir is not None:
                bad = [(c, code) for c, code in bad if not _mark_dead(c, code, dead_dir, outcome)]
            if bad:
                # Only deaths seen before we stop the others are causes; the rest are our own signals.
                for c, _ in bad:
                    if c.rank is None:
                        pumps[children.index(c)].join(timeout=1.0)  # its last lines name the rank that died
                _drain(items, ui, outcome, name, log)
                for c, code in bad:
                    _record_exit(c, code, outcome, name)
                _stop(children)
                stopped = True
            elif outcome.errors and error_deadline is None:
                error_deadline = time.monotonic() + ERROR_GRACE_S
            elif error_deadline is not None and time.monotonic() > error_deadline:
                _stop(children)
                stopped = True
        if all(c.proc.poll() is not None for c in children):
            for t in pumps:
                t.join(timeout=5)
            _drain(items, ui, outcome, name, log)
            if not stopped:
                for c in children:
                    if c.proc.returncode != 0 and c.rank not in outcome.lost:
                        _record_exit(c, c.proc.returncode, outcome, name)
            return


def _mark_dead(child: Child, code: int, dead_dir: Path, outcome: Outcome) -> bool:
    """Under --on-failure continue: a rank that ended as a crash (KILLED_EXIT or a signal) is marked dead for the
    survivors (and counted lost, not failed); True when it was."""
    if child.rank is None or not (code == KILLED_EXIT or code < 0):
        return False
    if child.rank not in outcome.lost:
        dead_dir.mkdir(parents=True, exist_ok=True)
        (dead_dir / str(child.rank)).touch()
        outcome.lost.append(child.rank)
    return True


def _record_exit(child: Child, code: int, outcome: Outcome, name: str) -> None:
    if child.rank is not None:
        if code < 0:
            outcome.signalled.append(child.rank)
            outcome.errors[child.rank] = f"killed by signal {_signal_name(-code)}"
        outcome.errors.setdefault(child.rank, outcome.last_lines.get(child.rank, f"exited with status {code}"))
    elif not outcome.errors:
        # The launcher failed and no rank said why: report the launcher's own last words.
        how = f"killed by signal {_signal_name(-code)}" if code < 0 else f"exited with status {code}"
        last = outcome.last_lines.get(-1, "")
        outcome.errors[-1] = f"{name} {how}" + (f": {last}" if last else "")


def _handle(event: dict[str, Any], ui: LaunchUI, outcome: Outcome) -> None:
    kind = event.get("type")
    if kind == "launch":
        outcome.launch.update({k: v for k, v in event.items() if k != "type"})
        return
    if kind == "cell_start":
        outcome.started.append(event["algorithm"])
    elif kind == "cell_done":
        outcome.done.append(event["algorithm"])
    elif kind == "error":
        outcome.errors.setdefault(int(event["rank"]), event["error"])
    ui.event(event)


# ---- stopping a launch -----------------------------------------------------------------------------------------


def _stop(children: list[Child]) -> None:
    """Terminate every live child and everything it started, escalating to SIGKILL after a grace period.

    mpirun and torchrun put their workers in process groups of their own, so signalling a child's group is not
    enough: the descendants are listed before signalling (once their launcher is gone they are orphans that
    nobody would stop) and killed by pid if still alive after the grace period.
    """
    tree: set[int] = set()
    for c in children:
        tree |= _descendants(c.proc.pid)
    for c in children:
        if c.proc.poll() is None:
            _signal_group(c.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    for c in children:
        try:
            c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            tree |= _descendants(c.proc.pid)
            _signal_group(c.proc.pid, signal.SIGKILL)
            c.proc.wait()
    while tree and time.monotonic() < deadline:
        tree = {pid for pid in tree if _alive(pid)}
        time.sleep(0.05)
    for pid in tree:
        if _alive(pid):
            _signal_pid(pid, signal.SIGKILL)


def _kill_now(children: list[Child]) -> None:
    """SIGKILL every child's process group and every process below the children, without waiting."""
    tree: set[int] = set()
    for c in children:
        tree |= _descendants(c.proc.pid)
    for c in children:
        _signal_group(c.proc.pid, signal.SIGKILL)
    for pid in tree:
        _signal_pid(pid, signal.SIGKILL)


def _descendants(pid: int) -> set[int]:
    """All processes below `pid` (Linux /proc); empty where /proc is missing."""
    proc = Path("/proc")
    if not proc.is_dir():
        return set()
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for kid in children.get(todo.pop(), []):
            if kid not in out:
                out.add(kid)
                todo.append(kid)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead; its parent (or init) reaps it


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return  # already gone: nothing to stop


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return  # already gone: nothing to stop
