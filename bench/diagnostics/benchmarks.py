"""Micro-benchmarks of swarmbench's building blocks, printed as one table.

Run ``python -m bench.diagnostics.benchmarks [names...] [--device cpu|cuda] [--repeats N]``; with no names every
benchmark runs. Each benchmark is a function from a ``BenchContext`` to a list of rows (dicts of
column -> value); ``BENCHMARKS`` lists them, so adding a section means writing one function and
appending one ``Benchmark``. ``main`` joins all rows into a single table (columns in first-seen
order, blank where a benchmark has no such column).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bench.base.console import print_table
from bench.base.errors import UserError
from bench.base.formatting import fmt_auto
from bench.core.codec import BITS, Codec, CodecConfig, suggest_eps
from bench.core.comm import TorchComm
from bench.core.topology import build_topology
from bench.engine.sim import cluster as sim
from bench.engine.sim.costmodel import CostModel, measure_step, measure_work, shape_key
from bench.run.checks import resolve
from bench.run.orchestrate import execute
from bench.run.simulate import prepare
from bench.training.registry import ALGORITHMS

Row = dict[str, Any]


@dataclass(frozen=True)
class BenchContext:
    """What every benchmark may use: where to run and how many timed repetitions to take."""

    device: torch.device
    repeats: int = 25
    warmup: int = 3
    cost_only_steps: int = 100  # steps per node of the cost-only benchmark (`--cost-only-steps`)
    cost_only_nodes: int = 65_536  # and its nodes (`--cost-only-nodes`)
    cost_only_algos: tuple[str, ...] = ("swarm",)  # and its algorithms, each in a fresh process (`--cost-only-algo`)
    cases: tuple[str, ...] = ("small", "work")  # sim-profile's parts (`--cases`)
    amp: bool = False  # sim-profile's steps in mixed precision (`--precision amp`, CUDA)


@dataclass(frozen=True)
class Benchmark:
    """One named section of the table."""

    name: str
    help: str
    run: Callable[[BenchContext], list[Row]]
    default: bool = True  # run when no names are given (measurement tools that take minutes say False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], ctx: BenchContext) -> float:
    """Median wall time of ``fn`` over ``ctx.repeats`` runs after ``ctx.warmup`` untimed ones.

    The median rather than the mean, because a shared machine adds occasional long outliers.
    """
    for _ in range(ctx.warmup):
        fn()
    times = []
    for _ in range(ctx.repeats):
        _sync(ctx.device)
        start = time.perf_counter()
        fn()
        _sync(ctx.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------------
# codec
# --------------------------------------------------------------------------------------------------

CODEC_NUMEL = 1 << 20  # 4 MiB of float32, a small CNN's worth of parameters
CODEC_RADIUS = 0.05  # eps per width is chosen so that this max-norm distance still decodes


def bench_codec(ctx: BenchContext) -> list[Row]:
    """Encode+decode throughput of every wire format (bench.core.codec) on one CPU thread.

    GB/s counts float32 input bytes per second of (median encode + median decode). ``vs 32b`` is
    the time of that round trip divided by the raw 32-bit round trip (two copies) measured in the
    same run. The lattice reference sits at up to 80% of the decodable radius from the model, like a
    neighbour's model in SwarmSGD (Nadiradze et al. 2021), so nothing fails; ``fails`` checks that.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-core throughput, independent of how many cores the machine has
    try:
        return _codec_rows(ctx)
    finally:
        torch.set_num_threads(threads)


