"""Run configuration: one frozen dataclass, filled from defaults < TOML file < CLI options < `--set` overrides.

Every key is type-checked against the dataclass fields; an unknown key names the closest valid one.
Per-algorithm options live in each algorithm's own `Config` dataclass and are set with `--set ALGO.key=value`
(or a `[ALGO]` table in the TOML file); keys an algorithm config shares with the run config (e.g.
`local_steps`) default to the run's value.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bench.base.console import closest
from bench.base.errors import UserError
from bench.base.tomlfile import flatten_settings, load_toml_text


def opt(
    default: Any,
    help: str = "",
    *,
    flag: str = "",
    env: str = "",
    choices: tuple[str, ...] = (),
    flag_value: str | None = None,
    sim: bool = False,
) -> Any:
    """A RunConfig field and what the command line shows of it, as plain data (cli.py makes the options of it).

    help: the `swarmbench run` option's help ('': no option; set it with --set or in the config file);
    flag: the option when it is not --FIELD-NAME; env: the name after SWARMBENCH_RUN_ of its environment variable
    when not the flag's; choices: the values it accepts; flag_value: its value when given alone (no value);
    sim: only the simulated cluster understands it (SIM_ONLY).
    """
    meta = {"help": help, "flag": flag, "env": env, "choices": choices, "flag_value": flag_value, "sim": sim}
    return field(default=default, metadata={key: value for key, value in meta.items() if value})


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one `swarmbench run` invocation (every algorithm shares it).

    The fields' order is the order of the options in `swarmbench run --help`."""

    algorithms: tuple[str, ...] = opt(
        ("allreduce", "local_sgd", "dpsgd", "adpsgd", "swarm"),
        "Algorithm (repeatable) or 'all' (every one in `swarmbench list` that runs on --model).  "
        "[default: allreduce, local_sgd, dpsgd, adpsgd, swarm]",
        flag="--algo",
    )  # run in this order
    nodes: int = opt(
        4, "Number of nodes (worker processes); with --engine sim also a comma list 8,16,32 (a scaling series)."
    )  # world size: worker processes (or virtual nodes)
    topology: str = opt(
        "ring", "Graph for decentralized algorithms: ring, torus, complete, ..."
    )  # communication graph for the decentralized algorithms
    degree: int | None = opt(None, "Degree of a random-regular topology.")  # degree for random-regular topologies
    dataset: str = opt("mnist", "Dataset; the default ships inside a package.")  # name in bench.core.data.DATASETS
    data_dir: str | None = opt(
        None, "Folder holding on-disk datasets."
    )  # folder of on-disk datasets (unused by the embedded ones)
    download: bool = opt(
        False, "Let torchvision download an on-disk dataset into --data-dir (needs a network)."
    )  # let torchvision download an on-disk dataset into data_dir (needs a network)
    model: str = opt(
        "mlp", "Model: mlp, lenet5, resnet20, ...; transformer-lm or lstm-lm for a language-model dataset."
    )  # name in bench.core.models.MODELS
    bptt: int | None = opt(
        None, "Tokens per sample of a language-model dataset (a window of its token stream).  [default: 35]"
    )  # window length of language-model samples (None: bench.core.data.DEFAULT_BPTT); other datasets: unused
    val_fraction: float = opt(
        0.1, "Fraction of the training data held out (seeded, stratified) for validation; 0: none."
    )  # held out of the training set: time-to-target and choices use it, the test set is only reported
    epochs: int = opt(8, "Passes of every node over its shard.")  # passes of every node over its own shard
    batch_size: int = opt(32, "Mini-batch size per node.")  # per node
    lr: float = opt(0.05, "Learning rate.")  # SGD learning rate
    momentum: float = opt(0.9, "SGD momentum (kept local).")  # SGD momentum (optimizer state always stays local)
    weight_decay: float = 0.0  # L2 penalty in the optimizer
    nesterov: bool = opt(False, "Nesterov momentum.")  # Nesterov momentum (needs momentum > 0)
    warmup_epochs: float = opt(
        0.0, "Epochs of linear learning-rate warmup (from lr/10 up to the peak lr)."
    )  # linear warmup from lr/10 to the peak lr over this many epochs
    lr_schedule: str = opt(
        "constant", "Learning-rate schedule after warmup.", choices=("constant", "step", "cosine")
    )  # after warmup: constant, step (x lr_gamma at each of lr_milestones) or cosine (to 0 at the last epoch)
    lr_milestones: tuple[int, ...] = ()  # epochs after which a `step` schedule multiplies the lr by lr_gamma
    lr_gamma: float = 0.1  # a `step` schedule's factor
    lr_scaling: str = opt(
        "none", "Scale lr with the global batch (N x batch) over one node's batch.", choices=("none", "linear", "sqrt")
    )  # linear scaling rule (Goyal et al. 2017): peak lr = lr * N, sqrt: lr * sqrt(N)
    local_steps: int = opt(
        4, "H: local steps between averagings (local_sgd, swarm)."
    )  # H: local steps between averagings (local_sgd, swarm)
    local_steps_dist: str = opt(
        "fixed",
        "swarm: exactly H local steps, or a geometric number with mean H.",
        choices=("fixed", "geometric"),
    )  # swarm: fixed H, or geometric with mean H
    swarm_mode: str = opt(
        "nonblocking",
        "swarm: only the initiator averages (non-blocking), both atomically (blocking), or both without waiting: "
        "the partner folds the initiator's deposit in before its next step (pushpull).",
        choices=("nonblocking", "blocking", "pushpull"),
    )  # swarm: nonblocking (initiator only) | blocking (both, atomically) | pushpull (both, via a deposit)
    bits: int = opt(
        32,
        "Bits per coordinate of exchanged models (swarm, adpsgd, dpsgd, choco, lead): 2, 4, 8, 16 or 32 "
        "(= no quantization).",
    )  # bits per coordinate of exchanged models (swarm, adpsgd, dpsgd, choco, lead): 2, 4, 8, 16, 32
    quantizer: str = opt(
        "lattice",
        "lattice: residues decoded against the receiver's own model; uniform: stochastic, unbiased.",
        choices=("lattice", "uniform"),
    )  # lattice (reference-point, Davies et al.) | uniform (stochastic, unbiased)
    eps: float | None = opt(
        None, "Lattice spacing.  [default: lattice-radius / (2^(bits-1) - 1)]"
    )  # lattice spacing; None: sized so neighbours within lattice_radius decode
    lattice_radius: float = opt(
        0.25, "Max-norm distance between neighbours that the default eps decodes."
    )  # max-norm distance between neighbours the default eps must decode
    bucket: int = 1024  # coordinates per codec header entry
    device: str = opt(
        "cpu",
        "cpu, cuda (one GPU per local rank) or auto (cuda when torch sees a GPU).",
        choices=("cpu", "cuda", "auto"),
    )  # cpu | cuda | auto
    backend: str = opt(
        "auto",
        "torch.distributed backend: auto = nccl with one rank per GPU, else gloo.",
        choices=("auto", "gloo", "nccl"),
    )  # torch.distributed backend: auto (gloo on CPU, nccl on CUDA) | gloo | nccl
    allreduce_impl: str = opt(
        "torch",
        "Allreduce engine for allreduce and local_sgd: torch.distributed or Horovod (horovodrun/mpirun).",
        choices=("torch", "horovod"),
    )  # allreduce engine: torch (torch.distributed) | horovod (hvd.allreduce)
    transport: str = opt(
        "auto",
        "One-sided exchange: auto (rma under MPI on one host, else p2p), p2p (gloo responder), rma (MPI windows).",
        choices=("auto", "p2p", "rma"),
    )  # one-sided exchange: auto | p2p (gloo responder thread) | rma (MPI windows)
    partition: str = opt(
        "iid", "How training data is split over nodes.", choices=("iid", "dirichlet")
    )  # how the training set is split over nodes: iid | dirichlet
    alpha: float = opt(
        0.5, "Dirichlet concentration (smaller = more skew)."
    )  # Dirichlet concentration for --partition dirichlet (smaller = more label skew)
    seed: int = opt(
        0, "Seed for data split, weights, shards and peer choices."
    )  # one seed for data split, initial weights, shards and peer choices
    repeat: int = opt(
        1,
        "Rounds: run the selected algorithms K times on the same started workers, in a seeded shuffled order per "
        "round; throughput is then the median with a 95 % interval over the rounds.",
    )  # K rounds of every algorithm, interleaved (one launch); 1: each algorithm once, in the given order
    launcher: str = opt(
        "local", "Who starts the workers: {launchers} (detected when mpirun etc. started this)."
    )  # who starts the worker processes; {launchers}: the names in bench.engine.processes.launchers.LAUNCHERS
    master_addr: str | None = opt(
        None, "Rendezvous host (rank 0) for MPI/srun launches; else MASTER_ADDR, else found via mpi4py."
    )  # rendezvous host (rank 0) for MPI/srun launches; else MASTER_ADDR
    master_port: int | None = opt(
        None, "Rendezvous port; else MASTER_PORT."
    )  # rendezvous port on that host; else MASTER_PORT
    timeout_s: float = 300.0  # a blocked collective fails after this long instead of hanging
    eval_every: int = 1  # evaluate every this many epochs (always after the last)
    checkpoint_every: int = opt(
        0,
        "Real processes: every node saves its state (model, optimizer, algorithm, sampler, random streams) every E "
        "epochs, so that --resume continues a stopped algorithm from there; 0: resume at algorithm ends only (the "
        "simulator always does: exact).",
    )  # real processes: save every node's state every E epochs inside an algorithm's run (0: off)
    fail: tuple[str, ...] = opt(
        (),
        "RANK@STEP: node RANK fails when it reaches its step STEP (after STEP steps, counted from 0 over all epochs): "
        "a real process exits hard, as a crash would; a simulated node stops (repeatable).",
    )  # failure injection: "RANK@STEP" entries (every algorithm of the run gets the same schedule)
    on_failure: str = opt(
        "stop",
        "When a node fails: stop ends the run (the algorithm failed); continue lets the asynchronous gossip "
        "algorithms (swarm, adpsgd) go on among the survivors, while the others report status failed (real "
        "processes: local launcher, swarm with --swarm-mode blocking).",
        choices=("stop", "continue"),
    )  # stop | continue (only algorithms whose class says `survives_failures` go on)
    tensorboard: bool = opt(
        True, "Write TensorBoard event files (DIR/tensorboard) beside records.jsonl."
    )  # TensorBoard event files beside records.jsonl (torch's SummaryWriter)
    engine: str = opt(
        "processes",
        "processes: one OS process per node; sim: virtual nodes in this process with simulated time.",
        choices=("processes", "sim"),
    )  # processes (one OS process per node) | sim (virtual nodes, simulated time)
    node_series: tuple[int, ...] = opt(
        (), sim=True
    )  # sim: a scaling series (--nodes 8,16,32); () = the single run of `nodes`
    compute: str = opt(
        "real",
        "sim: real = train the models on the data; cost-only = every node moves a tiny stand-in whose bytes and "
        "compute are charged as --model on --dataset's input shape (no data, no training, no accuracy).",
        choices=("real", "cost-only"),
        sim=True,
    )  # sim: real (train) | cost-only (a stand-in payload charged as the named workload, bench/engine/sim/costonly.py)
    steps: int | None = opt(
        None, "sim, --compute cost-only: SGD steps per node (instead of --epochs).", sim=True
    )  # sim cost-only: steps per node (real training counts epochs instead)
    compute_profile: str = opt(
        "vm-core",
        "sim: compute profile (per-step time per model); see `swarmbench list`.",
        flag="--profile",
        env="compute_profile",
        sim=True,
    )  # sim: named per-step compute profile (bench/engine/sim/costmodel.py)
    step_time: float | None = opt(
        None, "sim: seconds per SGD step.", sim=True
    )  # sim: seconds per SGD step instead of the profile
    calibrate: str = opt(
        "none",
        "sim: node (alone: `--calibrate`) times one node's real steps here for the step time; host starts N "
        "real local processes and measures compute and every comm operation as they run together (N <= 16).",
        choices=("none", "node", "host"),
        flag_value="node",
        sim=True,
    )  # sim: none (the profile) | node (time one node here) | host (N local processes here)
    shared_cores: int = opt(
        0,
        "sim: the nodes are processes on one host of this many cores (max(1, C/N) threads each; a compute "
        "section takes max(1, k/C) times longer while k nodes compute), as the local launcher runs them; 0 = each "
        "node has its own hardware.",
        sim=True,
    )  # sim: the nodes share this many cores of one host (0: every node has its own)
    speed_sigma: float = opt(
        0.0, "sim: per-node speed factor ~ lognormal(0, sigma).", sim=True
    )  # sim: per-node speed factor ~ lognormal(0, sigma) (heterogeneity)
    straggler_p: float = opt(
        0.0, "sim: probability a step straggles.", sim=True
    )  # sim: probability that a step is straggler_k times slower
    straggler_k: float = opt(5.0, "sim: slowdown of a straggling step.", sim=True)  # sim: slowdown of a straggling step
    fail_p: float = opt(
        0.0, "sim: probability that a node fails at each of its steps (seeded, the same for every algorithm).", sim=True
    )  # sim: per node per step failure probability, drawn from (seed, rank) alone
    fail_nodes: int = opt(
        0,
        "sim: this many nodes, drawn by the seed, fail, each at a step drawn uniformly over the run.",
        sim=True,
    )  # sim: K random nodes fail at random steps (the resilience suite's 1 node, 5 %, 25 %)
    slow: tuple[str, ...] = opt(
        (),
        "sim: RANK@STEP:FACTOR: from its step STEP on, node RANK computes FACTOR times slower (repeatable).",
        sim=True,
    )  # sim: "RANK@STEP:FACTOR" slowdowns of one node's compute sections from a step on
    network: str = opt(
        "10gbe", "sim: link profile; see `swarmbench list`.", sim=True
    )  # sim: named link profile (bandwidth, latency)
    bandwidth_gbps: float | None = opt(
        None, "sim: per-node link Gb/s.", flag="--bandwidth", sim=True
    )  # sim: per-node link bandwidth in Gb/s instead of the profile's
    latency_us: float | None = opt(
        None, "sim: per-message latency in us.", flag="--latency", sim=True
    )  # sim: per-message latency in microseconds instead of the profile's
    allreduce_algo: str = opt(
        "auto",
        "sim: allreduce algorithm as MPI/NCCL implement it; auto = the cheapest for the message size and node "
        "count, as their tuners pick (tree = binomial tree).",
        flag="--allreduce",
        choices=(
            "auto",
            "ring",
            "tree",
            "recursive_doubling",
            "rabenseifner",
            "binomial_tree",
            "double_binary_tree",
        ),
        sim=True,
    )  # sim: allreduce algorithm (bench/engine/sim/collectives.py), auto = cheapest per message size and N
    gpus_per_host: int = opt(
        1,
        "sim: nodes per host; above 1, allreduces are two-level (intra-host link, then the network) as NCCL's.",
        sim=True,
    )  # sim: nodes sharing one host's intra-host link (1 = every node on its own host)
    intra_host: str = opt(
        "nvlink4", "sim: intra-host link profile with --gpus-per-host: nvlink4, pcie4, pcie5.", sim=True
    )  # sim: intra-host link profile (bench/engine/sim/costmodel.py NETWORK_PROFILES)
    sim_shards: str = opt(
        "auto",
        "sim: split = disjoint shards (as processes); sample = overlapping random shards; auto = split if it fits.",
        choices=("auto", "split", "sample"),
        sim=True,
    )  # sim: split (disjoint, as processes) | sample (overlapping) | auto (split if possible)
    eval_samples: int | None = opt(
        None, "sim: evaluate on the first this many test samples.  [default: all]", sim=True
    )  # sim: evaluate on the first this many test samples (None: all)
    target_acc: float | None = opt(
        None,
        "Time to target: the validation accuracy (test accuracy with --val-fraction 0) to reach; seconds and epochs "
        "to reach it head the accuracy table.  [default: none; a simulated series' scaling table uses 0.9]",
    )  # time to target (MLPerf-style): a classifier's goal on the validation metric
    target_ppl: float | None = opt(
        None,
        "Time to target, language models: the validation perplexity to fall to (lower is better).  [default: none]",
    )  # time to target: a language model's goal on the validation perplexity
    algo_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # per-algorithm overrides

    def round_orders(self) -> list[tuple[str, ...]]:
        """The algorithms' order in each round: as given for one round; with --repeat K a shuffle per round, seeded
        by (seed, round) alone, so every rank (and a rerun) computes the same orders and a slow phase of the machine
        does not always fall on the same algorithm."""
        import random

        if self.repeat == 1:
            return [self.algorithms]
        orders = []
        for number in range(1, self.repeat + 1):
            order = list(self.algorithms)
            random.Random(f"swarmbench-round:{self.seed}:{number}").shuffle(order)  # str seeds hash with sha512
            orders.append(tuple(order))
        return orders

    def options_for(self, algorithm: str) -> dict[str, Any]:
        """The `--set ALGO.key=value` overrides given for one algorithm."""
        return dict(dict(self.algo_options).get(algorithm, ()))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["fail"], out["slow"] = list(self.fail), list(self.slow)
        out["algorithms"] = list(self.algorithms)
        out["node_series"] = list(self.node_series)
        out["algo_options"] = {name: dict(opts) for name, opts in self.algo_options}
        return out

    def stored(self) -> dict[str, Any]:
        """`to_dict` as meta.json stores it: without the failure injection keys left at their defaults, so that a run
        without failure injection stores the configuration it stored before they existed (`from_dict` fills them)."""
        out = self.to_dict()
        for key in FAILURE_KEYS:
            if getattr(self, key) == getattr(RunConfig, key):
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        data["algorithms"] = tuple(data.get("algorithms", cls.algorithms))
        data["node_series"] = tuple(data.get("node_series", ()))
        for key in ("fail", "slow"):
            data[key] = tuple(data.get(key, ()))
        data["algo_options"] = tuple(
            (name, tuple(sorted(opts.items()))) for name, opts in sorted(data.get("algo_options", {}).items())
        )
        return cls(**data)


