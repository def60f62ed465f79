"""Run configuration: one frozen dataclass, filled from defaults < TOML file < CLI options < `--set` overrides.

Every key is type-checked against the dataclass fields; an unknown key names the closest valid one.
Per-algorithm options live in each algorithm's own `Config` dataclass and are set with `--set ALGO.key=value`
(or a `[ALGO]` table in the TOML file); keys an algorithm config shares with the run config (e.g.
`local_steps`) default to the run's value.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bench.base.console import closest
from bench.base.errors import UserError
from bench.base.tomlfile import flatten_settings, load_toml_text


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one `swarmbench run` invocation (every algorithm shares it)."""

    algorithms: tuple[str, ...] = ("allreduce", "local_sgd", "dpsgd", "adpsgd", "swarm")  # run in this order
    nodes: int = 4  # world size: worker processes (or virtual nodes)
    topology: str = "ring"  # communication graph for the decentralized algorithms
    degree: int | None = None  # degree for random-regular topologies
    dataset: str = "mnist"  # name in bench.core.data.DATASETS
    data_dir: str | None = None  # folder of on-disk datasets (unused by the embedded ones)
    download: bool = False  # let torchvision download an on-disk dataset into data_dir (needs a network)
    model: str = "mlp"  # name in bench.core.models.MODELS
    epochs: int = 8  # passes of every node over its own shard
    batch_size: int = 32  # per node
    lr: float = 0.05  # SGD learning rate
    momentum: float = 0.9  # SGD momentum (optimizer state always stays local)
    weight_decay: float = 0.0  # L2 penalty in the optimizer
    local_steps: int = 4  # H: local steps between averagings (local_sgd, swarm)
    local_steps_dist: str = "fixed"  # swarm: fixed H, or geometric with mean H
    swarm_mode: str = "nonblocking"  # swarm: nonblocking (initiator only) | blocking (both, atomically)
    bits: int = 32  # bits per coordinate of exchanged models (swarm, adpsgd, dpsgd): 2, 4, 8, 16, 32
    quantizer: str = "lattice"  # lattice (reference-point, Davies et al.) | uniform (stochastic, unbiased)
    eps: float | None = None  # lattice spacing; None: sized so neighbours within lattice_radius decode
    lattice_radius: float = 0.25  # max-norm distance between neighbours the default eps must decode
    bucket: int = 1024  # coordinates per codec header entry
    allreduce_impl: str = "torch"  # allreduce engine: torch (torch.distributed) | horovod (hvd.allreduce)
    transport: str = "auto"  # one-sided exchange: auto | p2p (gloo responder thread) | rma (MPI windows)
    partition: str = "iid"  # how the training set is split over nodes: iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration for --partition dirichlet (smaller = more label skew)
    seed: int = 0  # one seed for data split, initial weights, shards and peer choices
    launcher: str = "local"  # who starts the worker processes
    master_addr: str | None = None  # rendezvous host (rank 0) for MPI/srun launches; else MASTER_ADDR
    master_port: int | None = None  # rendezvous port on that host; else MASTER_PORT
    device: str = "cpu"  # cpu | cuda | auto
    backend: str = "auto"  # torch.distributed backend: auto (gloo on CPU, nccl on CUDA) | gloo | nccl
    timeout_s: float = 300.0  # a blocked collective fails after this long instead of hanging
    eval_every: int = 1  # evaluate every this many epochs (always after the last)
    engine: str = "processes"  # processes (one OS process per node) | sim (virtual nodes, simulated time)
    node_series: tuple[int, ...] = ()  # sim: a scaling series (--nodes 8,16,32); () = the single run of `nodes`
    compute_profile: str = "vm-core"  # sim: named per-step compute profile (bench/engine/sim/costmodel.py)
    step_time: float | None = None  # sim: seconds per SGD step instead of the profile
    calibrate: str = "none"  # sim: none (the profile) | node (time one node here) | host (N local processes here)
    shared_cores: int = 0  # sim: the nodes share this many cores of one host (0: every node has its own)
    speed_sigma: float = 0.0  # sim: per-node speed factor ~ lognormal(0, sigma) (heterogeneity)
    straggler_p: float = 0.0  # sim: probability that a step is straggler_k times slower
    straggler_k: float = 5.0  # sim: slowdown of a straggling step
    network: str = "10gbe"  # sim: named link profile (bandwidth, latency)
    bandwidth_gbps: float | None = None  # sim: per-node link bandwidth in Gb/s instead of the profile's
    latency_us: float | None = None  # sim: per-message latency in microseconds instead of the profile's
    allreduce_algo: str = "ring"  # sim: allreduce cost formula: ring | tree
    sim_shards: str = "auto"  # sim: split (disjoint, as processes) | sample (overlapping) | auto (split if possible)
    eval_samples: int | None = None  # sim: evaluate on the first this many test samples (None: all)
    target_acc: float = 0.9  # sim series: the test accuracy whose time-to-reach the scaling table reports
    algo_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # per-algorithm overrides

    def options_for(self, algorithm: str) -> dict[str, Any]:
        """The `--set ALGO.key=value` overrides given for one algorithm."""
        return dict(dict(self.algo_options).get(algorithm, ()))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["algorithms"] = list(self.algorithms)
        out["node_series"] = list(self.node_series)
        out["algo_options"] = {name: dict(opts) for name, opts in self.algo_options}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        data["algorithms"] = tuple(data.get("algorithms", cls.algorithms))
        data["node_series"] = tuple(data.get("node_series", ()))
        data["algo_options"] = tuple(
            (name, tuple(sorted(opts.items()))) for name, opts in sorted(data.get("algo_options", {}).items())
        )
        return cls(**data)


