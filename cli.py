"""swarmbench command line: a thin Click layer that builds a RunConfig and hands it to bench.*.

Heavy imports (torch, pandas) happen inside commands so that `swarmbench --help` answers at once.
"""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource

from bench.records.tables import FORMATS

ENV_PREFIX = "SWARMBENCH"


class SwarmGroup(click.Group):
    """Every user-fixable error is one line on stderr and exit status 2, never a traceback."""

    def main(self, *args, **kwargs):  # type: ignore[override]
        from bench.base.errors import UserError

        kwargs["standalone_mode"] = False
        kwargs.setdefault("auto_envvar_prefix", ENV_PREFIX)
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()} (see --help)", err=True)
            sys.exit(2)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=SwarmGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="swarmbench")
def cli() -> None:
    """Benchmark SwarmSGD against AllReduce SGD, local SGD, D-PSGD and AD-PSGD under identical launches."""


# CLI option name -> RunConfig field. Defaults are shown from RunConfig so there is one source of truth.
RUN_OPTIONS = {
    "algo": "algorithms",
    "nodes": "nodes",
    "topology": "topology",
    "degree": "degree",
    "dataset": "dataset",
    "data_dir": "data_dir",
    "download": "download",
    "model": "model",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "momentum": "momentum",
    "local_steps": "local_steps",
    "local_steps_dist": "local_steps_dist",
    "swarm_mode": "swarm_mode",
    "bits": "bits",
    "quantizer": "quantizer",
    "eps": "eps",
    "lattice_radius": "lattice_radius",
    "transport": "transport",
    "allreduce_impl": "allreduce_impl",
    "device": "device",
    "backend": "backend",
    "partition": "partition",
    "alpha": "alpha",
    "seed": "seed",
    "launcher": "launcher",
    "master_addr": "master_addr",
    "master_port": "master_port",
    "engine": "engine",
    "compute_profile": "compute_profile",
    "step_time": "step_time",
    "calibrate": "calibrate",
    "shared_cores": "shared_cores",
    "speed_sigma": "speed_sigma",
    "straggler_p": "straggler_p",
    "straggler_k": "straggler_k",
    "network": "network",
    "bandwidth": "bandwidth_gbps",
    "latency": "latency_us",
    "allreduce": "allreduce_algo",
    "sim_shards": "sim_shards",
    "eval_samples": "eval_samples",
    "target_acc": "target_acc",
}


class NodeCount(click.ParamType):
    """An integer, or (for --engine sim) a comma list of node counts: a scaling series."""

    name = "N|N,N,..."

    def convert(self, value, param, ctx):
        if isinstance(value, (int, tuple)):
            return value
        text = str(value).strip()
        try:
            counts = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            counts = ()
        if not counts:
            self.fail(f"'{value}' is not a node count: pass an integer, or with --engine sim a list like 8,16,32")
        return counts if "," in text else counts[0]


def _defaults():
    from bench.training.config import RunConfig

    return RunConfig()


D = _defaults()


def _launcher_names() -> list[str]:
    from bench.engine.processes.launchers import LAUNCHERS

    return list(LAUNCHERS)