FAILURE_KEYS = ("fail", "on_failure", "fail_p", "fail_nodes", "slow")  # failure injection (`failure_schedule`)
RUN_FIELDS = {name: hint for name, hint in typing.get_type_hints(RunConfig).items() if name != "algo_options"}
# The optimizer's hyperparameters: set for every algorithm (`--lr`, `lr = ...`) and per algorithm (`--set swarm.lr=0.1`,
# an `[allreduce]` table); `hyper(run, algorithm)` resolves them.
HYPER_KEYS = (
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "warmup_epochs",
    "lr_schedule",
    "lr_milestones",
    "lr_gamma",
    "lr_scaling",
)
LR_SCHEDULES = ("constant", "step", "cosine")
LR_SCALINGS = ("none", "linear", "sqrt")
WARMUP_START = 0.1  # warmup starts at this fraction of the peak lr


@dataclass(frozen=True)
class Hyper:
    """One algorithm's optimizer hyperparameters, resolved (the run's values, then its own overrides)."""

    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    warmup_epochs: float
    lr_schedule: str
    lr_milestones: tuple[int, ...]
    lr_gamma: float
    lr_scaling: str

    def peak_lr(self, nodes: int) -> float:
        """lr after the scaling rule: the global batch is N times one node's."""
        return self.lr * {"none": 1.0, "linear": float(nodes), "sqrt": math.sqrt(nodes)}[self.lr_scaling]

    def constant(self) -> bool:
        return self.lr_schedule == "constant" and self.warmup_epochs == 0

    def lr_at(self, epoch: float, epochs: int, nodes: int) -> float:
        """The learning rate at `epoch` (fractional: steps done / steps per epoch) of a run of `epochs`."""
        peak = self.peak_lr(nodes)
        if epoch < self.warmup_epochs:
            return peak * (WARMUP_START + (1 - WARMUP_START) * epoch / self.warmup_epochs)
        if self.lr_schedule == "step":
            return peak * self.lr_gamma ** sum(1 for m in self.lr_milestones if epoch >= m)
        if self.lr_schedule == "cosine":
            span = max(epochs - self.warmup_epochs, 1e-12)
            return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - self.warmup_epochs) / span)))
        return peak