RUN_FIELDS = {name: hint for name, hint in typing.get_type_hints(RunConfig).items() if name != "algo_options"}


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
            return float(raw)
        if hint is str:
            if not isinstance(raw, (str, int, float)):
                raise ValueError(raw)
            return str(raw)
    except ValueError:
        name = getattr(hint, "__name__", str(hint))
        raise UserError(f"'{key}' must be {name}, got {raw!r}: fix the value") from None
    return raw


def _algo_config_types(algorithm: str) -> dict[str, Any]:
    from bench.training.registry import ALGORITHMS

    return typing.get_type_hints(ALGORITHMS[algorithm].Config)


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
            algo_fields = _algo_config_types(algo)
            if sub not in algo_fields:
                valid = list(algo_fields)
                hint = closest(sub, valid)
                listing = ", ".join(f"{algo}.{f}" for f in valid) or "none"
                raise UserError(f"unknown key '{key}' in {source}{hint}: valid keys for {algo} are {listing}")
            algo_opts.setdefault(algo, {})[sub] = _coerce(key, raw, algo_fields[sub])
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
    """Flatten a TOML config file into `key -> value` (tables become `table.key`)."""
    if not Path(path).is_file():
        raise UserError(f"config file '{path}' does not exist: pass an existing TOML file to --config")
    return flatten_settings(load_toml_text(Path(path))[0])


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
        if name == "all":
            from bench.training.registry import ALGORITHMS

            algos.extend(a for a in ALGORITHMS if a not in algos)
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
    values = {f.name: getattr(run, f.name) for f in fields(cls) if f.name in RUN_FIELDS}
    values.update(run.options_for(algorithm))
    return cls(**values)


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
    if not cfg.lr > 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    if not 0 <= cfg.momentum < 1:
        raise UserError(f"--momentum must be in [0, 1), got {cfg.momentum}")
    if cfg.weight_decay < 0:
        raise UserError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.local_steps < 1:
        raise UserError(f"--local-steps must be at least 1, got {cfg.local_steps}")
    if cfg.partition not in ("iid", "dirichlet"):
        raise UserError(f"--partition must be iid or dirichlet, got '{cfg.partition}'")
    if not cfg.alpha > 0:
        raise UserError(f"--alpha must be positive, got {cfg.alpha}")
    if cfg.timeout_s <= 0:
        raise UserError(f"timeout_s must be positive, got {cfg.timeout_s}")
    if cfg.eval_every < 1:
        raise UserError(f"eval_every must be at least 1, got {cfg.eval_every}")
    if cfg.dataset not in DATASETS:
        raise UserError(
            f"unknown dataset '{cfg.dataset}'{closest(cfg.dataset, DATASETS)}: choose from {', '.join(DATASETS)}"
        )
    model_spec(cfg.model)  # unknown names (incl. torchvision:NAME) -> UserError with the closest match
    if DATASETS[cfg.dataset].needs_data_dir and cfg.data_dir is None:
        raise UserError(
            f"dataset '{cfg.dataset}' is read from disk: pass --data-dir FOLDER (add --download to fetch it there)"
        )
    for n in cfg.node_series or (cfg.nodes,):
        check_topology(cfg.topology, n, degree=cfg.degree, seed=cfg.seed)
    check_engine(cfg)
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


ENGINES = ("processes", "sim")
SIM_ONLY = (
    "node_series",
    "compute_profile",
    "step_time",
    "calibrate",
    "shared_cores",
    "speed_sigma",
    "straggler_p",
    "straggler_k",
    "network",
    "bandwidth_gbps",
    "latency_us",
    "allreduce_algo",
    "sim_shards",
    "eval_samples",
    "target_acc",
)


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
