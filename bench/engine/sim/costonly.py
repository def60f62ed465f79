"""Cost-only simulation (`--engine sim --compute cost-only`): the algorithms and the simulated cluster as in a real
simulation, but no data and no training. Every node's model is a stand-in (`StandIn`, all zero, never trained) with
the workload's list of parameter tensors, a coordinate or a few in each and `STAND_IN` at least in all
(`Workload.stand_in`), and the cluster charges what it moves and computes as the named workload's (`Workload`):

- bytes: each message of the stand-in (its encoding, with the stamps and failure bitmaps that travel with it) is
  charged the size of the same message for the workload's N coordinates (`ChargedSizes`: an exact table built from
  the codec's own size formulas, so quantized messages count their packed bytes and headers for N coordinates);
  request headers are real control bytes, charged as they are;
- allreduces: a whole model-sized buffer for N coordinates; a slice of one (AllReduce SGD's gradient buckets) as
  the same parameters of the workload (`ChargedSizes.span`), ready after the share of the backward pass that
  computes them, as a real simulation dates a bucket;
- comm-layer work (copies, averaging arithmetic, codec): charged for N coordinates;
- compute: the two sections of a step are charged from the compute profile's entry for the workload (model and
  input shape) at the run's batch size, exactly as a real simulation charges them; no torch runs in them. An
  algorithm that registered gradient hooks (`Node.on_gradient`: AllReduce SGD's buckets, cut by DDP's rule from the
  workload's parameter sizes, `Node.charged_numels`) has them called inside the forward/backward section, in
  reverse parameter order as a backward pass calls them, so its buckets overlap the backward pass as in a real
  simulation; for the others nothing runs there.

So a cost-only run charges the same time and bytes as a real simulation of the same workload whenever the
algorithm's control flow does not depend on the model's values (every algorithm at 32 bits; with lattice
quantization a real run may skip buckets that fail to decode, the stand-in's never fail). Each node holds a few
tens of kB (`NODE_BYTES`, and `TENSOR_BYTES` per parameter tensor of the workload), so a run reaches
`bench.engine.sim.cluster.MAX_COST_ONLY_NODES` nodes. Throughput, communication, staleness and the time line are
measured; accuracy is not.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import gc
import itertools
import random
import time
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from bench.base.console import closest
from bench.base.errors import UserError
from bench.core.codec import Codec
from bench.core.comm import RAW, STAMP_BYTES, CommStats
from bench.core.compress import Compressor, CompressorOptions
from bench.core.protocol import Node
from bench.core.topology import build_topology
from bench.engine.sim.cluster import CellStats, Cluster, Sizes, available_bytes, backward_share, cell_events
from bench.engine.sim.costmodel import CostModel
from bench.training.config import Hyper, algo_config, hyper
from bench.training.loop import Recorder, make_codec, node_seed, record_totals, run_rounds
from bench.training.registry import ALGORITHMS

STAND_IN = 16  # coordinates of the stand-in model every node moves
NODE_BYTES = 40_000  # memory of one cost-only node (comm, clock, greenlet, stand-in, algorithm), rounded up
TENSOR_BYTES = 800  # and of each parameter tensor of its stand-in (a leaf; with AllReduce SGD, its hook), rounded up

# Input shape and classes (vocabulary) of each dataset name a cost-only run accepts: no data is read.
SHAPES: dict[str, tuple[tuple[int, ...], int, str]] = {
    "mnist": ((1, 28, 28), 10, "MNIST digits"),
    "mnist-full": ((1, 28, 28), 10, "MNIST digits"),
    "fashion-mnist": ((1, 28, 28), 10, "Fashion-MNIST"),
    "digits": ((1, 8, 8), 10, "scikit-learn 8x8 digits"),
    "synthetic": ((32,), 10, "32-feature vectors"),
    "cifar10": ((3, 32, 32), 10, "CIFAR-10"),
    "cifar100": ((3, 32, 32), 100, "CIFAR-100"),
    "imagenet": ((3, 224, 224), 1000, "ImageNet-1k at 224x224 (the usual training crop)"),
    # NVIDIA's WMT14 en-de preprocessing: 33,708 shared BPE tokens plus fairseq's 4 special ones; 128-token windows.
    "wmt14": ((128,), 33_712, "WMT14 English-German, 128-token windows"),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """What a cost-only run charges: the model's parameters on the dataset's input shape."""

    model: str
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    numels: tuple[int, ...]  # each parameter tensor's coordinates, in parameter order (the real model's, built once)

    @property
    def parameters(self) -> int:
        return sum(self.numels)

    def stand_in(self) -> tuple[int, ...]:
        """The stand-in's parameter list: one parameter per parameter of the workload, `STAND_IN` coordinates in
        all (one each where the workload has more parameters), spread as evenly as they go."""
        count = max(1, len(self.numels))
        each, extra = divmod(max(STAND_IN, count), count)
        return (each + 1,) * extra + (each,) * (count - extra)


def workload(cfg) -> Workload:
    """The named workload; its parameter sizes from building the real model (once, on the CPU)."""
    from bench.core.models import build_model

    shape, classes, _ = SHAPES[cfg.dataset]
    model = build_model(cfg.model, shape, classes, cfg.seed)
    return Workload(cfg.model, cfg.dataset, shape, classes, tuple(p.numel() for p in model.parameters()))


class ChargedSizes(Sizes):
    """The stand-in's messages charged as the workload's: a table from each message size the stand-in produces
    (encoding; stamp + encoding; encoding + failure bitmap; stamp + bitmap + encoding; raw float32 values; raw
    values and a push-sum weight; two raw vectors) to the same message's size for `charged` coordinates. A size
    outside the table is an error, never silently kept.

    `layout`: the stand-in's parameter sizes and the workload's (one parameter of each model, if not given). A
    slice of a stand-in-sized buffer (a gradient bucket) is charged as the same slice of the workload's buffer:
    each of its ends moved from its place in a stand-in parameter to the same place in the workload's."""

    def __init__(
        self,
        codec: Codec,
        stand_in: int,
        charged: int,
        own: Compressor | None = None,
        layout: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    ) -> None:
        self.stand_in, self.charged = stand_in, charged
        small, big = layout or ((stand_in,), (charged,))
        if sum(small) != stand_in or sum(big) != charged or len(small) != len(big):
            raise ValueError(f"a layout of {len(small)} and {len(big)} parameters is not {stand_in} -> {charged}")
        self._bounds = (list(itertools.accumulate(small, initial=0)), list(itertools.accumulate(big, initial=0)))
        self.table: dict[int, int] = {}
        w, f = codec.wire_bytes, codec.bitmap_bytes
        # An algorithm that owns its compressor (Choco's, LEAD's) sends its messages instead of the codec's.
        codec_sizes = (w, lambda n: STAMP_BYTES + w(n), lambda n: w(n) + f(n), lambda n: STAMP_BYTES + f(n) + w(n))
        for size in (
            *((own.wire_bytes,) if own else codec_sizes),
            lambda n: 4 * n,
            lambda n: 4 * (n + 1),  # raw float32 values and one weight (push-sum's message, SGP)
            lambda n: 8 * n,  # two raw float32 vectors in one message (gradient tracking's model and tracker)
        ):
            small, big = size(stand_in), size(charged)
            if self.table.setdefault(small, big) != big:
                raise UserError(
                    f"cost-only cannot tell two messages of the {stand_in}-coordinate stand-in apart (both {small} "
                    "bytes): change the compression settings (--bits, the algorithm's topk_ratio) or run --compute real"
                )

    def bytes(self, nbytes: int) -> int:
        try:
            return self.table[nbytes]
        except KeyError:
            raise RuntimeError(
                f"cost-only: a message of {nbytes} bytes is none of the stand-in model's messages "
                f"({', '.join(map(str, sorted(self.table)))}): this algorithm sends something cost-only cannot charge"
            ) from None

    def coords(self, numel: int) -> int:
        if numel in (self.stand_in, self.stand_in + 1):  # the model (and its push-sum weight)
            return numel - self.stand_in + self.charged
        return round(numel * self.charged / self.stand_in)

    def span(self, t: torch.Tensor) -> tuple[int, float]:
        if t.untyped_storage().nbytes() != self.stand_in * t.element_size() or not t.is_contiguous():
            return self.coords(t.numel()), backward_share(t)  # not a slice of a model-sized buffer
        start = self._charged_offset(t.storage_offset())
        end = self._charged_offset(t.storage_offset() + t.numel())
        return end - start, (self.charged - start) / self.charged if self.charged else 1.0

    def _charged_offset(self, offset: int) -> int:
        """Where `offset` of a stand-in-sized buffer lies in the workload's: the same parameter, at the same share
        of it (its ends exactly)."""
        small, big = self._bounds
        i = min(bisect.bisect_right(small, offset), len(small) - 1) - 1
        width = small[i + 1] - small[i]
        return big[i] + round((offset - small[i]) * (big[i + 1] - big[i]) / width) if width else big[i]


