"""The cost model a simulated run gets: a named compute profile, --step-time, or a calibration on this machine.

`--calibrate node` times the real training loop for one node here (`calibrate`); `--calibrate host` starts N real
local processes and measures compute and every communication operation with all of them running
(`bench.engine.sim.hostcal`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any

from bench.base.errors import UserError
from bench.core.models import build_model
from bench.core.topology import build_topology
from bench.engine.sim.cluster import Cluster
from bench.engine.sim.costmodel import (
    COMPUTE_PROFILES,
    NETWORK_PROFILES,
    CostModel,
    SectionTimer,
    measure_work,
    node_threads,
    shape_key,
)
from bench.engine.sim.hostcal import calibrate_host
from bench.training.loop import WARMUP_STEPS, Shards, run_cell

CALIBRATION_STEPS = 60  # timed steps of the real training loop (the first WARMUP_STEPS of them are not used)


def resolve(cfg, dataset, nodes: int) -> CostModel:
    """The cost model of a sim run at `nodes` nodes; UserError for an unknown profile or a model the profile does
    not cover."""
    threads = None
    net = NETWORK_PROFILES[cfg.network]
    if cfg.calibrate == "host":
        model = build_model(cfg.model, dataset.input_shape, dataset.num_classes, cfg.seed)
        host = calibrate_host(cfg, nodes, sum(p.numel() for p in model.parameters()))
        bandwidth = host["bandwidth_Bps"] * 8 / 1e9 if host["bandwidth_Bps"] else net.bandwidth_gbps
        latency = host["latency_s"] * 1e6 if host["latency_s"] else net.latency_us
        contention = max(1.0, nodes / host["cores"])  # measured with all N computing: per core, uncontended
        return CostModel(
            compute="calibrated-host",
            fb_seconds=host["fb"] / contention,
            update_seconds=host["update"] / contention,
            network="measured",
            bandwidth_gbps=bandwidth,
            latency_us=latency,
            allreduce="measured",
            speed_sigma=cfg.speed_sigma,
            straggler_p=cfg.straggler_p,
            straggler_k=cfg.straggler_k,
            shared_cores=host["cores"],
            calibration_threads=host["threads"],
            calibration="host",
            measured=host["measured"],
            jitter=host["jitter"],
        )
    work = COMPUTE_PROFILES[cfg.compute_profile].work
    if cfg.step_time is not None:
        compute, fb, update = "step-time", float(cfg.step_time), 0.0
    elif cfg.calibrate == "node":
        threads = node_threads(cfg, nodes)
        fb, update = calibrate(cfg, dataset, threads)
        model = build_model(cfg.model, dataset.input_shape, dataset.num_classes, cfg.seed)
        work = tuple(calibrate_work(sum(p.numel() for p in model.parameters()), threads))
        compute = "calibrated"
    else:
        profile = COMPUTE_PROFILES[cfg.compute_profile]
        key = (cfg.model, shape_key(dataset.input_shape))
        if key not in profile.steps:
            covered = ", ".join(f"{m} on {s}" for m, s in sorted(profile.steps))
            raise UserError(
                f"compute profile '{profile.name}' has no entry for {cfg.model} on {key[1]} inputs "
                f"(it covers {covered}): pass --calibrate or --step-time SECONDS"
            )
        fb, update = profile.steps[key].seconds(cfg.batch_size)
        compute = profile.name
    custom = cfg.bandwidth_gbps is not None or cfg.latency_us is not None
    return CostModel(
        compute=compute,
        fb_seconds=fb,
        update_seconds=update,
        network=f"{net.name}+custom" if custom else net.name,
        bandwidth_gbps=float(cfg.bandwidth_gbps if cfg.bandwidth_gbps is not None else net.bandwidth_gbps),
        latency_us=float(cfg.latency_us if cfg.latency_us is not None else net.latency_us),
        allreduce=cfg.allreduce_algo,
        speed_sigma=cfg.speed_sigma,
        straggler_p=cfg.straggler_p,
        straggler_k=cfg.straggler_k,
        shared_cores=cfg.shared_cores,
        calibration_threads=threads,
        calibration=cfg.calibrate,
        work=work,
        **_hosts(cfg),
    )


def _hosts(cfg) -> dict[str, Any]:
    """The two-level topology of --gpus-per-host G > 1: G nodes per host on the intra-host link's profile."""
    if cfg.gpus_per_host <= 1:
        return {}
    link = NETWORK_PROFILES[cfg.intra_host]
    return {
        "gpus_per_host": cfg.gpus_per_host,
        "intra_host": link.name,
        "intra_bandwidth_gbps": link.bandwidth_gbps,
        "intra_latency_us": link.latency_us,
    }


def calibrate_work(numel: int, threads: int = 1) -> list[tuple[str, float, float]]:
    """`--calibrate node`: the comm layer's copies, averaging and codec work timed here (`measure_work`) at a
    sixteenth of the model's size and at its size, or at 2**18 coordinates for a smaller model: the fused codec
    costs about half a nanosecond per coordinate, so two close sizes of a small model differ by less than the
    timing noise and would fit a per-coordinate cost of zero."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure_work(repeats=10, sizes=(max(1024, numel // 16), max(1 << 18, numel)))
    finally:
        torch.set_num_threads(saved)


def calibrate(cfg, dataset, threads: int = 1) -> tuple[float, float]:
    """`--calibrate`: (forward/backward, update) seconds per step, timed here with `threads` torch threads by running
    the real training loop (`bench.training.loop.run_cell`) for one node on its own, the same cell for every
    algorithm: local SGD that never averages, so that no algorithm's comm-layer work is in the step (that work is
    charged per operation, `calibrate_work`, for every algorithm alike).

    update = the median optimizer-update section; forward/backward = the median step minus that, i.e. the
    forward/backward section plus the loop's own per-step work (sampling the batch, bookkeeping), which the real
    engine pays as well. No communication happens on a single node.
    """
    import torch

    one = dataclasses.replace(
        cfg,
        nodes=1,
        node_series=(),
        epochs=1,
        topology="complete",
        degree=None,
        algorithms=("local_sgd",),
        algo_options=(("local_sgd", (("local_steps", 10**9),)),),
    )
    steps = max(WARMUP_STEPS + 5, min(CALIBRATION_STEPS, len(dataset.y_train) // cfg.batch_size))
    shards = Shards(indices=[torch.arange(len(dataset.y_train))], steps_per_epoch=steps)
    few = dataclasses.replace(dataset, x_test=dataset.x_test[:100], y_test=dataset.y_test[:100])
    idle = CostModel("calibration", 0.0, 0.0, "none", 1.0, 1.0, "ring")
    cluster = Cluster(1, build_topology("complete", 1), idle, cfg.seed)  # a one-node comm: nothing to send
    timer = SectionTimer()
    rows: dict[str, float] = {}

    def emit(event: dict[str, Any]) -> None:
        if event["type"] == "record" and event["metric"] == "step_seconds_median":
            rows["step"] = event["value"]

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run_cell(one, "local_sgd", few, shards, 0, cluster.comms[0], timer, torch.device("cpu"), emit)
    finally:
        torch.set_num_threads(saved)
    update = statistics.median(timer.sections[1][WARMUP_STEPS:])
    fb = rows["step"] - update
    if not (fb > 0 and update >= 0 and math.isfinite(fb + update)):  # a broken timer, never a user error
        raise RuntimeError(f"calibration measured a non-positive step time ({fb}, {update})")
    return fb, update