@cli.command("run")
@click.option(
    "--algo",
    multiple=True,
    show_envvar=True,
    help="Algorithm (repeatable) or 'all'; see `swarmbench list`.  [default: all]",
)
@click.option(
    "--nodes",
    type=NodeCount(),
    default=D.nodes,
    show_envvar=True,
    help="Number of nodes (worker processes); with --engine sim also a comma list 8,16,32 (a scaling series).",
)
@click.option(
    "--topology",
    default=D.topology,
    show_envvar=True,
    help="Graph for decentralized algorithms: ring, torus, complete, ...",
)
@click.option("--degree", type=int, default=None, show_envvar=True, help="Degree of a random-regular topology.")
@click.option("--dataset", default=D.dataset, show_envvar=True, help="Dataset; the default ships inside a package.")
@click.option("--data-dir", default=None, show_envvar=True, help="Folder holding on-disk datasets.")
@click.option(
    "--download/--no-download",
    default=False,
    show_envvar=True,
    help="Let torchvision download an on-disk dataset into --data-dir (needs a network).",
)
@click.option("--model", default=D.model, show_envvar=True, help="Model: mlp, lenet5, resnet20.")
@click.option("--epochs", type=int, default=D.epochs, show_envvar=True, help="Passes of every node over its shard.")
@click.option("--batch-size", type=int, default=D.batch_size, show_envvar=True, help="Mini-batch size per node.")
@click.option("--lr", type=float, default=D.lr, show_envvar=True, help="Learning rate.")
@click.option("--momentum", type=float, default=D.momentum, show_envvar=True, help="SGD momentum (kept local).")
@click.option(
    "--local-steps",
    type=int,
    default=D.local_steps,
    show_envvar=True,
    help="H: local steps between averagings (local_sgd, swarm).",
)
@click.option(
    "--local-steps-dist",
    type=click.Choice(["fixed", "geometric"]),
    default=D.local_steps_dist,
    show_envvar=True,
    help="swarm: exactly H local steps, or a geometric number with mean H.",
)
@click.option(
    "--swarm-mode",
    type=click.Choice(["nonblocking", "blocking"]),
    default=D.swarm_mode,
    show_envvar=True,
    help="swarm: only the initiator averages (non-blocking) or both atomically (blocking).",
)
@click.option(
    "--bits",
    type=int,
    default=D.bits,
    show_envvar=True,
    help="Bits per coordinate of exchanged models (swarm, adpsgd, dpsgd): 2, 4, 8, 16 or 32 (= no quantization).",
)
@click.option(
    "--quantizer",
    type=click.Choice(["lattice", "uniform"]),
    default=D.quantizer,
    show_envvar=True,
    help="lattice: residues decoded against the receiver's own model; uniform: stochastic, unbiased.",
)
@click.option(
    "--eps",
    type=float,
    default=None,
    show_envvar=True,
    help="Lattice spacing.  [default: lattice-radius / (2^(bits-1) - 1)]",
)
@click.option(
    "--lattice-radius",
    type=float,
    default=D.lattice_radius,
    show_envvar=True,
    help="Max-norm distance between neighbours that the default eps decodes.",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "auto"]),
    default=D.device,
    show_envvar=True,
    help="cpu, cuda (one GPU per local rank) or auto (cuda when torch sees a GPU).",
)
@click.option(
    "--backend",
    type=click.Choice(["auto", "gloo", "nccl"]),
    default=D.backend,
    show_envvar=True,
    help="torch.distributed backend: auto = nccl with one rank per GPU, else gloo.",
)
@click.option(
    "--allreduce-impl",
    type=click.Choice(["torch", "horovod"]),
    default=D.allreduce_impl,
    show_envvar=True,
    help="Allreduce engine for allreduce and local_sgd: torch.distributed or Horovod (horovodrun/mpirun).",
)
@click.option(
    "--transport",
    type=click.Choice(["auto", "p2p", "rma"]),
    default=D.transport,
    show_envvar=True,
    help="One-sided exchange: auto (rma under MPI on one host, else p2p), p2p (gloo responder), rma (MPI windows).",
)
@click.option(
    "--partition",
    type=click.Choice(["iid", "dirichlet"]),
    default=D.partition,
    show_envvar=True,
    help="How training data is split over nodes.",
)
@click.option(
    "--alpha",
    type=float,
    default=D.alpha,
    show_envvar=True,
    help="Dirichlet concentration (smaller = more skew).",
)
@click.option(
    "--seed",
    type=int,
    default=D.seed,
    show_envvar=True,
    help="Seed for data split, weights, shards and peer choices.",
)
@click.option(
    "--launcher",
    default=D.launcher,
    show_envvar=True,
    help=f"Who starts the workers: {', '.join(_launcher_names())} (detected when mpirun etc. started this).",
)
@click.option(
    "--master-addr",
    default=None,
    show_envvar=True,
    help="Rendezvous host (rank 0) for MPI/srun launches; else MASTER_ADDR, else found via mpi4py.",
)
@click.option("--master-port", type=int, default=None, show_envvar=True, help="Rendezvous port; else MASTER_PORT.")
@click.option(
    "--engine",
    type=click.Choice(["processes", "sim"]),
    default=D.engine,
    show_envvar=True,
    help="processes: one OS process per node; sim: virtual nodes in this process with simulated time.",
)
@click.option(
    "--profile",
    "compute_profile",
    default=D.compute_profile,
    show_envvar=True,
    help="sim: compute profile (per-step time per model); see `swarmbench list`.",
)
@click.option("--step-time", type=float, default=None, show_envvar=True, help="sim: seconds per SGD step.")
@click.option(
    "--calibrate",
    type=click.Choice(["none", "node", "host"]),
    is_flag=False,
    flag_value="node",
    default=D.calibrate,
    show_envvar=True,
    help="sim: node (alone: `--calibrate`) times one node's real steps here for the step time; host starts N "
    "real local processes and measures compute and every comm operation as they run together (N <= 16).",
)
@click.option(
    "--shared-cores",
    type=int,
    default=D.shared_cores,
    show_envvar=True,
    help="sim: the nodes are processes on one host of this many cores (max(1, C/N) threads each; a compute "
    "section takes max(1, k/C) times longer while k nodes compute), as the local launcher runs them; 0 = each "
    "node has its own hardware.",
)
@click.option(
    "--speed-sigma",
    type=float,
    default=D.speed_sigma,
    show_envvar=True,
    help="sim: per-node speed factor ~ lognormal(0, sigma).",
)
@click.option(
    "--straggler-p", type=float, default=D.straggler_p, show_envvar=True, help="sim: probability a step straggles."
)
@click.option(
    "--straggler-k", type=float, default=D.straggler_k, show_envvar=True, help="sim: slowdown of a straggling step."
)
@click.option("--network", default=D.network, show_envvar=True, help="sim: link profile; see `swarmbench list`.")
@click.option("--bandwidth", type=float, default=None, show_envvar=True, help="sim: per-node link Gb/s.")
@click.option("--latency", type=float, default=None, show_envvar=True, help="sim: per-message latency in us.")
@click.option(
    "--allreduce",
    type=click.Choice(["ring", "tree"]),
    default=D.allreduce_algo,
    show_envvar=True,
    help="sim: allreduce cost formula.",
)
@click.option(
    "--sim-shards",
    type=click.Choice(["auto", "split", "sample"]),
    default=D.sim_shards,
    show_envvar=True,
    help="sim: split = disjoint shards (as processes); sample = overlapping random shards; auto = split if it fits.",
)
@click.option(
    "--eval-samples",
    type=int,
    default=None,
    show_envvar=True,
    help="sim: evaluate on the first this many test samples.  [default: all]",
)
@click.option(
    "--target-acc",
    type=float,
    default=D.target_acc,
    show_envvar=True,
    help="sim series: the test accuracy whose time-to-reach scaling.csv reports.",
)
@click.option(
    "--out",
    default=None,
    show_envvar=True,
    help="Results folder (must not exist or be empty).  [default: results/<timestamp>]",
)
@click.option(
    "--config",
    "config_file",
    default=None,
    show_envvar=True,
    help="TOML file with run keys (and [ALGO] tables).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    show_envvar=True,
    help="Override a key: --set lr=0.1, --set swarm.local_steps=8 (repeatable).",
)
@click.pass_context
def run_cmd(ctx: click.Context, out: str | None, config_file: str | None, sets: tuple[str, ...], **opts) -> int:
    """Run the selected algorithms under one identical launch; write throughput, accuracy, comm tables."""
    from bench.run.checks import resolve
    from bench.run.orchestrate import execute, nodes_from_launcher

    given = {}
    for name, value in opts.items():
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) and value != ():
            given[RUN_OPTIONS[name]] = list(value) if name == "algo" else value
    if isinstance(given.get("nodes"), tuple):  # --nodes 8,16,32: a simulated scaling series
        given["node_series"] = given["nodes"]
        given["nodes"] = given["nodes"][0]
    given = nodes_from_launcher(given, config_file, sets)  # under mpirun -np N etc., --nodes defaults to N
    cfg = resolve(given, config_file, sets)
    return execute(cfg, out, argv=sys.argv)