def hyper(run: RunConfig, algorithm: str) -> Hyper:
    """`algorithm`'s optimizer hyperparameters: the run's, then `--set ALGO.key` / `[ALGO]` overrides."""
    values = {key: getattr(run, key) for key in HYPER_KEYS}
    values.update({k: v for k, v in run.options_for(algorithm).items() if k in HYPER_KEYS})
    return Hyper(**values)


def check_hyper(h: Hyper, epochs: int, where: str) -> None:
    """Bad hyperparameters as one line each; `where` is '' for the run's (named as flags) or an algorithm's name."""
    flags = {f.name for f in fields(RunConfig) if f.metadata.get("help")}

    def name(key: str) -> str:
        if where:
            return f"{where}.{key}"
        return f"--{key.replace('_', '-')}" if key in flags else key

    if not h.lr > 0:
        raise UserError(f"{name('lr')} must be positive, got {h.lr}")
    if not 0 <= h.momentum < 1:
        raise UserError(f"{name('momentum')} must be in [0, 1), got {h.momentum}")
    if h.nesterov and h.momentum == 0:
        raise UserError(f"{name('nesterov')} needs momentum > 0: set {name('momentum')} too")
    if h.weight_decay < 0:
        raise UserError(f"{name('weight_decay')} must be >= 0, got {h.weight_decay}")
    if not 0 <= h.warmup_epochs < epochs:
        raise UserError(f"{name('warmup_epochs')} must be in [0, epochs = {epochs}), got {h.warmup_epochs}")
    if h.lr_schedule not in LR_SCHEDULES:
        raise UserError(
            f"unknown schedule '{h.lr_schedule}'{closest(h.lr_schedule, LR_SCHEDULES)} for {name('lr_schedule')}: "
            f"choose from {', '.join(LR_SCHEDULES)}"
        )
    if h.lr_scaling not in LR_SCALINGS:
        raise UserError(f"{name('lr_scaling')} must be one of {', '.join(LR_SCALINGS)}, got '{h.lr_scaling}'")
    if h.lr_schedule == "step":
        if not h.lr_milestones:
            raise UserError(f"a step schedule needs milestones: set {name('lr_milestones')}=E1,E2 (epochs)")
        bad = [m for m in h.lr_milestones if not 0 < m < epochs]
        if bad:
            raise UserError(
                f"{name('lr_milestones')} {bad[0]} is not inside the run's {epochs} epochs: use epochs 1..{epochs - 1}"
            )
    if not 0 < h.lr_gamma <= 1:
        raise UserError(f"{name('lr_gamma')} must be in (0, 1], got {h.lr_gamma}")


