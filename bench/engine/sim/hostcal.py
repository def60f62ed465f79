"""`--calibrate host`: measure the cost model of N local worker processes on this machine.

The simulator's default cost model is a cluster's: every node has its own cores and its own link. N worker
processes of one host are not such a cluster — they time-share its cores, and each message passes through the
host's TCP stack, gloo's helper threads and (for one-sided operations) the partner's responder thread, all
competing with the ranks' training threads for the same cores. A link fitted to a ping-pong on an idle host
predicts a fraction of what an allreduce costs inside the training loop (measured on a 2-core host: 473 KB,
two ranks, 0.44 ms from the ping-pong fit, about 3 ms added to a training step).

So host calibration measures every cost *in situ*: it starts N real processes the way the local launcher does
(gloo on loopback, this host's cores split over them, the real `TorchComm`) and, with all N running at once:

- compute: the real training loop (`bench.training.loop.run_cell`) on each rank's real comm, for a cell that sends
  nothing while it trains (local SGD that never averages), timed exactly as a real run is timed (the slowest
  rank's training seconds / steps) with its epochs and end-of-epoch snapshots. The cost model takes fb and update as
  these means over max(1, N / cores) — the simulator's processor sharing multiplies that back whenever more
  nodes than cores compute at once — and the distribution of the step times as its jitter table;
- operations: every rank runs the loop "one SGD step (the model lock held over each compute section, as in
  `run_cell`), then one operation of the comm layer" `REPS` times, for each operation the run's algorithms use
  (allreduce, neighbour exchange, one-sided read, pairwise average) at two message sizes (a small one and the
  run's own), each right after the same loop without the operation. An operation costs the difference of the
  two mean iteration times: what it adds to a training step with N processes running together, scheduling
  delays, the TCP stack's and gloo's threads, the partner's responder competing for its cores and waits for the
  partner's model lock included. A rank done with a one-sided loop goes on until every rank is done, so the
  load stays that of N ranks throughout. Each operation is then a straight line through the cost at the run's
  size and towards the one at the small size, alpha + beta * bytes (`CostModel.measured`), which the simulator
  charges instead of its formulas (one-sided: half on the request, half on the reply, as latency that occupies
  no link, and no separate wait for the partner's compute section — the measurement, taken with every rank
  doing the same at once, holds both; `CostModel.one_sided_legs`).
  meta.json also shows the read's line as a link: latency a = (alpha - 40 beta) / 2 and bandwidth B = 1 / beta
  (a read is a 32-byte request and an (8 + m)-byte reply).

Nothing measured here is a throughput of an algorithm: the validation
(`python -m bench.diagnostics.benchmarks sim-validate`) compares the simulator's predictions with real runs that
the calibration never saw.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench.base.host import usable_cores
from bench.core.data import load_dataset
from bench.core.models import build_model, loss_of
from bench.core.protocol import flatten_model
from bench.core.topology import build_topology
from bench.engine.processes.localworld import run_world
from bench.engine.processes.worker import threads_per_rank
from bench.engine.sim import costmodel
from bench.engine.sim.costmodel import SectionTimer
from bench.training.config import RunConfig
from bench.training.loop import WARMUP_STEPS, Sampler, make_codec, make_shards, node_seed, run_cell

REPS = 250  # measured repetitions of each operation and size (after WARM ones); costs have heavy tails
COMPUTE_EPOCHS = 4  # epochs of the compute-only training cell
WARM = 8
SMALL_BYTES = 256
PROBE_TIMEOUT_S = 300
READ_OVERHEAD_BYTES = 40  # a read's 32-byte request plus the 8-byte stamp of its reply


def message_sizes(cfg, n_params: int) -> dict[str, int]:
    """The byte sizes the run moves: the float32 model/gradient (allreduce) and one model message on the wire."""

    codec = make_codec(cfg)
    wire = 4 * n_params if codec is None else codec.wire_bytes(n_params)
    return {"allreduce": 4 * n_params, "message": wire}


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """alpha + beta * bytes through the mean cost at the largest size (the run's own message: charged exactly as
    measured) and towards the one at the smallest; beta >= 0, and alpha >= 0 by lowering beta if need be."""
    (b0, t0), (b1, t1) = min(points), max(points)
    beta = max(0.0, (t1 - t0) / (b1 - b0)) if b1 > b0 else 0.0
    beta = min(beta, t1 / b1) if b1 else beta
    return t1 - beta * b1, beta


def _probe(rank: int, world: int, comm, spec: dict[str, Any]) -> dict[str, Any]:
    """One rank of the probe (runs in a spawned process; see the module docstring)."""
    import torch

    cfg = RunConfig.from_dict(spec["config"])
    torch.set_num_threads(spec["threads"])
    dataset = load_dataset(cfg.dataset, cfg.seed, cfg.data_dir, bptt=cfg.bptt)
    gate = Path(spec["gate"])
    model = build_model(cfg.model, dataset.input_shape, dataset.num_classes, cfg.seed)
    flatten_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    shard = make_shards(cfg, dataset).indices[rank]
    sampler = Sampler(dataset.x_train, dataset.y_train, shard, cfg.batch_size, node_seed(cfg.seed, rank, 2))

    def sgd_step() -> None:  # as `run_cell`: the model lock held over each compute section (averages wait)
        with comm.exclusive():
            xb, yb = sampler.next()
            opt.zero_grad(set_to_none=False)
            loss_of(model(xb), yb).backward()
        with comm.exclusive():
            opt.step()

    peers = comm.neighbors()

    def iteration(op: str | None, t, i: int) -> None:
        sgd_step()
        if op == "allreduce":
            comm.allreduce_sum(t, "grad")
        elif op == "exchange":
            comm.neighbor_exchange(t, "model")
        elif op == "read":
            comm.read(peers[i % len(peers)], "model", t)
        elif op == "average":
            comm.average_with(peers[i % len(peers)], "model")

    def keep_loading(phase: str, op: str | None = None, t=None) -> None:
        """A rank done with its timed part goes on with the same work until every rank is done with theirs, so
        that all N share the cores for the whole of everyone's measurement. Not for collectives: those run in
        lockstep, so the ranks finish together anyway (and a rank that went on alone would wait forever)."""
        (gate / f"{phase}-{rank}").touch()
        i = 0
        while not all((gate / f"{phase}-{r}").exists() for r in range(world)):
            iteration(op, t, i)
            i += 1
        comm.fence()

    def loop(phase: str, op: str | None, t) -> float:
        """Mean seconds of one iteration (an SGD step, then the operation) over REPS, after WARM."""
        comm.fence()
        for i in range(WARM + REPS):
            if i == WARM:
                start = time.perf_counter()
            iteration(op, t, i)
        mean = (time.perf_counter() - start) / REPS
        if op in ("allreduce", "exchange"):
            comm.fence()
        else:
            keep_loading(phase, op, t)
        return mean

    out: dict[str, Any] = {"ops": {}, **_compute_cell(cfg, dataset, rank, comm)}
    for op, sizes in spec["sizes"].items():
        for nbytes in sizes:
            t = torch.zeros(max(1, nbytes // 4))
            if op == "read":
                comm.publish(t)
            elif op == "average":
                comm.expose(t)
            # The loop without the operation right before it: a drift of the machine's speed cancels.
            base = loop(f"base-{op}-{nbytes}", None, None)
            out["ops"][f"{op}:{nbytes}"] = loop(f"{op}-{nbytes}", op, t) - base
    return out


def _compute_cell(cfg, dataset, rank: int, comm) -> dict[str, Any]:
    """The real training loop (`run_cell`) on this rank's real comm, for a cell that communicates nothing while
    it trains (local SGD that never averages): compute timed exactly as a real run times it, with its epochs,
    its end-of-epoch snapshots and the N ranks sharing the cores."""
    import dataclasses

    import torch

    cell = dataclasses.replace(
        cfg,
        epochs=COMPUTE_EPOCHS,
        eval_every=COMPUTE_EPOCHS,
        algo_options=(("local_sgd", (("local_steps", 10**9),)),),
    )
    shards = make_shards(cell, dataset)
    few = dataclasses.replace(dataset, x_test=dataset.x_test[:100], y_test=dataset.y_test[:100])
    timer = SectionTimer()
    seconds: list[float] = []

    def emit(event: dict[str, Any]) -> None:
        if event["type"] == "record" and event["metric"] == "train_seconds":
            seconds.append(event["value"])

    run_cell(cell, "local_sgd", few, shards, rank, comm, timer, torch.device("cpu"), emit)
    per_epoch, starts = shards.steps_per_epoch, timer.starts
    durations = [  # start to next start within an epoch (the evaluation between epochs is not a step)
        starts[k + 1] - starts[k] for k in range(WARMUP_STEPS, len(starts) - 1) if (k + 1) % per_epoch
    ]
    return {
        "train_seconds": seconds[-1],
        "steps": COMPUTE_EPOCHS * per_epoch,
        "update": statistics.fmean(timer.sections[1]),
        "durations": durations,
    }


def _op_cost(results: list[dict[str, Any]], key: str) -> float:
    """What one operation adds to an iteration of the loop, averaged over ranks (never negative)."""
    return max(0.0, statistics.fmean(r["ops"][key] for r in results))


def calibrate_host(cfg, nodes: int, n_params: int, work_dir: Path | None = None) -> dict[str, Any]:
    """Run the probe on `nodes` local processes; returns the measured cost-model parameters (see CostModel)."""
    import dataclasses
    import tempfile

    one = dataclasses.replace(cfg, nodes=nodes, node_series=(), epochs=1)
    sizes = message_sizes(cfg, n_params)
    plan = {"allreduce": [SMALL_BYTES, sizes["allreduce"]]}
    topology = build_topology(cfg.topology, nodes, degree=cfg.degree, seed=cfg.seed)
    if topology.neighbors(0):
        plan["exchange"] = [SMALL_BYTES, sizes["message"]]
        plan["read"] = [SMALL_BYTES, sizes["message"]]
        plan["average"] = [SMALL_BYTES, sizes["message"]]
    threads = threads_per_rank(nodes)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        spec = {"config": one.to_dict(), "threads": threads, "sizes": plan, "gate": str(Path(tmp) / "gate")}
        (Path(tmp) / "gate").mkdir()
        results = run_world(
            _probe,
            nodes,
            Path(tmp),
            spec,
            topology=cfg.topology,
            degree=cfg.degree,
            seed=cfg.seed,
            threads=threads,
            timeout=PROBE_TIMEOUT_S,
        )
    measured = {}
    for op, op_sizes in plan.items():
        points = [(b, _op_cost(results, f"{op}:{b}")) for b in op_sizes]
        measured[op] = _fit(points)
        if op == "exchange":  # the simulator charges a node's exchange by the bytes it sends: degree * message
            degree = statistics.fmean(len(topology.neighbors(r)) for r in range(nodes))
            measured[op] = (measured[op][0], measured[op][1] / degree)
    step = max(r["train_seconds"] for r in results) / results[0]["steps"]  # as the results contract: slowest rank
    update = statistics.fmean(r["update"] for r in results)
    fb = step - update
    alpha, beta = measured.get("read", (0.0, 0.0))  # for the record: the read's line as a link
    latency = max(1e-7, (alpha - READ_OVERHEAD_BYTES * beta) / 2) if beta or alpha else None
    return {
        "jitter": costmodel.jitter_table([d for r in results for d in r["durations"]]),
        "fb": fb,
        "update": update,
        "threads": threads,
        "cores": usable_cores(),
        "latency_s": latency,
        "bandwidth_Bps": (1 / beta) if beta > 0 else None,
        "measured": tuple((op, a, b) for op, (a, b) in sorted(measured.items())),
    }
