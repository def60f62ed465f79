"""The simulated cluster that tests share: fixed step times (1 ms forward/backward, 0.1 ms update), one 10 Gb/s link
of 20 us latency per node and ring allreduces, so every charge is easy to write down by hand."""

from __future__ import annotations

import signal

from bench.base.signals import Interrupted
from bench.core.topology import build_topology
from bench.engine.sim import cluster as sim
from bench.engine.sim.costmodel import CostModel

LATENCY_US, GBPS = 20.0, 10.0


def step_time_cost(**options) -> CostModel:
    """The shared cost model; `options` override or add CostModel fields (speed_sigma, ...)."""
    base = dict(
        compute="step-time",
        fb_seconds=1e-3,
        update_seconds=1e-4,
        network="test",
        bandwidth_gbps=GBPS,
        latency_us=LATENCY_US,
        allreduce="ring",
    )
    return CostModel(**{**base, **options})


def sim_cluster(n: int, topology: str = "ring", **options) -> sim.Cluster:
    """n simulated nodes on `topology` under the shared cost model, seed 0."""
    return sim.Cluster(n, build_topology(topology, n), step_time_cost(**options), seed=0)


def interrupt_at(monkeypatch, algorithm: str):
    """Make a simulated run stop as on Ctrl-C when it reaches `algorithm`'s cell; returns what puts the real
    `run_cell` back (before resuming)."""
    real = sim.run_cell

    def run_cell(cfg, name, *args, **kw):
        if name == algorithm:
            raise Interrupted(signal.SIGINT)
        return real(cfg, name, *args, **kw)

    monkeypatch.setattr(sim, "run_cell", run_cell)
    return lambda: monkeypatch.setattr(sim, "run_cell", real)