def _coerce(key: str, raw: Any, hint: Any) -> Any:
    """Convert `raw` (a TOML value or a `--set` string) to the field's declared type, or raise UserError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, raw, inner[0])
    if origin is tuple:
        items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).split(",") if s]
        return tuple(_coerce(key, item, args[0]) for item in items)
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("true", "yes", "on", "1"):
                return True
            if str(raw).lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError(raw)
        if hint is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            value = float(raw)
            if not math.isfinite(value):  # inf/nan would train (or simulate) and print numbers that mean nothing
                raise UserError(f"'{key}' must be a finite number, got {raw!r}: pass a finite value")
            return value
        if hint is str:
            if not isinstance(raw, (str, int, float)):
                raise ValueError(raw)
            return str(raw)
    except ValueError:
        name = getattr(hint, "__name__", str(hint))
        raise UserError(f"'{key}' must be {name}, got {raw!r}: fix the value") from None
    return raw


def algo_fields(algorithm: str) -> dict[str, Any]:
    """The keys an `[ALGO]` table (or `--set ALGO.key`) accepts for `algorithm` -> their types: the optimizer's
    hyperparameters, then the algorithm's own Config fields."""
    from bench.training.registry import ALGORITHMS

    return {**{key: RUN_FIELDS[key] for key in HYPER_KEYS}, **typing.get_type_hints(ALGORITHMS[algorithm].Config)}


