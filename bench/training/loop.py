"""The shared training loop: one node, one algorithm, one run cell. Engine-neutral.

Both engines call `run_cell` for every node; the only engine-specific things it touches are `node.comm`
and `node.clock`. Timing uses the node's clock, so the same loop yields wall seconds on real processes and
virtual seconds in the simulator. Evaluation never touches training: at an evaluated epoch's end a node copies
its model (a `Snapshot`, no communication, no barrier) and goes on; the snapshots are evaluated after the last
step (their traffic is kind "eval"), so the trajectory is the same whatever `eval_every` is.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.base.errors import UserError
from bench.core.codec import Codec, CodecConfig, suggest_eps
from bench.core.comm import Comm
from bench.core.data import CLASSIFICATION, LANGUAGE_MODEL, Dataset, hold_out, load_dataset, partition
from bench.core.models import SharedModule, build_model, loss_of
from bench.core.protocol import Batch, Clock, Node, flatten_model
from bench.training.config import Hyper, RunConfig, algo_config, hyper
from bench.training.registry import ALGORITHMS

WARMUP_STEPS = 5  # excluded from the step-time median/spread (first steps pay allocation and cache misses)
Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Shards:
    """The identical data layout every algorithm of one invocation gets."""

    indices: list[torch.Tensor]  # per node, into the training set
    steps_per_epoch: int  # the same for every node (synchronous algorithms need equal step counts)

    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        """Samples in each node's shard, by rank: one tuple that all nodes share (a simulator's N nodes each
        holding their own would be O(N^2) memory)."""
        return tuple(len(index) for index in self.indices)


def make_shards(cfg: RunConfig, dataset: Dataset) -> Shards:
    """Split the training set; every node then takes floor(n_train / (nodes * batch)) steps per epoch.

    With iid shards that is one pass over each node's shard per epoch; with Dirichlet shards (unequal sizes)
    every node still takes the same number of steps, cycling through its own shard, so that the synchronous
    baselines stay in lockstep and every algorithm gets the same sample budget.
    """

    idx = partition(dataset.y_train, cfg.nodes, cfg.partition, cfg.alpha, cfg.seed)
    smallest = min(len(i) for i in idx)
    if cfg.batch_size > smallest:
        raise UserError(
            f"--batch-size {cfg.batch_size} is larger than the smallest shard ({smallest} samples over "
            f"{cfg.nodes} nodes): use --batch-size {max(1, smallest)} or fewer nodes"
        )
    steps = len(dataset.y_train) // (cfg.nodes * cfg.batch_size)
    return Shards(indices=idx, steps_per_epoch=max(1, steps))


class Sampler:
    """Seeded reshuffling mini-batches from one node's shard."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, batch: int, seed: int) -> None:
        self.x, self.y, self.index, self.batch = x, y, index, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long, device=index.device)
        self.pos = 0
        self.last = self.order  # the training-set indices of the last batch

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.batch > len(self.order):
            # Fresh permutation appended to the leftover, so every sample is seen once per pass over the shard.
            perm = self.index[torch.randperm(len(self.index), generator=self.gen)]
            self.order = torch.cat([self.order[self.pos :], perm])
            self.pos = 0
        sel = self.last = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return self.x[sel], self.y[sel]

    def positions(self) -> torch.Tensor:
        """Where the samples of the last batch lie in this node's shard (its indices are sorted)."""
        return torch.searchsorted(self.index, self.last)


def run_data(cfg: RunConfig, *, download: bool = False) -> Dataset:
    """The run's data: the dataset with its validation split (cfg.val_fraction) held out of the training set."""
    data = load_dataset(cfg.dataset, cfg.seed, cfg.data_dir, download, bptt=cfg.bptt)
    return hold_out(data, cfg.val_fraction, cfg.seed)


def make_codec(cfg: RunConfig) -> Codec | None:
    """The wire codec for model exchanges, or None for raw float32 (--bits 32)."""
    if cfg.bits == 32:
        return None
    eps = cfg.eps if cfg.eps is not None else suggest_eps(cfg.bits, cfg.lattice_radius)
    return Codec(CodecConfig(bits=cfg.bits, quantizer=cfg.quantizer, eps=eps, bucket=cfg.bucket))