@cli.command("list")
@click.option("--nodes", type=int, default=D.nodes, show_envvar=True, help="Node count for topology facts.")
@click.option("--degree", type=int, default=4, show_envvar=True, help="Degree for random-regular.")
def list_cmd(nodes: int, degree: int) -> None:
    """List algorithms, topologies (degree, spectral gap at --nodes), datasets, models and launchers."""
    from bench.base.errors import UserError
    from bench.core.data import DATASETS
    from bench.core.models import MODELS
    from bench.core.topology import TOPOLOGIES, build_topology
    from bench.engine.processes.launchers import LAUNCHERS
    from bench.engine.sim.costmodel import COMPUTE_PROFILES, NETWORK_PROFILES
    from bench.training.registry import ALGORITHMS

    def topology_line(name: str, description: str) -> str:
        try:
            topo = build_topology(name, nodes, degree=degree if name == "random-regular" else None)
        except UserError as exc:
            return f"{description} [n={nodes}: not possible: {exc}]"
        lo, hi = topo.degree()
        deg = f"{lo}" if lo == hi else f"{lo}-{hi}"
        return f"{description} [n={nodes}: degree {deg}, spectral gap {topo.spectral_gap():.4g}]"

    sections = [
        ("algorithms", {k: v.summary for k, v in ALGORITHMS.items()}),
        ("topologies", {k: topology_line(k, v.description) for k, v in TOPOLOGIES.items()}),
        ("datasets", {k: v.description for k, v in DATASETS.items()}),
        ("models", {k: v.description for k, v in MODELS.items()}),
        ("launchers", {k: v.description for k, v in LAUNCHERS.items()}),
        ("compute profiles (--engine sim --profile)", {k: v.description for k, v in COMPUTE_PROFILES.items()}),
        (
            "networks (--engine sim --network)",
            {
                k: f"{v.description}: {v.bandwidth_gbps:g} Gb/s, {v.latency_us:g} us"
                for k, v in NETWORK_PROFILES.items()
            },
        ),
    ]
    for title, items in sections:
        click.echo(f"{title}:")
        width = max(len(k) for k in items)
        for name, line in items.items():
            click.echo(f"  {name:<{width}}  {line}")