def _check_algorithm(name: str) -> None:
    from bench.training.registry import ALGORITHMS

    if name not in ALGORITHMS:
        raise UserError(
            f"unknown algorithm '{name}'{closest(name, ALGORITHMS)}: choose from {', '.join(ALGORITHMS)} or all"
        )


def apply_overrides(base: dict[str, Any], pairs: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge `key -> raw value` pairs (keys `field` or `algo.field`) into a config dict, type-checked."""
    out = dict(base)
    algo_opts = {k: dict(v) for k, v in out.get("algo_options", {}).items()}
    for key, raw in pairs.items():
        if "." in key:
            algo, _, sub = key.partition(".")
            _check_algorithm(algo)
            accepted = algo_fields(algo)
            if sub not in accepted:
                valid = list(accepted)
                hint = closest(sub, valid)
                listing = ", ".join(f"{algo}.{f}" for f in valid) or "none"
                raise UserError(f"unknown key '{key}' in {source}{hint}: valid keys for {algo} are {listing}")
            algo_opts.setdefault(algo, {})[sub] = _coerce(key, raw, accepted[sub])
        else:
            if key not in RUN_FIELDS:
                raise UserError(
                    f"unknown key '{key}' in {source}{closest(key, RUN_FIELDS)}: "
                    "see `swarmbench run --help` for the keys"
                )
            out[key] = _coerce(key, raw, RUN_FIELDS[key])
    out["algo_options"] = algo_opts
    return out


def load_toml(path: str) -> dict[str, Any]:
    """Flatten a TOML config file into `key -> value` (tables become `table.key`); a results folder's meta.json
    gives the resolved configuration of that run (`swarmbench run --config DIR/meta.json` runs it again)."""
    if not Path(path).is_file():
        raise UserError(f"config file '{path}' does not exist: pass an existing TOML file to --config")
    if Path(path).name == "meta.json":
        return _meta_config(Path(path))
    return flatten_settings(load_toml_text(Path(path))[0])


def config_settings(path: str | None) -> dict[str, Any]:
    """A `--config` file's settings, flat (`[ALGO]` tables as `ALGO.key`), every key and value checked against the
    fields (the error names the file); {} without a file. For commands that merge them into their own settings."""
    if not path:
        return {}
    settings = load_toml(path)
    apply_overrides(RunConfig().to_dict(), settings, f"config file '{path}'")
    return settings


def _meta_config(path: Path) -> dict[str, Any]:
    import json

    try:
        config = json.loads(path.read_text(encoding="utf-8")).get("config")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise UserError(f"'{path}' is not a readable meta.json ({exc}): pass a run's meta.json") from None
    if not isinstance(config, dict):
        raise UserError(f"'{path}' holds no run configuration (a sweep's meta.json?): pass a run's meta.json")
    flat = {k: v for k, v in config.items() if k != "algo_options"}
    if "checkpoint_every" not in config and flat.get("target_acc") == 0.9:  # written before targets were per run:
        del flat["target_acc"]  # 0.9 was every run's default then, not a target anyone asked for
    for algo, opts in (config.get("algo_options") or {}).items():
        flat.update({f"{algo}.{key}": value for key, value in opts.items()})
    return flat


def parse_set(items: typing.Iterable[str]) -> dict[str, str]:
    """`key=value` strings from repeated `--set` options."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set '{item}' is not key=value: write e.g. --set lr=0.1")
        out[key.strip()] = value.strip()
    return out


