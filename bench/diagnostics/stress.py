"""`make stress`: many seeded runs of the atomic-averaging algorithms looking for deadlocks and lost updates.

Each run spawns a world of 2-8 real processes (gloo on loopback), gives every node a random model and a
learning rate of 0, and drives the registry's AD-PSGD and SwarmSGD (blocking and pull-push modes) through their
hooks on a random topology, over a random transport: `p2p` (gloo, a responder thread per process) or `rma` (MPI
windows; the world is started by mpirun, when mpirun and mpi4py are here). With no gradient, exact pairwise
averaging must conserve the sum of all models and drive every model to the initial mean (pull-push and the rma
transport agree more slowly: their worlds take 3x the steps). A `killed` world loses one rank (a hard exit, as a
crash) at a random step: the others must not hang, the world must end before the timeout. A run that raises or
exceeds its timeout counts as a failure.

    python -m bench.diagnostics.stress --runs 100 [--seed 0] [--transport p2p|rma|both]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.core.comm import lost_a_peer
from bench.core.protocol import Node, flatten_model
from bench.engine.processes.localworld import WorldFailed, run_world
from bench.engine.processes.worker import KILLED_EXIT, exit_killed
from bench.training.config import RunConfig, algo_config
from bench.training.registry import ALGORITHMS

SCENARIOS = ("adpsgd", "swarm-blocking", "swarm-pushpull", "swarm-killed", "adpsgd-killed")
# Pull-push's consensus is slower (docs/configuration.md), and so is the rma transport's pairwise average (the
# initiator deposits its move into the partner's inbox, computed against the version it read, so averages that
# overlap overshoot for a while: tests/test_transports.py): their worlds get 3x the steps to agree.
STEP_FACTOR = {"swarm-pushpull": 3, "rma": 3}


def _drive(rank: int, world: int, comm, algorithm: str, steps: int, seed: int, kill: tuple[int, int] | None = None):
    """One node of a stress world; `kill` = (rank, step): that rank exits hard before that step."""
    import torch
    from torch import nn

    torch.manual_seed(seed * 1000 + rank)  # random, different initial models
    model = nn.Linear(16, 8)
    params, grads = flatten_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    node = Node(rank, world, comm, _NoClock(), random.Random(seed * 7 + rank), model, params, grads, opt)
    name, _, mode = algorithm.partition("-")
    mode = "blocking" if mode == "killed" else mode
    cfg = RunConfig(nodes=world, local_steps=1, swarm_mode=mode or "nonblocking", seed=seed)
    algo = ALGORITHMS[name](node, algo_config(cfg, name))
    comm.start_cell(None, seed)
    initial = params.clone().double()
    algo.start()
    comm.fence()
    for step in range(steps):
        if kill is not None and kill == (rank, step):
            exit_killed()  # as a crash: no cleanup, no goodbye to the peers
        with comm.exclusive():
            opt.step()  # lr 0: the model only moves by averaging
        algo.after_backward(step)
        algo.after_step(step)
    comm.fence()
    comm.finish_cell()
    with comm.exclusive():
        final = params.clone().double()
    total, start_total = final.clone(), initial.clone()
    comm.allreduce_sum(total, "eval")
    comm.allreduce_sum(start_total, "eval")
    mean = start_total / world
    return {
        "drift": float((total - start_total).abs().max()),
        "spread": float((final - mean).abs().max()),
        "scale": float(initial.abs().max()),
    }


class _NoClock:
    def now(self) -> float:
        return 0.0

    def compute(self):
        return contextlib.nullcontext()


def killed_verdict(exc: WorldFailed, kill: tuple[int, int]) -> str | None:
    """None when a world that was to lose rank `kill[0]` ended because of it: that rank exited with KILLED_EXIT,
    and every other rank that reported an error had only lost a peer (the comm layer's failure path: a closed
    connection or a timeout), so an unrelated exception of a survivor does not pass; else what went wrong."""
    first = str(exc).splitlines()[0]
    if "timed out" in first and "waiting for ranks" in first:
        return f"the world hung until the timeout ({first})"
    code = exc.exits.get(kill[0])
    if code != KILLED_EXIT:
        return f"the killed rank ended with status {code}, not {KILLED_EXIT} ({first})"
    for rank, error in sorted(exc.errors.items()):
        if rank != kill[0] and not lost_a_peer(error):
            last = error.strip().splitlines()[-1] if error.strip() else "no message"
            return f"rank {rank} failed otherwise: {last}"
    return None


_MPIRUN_FIRST_EXIT = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]\s*Exit code:\s*(-?\d+)")


def mpi_available() -> bool:
    if shutil.which("mpirun") is None:
        return False
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def _run_under_mpirun(folder: Path, world: int, scenario: str, steps: int, seed: int, topology: str, kill, timeout):
    """One world started by mpirun on the rma transport (`--worker` below); the per-rank results, or WorldFailed."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = ["mpirun", "--oversubscribe", "-np", str(world), "-x", "GLOO_SOCKET_IFNAME=lo", "-x", "PYTHONPATH"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    spec = {"scenario": scenario, "steps": steps, "seed": seed, "topology": topology, "kill": kill}
    cmd += [sys.executable, "-m", "bench.diagnostics.stress", "--worker", str(folder), json.dumps(spec)]
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise WorldFailed(f"distributed run failed: timed out after {timeout}s (a deadlock or a hang)") from None
    results = [folder / f"rank{r}.json" for r in range(world)]
    if proc.returncode != 0 or not all(f.exists() for f in results):
        dead = [r for r in range(world) if not results[r].exists()]
        tail = out.strip().splitlines()[-1:] if out.strip() else [""]
        # mpirun names the first rank that exited non-zero, and its status; the others it stopped itself.
        first = _MPIRUN_FIRST_EXIT.search(" ".join(out.split()))
        exits = {int(first.group(1)): int(first.group(2))} if first else {}
        raise WorldFailed(f"distributed run failed: mpirun exit {proc.returncode}; ranks ended without a result "
                          f"({', '.join(f'rank {r}' for r in dead)}): {tail[0]}", exits)  # fmt: skip
    return [json.loads(f.read_text()) for f in results]


