"""The launcher registry: name -> how to start the workers of one invocation, and the command lines it builds.

`local` spawns the N workers itself. The others start ONE child, the launcher's own command (`mpirun`,
`torchrun`, `horovodrun`, `srun`), which starts the N workers; the workers learn their rank and world size from
the launcher's environment variables (`bench.engine.processes.env`). Either way the parent watches the children the same
way (`bench.engine.processes.spawn`). The argv builders are pure functions so their output is unit-tested.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.base.errors import UserError
from bench.base.host import usable_cores
from bench.engine.processes.env import explicit_master

# Rank tags that launchers put in front of their workers' output lines. Open MPI's --tag-output writes
# "[JOBID,RANK]<stdout>:" and horovodrun "[RANK]<stdout>:"; torchrun is told to write "[RANK]<stdout>:" too.
# Open MPI and torchrun forward output in chunks and repeat the tag at every chunk, also in mid-line, so the
# parser (processes.StreamParser) reassembles lines per rank.
BRACKET_TAG = re.compile(r"\[(?:\d+,)?(\d+)\]<(?:stdout|stderr|stddiag)>:")
SRUN_TAG = re.compile(r"^\s*(\d+): ")  # srun --label: "RANK: " at the start of whole lines only


@dataclass(frozen=True)
class Launcher:
    name: str
    description: str  # one line for `swarmbench list`
    binary: str | None = None  # the executable it needs; None for `local`
    install: str = ""  # how to get the executable, for the error message when it is missing
    tag: re.Pattern | None = field(default=None)  # rank tag on its output lines
    single_host: bool = True  # all ranks on this host (srun may spread them over the allocation)


def find_binary(name: str) -> str | None:
    """`name` on PATH, else next to this Python (a virtual environment's bin/ need not be on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    sibling = Path(sys.executable).parent / name
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else None


def require_binary(launcher: Launcher) -> str:
    """The launcher's executable, or a UserError naming it and how to install it."""
    assert launcher.binary is not None
    path = find_binary(launcher.binary)
    if path is None:
        raise UserError(f"--launcher {launcher.name} needs `{launcher.binary}`, not found on PATH: {launcher.install}")
    return path


def check_launcher(cfg) -> None:
    """Everything the chosen launcher needs on this host, checked before anything is written."""
    import importlib.util

    launcher = LAUNCHERS[cfg.launcher]
    if launcher.binary is None:
        return
    require_binary(launcher)
    if launcher.name == "mpirun" and importlib.util.find_spec("mpi4py") is None:
        addr, port = explicit_master(cfg)
        if not (addr and port):
            raise UserError(
                "--launcher mpirun needs mpi4py for the ranks to find each other: pip install mpi4py "
                "(or `make setup`), or pass --master-addr and --master-port"
            )
    if launcher.name == "horovodrun" and importlib.util.find_spec("horovod") is None:
        raise UserError(f"--launcher horovodrun needs Horovod in this Python: {launcher.install}")


def worker_command(spec_path: str | Path) -> list[str]:
    """The worker entry point every launcher starts (rank and world size come from the launcher's environment)."""
    return [sys.executable, "-m", "bench.engine.processes.worker", str(spec_path)]


def mpirun_argv(binary: str, nodes: int, worker: list[str], *, root: bool, cores: int) -> list[str]:
    argv = [binary]
    if root:
        argv.append("--allow-run-as-root")  # Open MPI refuses to run as root without it
    if nodes > cores:
        argv.append("--oversubscribe")  # Open MPI refuses more ranks than slots (cores) without it
    # --bind-to none: threads are split over cores by the workers themselves, as with the local launcher.
    return [*argv, "-np", str(nodes), "--bind-to", "none", "--tag-output", *worker]


def torchrun_argv(binary: str, nodes: int, worker: list[str], *, log_dir: str | Path) -> list[str]:
    # torchrun runs `python -m MODULE ARGS` itself: pass the module and its arguments, not the interpreter.
    assert worker[1] == "-m", worker
    return [
        binary,
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nodes),
        "--max-restarts",
        "0",
        "--monitor-interval",
        "0.2",  # notice a dead worker fast
        "--shutdown-timeout",
        "3",  # then SIGTERM the others, SIGKILL after 3 s
        "--log-dir",
        str(log_dir),
        "--tee",
        "3",  # stdout+stderr of every worker to the console, each line tagged with its rank
        "--log-line-prefix-template",
        "[${rank}]<stdout>:",
        "-m",
        *worker[2:],
    ]


def horovodrun_argv(binary: str, nodes: int, worker: list[str]) -> list[str]:
    # --gloo: Horovod's own controller, no mpirun needed; the workers see HOROVOD_RANK/SIZE.
    return [binary, "--gloo", "-np", str(nodes), "-H", f"localhost:{nodes}", *worker]


def srun_argv(binary: str, nodes: int, worker: list[str]) -> list[str]:
    # --kill-on-bad-exit: one failed task ends the step; --label tags each line with the task's rank.
    return [binary, "--ntasks", str(nodes), "--kill-on-bad-exit=1", "--label", "--cpu-bind=none", *worker]


def build_argv(launcher: Launcher, binary: str, nodes: int, worker: list[str], tmp: Path) -> list[str]:
    """The command line that starts `nodes` copies of `worker` under `launcher` on this host."""
    if launcher.name == "mpirun":
        return mpirun_argv(binary, nodes, worker, root=os.geteuid() == 0, cores=usable_cores())
    if launcher.name == "torchrun":
        return torchrun_argv(binary, nodes, worker, log_dir=tmp / "torchrun-logs")
    if launcher.name == "horovodrun":
        return horovodrun_argv(binary, nodes, worker)
    if launcher.name == "srun":
        return srun_argv(binary, nodes, worker)
    raise ValueError(f"no command line for launcher {launcher.name}")


LAUNCHERS: dict[str, Launcher] = {
    "local": Launcher("local", "N worker processes on this host, gloo over loopback, FileStore rendezvous"),
    "mpirun": Launcher(
        "mpirun",
        "Open MPI's mpirun -np N on this host; rendezvous address shared with mpi4py",
        binary="mpirun",
        install="install Open MPI (apt-get install openmpi-bin libopenmpi-dev, or `make setup`)",
        tag=BRACKET_TAG,
    ),
    "torchrun": Launcher(
        "torchrun",
        "torchrun --standalone --nproc-per-node N on this host; its TCPStore rendezvous",
        binary="torchrun",
        install="it ships with torch: pip install torch==2.14.1 (or `make setup`)",
        tag=BRACKET_TAG,
    ),
    "horovodrun": Launcher(
        "horovodrun",
        "horovodrun --gloo -np N on this host; rendezvous address shared with Horovod",
        binary="horovodrun",
        install="build Horovod with PyTorch support (`make horovod`)",
        tag=BRACKET_TAG,
    ),
    "srun": Launcher(
        "srun",
        "SLURM srun --ntasks N inside an allocation (may span hosts); rendezvous on the first node",
        binary="srun",
        install="run inside a SLURM allocation (salloc or sbatch) on a host where srun is installed",
        tag=SRUN_TAG,
        single_host=False,
    ),
}