def resolve(cli_values: dict[str, Any], config_file: str | None = None, sets: typing.Iterable[str] = ()) -> RunConfig:
    """Defaults < config file < explicitly given CLI options < --set; then validated."""
    cfg = RunConfig().to_dict()
    if config_file:
        cfg = apply_overrides(cfg, load_toml(config_file), f"config file '{config_file}'")
    cfg = apply_overrides(cfg, cli_values, "options")
    cfg = apply_overrides(cfg, parse_set(sets), "--set")
    algos: list[str] = []
    for name in cfg["algorithms"]:
        if name == "all":  # every algorithm that runs on the model (and with --compute cost-only, on its stand-in)
            from bench.training.registry import ALGORITHMS, runs_on

            algos.extend(a for a in ALGORITHMS if a not in algos and runs_on(a, cfg["model"], cfg["compute"]))
        elif name not in algos:
            _check_algorithm(name)
            algos.append(name)
    cfg["algorithms"] = tuple(algos)
    run = RunConfig.from_dict(cfg)
    validate(run)
    return run


def algo_config(run: RunConfig, algorithm: str) -> Any:
    """The algorithm's own Config: shared field names take the run's value, then `--set ALGO.key` overrides."""
    from bench.training.registry import ALGORITHMS

    cls = ALGORITHMS[algorithm].Config
    names = {f.name for f in fields(cls)}
    values = {name: getattr(run, name) for name in names if name in RUN_FIELDS}
    values.update({k: v for k, v in run.options_for(algorithm).items() if k in names})
    return cls(**values)


def _check_models(cfg: RunConfig) -> None:
    from bench.training.registry import ALGORITHMS, runs_on

    for name in cfg.algorithms:
        if not runs_on(name, cfg.model):
            models = " or ".join(f"--model {m}" for m in ALGORITHMS[name].models)
            raise UserError(
                f"{name} runs only on {models} (it keeps per-sample state that other models do not allow), not on "
                f"--model {cfg.model}: use {models}, or drop --algo {name}"
            )


def validate(cfg: RunConfig) -> None:
    """Checks that need no data loading; each failure is one actionable line."""
    from bench.core.data import DATASETS
    from bench.core.models import model_spec
    from bench.core.topology import check_topology

    if not cfg.algorithms:
        raise UserError("no algorithm selected: pass --algo NAME (repeatable) or --algo all")
    if cfg.nodes < 1:
        raise UserError(f"--nodes must be at least 1, got {cfg.nodes}")
    if cfg.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.repeat < 1:
        raise UserError(f"--repeat must be at least 1, got {cfg.repeat}: pass --repeat K with K >= 1 (1 = one round)")
    check_hyper(hyper(cfg, ""), cfg.epochs, "")
    for name in cfg.algorithms:
        check_hyper(hyper(cfg, name), cfg.epochs, name)
    _check_models(cfg)
    if cfg.local_steps < 1:
        raise UserError(f"--local-steps must be at least 1, got {cfg.local_steps}")
    if cfg.partition not in ("iid", "dirichlet"):
        raise UserError(f"--partition must be iid or dirichlet, got '{cfg.partition}'")
    if not cfg.alpha > 0:
        raise UserError(f"--alpha must be positive, got {cfg.alpha}")
    if cfg.timeout_s <= 0:
        raise UserError(f"timeout_s must be positive, got {cfg.timeout_s}")
    if not 0 <= cfg.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.eval_every < 1:
        raise UserError(f"eval_every must be at least 1, got {cfg.eval_every}")
    if cfg.checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be 0 (off) or a number of epochs, got {cfg.checkpoint_every}")
    if cfg.checkpoint_every and cfg.swarm_mode == "pushpull" and "swarm" in cfg.algorithms:
        raise UserError(
            "--checkpoint-every cannot save SwarmSGD's pull-push deposits that are still on their way: drop "
            "--checkpoint-every (--resume still reruns the interrupted algorithm) or use another --swarm-mode"
        )
    if cfg.compute != "cost-only":  # a cost-only simulation reads no data: its workload checks are the simulator's
        if cfg.dataset not in DATASETS:
            raise UserError(
                f"unknown dataset '{cfg.dataset}'{closest(cfg.dataset, DATASETS)}: choose from {', '.join(DATASETS)}"
            )
        check_task(cfg.dataset, model_spec(cfg.model).task, cfg)  # unknown models (incl. torchvision:NAME): closest
        if DATASETS[cfg.dataset].needs_data_dir and cfg.data_dir is None:
            raise UserError(
                f"dataset '{cfg.dataset}' is read from disk: pass --data-dir FOLDER (add --download to fetch it there)"
            )
    for n in cfg.node_series or (cfg.nodes,):
        check_topology(cfg.topology, n, degree=cfg.degree, seed=cfg.seed)
    check_engine(cfg)
    check_failures(cfg)
    if cfg.master_port is not None and not 0 < cfg.master_port < 65536:
        raise UserError(f"--master-port must be a port number in 1..65535, got {cfg.master_port}")
    from bench.core.codec import BITS, QUANTIZERS

    if cfg.bits not in BITS:
        raise UserError(f"--bits {cfg.bits} is not supported: use one of {', '.join(map(str, BITS))}")
    if cfg.quantizer not in QUANTIZERS:
        raise UserError(f"--quantizer must be one of {', '.join(QUANTIZERS)}, got '{cfg.quantizer}'")
    if cfg.eps is not None and not cfg.eps > 0:
        raise UserError(f"--eps must be positive, got {cfg.eps}")
    if not cfg.lattice_radius > 0:
        raise UserError(f"--lattice-radius must be positive, got {cfg.lattice_radius}")
    if cfg.bucket < 1:
        raise UserError(f"bucket must be at least 1, got {cfg.bucket}")
    if cfg.allreduce_impl not in ("torch", "horovod"):
        raise UserError(f"--allreduce-impl must be torch or horovod, got '{cfg.allreduce_impl}'")
    if cfg.transport not in ("auto", "p2p", "rma"):
        raise UserError(f"--transport must be auto, p2p or rma, got '{cfg.transport}'")
    if cfg.device not in ("cpu", "cuda", "auto"):
        raise UserError(f"--device must be cpu, cuda or auto, got '{cfg.device}'")
    if cfg.backend not in ("auto", "gloo", "nccl"):
        raise UserError(f"--backend must be auto, gloo or nccl, got '{cfg.backend}'")
    from bench.core.devices import check_device_request

    check_device_request(cfg.device, cfg.backend)
    for name in cfg.algorithms:
        try:
            algo_config(cfg, name)
        except (TypeError, ValueError) as exc:
            raise UserError(f"invalid options for {name}: {exc} (fix --set {name}.KEY or the [{name}] table)") from None