class ChargedStats(CommStats):
    """A node's counters with every message of a data kind counted at its charged size (control is real)."""

    def __init__(self, sizes: ChargedSizes) -> None:
        super().__init__()
        self._sizes = sizes

    def add(self, kind: str, *, sent: int = 0, recv: int = 0, msgs_sent: int = 0, msgs_recv: int = 0) -> None:
        if kind != "control":
            sent = msgs_sent * self._sizes.bytes(sent // msgs_sent) if msgs_sent else sent
            recv = msgs_recv * self._sizes.bytes(recv // msgs_recv) if msgs_recv else recv
        super().add(kind, sent=sent, recv=recv, msgs_sent=msgs_sent, msgs_recv=msgs_recv)


class StandIn:
    """The model every node of a cost-only run holds: the workload's parameter list (`Workload.stand_in`), zeros,
    each parameter a leaf viewing the flat parameter buffer as `flatten_model` lays them out. No backward pass runs
    over it (`run_cost_cell` calls the gradient hooks recorded by `Node.on_gradient`), so the gradients are the flat
    gradient buffer only. It offers what the algorithms use of a module: `parameters()`, `buffers()` (none)."""

    __slots__ = ("_params",)

    def __init__(self, flat: torch.Tensor, numels: tuple[int, ...]) -> None:
        # Leaves sharing the buffer's storage. No autograd runs on them, so they require no gradient (and hold none
        # of autograd's state: about half the memory of parameters that do).
        self._params = [nn.Parameter(view, requires_grad=False) for view in flat.split(numels)]

    def parameters(self):
        return iter(self._params)

    def buffers(self):
        return iter(())


def check(cfg) -> None:
    """A cost-only run's own checks (no data, no torch model built): each failure one line."""
    from bench.core.models import model_spec

    if cfg.compute != "cost-only":
        if cfg.steps is not None:
            raise UserError(
                "--steps sets the length of a cost-only simulation: add --compute cost-only or use --epochs"
            )
        return
    if cfg.target_acc is not None or cfg.target_ppl is not None:
        raise UserError("--compute cost-only trains nothing, so no accuracy is reached: drop --target-acc/--target-ppl")
    if cfg.dataset not in SHAPES:
        raise UserError(
            f"--compute cost-only knows the input shapes of {', '.join(SHAPES)}, not '{cfg.dataset}'"
            f"{closest(cfg.dataset, SHAPES)}: choose one of them with --dataset"
        )
    model_spec(cfg.model)  # an unknown model: one line naming the closest
    if cfg.steps is None or cfg.steps < 1:
        got = "" if cfg.steps is None else f" (got {cfg.steps})"
        raise UserError(f"--compute cost-only runs a fixed number of steps per node: pass --steps N with N >= 1{got}")
    if cfg.calibrate != "none":
        raise UserError(
            f"--calibrate {cfg.calibrate} times real training, which --compute cost-only does not run: "
            "use a compute profile (--profile) or --step-time"
        )
    if cfg.eval_samples is not None:
        raise UserError("--compute cost-only evaluates nothing: drop --eval-samples")
    for name in cfg.algorithms:  # the stand-in's messages must all differ in size (an exchange the table can charge)
        codec = make_codec(cfg) if ALGORITHMS[name].quantizable else None
        ChargedSizes(codec or RAW, STAND_IN, 10**6, own_compressor(cfg, name))
    tensors = [name for name in cfg.algorithms if ALGORITHMS[name].needs_tensors]
    if tensors:
        raise UserError(
            f"{', '.join(tensors)} work(s) on the model's own tensors, which the cost-only stand-in does not have: "
            "leave it out of --algo or run --compute real"
        )


def charged_sizes(cfg, name: str, wl: Workload, codec: Codec | None) -> ChargedSizes:
    """How algorithm `name` of this run has its stand-in's messages and allreduces charged (`codec`: the run's,
    when the algorithm is quantizable)."""
    stand_in = wl.stand_in()
    own = own_compressor(cfg, name)
    return ChargedSizes(codec or RAW, sum(stand_in), wl.parameters, own, (stand_in, wl.numels))


def check_workload(cfg, wl: Workload) -> None:
    """The stand-in of this workload charges every algorithm's messages apart (`ChargedSizes` says which do not)."""
    for name in cfg.algorithms:
        charged_sizes(cfg, name, wl, make_codec(cfg) if ALGORITHMS[name].quantizable else None)


def own_compressor(cfg, name: str) -> Compressor | None:
    """The compressor algorithm `name` owns in this run (Choco's, LEAD's `compressor`), if any."""
    options = algo_config(cfg, name)
    return options.build() if isinstance(options, CompressorOptions) else None


COST_ONLY_FACT = (
    "cost-only: every node moves a stand-in with the workload's parameter tensors, of a coordinate or a few each "
    "(16 at least); bytes, allreduces (gradient buckets by their place in the model), comm-layer work and compute "
    "are charged as the workload's (model_parameters coordinates, the compute profile's step)"
)
NO_ACCURACY = (
    "accuracy: none measured: --compute cost-only moves a stand-in payload and trains no model "
    "(run --compute real for accuracy)"
)


def cost_only_bytes(nodes: int, wl: Workload) -> int:
    """Memory a cost-only run of `nodes` nodes of workload `wl` needs (NODE_BYTES and TENSOR_BYTES per parameter
    tensor of the workload, each)."""
    return nodes * (NODE_BYTES + TENSOR_BYTES * len(wl.numels))


def check_cost_only_memory(nodes: int, wl: Workload) -> None:
    need, have = cost_only_bytes(nodes, wl), available_bytes()
    if have is not None and need > have:
        raise UserError(
            f"{nodes} cost-only nodes need about {need / 2**30:.1f} GiB, more than the {have / 2**30:.1f} GiB "
            "available: use fewer nodes"
        )


def cost_only_dataset(wl: Workload):
    """What the cost model reads of a dataset: its input shape."""
    return SimpleNamespace(input_shape=wl.input_shape, num_classes=wl.num_classes)


def simulate_cost_only(
    cfg, wl: Workload, cost: CostModel, emit, on_event=None, done: frozenset[tuple[str, int]] = frozenset()
) -> list[CellStats]:
    """Every algorithm of `cfg` on cfg.nodes cost-only nodes, cfg.steps steps each; records go to `emit`. The cells
    in `done` (algorithm, round) are not run again (a resumed run)."""
    topology = build_topology(cfg.topology, cfg.nodes, degree=cfg.degree, seed=cfg.seed)
    stats = []

    def run_one(name: str, emit_round) -> None:
        codec = make_codec(cfg) if ALGORITHMS[name].quantizable else None
        sizes = charged_sizes(cfg, name, wl, codec)
        start = time.perf_counter()
        with _no_cyclic_gc():
            cluster = Cluster(cfg.nodes, topology, cost, cfg.seed, sizes)
            for comm in cluster.comms:
                comm.stats = ChargedStats(sizes)

            h, algo_cfg = hyper(cfg, name), algo_config(cfg, name)  # the same for every node: built once

            def body(rank: int) -> None:
                comm, clock = cluster.comms[rank], cluster.clocks[rank]
                run_cost_cell(cfg, name, codec, h, algo_cfg, rank, comm, clock, emit_round, wl)

            cluster.run(body)
        stats.append(CellStats.of(cluster, name, start, cfg.nodes * cfg.steps))

    run_rounds(cfg, cell_events(emit, on_event), run_one, done)
    return stats


@contextlib.contextmanager
def _no_cyclic_gc():
    """The cyclic garbage collector off while the nodes are built and run: tens of thousands of nodes are millions of
    small long-lived objects that every collection pass walks again (half the wall time of a 2,048-node run), while
    the steps themselves make no reference cycles that outlive them (the peak memory of 4,096 nodes x 40 steps is the
    same with it off). No forced collection afterwards: it alone took a second at 4,096 nodes."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_cost_cell(
    cfg, algorithm: str, codec: Codec | None, h: Hyper, algo_cfg: Any, rank: int, comm, clock, emit, wl: Workload
) -> None:
    """`bench.training.loop.run_cell` without data or training: the algorithm's hooks around two charged compute
    sections per step, cfg.steps steps, then the same totals (one "epoch" is the whole run)."""
    algo_cls = ALGORITHMS[algorithm]
    comm.start_cell(codec, cfg.seed)
    numels = wl.stand_in()
    params = torch.zeros(sum(numels))
    grads = torch.zeros_like(params)
    model = StandIn(params, numels)
    opt = torch.optim.SGD(model.parameters(), lr=h.lr_at(0.0, 1, cfg.nodes), momentum=h.momentum)
    rng = random.Random(node_seed(cfg.seed, rank, 1))
    node = Node(rank, cfg.nodes, comm, clock, rng, model, params, grads, opt, charged_numels=wl.numels, backward=False)
    algo = algo_cls(node, algo_cfg)
    record = Recorder(emit, algorithm, rank)
    algo.start()
    # The backward pass, for an algorithm that registered gradient hooks (AllReduce SGD's buckets): each
    # parameter's gradient accumulated in reverse parameter order (zero, so nothing to add), then its hooks called.
    # They run inside the forward/backward section, whose clock (`SimClock.ready_at`) dates each bucket they start
    # where a real backward pass of the workload would have it ready. Nothing is run for other algorithms.
    backward = []
    if node.gradient_hooks:
        order = {id(p): i for i, p in enumerate(model.parameters())}
        backward = sorted(node.gradient_hooks, key=lambda hooked: -order[id(hooked[0])])  # stable: per parameter
    comm.fence()
    t_start = clock.now()
    step_times: list[float] = []
    steps = cfg.steps
    for step in range(steps):
        t_step = clock.now()
        with comm.exclusive(), clock.compute():
            for p, hook in backward:
                hook(p)
        algo.after_backward(step)
        with comm.exclusive(), clock.compute():
            algo.takes_step(step)  # the update itself is charged, not run: the stand-in stays zero
            comm.set_step(step + 1)
        algo.after_step(step)
        step_times.append(clock.now() - t_step)
        if rank == 0 and ((step + 1) % 10 == 0 or step + 1 == steps):
            record.progress(step + 1, steps)
    algo.finish()
    record("train_seconds", clock.now() - t_start, 1, steps)
    comm.fence()
    comm.finish_cell()
    record_totals(SimpleNamespace(algo=algo, codec=codec), record, comm, step_times, steps, cfg.batch_size)