def evaluated_epochs(epochs: int, eval_every: int) -> int:
    """How many epochs are evaluated (every `eval_every`-th and the last): the snapshots a node keeps."""
    return epochs // eval_every + (epochs % eval_every != 0)


def node_seed(seed: int, rank: int, stream: int) -> int:
    """Independent, reproducible seeds per (run seed, rank, purpose)."""
    return (seed * 1_000_003 + rank * 7_919 + stream * 104_729) % (2**63 - 1)


def make_node(
    cfg: RunConfig,
    dataset: Dataset,
    rank: int,
    comm: Comm,
    clock: Clock,
    device: torch.device,
    h: Hyper | None = None,
    shared: SharedModule | None = None,
) -> Node:
    """The node's model (same seed on every node and for every algorithm: identical initial weights) and its SGD
    optimizer with the algorithm's hyperparameters `h` (the run's when None), at the learning rate of step 0.
    With `shared` (the simulator's nodes of one process) the node owns flat buffers run by that one module."""
    h = h or hyper(cfg, "")
    if shared is None:
        model = build_model(cfg.model, dataset.input_shape, dataset.num_classes, cfg.seed).to(device)
        params, grads = flatten_model(model)
    else:
        model, params, grads = shared.node_model()
    opt = torch.optim.SGD(
        model.parameters(),
        lr=h.lr_at(0.0, cfg.epochs, cfg.nodes),
        momentum=h.momentum,
        nesterov=h.nesterov,
        weight_decay=h.weight_decay,
    )
    rng = random.Random(node_seed(cfg.seed, rank, 1))
    return Node(rank, cfg.nodes, comm, clock, rng, model, params, grads, opt)