def parse_fail(spec: str) -> tuple[int, int]:
    """'RANK@STEP' -> (rank, step); a UserError naming the fix otherwise."""
    rank, sep, step = str(spec).partition("@")
    try:
        if not sep:
            raise ValueError(spec)
        return int(rank), int(step)
    except ValueError:
        raise UserError(
            f"--fail '{spec}' is not RANK@STEP: write e.g. --fail 3@100 (node 3 fails at its step 100)"
        ) from None


def parse_slow(spec: str) -> tuple[int, int, float]:
    """'RANK@STEP:FACTOR' -> (rank, step, factor); a UserError naming the fix otherwise."""
    head, sep, factor = str(spec).partition(":")
    rank, at, step = head.partition("@")
    try:
        if not (sep and at):
            raise ValueError(spec)
        return int(rank), int(step), float(factor)
    except ValueError:
        raise UserError(
            f"--slow '{spec}' is not RANK@STEP:FACTOR: write e.g. --slow 2@50:4 (node 2 computes 4 times slower from "
            "its step 50 on)"
        ) from None


def check_failures(cfg: RunConfig) -> None:
    """The failure injection options (`--fail`, `--fail-p`, `--slow`, `--on-failure`), each problem one line."""
    if cfg.on_failure not in ("stop", "continue"):
        raise UserError(f"--on-failure must be stop or continue, got '{cfg.on_failure}'")
    counts = cfg.node_series or (cfg.nodes,)
    for option, specs, parse in (("--fail", cfg.fail, parse_fail), ("--slow", cfg.slow, parse_slow)):
        for spec in specs:
            rank, step, *factor = parse(spec)
            for n in counts:
                if not 0 <= rank < n:
                    raise UserError(
                        f"{option} {spec}: rank {rank} is not a node of a {n}-node run: use a rank in 0..{n - 1}"
                    )
            if step < 0:
                raise UserError(f"{option} {spec}: step {step} is negative: use a step of 0 or more")
            if factor and not (math.isfinite(factor[0]) and factor[0] > 0):
                raise UserError(
                    f"--slow {spec}: factor {factor[0]} must be a positive number: e.g. 4 for 4 times slower"
                )
    for n in counts:
        if not 0 <= cfg.fail_nodes < n:
            raise UserError(
                f"--fail-nodes {cfg.fail_nodes} does not leave a survivor of a {n}-node run: use 0 to {n - 1} nodes"
            )
    if not 0 <= cfg.fail_p < 1:
        raise UserError(f"--fail-p must be a probability in [0, 1), got {cfg.fail_p}: use e.g. --fail-p 0.001")
    if cfg.compute == "cost-only" and (cfg.fail or cfg.fail_p or cfg.fail_nodes or cfg.slow):
        raise UserError(
            "failure injection (--fail, --fail-p, --fail-nodes, --slow) needs --compute real: drop --compute cost-only"
        )


