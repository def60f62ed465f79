"""Checks of a run configuration that need the engines: the launcher, the simulator's limits, Horovod.

`bench.training.config` validates each field on its own (no engine imported); `check` adds what only the engines know.
`resolve` is the one entry point for a command: defaults < config file < options < --set, then every check, before
anything is written.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

from bench.base.console import closest
from bench.base.errors import UserError
from bench.engine.processes.env import detect
from bench.engine.processes.launchers import LAUNCHERS
from bench.engine.sim.cluster import check_config as check_sim
from bench.engine.sim.costonly import check as check_cost_only
from bench.training import config
from bench.training.config import RunConfig
from bench.training.registry import ALGORITHMS


def check(cfg: RunConfig) -> None:
    """Raise a UserError naming the first problem the engines see with `cfg`."""
    if cfg.launcher not in LAUNCHERS:
        raise UserError(
            f"unknown launcher '{cfg.launcher}'{closest(cfg.launcher, LAUNCHERS)}: choose from {', '.join(LAUNCHERS)}"
        )
    if cfg.engine == "sim":
        check_sim(cfg)
        check_cost_only(cfg)
    elif cfg.on_failure == "continue":
        check_continue(cfg)
    if cfg.allreduce_impl == "horovod":
        check_horovod(cfg)


def check_continue(cfg: RunConfig) -> None:
    """--on-failure continue on real processes: the local launcher (it sees a rank die and tells the survivors), the
    p2p transport's pairwise average (which notices a dead peer), and only algorithms that survive a failed node."""
    if cfg.launcher != "local" or detect() is not None:
        raise UserError(
            "--on-failure continue on real processes needs --launcher local (it tells the survivors which rank "
            "died): use --launcher local, --engine sim, or --on-failure stop"
        )
    if cfg.transport == "rma":
        raise UserError("--on-failure continue on real processes needs --transport p2p: use --transport p2p or auto")
    survivors = [name for name, cls in ALGORITHMS.items() if cls.survives_failures]
    others = [name for name in cfg.algorithms if name not in survivors]
    if others:
        raise UserError(
            f"--on-failure continue on real processes runs only algorithms that survive a failed node "
            f"({', '.join(survivors)}), not {', '.join(others)}: drop them, or use --engine sim"
        )
    if "swarm" in cfg.algorithms and cfg.options_for("swarm").get("swarm_mode", cfg.swarm_mode) != "blocking":
        raise UserError(
            "--on-failure continue on real processes runs SwarmSGD's blocking pairwise average (it notices a dead "
            "partner): add --swarm-mode blocking"
        )


def check_horovod(cfg: RunConfig) -> None:
    """--allreduce-impl horovod needs Horovod built for this torch and a launcher that Horovod can join."""
    if importlib.util.find_spec("horovod") is None:
        raise UserError("--allreduce-impl horovod needs Horovod: build it with `make horovod` (or use torch)")
    env = detect()
    launcher = env.launcher if env is not None else cfg.launcher
    if launcher not in ("horovodrun", "mpirun"):
        raise UserError(
            f"--allreduce-impl horovod needs workers that Horovod can join: use --launcher horovodrun or mpirun "
            f"(not {launcher})"
        )


def resolve(cli_values: dict[str, Any], config_file: str | None = None, sets: Iterable[str] = ()) -> RunConfig:
    """`bench.training.config.resolve` (fields) followed by `check` (engines)."""
    cfg = config.resolve(cli_values, config_file, sets)
    check(cfg)
    return cfg