@cli.command("doctor")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="SWARMBENCH_DOCTOR_JSON",
    show_envvar=True,
    help="Print one JSON object instead of a table.",
)
@click.option(
    "--probe/--no-probe",
    default=True,
    show_envvar=True,
    help="Probe MPI passive-target progress with a 2-rank mpirun (a few seconds).",
)
def doctor_cmd(as_json: bool, probe: bool) -> int:
    """Show what works on this machine (torch, CUDA, backends, launchers, MPI, Horovod) and why not. Exits 0."""
    from bench.diagnostics.doctor import collect, render, to_json

    items = collect(run_probe=probe)
    if as_json:
        click.echo(to_json(items))
    else:
        render(items)
    return 0


def _axis_option(name: str, help_text: str):
    return click.option(name, multiple=True, show_envvar=True, help=help_text + " Repeatable or comma-separated.")


@cli.command("sweep")
@click.argument("spec_file", required=False, metavar="[SPEC.toml]")
@_axis_option("--algo", "Algorithms of every cell (run inside each cell's one launch), or 'all'.")
@_axis_option("--nodes", "Node counts.")
@_axis_option("--bits", "Bits per coordinate.")
@_axis_option("--topology", "Topologies.")
@_axis_option("--local-steps", "Local steps H.")
@_axis_option("--seed", "Seeds (several seeds are aggregated: mean, std, 95 % t-interval).")
@click.option("--grid", "grid_items", multiple=True, show_envvar=True, help="Any other axis: --grid lr=0.05,0.1.")
@click.option("--set", "sets", multiple=True, show_envvar=True, help="A fixed setting for every cell: --set epochs=2.")
@click.option("--out", default=None, show_envvar=True, help="Sweep folder.  [default: results/sweep-<timestamp>]")
@click.option("--resume", is_flag=True, show_envvar=True, help="Continue --out: skip the cells already finished ok.")
def sweep_cmd(
    spec_file: str | None,
    algo: tuple[str, ...],
    nodes: tuple[str, ...],
    bits: tuple[str, ...],
    topology: tuple[str, ...],
    local_steps: tuple[str, ...],
    seed: tuple[str, ...],
    grid_items: tuple[str, ...],
    sets: tuple[str, ...],
    out: str | None,
    resume: bool,
) -> int:
    """Run a grid of `swarmbench run` cells into one folder, with aggregated tables.

    SPEC.toml holds fixed settings (RunConfig keys, [ALGO] tables) and a [grid] table of axes, e.g.
    `[grid] algorithm = ["allreduce", "swarm"]; nodes = [2, 4]; seed = [0, 1, 2]`. Axes given as options
    replace the file's axis of the same name.
    """
    from bench.experiments.sweep import sweep

    axes = {"algorithm": algo, "nodes": nodes, "bits": bits, "topology": topology, "local_steps": local_steps}
    axes["seed"] = seed
    return sweep(spec_file, axes, grid_items, sets, out, resume, argv=sys.argv)


