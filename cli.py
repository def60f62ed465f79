"""swarmbench command line: a thin Click layer that builds a RunConfig and hands it to bench.*.

Heavy imports (torch, pandas) happen inside commands so that `swarmbench --help` answers at once.
"""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource

ENV_PREFIX = "SWARMBENCH"


class SwarmGroup(click.Group):
    """Every user-fixable error is one line on stderr and exit status 2, never a traceback."""

    def main(self, *args, **kwargs):  # type: ignore[override]
        from bench.errors import UserError

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
    "partition": "partition",
    "alpha": "alpha",
    "seed": "seed",
    "launcher": "launcher",
}


def _defaults():
    from bench.config import RunConfig

    return RunConfig()


D = _defaults()


@cli.command("run")
@click.option(
    "--algo",
    multiple=True,
    show_envvar=True,
    help="Algorithm (repeatable) or 'all'; see `swarmbench list`.  [default: all]",
)
@click.option("--nodes", type=int, default=D.nodes, show_envvar=True, help="Number of nodes (worker processes).")
@click.option(
    "--topology",
    default=D.topology,
    show_envvar=True,
    help="Graph for decentralized algorithms: ring, torus, complete, ...",
)
@click.option("--degree", type=int, default=None, show_envvar=True, help="Degree of a random-regular topology.")
@click.option("--dataset", default=D.dataset, show_envvar=True, help="Dataset; the default ships inside a package.")
@click.option("--data-dir", default=None, show_envvar=True, help="Folder holding on-disk datasets.")
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
@click.option("--launcher", default=D.launcher, show_envvar=True, help="Who starts the workers: local.")
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
    from bench.config import resolve
    from bench.run import execute

    given = {}
    for name, value in opts.items():
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) and value != ():
            given[RUN_OPTIONS[name]] = list(value) if name == "algo" else value
    cfg = resolve(given, config_file, sets)
    return execute(cfg, out, argv=sys.argv)


@cli.command("list")
def list_cmd() -> None:
    """List algorithms, topologies, datasets, models and launchers, one line each."""
    from bench.data import DATASETS
    from bench.engine.launch import LAUNCHERS
    from bench.models import MODELS
    from bench.registry import ALGORITHMS
    from bench.topology import TOPOLOGIES

    sections = [
        ("algorithms", {k: v.summary for k, v in ALGORITHMS.items()}),
        ("topologies", {k: v.description for k, v in TOPOLOGIES.items()}),
        ("datasets", {k: v.description for k, v in DATASETS.items()}),
        ("models", {k: v.description for k, v in MODELS.items()}),
        ("launchers", {k: v.description for k, v in LAUNCHERS.items()}),
    ]
    for title, items in sections:
        click.echo(f"{title}:")
        width = max(len(k) for k in items)
        for name, line in items.items():
            click.echo(f"  {name:<{width}}  {line}")


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, show_envvar=True, help="Print one JSON object instead of a table.")
@click.option(
    "--probe/--no-probe",
    default=True,
    show_envvar=True,
    help="Probe MPI passive-target progress with a 2-rank mpirun (a few seconds).",
)
def doctor_cmd(as_json: bool, probe: bool) -> int:
    """Show what works on this machine (torch, CUDA, backends, launchers, MPI, Horovod) and why not. Exits 0."""
    from bench.doctor import collect, render, to_json

    items = collect(run_probe=probe)
    if as_json:
        click.echo(to_json(items))
    else:
        render(items)
    return 0


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
