"""`make stress`: many seeded runs of the atomic-averaging algorithms looking for deadlocks and lost updates.

Each run spawns a world of 2-8 real processes (gloo on loopback), gives every node a random model and a
learning rate of 0, and drives the registry's AD-PSGD and SwarmSGD (blocking mode) through their hooks on
a random topology. With no gradient, exact pairwise averaging must conserve the sum of all models and
drive every model to the initial mean. A run that raises or exceeds its timeout counts as a failure.

    python -m bench.diagnostics.stress --runs 100 [--seed 0] [--transport p2p]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
from pathlib import Path

from bench.core.protocol import Node, flatten_model
from bench.engine.processes.localworld import WorldFailed, run_world
from bench.training.config import RunConfig, algo_config
from bench.training.registry import ALGORITHMS

SCENARIOS = ("adpsgd", "swarm-blocking")


def _drive(rank: int, world: int, comm, algorithm: str, steps: int, seed: int) -> dict:
    import torch
    from torch import nn

    torch.manual_seed(seed * 1000 + rank)  # random, different initial models
    model = nn.Linear(16, 8)
    params, grads = flatten_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    node = Node(rank, world, comm, _NoClock(), random.Random(seed * 7 + rank), model, params, grads, opt)
    name, _, mode = algorithm.partition("-")
    cfg = RunConfig(nodes=world, local_steps=1, swarm_mode=mode or "nonblocking", seed=seed)
    algo = ALGORITHMS[name](node, algo_config(cfg, name))
    comm.start_cell(None, seed)
    initial = params.clone().double()
    algo.start()
    comm.fence()
    for step in range(steps):
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


def run(runs: int, seed: int, steps: int = 60, timeout: float = 120.0) -> dict[str, int]:
    """Run `runs` seeded worlds; return counts of ok / lost-update / no-consensus / deadlock-or-crash."""
    rng = random.Random(seed)
    counts = {"ok": 0, "lost_update": 0, "no_consensus": 0, "failed_or_deadlocked": 0}
    with tempfile.TemporaryDirectory(prefix="swarmbench-stress-") as tmp:
        for i in range(runs):
            world = rng.randint(2, 8)
            scenario = rng.choice(SCENARIOS)
            topology = rng.choice(["ring", "complete", "exponential"])
            try:
                rows = run_world(
                    _drive, world, Path(tmp) / str(i), scenario, steps, seed + i, topology=topology, timeout=timeout
                )
            except WorldFailed as exc:
                counts["failed_or_deadlocked"] += 1
                print(f"run {i}: {scenario} world={world} {topology}: FAILED {str(exc).splitlines()[0]}", flush=True)
                continue
            drift = max(r["drift"] for r in rows)
            spread = max(r["spread"] for r in rows)
            verdict = "ok"
            if drift > 1e-4:
                verdict = "lost_update"
            elif spread > 1e-2 * max(r["scale"] for r in rows):
                verdict = "no_consensus"
            counts[verdict] += 1
            print(
                f"run {i}: {scenario} world={world} {topology}: {verdict} drift={drift:.2e} spread={spread:.2e}",
                flush=True,
            )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    counts = run(args.runs, args.seed, args.steps)
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    return 0 if counts["ok"] == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