def _codec_rows(ctx: BenchContext) -> list[Row]:
    n = CODEC_NUMEL
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(n, generator=gen) * 0.05).to(ctx.device)
    noise = (torch.rand(n, generator=gen) * 2 - 1).to(ctx.device)
    ref = x + noise * (0.8 * CODEC_RADIUS)  # the receiver's own model
    configs: list[tuple[str, CodecConfig, bool]] = [("raw", CodecConfig(bits=32), False)]
    for bits in BITS[:-1]:
        eps = suggest_eps(bits, CODEC_RADIUS)
        configs += [
            ("lattice", CodecConfig(bits=bits, quantizer="lattice", eps=eps), False),
            ("lattice+rr", CodecConfig(bits=bits, quantizer="lattice", eps=eps), True),
            ("uniform", CodecConfig(bits=bits, quantizer="uniform"), True),
        ]
    rows: list[Row] = []
    base = None
    for label, cfg, randomized in configs:
        codec = Codec(cfg)
        # Stochastic rounding draws fresh keys every call, as a real exchange would.
        rng = torch.Generator(device=ctx.device).manual_seed(1) if randomized else None
        msg = codec.encode(x, generator=rng)
        out, fails = codec.decode(msg, n, ref)
        t_enc = median_seconds(lambda c=codec, g=rng: c.encode(x, generator=g), ctx)
        t_dec = median_seconds(lambda c=codec, m=msg, r=ref: c.decode(m, n, r), ctx)
        total = t_enc + t_dec
        if base is None:
            base = total
        rows.append(
            {
                "bench": "codec",
                "quantizer": label,
                "bits": cfg.bits,
                "bytes": msg.numel(),
                "compress": 4 * n / msg.numel(),
                "enc ms": t_enc * 1e3,
                "dec ms": t_dec * 1e3,
                "GB/s": 4 * n / total / 1e9,
                "vs 32b": total / base,
                "fails": fails,
                "max err": float((out - x).abs().max()),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# simulated cluster (bench/engine/sim/cluster.py)
# --------------------------------------------------------------------------------------------------

SIM_NODES = 256  # the speed target: 256 nodes x 1 epoch of the default dataset and model within 60 s
VALIDATE_NODES = (2, 4)
VALIDATE_EPOCHS = 10


SIM_CASES = [  # (label, epochs, eval_every)
    ("1 epoch", 1, 1),  # the target: the whole default run of one algorithm at 256 nodes
    ("20 epochs, eval at end", 20, 20),  # sustained training, where node-steps/s means something
]


def bench_sim(ctx: BenchContext) -> list[Row]:
    """256 virtual nodes of the default dataset and model, every algorithm: 1 epoch (the target: within 60 s),
    then 20 epochs evaluated once at the end (sustained training rate).

    ``wall s`` is the whole simulation of one algorithm (setting up every node, training, evaluating every
    node's model on the test set); ``overhead %`` is the share of it spent in the simulator's own scheduling and
    bookkeeping (heap, greenlet switches, link and collective accounting), measured in the same run; ``payload %``
    the share spent summing allreduce payloads. ``total s`` (first row of a case) is the case's end-to-end wall
    time, including loading the dataset and resolving the cost model.
    """
    rows: list[Row] = []
    for label, epochs, eval_every in SIM_CASES:
        start = time.perf_counter()
        cfg = resolve({"engine": "sim", "nodes": SIM_NODES, "epochs": epochs, "eval_every": eval_every})
        dataset, policy, costs, _ = prepare(cfg)
        shards = sim.make_sim_shards(cfg, dataset, policy)
        with sim.OneTorchThread():
            stats = sim.simulate_algorithms(cfg, dataset, shards, costs[SIM_NODES], lambda event: None)
        total = time.perf_counter() - start
        for i, s in enumerate(stats):
            rows.append(
                {
                    "bench": "sim",
                    "case": label,
                    "algorithm": s.algorithm,
                    "nodes": s.nodes,
                    "node-steps": s.node_steps,
                    "wall s": s.wall_s,
                    "node-steps/s": s.node_steps / s.wall_s,
                    "overhead %": 100 * s.overhead_s / s.wall_s,
                    "payload %": 100 * s.payload_s / s.wall_s,
                    "switches": s.switches,
                    "total s": total if i == 0 else None,
                }
            )
    return rows


_MEMORY_SCRIPT = """
import ctypes, json, sys
from pathlib import Path
from bench.run.checks import resolve
from bench.engine.sim import cluster as sim
from bench.run.simulate import prepare
def kib(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))
    return int(line.split()[1]) * 1024
cfg = resolve({"engine": "sim", "nodes": int(sys.argv[1]), "model": sys.argv[2], "epochs": int(sys.argv[5]),
               "eval_every": int(sys.argv[5]), "algorithms": [sys.argv[3]], "eval_samples": 100,
               "dataset": sys.argv[4]})
dataset, policy, costs, n_params = prepare(cfg)
shards = sim.make_sim_shards(cfg, dataset, policy)
# Free heap left by loading the data goes back to the system first: nodes that happen to reuse it would otherwise
# grow the resident memory less, by however much of it a run's allocation pattern finds (tens of MB either way).
getattr(ctypes.CDLL(None), "malloc_trim", lambda pad: 0)(0)  # glibc only
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM): loading the data peaked higher than it stays
before = kib("VmRSS:")
with sim.OneTorchThread():
    sim.simulate_algorithms(cfg, dataset, shards, costs[cfg.nodes], lambda event: None)
peak = kib("VmHWM:")
estimate = sim.estimate_bytes(n_params, cfg.nodes, algorithms=cfg.algorithms)
print(json.dumps({"before": before, "peak": peak, "estimate": estimate, "params": n_params}))
"""
MEMORY_CASES = [("mlp", "mnist", 512), ("mlp", "mnist", 4096)]  # the target: 4,096 MLP nodes within 8 GiB


def measure_sim_memory(
    nodes: int, model: str = "mlp", dataset: str = "mnist", algorithm: str = "swarm", epochs: int = 1
) -> dict:
    """One simulation of `nodes` nodes (`epochs`, evaluated once at the end) in a fresh Linux process: its resident
    memory before the nodes were built (after glibc gave back the heap that loading the data left free, so that
    what one more node costs does not depend on how much of it a run happens to reuse) and its peak (reset through
    /proc/self/clear_refs after loading the data), what `bench.engine.sim.cluster.estimate_bytes` predicts, and
    the model's parameter count."""
    import json
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(nodes), model, algorithm, dataset, str(epochs)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_sim_memory(ctx: BenchContext) -> list[Row]:
    """Peak resident memory of 512 and 4,096 simulated MLP nodes (SwarmSGD, 1 epoch, MNIST), each in a fresh
    process (`measure_sim_memory`).

    ``sim GiB`` is the growth of the peak RSS over the process before the nodes were built (``process GiB`` the
    whole process's peak); ``estimate GiB`` is what the pre-flight check (`bench.engine.sim.cluster.estimate_bytes`)
    predicts. ``B/node`` is the growth per node added from the first case to this one (what one more node costs,
    the simulator's fixed costs left out), against the target ``bound B/node`` = 4 x the model's parameter bytes
    + 64 kB.
    """
    rows: list[Row] = []
    previous = None
    for model, dataset, nodes in MEMORY_CASES:
        m = measure_sim_memory(nodes, model, dataset)
        growth = m["peak"] - m["before"]
        per_node = (growth - previous[1]) / (nodes - previous[0]) if previous else None
        previous = previous or (nodes, growth)
        rows.append(
            {
                "bench": "sim-memory",
                "model": model,
                "nodes": nodes,
                "params": m["params"],
                "process GiB": m["peak"] / 2**30,
                "sim GiB": growth / 2**30,
                "estimate GiB": m["estimate"] / 2**30,
                "B/node": per_node,
                "bound B/node": 4 * 4 * m["params"] + 64_000,
            }
        )
    return rows


COST_ONLY_NODES, COST_ONLY_STEPS = 65_536, 100
_COST_ONLY_SCRIPT = """
import json, sys, time
from pathlib import Path
from bench.run.checks import resolve
from bench.engine.sim import cluster as sim
from bench.engine.sim.costonly import simulate_cost_only
from bench.run.simulate import prepare
def kib(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))
    return int(line.split()[1]) * 1024
start = time.perf_counter()
cfg = resolve({"engine": "sim", "compute": "cost-only", "nodes": int(sys.argv[1]), "steps": int(sys.argv[2]),
               "algorithms": [sys.argv[3]], "model": sys.argv[4], "dataset": sys.argv[5]})
workload, _, costs, n_params = prepare(cfg)
train = []
def emit(event):
    if event["type"] == "record" and event["metric"] == "train_seconds":
        train.append(event["value"])
with sim.OneTorchThread():
    stats = simulate_cost_only(cfg, workload.workload, costs[cfg.nodes], emit)
print(json.dumps({"wall": time.perf_counter() - start, "sim_wall": stats[0].wall_s, "peak": kib("VmHWM:"),
                  "params": n_params, "train": max(train), "switches": stats[0].switches}))
"""
_SCHEDULER_SCRIPT = """
import heapq, sys, time
from greenlet import getcurrent, greenlet
nodes, rounds = int(sys.argv[1]), int(sys.argv[2])
hub, clock = getcurrent(), [0.0] * nodes
def body(rank):
    hub.switch()  # started by the hub
    for i in range(rounds):
        t = clock[rank] = clock[rank] + 1.0 + (rank * 7_919 + i) % 101 * 1e-3
        if heap[0] < (t, rank):
            g = nodes_[heap[0][1]]
            heapq.heapreplace(heap, (t, rank))
            g.switch()
nodes_ = [greenlet(lambda r=r: body(r), parent=hub) for r in range(nodes)]
heap = [(0.0, r) for r in range(nodes)]
for g in nodes_:
    g.switch()
start = time.perf_counter()
while heap:
    nodes_[heapq.heappop(heap)[1]].switch()
print((time.perf_counter() - start) / (nodes * rounds))
"""


def scheduler_seconds(nodes: int, rounds: int = 10) -> float:
    """Seconds per switch of the simulator's scheduler, alone, at `nodes` nodes: a pausing node puts its next
    instant on the heap in place of the earliest node's and switches straight to that node (what `Cluster.pause`
    does, without the bookkeeping). In a fresh process: the floor under any simulation's cost per switch at that
    size (memory locality, not Python, makes it grow with the node count)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c", _SCHEDULER_SCRIPT, str(nodes), str(rounds)], capture_output=True, text=True, check=True
    )
    return float(proc.stdout.strip().splitlines()[-1])


def bench_sim_cost_only(ctx: BenchContext) -> list[Row]:
    """65,536 cost-only nodes x 100 SwarmSGD steps each (`--cost-only-nodes`, `--cost-only-steps`,
    `--cost-only-algo`; `--compute cost-only`, the default workload: the MLP on MNIST, vm-core, 10 GbE), each
    algorithm in a fresh process: its wall time (resolving the cost model, building the nodes, simulating) and its
    peak resident memory (VmHWM, the whole Python process with torch loaded). ``node-steps/s`` divides by the
    simulation's wall time, node building included, ``us/node-step`` is its inverse. ``scheduler floor s`` is
    what the run's greenlet switches cost alone (`scheduler_seconds` at the same node count, times the switches):
    the part of the wall time no per-step saving in the comm layer or the algorithms can remove."""
    import json
    import subprocess

    nodes, steps = ctx.cost_only_nodes, ctx.cost_only_steps
    node_steps = nodes * steps
    per_switch = scheduler_seconds(nodes)
    rows = []
    for algo in ctx.cost_only_algos:
        args = [str(nodes), str(steps), algo, "mlp", "mnist"]
        proc = subprocess.run([sys.executable, "-c", _COST_ONLY_SCRIPT, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise UserError(f"sim-cost-only with --cost-only-algo {algo} failed: {why}")
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "bench": "sim-cost-only",
                "algorithm": algo,
                "nodes": nodes,
                "node-steps": node_steps,
                "wall s": m["wall"],
                "node-steps/s": node_steps / m["sim_wall"],
                "us/node-step": 1e6 * m["sim_wall"] / node_steps,
                "process GiB": m["peak"] / 2**30,
                "simulated s": m["train"],
                "switches": m["switches"],
                "scheduler floor s": m["switches"] * per_switch,
            }
        )
    return rows


PROFILE_CASES = [
    ("mlp", (1, 28, 28)),
    ("mlp", (1, 8, 8)),
    ("mlp", (32,)),
    ("mlp", (3, 32, 32)),
    ("logreg", (1, 28, 28)),
    ("logreg", (1, 8, 8)),
    ("logreg", (32,)),
    ("lenet5", (1, 28, 28)),
    ("lenet5", (3, 32, 32)),
    ("resnet20", (1, 28, 28)),
    ("resnet20", (3, 32, 32)),
]


# The paper's workloads (`--cases paper`), with their datasets' classes: ImageNet's 1,000, CIFAR-10's 10, and the
# WMT14 en-de vocabulary of 33,712 tokens over 128-token windows (`bench.engine.sim.costonly.SHAPES`).
PAPER_PROFILE_CASES = [
    ("torchvision:resnet18", (3, 224, 224), 1000),
    ("torchvision:resnet50", (3, 224, 224), 1000),
    ("resnet18", (3, 32, 32), 10),
    ("resnet50", (3, 32, 32), 10),
    ("transformer-base", (128,), 33_712),
    ("transformer-big", (128,), 33_712),
]
PROFILE_PARTS = ("small", "paper", "work")


def bench_sim_profile(ctx: BenchContext) -> list[Row]:
    """A compute profile for the simulator, measured here: per (model, input shape) the forward/backward time at
    batches 8, 32 and 128 and the optimizer update's time, in milliseconds; then the comm layer's work (copy,
    averaging arithmetic, encode/decode per quantizer and width) as fixed microseconds + nanoseconds per coordinate.
    `--cases` picks the parts: `small` (this project's models), `paper` (the SwarmSGD paper's ResNets and
    Transformers), `work`; `--precision amp` measures the steps in mixed precision (CUDA).

    One torch thread on the CPU (a node = one core); on CUDA cuDNN picks its fastest kernels per shape
    (`cudnn.benchmark`, as NVIDIA's recipes set it). Each point is the smallest of 3 medians of ``--repeats`` steps,
    so other tenants of a shared machine inflate it less. The rows are what `COMPUTE_PROFILES` takes.
    """
    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    if ctx.device.type == "cpu":
        torch.set_num_threads(1)
    else:
        torch.backends.cudnn.benchmark = True
    cases = [(m, s, 10) for m, s in PROFILE_CASES] if "small" in ctx.cases else []
    cases += PAPER_PROFILE_CASES if "paper" in ctx.cases else []
    rows: list[Row] = []
    try:
        for model, shape, classes in cases:
            batches = (8, 32, 128)
            fbs, ups = [], []
            for b in batches:
                runs = [
                    measure_step(model, shape, classes, b, repeats=ctx.repeats, device=str(ctx.device), amp=ctx.amp)
                    for _ in range(3)
                ]
                fbs.append(min(r[0] for r in runs))
                ups.append(min(r[1] for r in runs))
            rows.append(
                {
                    "bench": "sim-profile",
                    "precision": "amp" if ctx.amp else "fp32",
                    "model": model,
                    "input": shape_key(shape),
                    "fb ms b8": fbs[0] * 1e3,
                    "fb ms b32": fbs[1] * 1e3,
                    "fb ms b128": fbs[2] * 1e3,
                    "update ms": 1e3 * min(ups),
                }
            )
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
        if "work" in ctx.cases:
            for op, fixed, per in measure_work(repeats=ctx.repeats, device=str(ctx.device)):
                rows.append({"bench": "sim-profile work", "op": op, "fixed us": fixed * 1e6, "ns/coord": per * 1e9})
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
    return rows


def _pingpong(rank: int, store: str, sizes: list[int], iters: int, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    out = {}
    for size in sizes:
        buf = torch.zeros(size, dtype=torch.uint8)
        times = []
        for i in range(iters + 5):
            dist.barrier()
            t0 = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            else:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            if i >= 5:
                times.append((time.perf_counter() - t0) / 2)  # one way
        out[size] = statistics.median(times)
    grads = torch.zeros(118_282)  # the default MLP's gradient
    times = []
    for i in range(iters + 5):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(grads)
        if i >= 5:
            times.append(time.perf_counter() - t0)
    out["allreduce"] = statistics.median(times)
    # The same link as the real engine's comm layer sees it: TorchComm (its responder thread running) allreduces.
    comm = TorchComm(rank, 2, build_topology("complete", 2), 120.0)
    for numel in ENGINE_ALLREDUCE_NUMELS:
        t = torch.zeros(numel)
        times = []
        for i in range(iters + 5):
            dist.barrier()
            t0 = time.perf_counter()
            comm.allreduce_sum(t, "grad")
            if i >= 5:
                times.append(time.perf_counter() - t0)
        out[f"engine {4 * numel}"] = statistics.median(times)
    comm.close()
    if rank == 0:
        queue.put(out)
    dist.destroy_process_group()


ENGINE_ALLREDUCE_NUMELS = (1024, 16_384, 118_282, 1 << 20)


def measure_loopback(iters: int) -> tuple[float, float, list[Row]]:
    """(latency s, bandwidth Gb/s, rows) of the loopback link between two local processes.

    Two fits: the raw link (gloo send/recv ping-pong, one-way time = a + b / B) and the link as the real engine's
    comm layer uses it (`TorchComm.allreduce_sum` with its responder thread running, 2-process ring time =
    2 a + b / B). The second is returned: it is what the engine's collectives pay.
    """
    import multiprocessing as mp
    import tempfile

    import numpy as np

    sizes = [8, 4096, 65536, 1 << 20, 4 << 20]
    ctx_mp = mp.get_context("spawn")
    queue = ctx_mp.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/store"
        procs = [ctx_mp.Process(target=_pingpong, args=(r, store, sizes, iters, queue)) for r in (0, 1)]
        for p in procs:
            p.start()
        out = queue.get(timeout=600)
        for p in procs:
            p.join()
    a = np.vstack([np.ones(len(sizes)), np.array(sizes, dtype=float)]).T
    (lat, inv_bw), *_ = np.linalg.lstsq(a, np.array([out[s] for s in sizes]), rcond=None)
    lat = max(float(lat), 1e-7)
    bandwidth_gbps = 8 / float(inv_bw) / 1e9
    rows: list[Row] = [
        {
            "bench": "sim-network",
            "what": f"one-way {s} B",
            "measured us": out[s] * 1e6,
            "model us": (lat + s * inv_bw) * 1e6,
        }
        for s in sizes
    ]
    model = CostModel("-", 0, 0, "loopback", bandwidth_gbps, lat * 1e6, "ring")
    rows.append(
        {
            "bench": "sim-network",
            "what": "allreduce 473 KB, 2 procs",
            "measured us": out["allreduce"] * 1e6,
            "model us": model.allreduce_seconds(4 * 118_282, 2) * 1e6,
        }
    )
    rows.append(
        {"bench": "sim-network", "what": "fit: raw link", "latency us": lat * 1e6, "bandwidth Gb/s": bandwidth_gbps}
    )
    engine_sizes = [4 * n for n in ENGINE_ALLREDUCE_NUMELS]
    a = np.vstack([np.ones(len(engine_sizes)), np.array(engine_sizes, dtype=float)]).T
    (two_lat, inv_bw2), *_ = np.linalg.lstsq(a, np.array([out[f"engine {b}"] for b in engine_sizes]), rcond=None)
    lat2, bw2 = max(float(two_lat) / 2, 1e-7), 8 / float(inv_bw2) / 1e9
    rows += [
        {
            "bench": "sim-network",
            "what": f"engine allreduce {b} B",
            "measured us": out[f"engine {b}"] * 1e6,
            "model us": (2 * lat2 + b * 8 / bw2 / 1e9) * 1e6,
        }
        for b in engine_sizes
    ]
    rows.append({"bench": "sim-network", "what": "fit: comm layer", "latency us": lat2 * 1e6, "bandwidth Gb/s": bw2})
    return lat2, bw2, rows


def bench_sim_network(ctx: BenchContext) -> list[Row]:
    """The `loopback` network profile, measured between two local processes: the raw link (gloo send/recv
    ping-pong, b = 8 B .. 4 MB fitted as latency + b / bandwidth, checked against a raw 2-process allreduce of the
    default MLP's gradient) and the link as the real engine's comm layer uses it (its allreduce, fitted with the
    ring formula)."""
    return measure_loopback(ctx.repeats * 4)[2]


def compare_engines(real, simulated) -> list[Row]:
    """Per algorithm: the real engine's samples/s (and comm fraction) against the simulator's, from two summary
    frames of the same configuration. ``sim/real`` is the throughput ratio; ``within 25%`` checks |ratio - 1|."""
    rows: list[Row] = []
    sim_by = simulated.set_index("algorithm")
    for r in real.to_dict("records"):
        algo = r["algorithm"]
        if algo not in sim_by.index:
            continue
        s = sim_by.loc[algo]
        ratio = float(s["samples_per_s"]) / float(r["samples_per_s"])
        rows.append(
            {
                "bench": "sim-validate",
                "algorithm": algo,
                "nodes": int(r["nodes"]),
                "real samples/s": float(r["samples_per_s"]),
                "sim samples/s": float(s["samples_per_s"]),
                "sim/real": ratio,
                "within 25%": abs(ratio - 1) <= 0.25,
                "real comm": float(r["comm_fraction"]),
                "sim comm": float(s["comm_fraction"]),
                "real step ms": 1e3 * float(r["step_seconds_median"]),
                "sim step ms": 1e3 * float(s["step_seconds_median"]),
            }
        )
    return rows


def _median_summary(frames):
    """Per algorithm (first frame's order), the median of every numeric column over repeated runs."""
    import pandas as pd

    both = pd.concat(frames, ignore_index=True)
    order = list(frames[0]["algorithm"])
    med = both.groupby("algorithm").median(numeric_only=True)
    return med.loc[[a for a in order if a in med.index]].reset_index()


def validate_sim(node_counts=VALIDATE_NODES, epochs=VALIDATE_EPOCHS, pairs=3, stop_when_within=False) -> list[Row]:
    """The simulator against the real engine on this machine: per node count, `pairs` times a real run
    (`swarmbench run --nodes N --epochs E`, every algorithm, the default dataset and model) right followed by the
    simulated one (the same plus `--engine sim --calibrate host`, whose probe times compute and each comm
    operation on N real processes but never runs an algorithm); then the median throughput of each side per
    algorithm. Real and simulated runs alternate so that a drift of the machine's speed hits both. Nothing is
    fitted to the throughputs compared. `stop_when_within`: stop adding pairs once every algorithm is within 25 %
    (the CI test's budget); the rows say how many pairs were taken."""
    import contextlib
    import io
    import tempfile

    import pandas as pd

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for nodes in node_counts:
            base = {"nodes": nodes, "epochs": epochs, "eval_every": epochs}
            sides: dict[str, list] = {"real": [], "sim": []}
            table: list[Row] = []
            for k in range(pairs):
                for label, opts in (("real", base), ("sim", {**base, "engine": "sim", "calibrate": "host"})):
                    out = f"{tmp}/{label}{nodes}-{k}"
                    with contextlib.redirect_stdout(io.StringIO()):
                        code = execute(
                            resolve(opts), out, argv=["bench.diagnostics.benchmarks", "sim-validate"], interactive=False
                        )
                    if code != 0:
                        raise RuntimeError(f"{label} run at {nodes} nodes failed (exit {code})")
                    sides[label].append(pd.read_csv(f"{out}/summary.csv"))
                table = compare_engines(_median_summary(sides["real"]), _median_summary(sides["sim"]))
                if stop_when_within and all(row["within 25%"] for row in table):
                    break
            rows += [{**row, "pairs": len(sides["real"])} for row in table]
    return rows


def bench_sim_validate(ctx: BenchContext) -> list[Row]:
    """`validate_sim` at N = 2 and 4 with min(--repeats, 5) pairs: the target is |sim/real - 1| <= 0.25 for every
    algorithm."""
    return validate_sim(pairs=min(ctx.repeats, 5))


# --------------------------------------------------------------------------------------------------
# AllReduce SGD against raw DDP and raw Horovod (bench/diagnostics/rawdp.py)
# --------------------------------------------------------------------------------------------------

DP_CASES = [  # (model, dataset, epochs): a few seconds of training per run on 2 CPU processes
    ("mlp", "mnist", 6),
    ("resnet20", "digits", 6),
]
DP_NODES = 2
DP_BATCH = 32
DP_TARGET = 0.97  # swarmbench's samples/s over the raw script's, median of alternating runs


def _swarmbench_throughput(opts: dict[str, Any], tmp: str, label: str) -> tuple[float, float]:
    """(samples/s, median step seconds) of one `swarmbench run` of AllReduce SGD."""
    import contextlib
    import io

    import pandas as pd

    out = f"{tmp}/{label}"
    with contextlib.redirect_stdout(io.StringIO()):
        code = execute(resolve(opts), out, argv=["bench.diagnostics.benchmarks", "ddp"], interactive=False)
    if code != 0:
        raise RuntimeError(f"swarmbench run {label} failed (exit {code})")
    row = pd.read_csv(f"{out}/summary.csv").iloc[0]
    return float(row["samples_per_s"]), float(row["step_seconds_median"])


def compare_dp(device: str = "cpu", pairs: int = 3, cases=DP_CASES, horovod: bool | None = None) -> list[Row]:
    """swarmbench's AllReduce SGD (`swarmbench run --algo allreduce`, its default buckets) against the raw scripts
    of `bench.diagnostics.rawdp` on the same model, data, batch and world size: DDP with the local launcher on
    torch.distributed (gloo on the CPU, nccl on CUDA), and, when Horovod is importable, Horovod's
    DistributedOptimizer against `--launcher horovodrun --allreduce-impl horovod`.

    The runs of a pair go back to back, the order flipping from pair to pair, so that a drift of a shared machine's
    speed hits both sides alike. ``ratio`` is swarmbench's median samples/s over the reference's (all ranks' samples
    over the slowest rank's training time, evaluation and start-up excluded, the same quantity on both sides);
    ``step ratio`` the reference's median step time over swarmbench's (the median over ranks of each rank's median
    step after the warm-up steps), which a few slow steps move less."""
    import importlib.util
    import tempfile

    from bench.diagnostics import rawdp

    if horovod is None:
        horovod = importlib.util.find_spec("horovod") is not None and _horovod_runs_on(device)
    backend = "nccl" if device == "cuda" else "gloo"
    refs = [("DDP", "ddp", {"launcher": "local"})]
    if horovod:
        refs.append(("Horovod", "horovod", {"launcher": "horovodrun", "allreduce_impl": "horovod"}))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        for model, dataset, epochs in cases:
            settings = {"model": model, "dataset": dataset, "epochs": epochs, "batch_size": DP_BATCH, "seed": 0}
            settings.update(nodes=DP_NODES, lr=0.05, momentum=0.9)
            for ref, impl, launch in refs:
                opts = {**settings, **launch, "algorithms": ["allreduce"], "eval_every": epochs}
                opts.update(device=device, backend=backend)
                spec = {**settings, "impl": impl, "device": device, "backend": backend}
                ours, theirs = [], []
                for k in range(pairs):
                    for side in ("ours", "theirs") if k % 2 == 0 else ("theirs", "ours"):
                        if side == "ours":
                            ours.append(_swarmbench_throughput(opts, tmp, f"{model}-{impl}-{k}"))
                        else:
                            theirs.append(rawdp.measure(spec))
                sps = statistics.median(s for s, _ in ours), statistics.median(s for s, _ in theirs)
                step = statistics.median(t for _, t in ours), statistics.median(t for _, t in theirs)
                rows.append(
                    {
                        "bench": "ddp",
                        "model": model,
                        "dataset": dataset,
                        "reference": ref,
                        "device": device,
                        "nodes": DP_NODES,
                        "swarmbench samples/s": sps[0],
                        "reference samples/s": sps[1],
                        "ratio": sps[0] / sps[1],
                        f">= {DP_TARGET}": sps[0] / sps[1] >= DP_TARGET,
                        "swarmbench step ms": 1e3 * step[0],
                        "reference step ms": 1e3 * step[1],
                        "step ratio": step[1] / step[0],
                        "pairs": pairs,
                        "pair ratios": " ".join(f"{a[0] / b[0]:.2f}" for a, b in zip(ours, theirs, strict=True)),
                    }
                )
    return rows


def _horovod_runs_on(device: str) -> bool:
    """Horovod allreduces CUDA tensors only when built with NCCL (a CPU-only build has MPI and Gloo ops)."""
    if device != "cuda":
        return True
    import horovod.torch as hvd

    return bool(hvd.nccl_built())


def bench_ddp(ctx: BenchContext) -> list[Row]:
    """`compare_dp` on --device with min(--repeats, 3) pairs: AllReduce SGD's samples/s over raw DDP's and raw
    Horovod's, on the MLP (MNIST) and ResNet-20 (8x8 digits), 2 processes; the target is a ratio >= 0.97."""
    return compare_dp(ctx.device.type, pairs=min(ctx.repeats, 3))


BENCHMARKS: list[Benchmark] = [
    Benchmark("codec", "encode+decode GB/s per wire format, one CPU thread, 1M float32", bench_codec),
    Benchmark("sim", "simulated cluster: 256 nodes x 1 epoch, every algorithm: node-steps/s, overhead", bench_sim),
    Benchmark("sim-memory", "simulated cluster: peak memory of 512 and 4,096 MLP nodes", bench_sim_memory),
    Benchmark(
        "sim-cost-only",
        "cost-only simulation: 65,536 nodes x 100 SwarmSGD steps, wall time and peak memory",
        bench_sim_cost_only,
    ),
    Benchmark("ddp", "AllReduce SGD samples/s over raw DDP's and Horovod's: MLP and ResNet-20, 2 processes", bench_ddp),
    Benchmark("sim-profile", "compute profile of this machine for the simulator", bench_sim_profile, False),
    Benchmark("sim-network", "loopback network profile (gloo ping-pong) for the simulator", bench_sim_network, False),
    Benchmark("sim-validate", "simulated vs real throughput at 2 and 4 nodes (calibrated)", bench_sim_validate, False),
]


# --------------------------------------------------------------------------------------------------
# table and CLI
# --------------------------------------------------------------------------------------------------


def _columns(rows: Sequence[Row]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    return cols


def _numeric(rows: Sequence[Row], cols: list[str]) -> list[bool]:
    """Per column: every row holds a number there (or nothing): right-aligned."""
    return [all(isinstance(row.get(c), (int, float)) or c not in row for row in rows) for c in cols]


def render_table(rows: Sequence[Row]) -> str:
    """Plain aligned text: text columns left-aligned, numbers right-aligned."""
    cols = _columns(rows)
    cells = [[fmt_auto(row.get(c)) for c in cols] for row in rows]
    numeric = _numeric(rows, cols)
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _print_rich(rows: Sequence[Row]) -> None:
    cols = _columns(rows)
    justify = ["right" if num else "left" for num in _numeric(rows, cols)]
    print_table(cols, [[fmt_auto(row.get(c)) for c in cols] for row in rows], justify=justify)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    names = ", ".join(b.name for b in BENCHMARKS)
    p = argparse.ArgumentParser(prog="python -m bench.diagnostics.benchmarks", description=__doc__.splitlines()[0])
    default = ", ".join(b.name for b in BENCHMARKS if b.default)
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default: {default}): {names}")
    p.add_argument("--device", default="cpu", help="torch device to run on (default: cpu)")
    p.add_argument("--repeats", type=int, default=25, help="timed repetitions per measurement (median)")
    p.add_argument(
        "--cost-only-steps", type=int, default=COST_ONLY_STEPS, help="steps per node of sim-cost-only (default: 100)"
    )
    p.add_argument(
        "--cost-only-nodes",
        type=int,
        default=COST_ONLY_NODES,
        help=f"nodes of sim-cost-only (default: {COST_ONLY_NODES:,})",
    )
    p.add_argument(
        "--cost-only-algo",
        action="append",
        help="algorithm of sim-cost-only, repeatable: each runs in a fresh process (default: swarm)",
    )
    p.add_argument(
        "--cases",
        default="small,work",
        help=f"sim-profile: comma-separated parts of {', '.join(PROFILE_PARTS)} (default: small,work)",
    )
    p.add_argument(
        "--precision", default="fp32", choices=("fp32", "amp"), help="sim-profile: steps in fp32 or mixed precision"
    )
    return p.parse_args(argv)


def _select(names: Sequence[str]) -> list[Benchmark]:
    if not names:
        return [b for b in BENCHMARKS if b.default]
    known = {b.name: b for b in BENCHMARKS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(known)}")
    return [known[n] for n in names]


def _context(args: argparse.Namespace) -> BenchContext:
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise UserError(f"--device {args.device!r} is not a torch device ({err}); use cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats} must be >= 1")
    if args.cost_only_steps < 1:
        raise UserError(f"--cost-only-steps {args.cost_only_steps} must be >= 1")
    if not 2 <= args.cost_only_nodes <= sim.MAX_COST_ONLY_NODES:
        raise UserError(f"--cost-only-nodes {args.cost_only_nodes}: use 2 to {sim.MAX_COST_ONLY_NODES:,}")
    algos = tuple(args.cost_only_algo or ("swarm",))
    unknown_algos = [a for a in algos if a not in ALGORITHMS]
    if unknown_algos:
        raise UserError(f"--cost-only-algo {', '.join(unknown_algos)}: choose from {', '.join(ALGORITHMS)}")
    cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
    unknown = [c for c in cases if c not in PROFILE_PARTS]
    if unknown or not cases:
        raise UserError(f"--cases {args.cases!r}: choose among {', '.join(PROFILE_PARTS)}, comma-separated")
    if args.precision == "amp" and device.type != "cuda":
        raise UserError("--precision amp is measured on CUDA only; use --device cuda or --precision fp32")
    return BenchContext(
        device=device,
        repeats=args.repeats,
        cost_only_steps=args.cost_only_steps,
        cost_only_nodes=args.cost_only_nodes,
        cost_only_algos=algos,
        cases=cases,
        amp=args.precision == "amp",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks and print one table; exit status 2 on a user error."""
    args = _parse(argv)
    try:
        selected = _select(args.names)
        ctx = _context(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows: list[Row] = []
    for bench in selected:
        rows += bench.run(ctx)
    if sys.stdout.isatty():
        _print_rich(rows)
    else:
        print(render_table(rows))
    print(
        f"device: {ctx.device}, torch {torch.__version__}, median of {ctx.repeats} runs after {ctx.warmup} warm-up"
        " (codec: 1 CPU thread; 'vs 32b' = round-trip time / raw 32-bit round-trip time)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