def _echo_report(report_dir, notes: list[str]) -> None:
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(f"report: {report_dir / 'report.md'}")


@cli.command("report")
@click.argument("folder", metavar="DIR")
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(list(FORMATS)),
    show_envvar=True,
    help="Table file format (repeatable).  [default: all four]",
)
@click.option(
    "--plot",
    "plots",
    multiple=True,
    show_envvar=True,
    help="Only this plot (repeatable): accuracy_vs_time, throughput_scaling, bytes_per_sample, time_to_target, "
    "consensus. A requested plot whose metric is absent is an error.  [default: every plot the data allows]",
)
@click.option("--target-acc", type=float, default=None, show_envvar=True, help="Test accuracy for time-to-target.")
@click.option("--out", default=None, show_envvar=True, help="Report folder.  [default: DIR/report]")
def report_cmd(
    formats: tuple[str, ...], plots: tuple[str, ...], target_acc: float | None, out: str | None, folder: str
) -> int:
    """Tables (Markdown, CSV, LaTeX, Parquet) and plots (PNG, SVG) for a run or sweep folder, in one report.md."""
    from bench.analysis.report import build_report

    report_dir, notes = build_report(folder, out, tuple(dict.fromkeys(formats)) or tuple(FORMATS), plots, target_acc)
    _echo_report(report_dir, notes)
    return 0


@cli.command("compare")
@click.argument("baseline", metavar="BASELINE")
@click.argument("current", metavar="CURRENT")
@click.option(
    "--tolerance",
    "tolerances",
    multiple=True,
    show_envvar=True,
    help="Tolerance for every metric (0.05) or one metric (samples_per_s=0.3); repeatable.  "
    "[default: per metric, see the README]",
)
@click.option("--metric", "metrics", multiple=True, show_envvar=True, help="Judge only this metric (repeatable).")
@click.option("--all", "show_all", is_flag=True, show_envvar=True, help="List the checks that passed too.")
@click.option("--json", "as_json", is_flag=True, show_envvar=True, help="Print one JSON object (every check).")
def compare_cmd(
    baseline: str, current: str, tolerances: tuple[str, ...], metrics: tuple[str, ...], show_all: bool, as_json: bool
) -> int:
    """Match the cells of two results folders and judge each metric; exit 1 on a regression."""
    from bench.analysis.compare import compare, exit_code, json_report, markdown_report

    checks, info = compare(baseline, current, metrics, tolerances)
    code = exit_code(checks)
    if as_json:
        click.echo(json_report(checks, info, code))
    else:
        click.echo(markdown_report(checks, info, code, show_all), nl=False)
    return code


@cli.command("reproduce")
@click.argument("suite_name", required=False, metavar="SUITE")
@click.option("--list", "list_only", is_flag=True, show_envvar=True, help="List the shipped suites and exit.")
@click.option("--out", default=None, show_envvar=True, help="Results folder.  [default: results/<suite>]")
@click.option("--resume", is_flag=True, show_envvar=True, help="Continue --out: skip the cells already finished ok.")
@click.option(
    "--engine",
    type=click.Choice(["sim", "processes"]),
    default=None,
    show_envvar=True,
    help="Run on this engine instead of the suite's own (processes: real, noisy, not for CI references).",
)
@click.option("--nodes", multiple=True, show_envvar=True, help="Replace every part's node counts (2,4): scale down.")
@click.option("--seed", "seeds", multiple=True, show_envvar=True, help="Replace every part's seeds (0,1,2).")
@click.option("--set", "sets", multiple=True, show_envvar=True, help="Override a shared setting: --set epochs=2.")
@click.option("--target-acc", type=float, default=None, show_envvar=True, help="Test accuracy for time-to-target.")
def reproduce_cmd(
    suite_name: str | None,
    list_only: bool,
    out: str | None,
    resume: bool,
    engine: str | None,
    nodes: tuple[str, ...],
    seeds: tuple[str, ...],
    sets: tuple[str, ...],
    target_acc: float | None,
) -> int:
    """Run a shipped suite (see --list) and write its paper-style tables (Markdown, LaTeX) and plots."""
    from bench.experiments.reproduce import list_suites, reproduce

    if list_only:
        for line in list_suites():
            click.echo(line)
        return 0
    code, report_dir, notes = reproduce(suite_name, out, resume, engine, nodes, seeds, sets, target_acc, sys.argv)
    _echo_report(report_dir, notes)
    return code


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
