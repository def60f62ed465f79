"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM become `Interrupted` in the main thread, so the run stops its
workers and writes what it has; a second signal ends the process at once (exit status 128 + signal number) after the
registered `force` hooks killed what must not outlive it (the launched processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the run (a KeyboardInterrupt, so every `except Exception` lets it through)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[int] = []
_force: list[Callable[[], None]] = []
_depth = 0
_deferring = 0  # > 0 inside `deferred()`: the first signal waits for the block to end


def _handler(signum: int, frame: object) -> None:
    if _received:
        # The second signal: the user wants out now. Kill what must not be left behind, then exit without cleanup.
        for hook in reversed(_force):
            with contextlib.suppress(Exception):  # exiting either way: one failing hook must not spare the rest
                hook()
        os.write(2, f"\n{signal.Signals(signum).name} again: exiting now\n".encode())
        os._exit(128 + signum)
    _received.append(signum)
    if not _deferring:
        raise Interrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside `stop_signals`: a first signal during this block (writing the results) is raised when it ends, so the
    files are finished first; a second one still exits at once."""
    global _deferring
    before = len(_received)
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if len(_received) > before and not _deferring:
        raise Interrupted(_received[-1])


@contextlib.contextmanager
def stop_signals(force: Callable[[], None] | None = None) -> Iterator[None]:
    """While inside: the first SIGINT/SIGTERM raises `Interrupted`, the next one runs the `force` hooks of every
    enclosing block and exits. Nestable; outside the main thread (where Python cannot set handlers) it does nothing."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in STOP_SIGNALS}
    if force is not None:
        _force.append(force)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if force is not None:
            _force.remove(force)
        for s, handler in previous.items():
            signal.signal(s, handler)
        if _depth == 0:
            _received.clear()
