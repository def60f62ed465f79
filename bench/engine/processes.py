"""The local launcher: N worker processes on this host that meet through a FileStore, gloo on loopback.

Watchdog: if any worker exits with an error, the others are terminated (SIGTERM, then SIGKILL after a
grace period) so that nobody hangs in a collective; the launcher reports the failed rank and its error.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

KILL_GRACE_S = 3.0  # SIGTERM -> SIGKILL; keeps "others stopped within 10 s" with room to spare


class LaunchUI(Protocol):
    def event(self, event: dict[str, Any]) -> None: ...
    def worker_line(self, rank: int, line: str) -> None: ...


PEER_LOSS_HINTS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "timed out")


@dataclass
class Outcome:
    """What the launch saw: per-algorithm progress from rank 0, and every failure, in order of arrival."""

    started: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)  # rank -> its last error line (-1: the launcher)
    signalled: list[int] = field(default_factory=list)  # ranks killed by a signal
    last_lines: dict[int, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    def root_cause(self) -> tuple[int, str]:
        """The failure to report: a rank killed by a signal, else the first error that is not merely a
        peer noticing that another rank went away, else the first error."""
        for rank in self.signalled:
            return rank, self.errors[rank]
        for rank, msg in self.errors.items():
            if not any(h in msg for h in PEER_LOSS_HINTS):
                return rank, msg
        return next(iter(self.errors.items()))


def worker_env(nodes: int) -> tuple[dict[str, str], int]:
    env = dict(os.environ)
    # Loopback only: the local launcher never listens on an external interface.
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    threads = max(1, (os.cpu_count() or 1) // nodes)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PYTHONUNBUFFERED"] = "1"
    return env, threads


def launch_local(cfg, out_dir: Path, run_id: str, ui: LaunchUI) -> Outcome:
    outcome = Outcome()
    with tempfile.TemporaryDirectory(prefix="swarmbench-") as tmp:
        env, threads = worker_env(cfg.nodes)
        spec = {
            "config": cfg.to_dict(),
            "out_dir": str(out_dir),
            "store": str(Path(tmp) / "store"),
            "run_id": run_id,
            "threads": threads,
        }
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        read_fd, write_fd = os.pipe()
        env["SWARMBENCH_EVENT_FD"] = str(write_fd)
        procs: list[subprocess.Popen] = []
        try:
            for rank in range(cfg.nodes):
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "bench.engine.worker", str(spec_path), str(rank)],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                        pass_fds=(write_fd,),
                        start_new_session=True,
                    )
                )
        except BaseException:
            _stop(procs)
            raise
        finally:
            os.close(write_fd)
        readers = [threading.Thread(target=_pump, args=(p, r, ui, outcome), daemon=True) for r, p in enumerate(procs)]
        for t in readers:
            t.start()
        try:
            _watch(procs, read_fd, ui, outcome)
        except KeyboardInterrupt:
            outcome.errors.setdefault(-1, "interrupted by the user")
            _stop(procs)
        finally:
            for t in readers:
                t.join(timeout=5)
            os.close(read_fd)
    return outcome


def _pump(proc: subprocess.Popen, rank: int, ui: LaunchUI, outcome: Outcome) -> None:
    """Forward a worker's output, prefixed by its rank; remember its last line for the failure report."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line:
            outcome.last_lines[rank] = line
            ui.worker_line(rank, line)


def _watch(procs: list[subprocess.Popen], read_fd: int, ui: LaunchUI, outcome: Outcome) -> None:
    buf = b""
    stopped = False
    while True:
        ready, _, _ = select.select([read_fd], [], [], 0.1)
        if ready:
            chunk = os.read(read_fd, 65536)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                _handle(json.loads(line), ui, outcome)
        codes = [p.poll() for p in procs]
        bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if bad and not stopped:
            # Only deaths seen before we stop the others are causes; the rest are our own SIGTERMs.
            for rank in bad:
                if codes[rank] < 0:
                    outcome.signalled.append(rank)
                    outcome.errors[rank] = f"killed by signal {signal.Signals(-codes[rank]).name}"
                outcome.errors.setdefault(rank, outcome.last_lines.get(rank, f"exited with status {codes[rank]}"))
            _stop(procs)
            stopped = True
        if all(c is not None for c in (p.poll() for p in procs)):
            # Drain what is left of the event pipe (all writers are gone now).
            while select.select([read_fd], [], [], 0)[0]:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                buf += chunk
            for line in buf.split(b"\n"):
                if line.strip():
                    _handle(json.loads(line), ui, outcome)
            return


def _handle(event: dict[str, Any], ui: LaunchUI, outcome: Outcome) -> None:
    kind = event.get("type")
    if kind == "cell_start":
        outcome.started.append(event["algorithm"])
    elif kind == "cell_done":
        outcome.done.append(event["algorithm"])
    elif kind == "error":
        outcome.errors.setdefault(int(event["rank"]), event["error"])
    ui.event(event)


def _stop(procs: list[subprocess.Popen]) -> None:
    """Terminate every live worker (its whole process group), escalating to SIGKILL after a grace period."""
    for p in procs:
        if p.poll() is None:
            _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(p, signal.SIGKILL)
            p.wait()


def _signal(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        return  # already gone: nothing to stop