def score(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> tuple[float, int, int]:
    """(sum of losses, number correct, number of predictions) of `model` on (x, y): one prediction per sample, or
    per token of a language model's windows. `batch` counts predictions, so a vocabulary-sized output stays small."""
    loss_sum, correct = 0.0, 0
    per = max(1, batch // max(1, y[0].numel())) if len(y) else 1  # samples per forward pass
    model.eval()
    with torch.no_grad():
        for i in range(0, len(y), per):
            out, target = model(x[i : i + per]), y[i : i + per]
            loss_sum += loss_of(out, target, reduction="sum").item()
            correct += int((out.argmax(-1) == target).sum())
    model.train()
    return loss_sum, correct, y.numel()


def perplexity(mean_loss: float) -> float:
    """exp of a mean token cross-entropy (nats); inf where that overflows."""
    return math.exp(mean_loss) if mean_loss < 700 else math.inf


@dataclass
class Snapshot:
    """A node's model as it stood when it finished an evaluated epoch (CPU copies, evaluated after training)."""

    epoch: int
    step: int
    params: torch.Tensor
    buffers: torch.Tensor  # the floating-point buffers (BatchNorm statistics), flattened


def _float_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b for b in model.buffers() if b.is_floating_point()]


def take_snapshot(node: Node, epoch: int, step: int) -> Snapshot:
    """Copy the node's model under its model lock; nothing is sent and no peer waits."""
    with node.comm.exclusive():
        params = node.params.detach().to("cpu", copy=True)
        bufs = _float_buffers(node.model)
        flat = torch.cat([b.detach().reshape(-1).cpu() for b in bufs]) if bufs else torch.zeros(0)
    return Snapshot(epoch, step, params, flat)


def _load(model: torch.nn.Module, params: torch.Tensor, buffers: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(params, model.parameters())
    offset = 0
    for b in _float_buffers(model):
        b.copy_(buffers[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def evaluate(
    comm: Comm,
    snap: Snapshot,
    scratch: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """One snapshot: the node's own model on the whole test set; the average of every node's snapshot of the
    same epoch on this node's slice of the test set (and of the validation set `val`); the consensus distance.
    Accuracies for a classification set; perplexities (exp of the mean token cross-entropy) for token windows.

    Collective over the snapshots of one epoch (every node calls it for the same epochs, in order), run after
    training: it never synchronizes or delays training. Traffic is counted as kind "eval". After a node failed
    (`--on-failure continue`) it is over the surviving nodes: their averaged model, their slices of the test set.
    """
    alive = comm.alive()  # after a failure (`--on-failure continue`): the survivors, numbered among themselves
    n = len(alive)
    r = comm.rank if n == comm.size else alive.index(comm.rank)
    device = x.device
    mine = snap.params.to(device)
    _load(scratch, mine, snap.buffers.to(device))
    own_loss, own_correct, own_count = score(scratch, x, y)
    avg = mine.clone()
    comm.allreduce_mean(avg, "eval")
    flat_buf = snap.buffers.to(device)
    if flat_buf.numel():
        comm.allreduce_mean(flat_buf, "eval")  # BatchNorm statistics of the averaged model
    _load(scratch, avg, flat_buf)
    xs, ys = x[r::n], y[r::n]
    avg_loss, avg_correct, avg_count = score(scratch, xs, ys)
    # One small allreduce gathers every node's own accuracy and the slices of the averaged model's scores.
    vec = torch.zeros(n + 7, dtype=torch.float64)
    vec[r] = own_correct / own_count
    vec[n] = float((mine - avg).pow(2).sum())
    vec[n + 1], vec[n + 2], vec[n + 3] = avg_correct, avg_count, avg_loss
    if val is not None:
        xv, yv = val[0][r::n], val[1][r::n]
        vec[n + 6], vec[n + 4], vec[n + 5] = score(scratch, xv, yv) if len(yv) else (0.0, 0, 0)
    comm.allreduce_sum(vec, "eval")
    out = {
        "node_loss": own_loss / own_count,
        "consensus_distance": float(vec[n]) / n,
        "test_loss": float(vec[n + 3] / vec[n + 2]),
    }
    if val is not None:
        out["val_loss"] = float(vec[n + 6] / vec[n + 5])
    if y.ndim == 2:  # token windows: a language model is judged by perplexity, not by next-token accuracy
        return {**out, **{key.replace("loss", "ppl"): perplexity(value) for key, value in out.items() if "loss" in key}}
    out |= {"node_acc": own_correct / own_count, "node_accs": vec[:n].tolist()}
    out["test_acc"] = float(vec[n + 1] / vec[n + 2])
    if val is not None:
        out["val_acc"] = float(vec[n + 4] / vec[n + 5])
    return out


@dataclass
class Recorder:
    """Emits one algorithm's tidy record rows and rank 0's progress events for one node."""

    emit: Emit
    algorithm: str
    rank: int

    def __call__(self, metric: str, value: float, epoch: int | None, step: int | None, scope: str = "node", **extra):
        self.emit(
            {
                "type": "record",
                "algorithm": self.algorithm,
                "rank": self.rank if scope == "node" else None,
                "epoch": epoch,
                "step": step,
                "metric": metric,
                "value": value,
                **extra,
            }
        )

    def progress(self, step: int, total: int, **extra: Any) -> None:
        self.emit({"type": "progress", "algorithm": self.algorithm, "step": step, "total": total, **extra})


@dataclass
class Cell:
    """One node's state for one algorithm: the node, the algorithm acting on it, its data and its samplers."""

    node: Node
    algo: Any  # an Algorithm from the registry
    hyper: Hyper  # its optimizer hyperparameters (learning-rate schedule included)
    lr_at: Callable[[int], float] | None  # the learning rate of a step (None: constant, set once)
    codec: Codec | None
    scratch: torch.nn.Module  # evaluation's model for averaged weights
    sampler: Sampler
    aug_gen: torch.Generator | None  # the augmentation's draws (None: the dataset has no augmentation)
    x_test: torch.Tensor
    y_test: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None  # the validation split, when one is held out


def setup_cell(
    cfg: RunConfig,
    algorithm: str,
    dataset: Dataset,
    shards: Shards,
    rank: int,
    comm: Comm,
    clock: Clock,
    device,
    shared: SharedModule | None = None,
) -> Cell:
    """Build the node, its algorithm, codec, evaluation model and seeded samplers (the same on every engine).
    `shared`: the module (and evaluation model) that all nodes of this process share (the simulator)."""
    algo_cls = ALGORITHMS[algorithm]
    codec = make_codec(cfg) if algo_cls.quantizable else None
    if codec is not None:
        codec.warm_up()  # kernel loading (or a first compile) is not training time
    comm.start_cell(codec, cfg.seed)
    h = hyper(cfg, algorithm)
    node = make_node(cfg, dataset, rank, comm, clock, device, h, shared)
    node.shard_sizes = shards.sizes
    if shared is None:
        scratch = build_model(cfg.model, dataset.input_shape, dataset.num_classes, cfg.seed).to(device)
    else:
        scratch = shared.scratch
    algo = algo_cls(node, algo_config(cfg, algorithm))
    x_train, y_train = dataset.x_train.to(device), dataset.y_train.to(device)
    x_test, y_test = dataset.x_test.to(device), dataset.y_test.to(device)
    aug_gen = None
    if dataset.augment is not None:
        aug_gen = torch.Generator().manual_seed(node_seed(cfg.seed, rank, 3))  # CPU even on CUDA: same draws
    sampler = Sampler(x_train, y_train, shards.indices[rank].to(device), cfg.batch_size, node_seed(cfg.seed, rank, 2))
    lr_at = None
    if not h.constant():
        per_epoch = shards.steps_per_epoch

        def lr_at(step: int) -> float:
            return h.lr_at(step / per_epoch, cfg.epochs, cfg.nodes)

    val = None
    if dataset.x_val is not None and dataset.y_val is not None:
        val = (dataset.x_val.to(device), dataset.y_val.to(device))
    return Cell(node, algo, h, lr_at, codec, scratch, sampler, aug_gen, x_test, y_test, val)


def _forward_backward(cell: Cell, dataset: Dataset) -> torch.Tensor:
    """The next mini-batch's loss (detached) and gradients. A function of its own so that the batch and the
    autograd graph are freed before the compute section ends (a simulator holding thousands of paused nodes would
    otherwise keep one batch and one graph each: a graph's nodes outlive its backward pass while its loss does)."""
    xb, yb = cell.sampler.next()
    if dataset.augment is not None:
        xb = dataset.augment(xb, cell.aug_gen)
    if cell.algo.wants_batch:  # kept until `after_backward` has used it (`train_step` drops it)
        cell.node.batch = Batch(cell.sampler.positions(), xb, yb)
    grads = cell.node.grads
    if grads.untyped_storage().nbytes() == 0 < grads.numel():  # given back after the last optimizer step
        grads.untyped_storage().resize_(grads.numel() * grads.element_size())
    cell.node.optimizer.zero_grad(set_to_none=False)
    loss = loss_of(cell.node.model(xb), yb)
    loss.backward()
    return loss.detach()


def train_step(cell: Cell, dataset: Dataset, step: int, comm: Comm, clock: Clock) -> torch.Tensor:
    """One SGD step with the algorithm's hooks around it; returns the loss (detached: its graph is freed)."""
    node, algo = cell.node, cell.algo
    # The model lock first: folding in what peers deposited (pull-push, RMA averages) precedes the compute section.
    with comm.exclusive(), clock.compute():
        loss = _forward_backward(cell, dataset)
        if cell.lr_at is not None:  # set before `after_backward`: an algorithm may need this step's lr there
            for group in node.optimizer.param_groups:
                group["lr"] = cell.lr_at(step)
    algo.after_backward(step)
    node.batch = None
    with comm.exclusive(), clock.compute():
        if algo.takes_step(step):
            node.optimizer.step()
            # Nothing reads the gradients from here to the next backward pass (algorithms use them in
            # `after_backward`), so their memory goes back until then: a simulator's nodes mostly wait in between.
            # Views of the buffer (the parameters' .grad, AllReduce SGD's buckets) stay valid.
            node.grads.untyped_storage().resize_(0)
        comm.set_step(step + 1)  # the live model's step count, which peers' reads measure staleness against
    algo.after_step(step)
    return loss


def evaluate_snapshot(cell: Cell, record: Recorder, clock: Clock, snap: Snapshot, total_steps: int) -> None:
    """Per-node and (rank 0) averaged-model accuracy (perplexity for a language model), loss and consensus distance
    of one epoch's snapshots."""
    t_eval = clock.now()
    ev = evaluate(cell.node.comm, snap, cell.scratch, cell.x_test, cell.y_test, cell.val)
    epoch, step = snap.epoch, snap.step
    for key in ("node_acc", "node_ppl", "node_loss"):
        if key in ev:
            record(key, ev[key], epoch, step)
    record("eval_seconds", clock.now() - t_eval, epoch, step)
    if record.rank == cell.node.comm.alive()[0]:  # rank 0, or the first survivor when it failed
        for key in ("test_acc", "test_ppl", "test_loss", "val_acc", "val_ppl", "val_loss", "consensus_distance"):
            if key in ev:
                record(key, ev[key], epoch, step, scope="global")
        shown = "test_acc" if "test_acc" in ev else "test_ppl"
        record.progress(total_steps, total_steps, epoch=epoch, **{shown: ev[shown]})


def record_totals(cell: Cell, record: Recorder, comm: Comm, step_times: list[float], step: int, batch: int) -> None:
    """The run's totals for this node: steps, samples, step-time median and spread, bytes by kind, counters."""
    timed = step_times[WARMUP_STEPS:] or step_times
    qs = statistics.quantiles(timed, n=10) if len(timed) >= 2 else [timed[0]] * 9
    record("steps", float(step), None, step)
    record("samples", float(step * batch), None, step)
    record("step_seconds_median", statistics.median(timed), None, step)
    record("step_seconds_p10", qs[0], None, step)
    record("step_seconds_p90", qs[-1], None, step)
    for kind, s in comm.stats.snapshot().items():
        for key in ("bytes_sent", "bytes_recv", "msgs_sent", "msgs_recv", "seconds"):
            record(f"comm_{key}", float(s[key]), None, step, kind=kind)
    record("serve_seconds", float(comm.stats.serve_seconds), None, step)
    record("staleness_sum", float(comm.stats.staleness_sum), None, step)
    record("staleness_reads", float(comm.stats.staleness_reads), None, step)
    for key, value in cell.algo.counters.items():
        record(f"algo_{key}", float(value), None, step)
    record("local_steps", float(cell.algo.local_steps()), None, step)
    record("bits", float(cell.codec.cfg.bits if cell.codec else 32), None, step)
    record("decode_failures", float(comm.decode_failures), None, step)


class NodeFailed(Exception):
    """A simulated node's injected failure (`Failure.crash`): its engine stops the node there."""


@dataclass(frozen=True)
class Failure:
    """This node's injected failure (`--fail`, `--fail-p`): when it reaches step `step` it records what it did (its
    steps and samples, and `node_failed`) and calls `crash`, which does not return: a real process exits hard, a
    simulated node raises `NodeFailed`."""

    step: int
    crash: Callable[[], None]


def record_failure(record: Recorder, epoch: int, step: int, batch: int) -> None:
    """What a failing node leaves behind: the step it failed at, and the steps and samples it trained (counted in
    throughput; its model is lost, so the accuracy is the survivors')."""
    record("node_failed", float(step), epoch, step)
    record("steps", float(step), None, step)
    record("samples", float(step * batch), None, step)


@dataclass
class Checkpoints:
    """A node's checkpoints inside a cell (real processes, `--checkpoint-every E`). After every E-th epoch but the
    last, each node calls `save(epoch, state)` (the engine writes it atomically), then all meet at a fence and rank 0
    emits a "checkpoint" event: every node's state of that epoch is saved. `resumed`: the state of the last such
    checkpoint, which a resumed run starts this cell from (None: from the start)."""

    every: int
    save: Callable[[int, dict[str, Any]], None]
    resumed: dict[str, Any] | None = None


def node_state(cell: Cell, comm: Comm, loop: dict[str, Any]) -> dict[str, Any]:
    """Everything the node carries from one epoch to the next, between two steps (under its model lock)."""
    node = cell.node
    with comm.exclusive():
        bufs = _float_buffers(node.model)
        return {
            **loop,
            "params": node.params.detach().to("cpu", copy=True),
            "buffers": [b.detach().to("cpu", copy=True) for b in bufs],
            "optimizer": node.optimizer.state_dict(),
            "algorithm": cell.algo.state_dict(),
            "counters": dict(cell.algo.counters),
            "rng": node.rng.getstate(),
            "torch_rng": torch.get_rng_state(),  # dropout and other modules draw from the global stream
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "sampler": (cell.sampler.order.cpu(), cell.sampler.pos, cell.sampler.gen.get_state()),
            "aug_gen": cell.aug_gen.get_state() if cell.aug_gen is not None else None,
            "comm": comm.state_dict(),
        }


def load_node_state(cell: Cell, comm: Comm, state: dict[str, Any]) -> None:
    """Put `node_state` back on a node that has just run `setup_cell` and its algorithm's `start`."""
    node = cell.node
    with comm.exclusive():
        node.params.copy_(state["params"])
        for b, saved in zip(_float_buffers(node.model), state["buffers"], strict=True):
            b.copy_(saved)
        node.optimizer.load_state_dict(state["optimizer"])
        node.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        order, pos, gen = state["sampler"]
        cell.sampler.order, cell.sampler.pos = order.to(cell.sampler.index.device), pos
        cell.sampler.gen.set_state(gen)
        if cell.aug_gen is not None:
            cell.aug_gen.set_state(state["aug_gen"])
    cell.algo.counters = dict(state["counters"])
    # The algorithm may send again what was in flight at the checkpoint (OSGP's half); the comm's counters, put
    # back after it, already count that message once.
    cell.algo.load_state_dict(state["algorithm"])
    with comm.exclusive():
        comm.load_state_dict(state["comm"])
        comm.set_step(state["step"])


def drop_training_state(node: Node) -> None:
    """After the last step: free the gradients and the optimizer's state (momentum), which nothing reads any more
    (peers still average into the parameters, evaluation reads snapshots). A simulator holding thousands of nodes
    then keeps each one's snapshot in the room those took (`bench.engine.sim.cluster.estimate_bytes`). The
    storage itself is released, as algorithms may still hold views of the gradients (AllReduce SGD's buckets)."""
    node.optimizer.state.clear()
    node.grads.untyped_storage().resize_(0)


def run_cell(
    cfg: RunConfig,
    algorithm: str,
    dataset: Dataset,
    shards: Shards,
    rank: int,
    comm: Comm,
    clock: Clock,
    device: torch.device,
    emit: Emit,
    checkpoints: Checkpoints | None = None,
    shared: SharedModule | None = None,
    failure: Failure | None = None,
) -> Node:
    """Train one node with one algorithm for cfg.epochs; emit tidy record rows (and progress) as it goes.

    `emit` receives dicts: {"type": "record", ...row}, {"type": "progress", ...} or (rank 0, with `checkpoints`)
    {"type": "checkpoint", "algorithm", "epoch"}. `shared`: see `setup_cell`. `failure`: this node's injected
    failure, if it has one.
    """
    cell = setup_cell(cfg, algorithm, dataset, shards, rank, comm, clock, device, shared)
    resumed = checkpoints.resumed if checkpoints is not None else None
    rows = resumed["records"] if resumed else 0  # record rows this node emitted in this cell

    def count_rows(event: dict[str, Any]) -> None:
        nonlocal rows
        rows += event["type"] == "record"
        emit(event)

    record = Recorder(count_rows, algorithm, rank)
    lead = comm.alive()[0]  # rank 0, unless it failed in an earlier cell (real processes, --on-failure continue)
    if rank == lead and dataset.task == CLASSIFICATION and not resumed:  # "no better than guessing" (divergence check)
        record("chance_acc", 1.0 / dataset.num_classes, None, 0, scope="global")
    cell.algo.start()  # publishes/exposes the model: must happen on every node before any peer may read it
    step, off_clock, elapsed, first = 0, 0.0, 0.0, 1
    step_times: list[float] = []
    snapshots: list[Snapshot] = []
    if resumed:
        load_node_state(cell, comm, resumed)
        step, off_clock, elapsed, first = (
            resumed["step"],
            resumed["off_clock"],
            resumed["elapsed"],
            resumed["epoch"] + 1,
        )
        step_times = list(resumed["step_times"])
        snapshots = [Snapshot(**snap) for snap in resumed["snapshots"]]
    comm.fence()  # every node starts the clock together
    t_start = clock.now() - elapsed  # a resumed cell's clock goes on from its checkpoint's elapsed time
    total_steps = cfg.epochs * shards.steps_per_epoch
    for epoch in range(first, cfg.epochs + 1):
        loss_sum = torch.zeros((), device=device)
        for _ in range(shards.steps_per_epoch):
            if failure is not None and step == failure.step:
                record_failure(record, epoch, step, cfg.batch_size)
                failure.crash()
            t_step = clock.now()
            loss = train_step(cell, dataset, step, comm, clock)
            loss_sum += loss
            step += 1
            step_times.append(clock.now() - t_step)
            if rank == 0 and (step % 10 == 0 or step == total_steps):
                record.progress(step, total_steps)
        if epoch == cfg.epochs:
            cell.algo.finish()
            drop_training_state(cell.node)
        # Elapsed training time since the common start (waits included, snapshot copies excluded): the slowest
        # node's value is the cluster's elapsed training time.
        record("train_seconds", clock.now() - t_start - off_clock, epoch, step)
        record("train_loss", float(loss_sum) / shards.steps_per_epoch, epoch, step)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:  # `evaluated_epochs` counts them
            t_snap = clock.now()
            snapshots.append(take_snapshot(cell.node, epoch, step))
            off_clock += clock.now() - t_snap
        if checkpoints is not None and epoch % checkpoints.every == 0 and epoch < cfg.epochs:
            t_save = clock.now()
            # A consistent cut: once every node is here no pairwise average is half done (an initiator leaves its
            # step only when its average is complete), so no node saves a state a peer's saved state has averaged.
            comm.fence()
            loop = {"epoch": epoch, "step": step, "elapsed": t_save - t_start, "off_clock": off_clock}
            loop |= {"step_times": list(step_times), "records": rows}
            loop["snapshots"] = [dataclasses.asdict(snap) for snap in snapshots]
            checkpoints.save(epoch, node_state(cell, comm, loop))
            comm.fence()  # every node's state of this epoch is saved
            if rank == comm.alive()[0]:  # rank 0, or the first survivor (real processes, --on-failure continue)
                emit({"type": "checkpoint", "algorithm": algorithm, "epoch": epoch})
            off_clock += clock.now() - t_save  # saving (and waiting for the others to) is not training time
    if not math.isfinite(float(loss_sum)):
        record("diverged", 1.0, cfg.epochs, step)
    # Nobody leaves (and stops serving reads) while a peer still needs it; after this barrier no request is
    # in flight, so the counters below include what our responder served to late readers.
    comm.fence()
    comm.finish_cell()
    # Evaluation only now, from the snapshots: no collective at epoch ends, so it cannot change training.
    for snap in snapshots:
        evaluate_snapshot(cell, record, clock, snap, total_steps)
    record_totals(cell, record, comm, step_times, step, cfg.batch_size)
    if dataset.task == LANGUAGE_MODEL:  # tokens/s beside samples/s: every token of a window is a prediction
        record("tokens", float(step * cfg.batch_size * dataset.targets_per_sample), None, step)
    return cell.node


def run_rounds(
    cfg: RunConfig,
    emit: Emit,
    run_one: Callable[[str, Emit], str | None],
    done: frozenset[tuple[str, int]] = frozenset(),
) -> None:
    """Every (round, algorithm) of the invocation, in `cfg.round_orders()`: `run_one(name, emit)` runs one cell
    whose record rows carry its round (1..K), between a cell_start and a cell_done event. Both engines run their
    cells through here, so a round is the same thing on real processes and in the simulator. `run_one` returns
    None, or why the cell failed without ending the run (a node failed under `--on-failure continue` and the
    algorithm cannot go on without it): the cell_done event then says so (`"failed": reason`).

    The cells in `done` (algorithm, round) finished in an earlier, interrupted run whose records are kept (`swarmbench
    run --resume`): they are not run again, and their cell_start and cell_done events say `"resumed": true`. A cell
    depends only on the configuration (seeds, shards, initial weights), never on the cells before it."""
    orders = cfg.round_orders()
    for number, order in enumerate(orders, 1):

        def emit_round(event: dict[str, Any], number: int = number) -> None:
            emit({**event, "round": number})

        for name in order:
            cell = {"algorithm": name, "round": number, "rounds": len(orders)}
            if (name, number) in done:
                emit({"type": "cell_start", **cell, "resumed": True})
                emit({"type": "cell_done", **cell, "resumed": True})
                continue
            emit({"type": "cell_start", **cell})
            lost = run_one(name, emit_round)
            emit({"type": "cell_done", **cell, **({"failed": lost} if lost else {})})