def _worker(folder: str, spec_json: str) -> int:
    """A rank of an mpirun-started stress world: the rma transport, its result written to FOLDER/rankR.json."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from mpi4py import MPI

    from bench.core.comm import make_comm
    from bench.core.topology import build_topology

    spec = json.loads(spec_json)
    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    torch.set_num_threads(1)
    store = dist.FileStore(str(Path(folder) / "store"), size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=timedelta(seconds=60))
    topology = build_topology(spec["topology"], size, seed=spec["seed"])
    comm = make_comm("rma", rank, size, topology, 60)
    kill = tuple(spec["kill"]) if spec["kill"] else None
    result = _drive(rank, size, comm, spec["scenario"], spec["steps"], spec["seed"], kill)
    comm.close()
    dist.destroy_process_group()
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(result))
    return 0


def run(runs: int, seed: int, steps: int = 60, timeout: float = 120.0, transport: str = "p2p") -> dict[str, int]:
    """Run `runs` seeded worlds; return counts of ok / lost-update / no-consensus / deadlock-or-crash.

    transport: "p2p", "rma" (mpirun), or "both" (each world draws one; rma only where mpirun and mpi4py are)."""
    rng = random.Random(seed)
    transports = ["p2p", "rma"] if transport == "both" else [transport]
    if "rma" in transports and not mpi_available():
        if transport == "rma":
            raise SystemExit("error: --transport rma needs mpirun and mpi4py (make setup installs them)")
        transports = ["p2p"]
    counts = {"ok": 0, "lost_update": 0, "no_consensus": 0, "failed_or_deadlocked": 0}
    with tempfile.TemporaryDirectory(prefix="swarmbench-stress-") as tmp:
        for i in range(runs):
            world = rng.randint(2, 8)
            scenario = rng.choice(SCENARIOS)
            topology = rng.choice(["ring", "complete", "exponential"])
            via = rng.choice(transports)
            n_steps = steps * max(STEP_FACTOR.get(scenario, 1), STEP_FACTOR.get(via, 1))
            kill = (rng.randrange(world), rng.randrange(1, n_steps)) if scenario.endswith("-killed") else None
            what = f"run {i}: {scenario} world={world} {topology} {via}"
            started = time.monotonic()
            try:
                if via == "rma":
                    rows = _run_under_mpirun(Path(tmp) / str(i), world, scenario, n_steps, seed + i, topology, kill,
                                             timeout)  # fmt: skip
                else:
                    rows = run_world(
                        _drive, world, Path(tmp) / str(i), scenario, n_steps, seed + i, kill,
                        topology=topology, timeout=timeout,
                    )  # fmt: skip
            except WorldFailed as exc:
                first = str(exc).splitlines()[0]
                took = time.monotonic() - started
                why = killed_verdict(exc, kill) if kill is not None else first
                if why is None:
                    counts["ok"] += 1  # the crash ended the whole world (no survivor hangs) before the timeout
                    print(f"{what}: ok, rank {kill[0]} killed at step {kill[1]}: ended in {took:.1f} s: {first}")
                elif kill is not None:
                    counts["failed_or_deadlocked"] += 1
                    print(f"{what}: FAILED rank {kill[0]} was killed at step {kill[1]}, but {why}", flush=True)
                else:
                    counts["failed_or_deadlocked"] += 1
                    print(f"{what}: FAILED {first}", flush=True)
                continue
            if kill is not None:
                counts["failed_or_deadlocked"] += 1
                print(f"{what}: FAILED the world finished although rank {kill[0]} was killed", flush=True)
                continue
            drift = max(r["drift"] for r in rows)
            spread = max(r["spread"] for r in rows)
            verdict = "ok"
            if drift > 1e-4:
                verdict = "lost_update"
            elif spread > 1e-2 * max(r["scale"] for r in rows):
                verdict = "no_consensus"
            counts[verdict] += 1
            print(f"{what}: {verdict} drift={drift:.2e} spread={spread:.2e}", flush=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--transport", choices=("p2p", "rma", "both"), default="both")
    parser.add_argument("--worker", nargs=2, metavar=("FOLDER", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(*args.worker)
    counts = run(args.runs, args.seed, args.steps, transport=args.transport)
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    return 0 if counts["ok"] == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
