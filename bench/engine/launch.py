"""The launcher registry: name -> function that runs the workers of one invocation and reports the outcome."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Launcher:
    name: str
    description: str  # one line for `swarmbench list`
    launch: Callable  # (cfg, out_dir, run_id, ui) -> Outcome


def _local(cfg, out_dir, run_id, ui):
    from bench.engine.processes import launch_local

    return launch_local(cfg, out_dir, run_id, ui)


LAUNCHERS: dict[str, Launcher] = {
    "local": Launcher("local", "N worker processes on this host, gloo over loopback, FileStore rendezvous", _local),
}