def injects_failures(cfg: RunConfig) -> bool:
    """Whether nodes of this run may fail (`--fail`, `--fail-p`, `--fail-nodes`, or `--on-failure continue`, when a
    real process may be killed from outside): its summary then says how many were alive."""
    return bool(cfg.fail) or cfg.fail_p > 0 or cfg.fail_nodes > 0 or cfg.on_failure == "continue"


@dataclass(frozen=True)
class FailureSchedule:
    """Which node fails at which of its steps, and which computes slower from when: a function of the configuration
    alone, so every algorithm of a run (and a resumed run) gets the same one."""

    fail_at: dict[int, int]  # rank -> the step it fails at (it has taken that many steps)
    slow: dict[int, tuple[tuple[int, float], ...]]  # rank -> (from step, factor), by step

    def slowdown(self, rank: int, step: int) -> float:
        """How many times slower node `rank` computes its step `step` (the latest --slow of it that has begun)."""
        factor = 1.0
        for start, f in self.slow.get(rank, ()):
            if start <= step:
                factor = f
        return factor


def failure_schedule(cfg: RunConfig, total_steps: int = 0) -> FailureSchedule:
    """The run's failures: every `--fail RANK@STEP`; with `--fail-p P` each node's first failing step drawn from a
    geometric law (a node fails at each step with probability P) on a stream of its own, seeded by (seed, rank); with
    `--fail-nodes K`, K distinct nodes drawn by the seed, each failing at a step drawn uniformly from the run's
    `total_steps` (steps per node). A node with several failures fails at the earliest."""
    import random

    fail_at: dict[int, int] = {}
    for spec in cfg.fail:
        rank, step = parse_fail(spec)
        fail_at[rank] = min(step, fail_at.get(rank, step))
    if cfg.fail_p > 0:
        for rank in range(cfg.nodes):
            u = random.Random(f"swarmbench-fail:{cfg.seed}:{rank}").random()  # str seeds hash with sha512
            step = int(math.log1p(-u) / math.log1p(-cfg.fail_p))  # P(step >= k) = (1 - P)^k
            fail_at[rank] = min(step, fail_at.get(rank, step))
    if cfg.fail_nodes > 0:
        draw = random.Random(f"swarmbench-fail-nodes:{cfg.seed}")
        for rank in draw.sample(range(cfg.nodes), cfg.fail_nodes):
            step = draw.randrange(max(1, total_steps))
            fail_at[rank] = min(step, fail_at.get(rank, step))
    slow: dict[int, list[tuple[int, float]]] = {}
    for spec in cfg.slow:
        rank, step, factor = parse_slow(spec)
        slow.setdefault(rank, []).append((step, factor))
    return FailureSchedule(fail_at, {rank: tuple(sorted(v, key=lambda e: e[0])) for rank, v in slow.items()})


def check_task(dataset: str, model_task: str, cfg: RunConfig) -> None:
    """A model fits its dataset's task (classification or language modelling), and the options that only one task
    understands are left alone for the other."""
    from bench.core.data import DATASETS, LANGUAGE_MODEL

    lm = DATASETS[dataset].task == LANGUAGE_MODEL
    if lm and model_task != LANGUAGE_MODEL:
        raise UserError(
            f"model '{cfg.model}' classifies images or vectors but dataset '{dataset}' holds text (token windows): "
            "use --model transformer-lm or --model lstm-lm, or an image dataset such as --dataset mnist"
        )
    if not lm and model_task == LANGUAGE_MODEL:
        raise UserError(
            f"model '{cfg.model}' is a language model but dataset '{dataset}' holds images or vectors: use "
            "--dataset embedded-text (or --dataset wikitext2 --data-dir FOLDER), or a classifier such as --model mlp"
        )
    if cfg.bptt is not None and not lm:
        raise UserError(f"--bptt applies to language-model datasets only, not to '{dataset}': drop --bptt")
    if cfg.bptt is not None and cfg.bptt < 1:
        raise UserError(f"--bptt must be at least 1 token, got {cfg.bptt}")
    if cfg.target_ppl is not None and not lm:
        raise UserError(f"--target-ppl is a language model's goal, not '{dataset}''s: use --target-acc")
    if cfg.target_acc is not None and lm:
        raise UserError(f"--target-acc is a classifier's goal, not '{dataset}''s: use --target-ppl (lower is better)")
    if cfg.target_acc is not None and not 0 < cfg.target_acc <= 1:
        raise UserError(f"--target-acc must be an accuracy in (0, 1], got {cfg.target_acc}")
    if cfg.target_ppl is not None and not cfg.target_ppl >= 1:
        raise UserError(f"--target-ppl must be a perplexity (at least 1), got {cfg.target_ppl}")
    if lm and cfg.partition != "iid":
        raise UserError(
            f"--partition {cfg.partition} skews class labels, which token windows do not have: use --partition iid"
        )


ENGINES = ("processes", "sim")
SIM_ONLY = tuple(f.name for f in fields(RunConfig) if f.metadata.get("sim"))  # options of the simulated cluster only


def check_engine(cfg: RunConfig) -> None:
    """The engine name, and options that only the simulated cluster understands (its own checks, which need the
    engine, are `bench.run.checks.check`)."""
    if cfg.engine not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)}, got '{cfg.engine}'")
    if cfg.engine == "sim":
        return
    defaults = RunConfig()
    for name in SIM_ONLY:
        if getattr(cfg, name) != getattr(defaults, name):
            what = "a comma list of node counts" if name == "node_series" else f"'{name}'"
            raise UserError(f"{what} applies to the simulated cluster only: add --engine sim or drop it")
