"""swarmbench command line: the only Click layer. Each command turns its options into a call of a plain function
in bench.* (a RunConfig for `run`, built from the options that `RunConfig`'s own fields describe).

Modules that load torch, pandas or matplotlib (the engines, analysis, experiments) are imported inside the commands
that need them, so that `swarmbench --help` answers at once; the light ones (config, launchers, doctor) at the top.
"""

from __future__ import annotations

import sys
import typing
from dataclasses import fields

import click
from click.core import ParameterSource

from bench.base.errors import ResultsUnwritable, UserError
from bench.base.signals import Interrupted
from bench.diagnostics import doctor
from bench.engine.processes.launchers import LAUNCHERS
from bench.records.tables import FORMATS
from bench.training.config import RUN_FIELDS, RunConfig

ENV_PREFIX = "SWARMBENCH"


class SwarmGroup(click.Group):
    """Every user-fixable error is one line on stderr and exit status 2, never a traceback. A run stopped by SIGINT
    or SIGTERM exits 130 or 143 (it has said what it kept); a results folder that stops taking writes is one line
    and exit status 1."""

    def main(self, *args, **kwargs):  # type: ignore[override]
        kwargs["standalone_mode"] = False
        kwargs.setdefault("auto_envvar_prefix", ENV_PREFIX)
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.Abort as exc:
            if isinstance(exc.__cause__, Interrupted):
                sys.exit(exc.__cause__.exit_code)
            click.echo("aborted", err=True)
            sys.exit(130)
        except ResultsUnwritable as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
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


# ---- `swarmbench run`: one option per RunConfig field with a help text (its metadata, see config.opt) ------------

HELP_VALUES = {"launchers": ", ".join(LAUNCHERS)}  # {name} in a field's help text


def _run_option(f) -> tuple[str, click.Option]:
    """(the option's parameter name, the option) of one RunConfig field."""
    meta = f.metadata
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    name = meta.get("env") or flag[2:].replace("-", "_")  # the parameter, and SWARMBENCH_RUN_<NAME>
    hint = RUN_FIELDS[f.name]
    kind = next((a for a in typing.get_args(hint) if a is not type(None)), hint)  # int | None -> int
    kwargs: dict[str, typing.Any] = {"show_envvar": True, "help": meta["help"].format(**HELP_VALUES)}
    if typing.get_origin(hint) is tuple:
        kwargs["multiple"] = True
    else:
        kwargs["default"] = f.default
    if meta.get("choices"):
        kwargs["type"] = click.Choice(list(meta["choices"]))
    elif f.name == "nodes":
        kwargs["type"] = NodeCount()
    elif kind in (int, float):
        kwargs["type"] = kind
    if meta.get("flag_value") is not None:
        kwargs.update(is_flag=False, flag_value=meta["flag_value"])
    decl = f"{flag}/--no-{flag[2:]}" if kind is bool else flag
    return name, click.Option([decl, name], **kwargs)


def _run_options() -> tuple[dict[str, str], list[click.Option]]:
    """(option parameter name -> RunConfig field, the options), for every field with a help text."""
    names, options = {}, []
    for f in fields(RunConfig):
        if f.metadata.get("help"):
            name, option = _run_option(f)
            names[name] = f.name
            options.append(option)
    return names, options


RUN_OPTIONS, _RUN_PARAMS = _run_options()


def run_options(func):
    """Attach the RunConfig options, in the order of its fields, before the options declared below this."""
    func.__click_params__ = [*getattr(func, "__click_params__", []), *reversed(_RUN_PARAMS)]
    return func


def config_option(what: str):
    """--config FILE.toml: the settings of `run`, `tune`, `sweep` and `reproduce` (a tune's tuned.toml among them)."""
    return click.option("--config", "config_file", default=None, show_envvar=True, help=what)


RUN_CONFIG_HELP = (
    "TOML file with run keys (and [ALGO] tables, e.g. a tune's tuned.toml), or a results folder's meta.json "
    "(that run's configuration)."
)
SET_HELP = "Override a key: --set lr=0.1, --set swarm.local_steps=8 (repeatable)."


def given_run_options(ctx: click.Context, opts: dict[str, typing.Any]) -> dict[str, typing.Any]:
    """The RunConfig options given on the command line or in the environment, by field (defaults left out, so a
    config file's values stand)."""
    given = {}
    for name, value in opts.items():
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT) and value != ():
            key = RUN_OPTIONS[name]
            given[key] = list(value) if typing.get_origin(RUN_FIELDS[key]) is tuple else value
    if isinstance(given.get("nodes"), tuple):  # --nodes 8,16,32: a simulated scaling series
        given["node_series"] = given["nodes"]
        given["nodes"] = given["nodes"][0]
    return given


@cli.command("run")
@run_options
@click.option(
    "--out",
    default=None,
    show_envvar=True,
    help="Results folder (must not exist or be empty).  [default: results/<timestamp>]",
)
@config_option(RUN_CONFIG_HELP)
@click.option("--set", "sets", multiple=True, show_envvar=True, help=SET_HELP)
@click.option(
    "--resume",
    "resume_dir",
    default=None,
    metavar="DIR",
    envvar=f"{ENV_PREFIX}_RUN_RESUME",
    show_envvar=True,
    help="Continue the interrupted run in DIR with the configuration stored there: its finished algorithms "
    "(and rounds) are kept, the others run.",
)
@click.pass_context
def run_cmd(
    ctx: click.Context, out: str | None, config_file: str | None, sets: tuple[str, ...], resume_dir: str | None, **opts
) -> int:
    """Run the selected algorithms under one identical launch; write throughput, accuracy, comm tables."""
    from bench.run.checks import resolve
    from bench.run.orchestrate import execute, nodes_from_launcher

    given = given_run_options(ctx, opts)
    if resume_dir is not None:
        from bench.run.resume import open_resume

        cfg, resume = open_resume(resume_dir, given, config_file, sets, out)
        return execute(cfg, resume_dir, argv=sys.argv, resume=resume)
    given = nodes_from_launcher(given, config_file, sets)  # under mpirun -np N etc., --nodes defaults to N
    cfg = resolve(given, config_file, sets)
    return execute(cfg, out, argv=sys.argv)


@cli.command("tune")
@run_options
@click.option(
    "--grid",
    "grid_items",
    multiple=True,
    show_envvar=True,
    help="An axis to search: --grid lr=0.01,0.05,0.2 (repeatable; every combination is one trial). Any "
    "hyperparameter (lr, momentum, ...) or algorithm key (swarm.local_steps).",
)
@click.option(
    "--out",
    default=None,
    show_envvar=True,
    help="Tuning folder (must not exist or be empty): tuned.toml, trials.csv and every trial's run.  "
    "[default: results/tune-<timestamp>]",
)
@config_option(RUN_CONFIG_HELP)
@click.option("--set", "sets", multiple=True, show_envvar=True, help=SET_HELP)
@click.option("--resume", is_flag=True, show_envvar=True, help="Continue --out: skip the trials already finished ok.")
@click.option(
    "--halving/--no-halving",
    default=False,
    show_envvar=True,
    help="Successive halving: every grid point for a fraction of the epochs, then the best 1/eta of each "
    "algorithm's for eta times more, ... up to the full --epochs.",
)
@click.option("--eta", type=int, default=3, show_envvar=True, help="Successive halving keeps the best 1/eta per rung.")
@click.pass_context
def tune_cmd(
    ctx: click.Context,
    grid_items: tuple[str, ...],
    out: str | None,
    config_file: str | None,
    sets: tuple[str, ...],
    resume: bool,
    halving: bool,
    eta: int,
    **opts,
) -> int:
    """Grid-search each algorithm's hyperparameters on validation accuracy; write DIR/tuned.toml.

    Every combination of the --grid axes runs once with every --algo (the other options as for `swarmbench run`,
    on the engine they select). Each algorithm gets the trial with the highest val_acc that finished ok (ties:
    lower val_loss, then the first grid point); `swarmbench run --config DIR/tuned.toml` runs at those values.
    """
    from bench.experiments.tune import tune

    given = given_run_options(ctx, opts)
    return tune(given, grid_items, config_file, sets, out, resume, argv=sys.argv, halving=halving, eta=eta)


@cli.command("list")
@click.option("--nodes", type=int, default=RunConfig.nodes, show_envvar=True, help="Node count for topology facts.")
@click.option("--degree", type=int, default=4, show_envvar=True, help="Degree for random-regular.")
def list_cmd(nodes: int, degree: int) -> None:
    """List algorithms, topologies (degree, spectral gap at --nodes), datasets, models and launchers."""
    from bench.core.data import DATASETS
    from bench.core.models import MODELS
    from bench.core.topology import DIRECTED_GRAPHS, TOPOLOGIES, build_topology
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
        ("algorithms", {k: f"{v.summary} [{v.paper}]" if v.paper else v.summary for k, v in ALGORITHMS.items()}),
        ("topologies", {k: topology_line(k, v.description) for k, v in TOPOLOGIES.items()}),
        (
            "directed graphs (scheduled by the algorithm itself)",
            {k: f"{text} [n={nodes}: L = {graph(nodes).period}]" for k, (graph, text) in DIRECTED_GRAPHS.items()},
        ),
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
    items = doctor.collect(run_probe=probe)
    if as_json:
        click.echo(doctor.to_json(items))
    else:
        doctor.render(items)
    return 0


def _axis_option(name: str, help_text: str):
    return click.option(name, multiple=True, show_envvar=True, help=help_text + " Repeatable or comma-separated.")


@cli.command("sweep")
@click.argument("spec_file", required=False, metavar="[SPEC.toml]")
@_axis_option("--algo", "Algorithms of every cell (run inside each cell's one launch), or 'all' (those for its model).")
@_axis_option("--nodes", "Node counts.")
@_axis_option("--bits", "Bits per coordinate.")
@_axis_option("--topology", "Topologies.")
@_axis_option("--local-steps", "Local steps H.")
@_axis_option("--seed", "Seeds (several seeds are aggregated: mean, std, 95 % t-interval).")
@click.option("--grid", "grid_items", multiple=True, show_envvar=True, help="Any other axis: --grid lr=0.05,0.1.")
@click.option("--set", "sets", multiple=True, show_envvar=True, help="A fixed setting for every cell: --set epochs=2.")
@config_option(
    "TOML file of settings for every cell (run keys, [ALGO] tables, e.g. a tune's tuned.toml); "
    "SPEC.toml and --set override it."
)
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
    config_file: str | None,
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
    return sweep(spec_file, axes, grid_items, sets, out, resume, argv=sys.argv, config_file=config_file)


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
@click.option(
    "--target-ppl", type=float, default=None, show_envvar=True, help="Language models: perplexity for time-to-target."
)
@click.option("--out", default=None, show_envvar=True, help="Report folder.  [default: DIR/report]")
def report_cmd(
    formats: tuple[str, ...],
    plots: tuple[str, ...],
    target_acc: float | None,
    target_ppl: float | None,
    out: str | None,
    folder: str,
) -> int:
    """Tables (Markdown, CSV, LaTeX, Parquet) and plots (PNG, SVG) for a run or sweep folder, in one report.md."""
    from bench.analysis.report import build_report

    formats = tuple(dict.fromkeys(formats)) or tuple(FORMATS)
    report_dir, notes = build_report(folder, out, formats, plots, target_acc, target_ppl)
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
@config_option(
    "TOML file of settings over the suite's shared ones (run keys, [ALGO] tables, e.g. a tune's tuned.toml)."
)
@click.option("--target-acc", type=float, default=None, show_envvar=True, help="Test accuracy for time-to-target.")
@click.option(
    "--part",
    "parts",
    multiple=True,
    show_envvar=True,
    help="Run only this part (repeat or comma-separate; see --list).",
)
def reproduce_cmd(
    suite_name: str | None,
    list_only: bool,
    out: str | None,
    resume: bool,
    engine: str | None,
    nodes: tuple[str, ...],
    seeds: tuple[str, ...],
    sets: tuple[str, ...],
    config_file: str | None,
    target_acc: float | None,
    parts: tuple[str, ...],
) -> int:
    """Run a shipped suite (see --list) and write its paper-style tables (Markdown, LaTeX) and plots."""
    from bench.experiments.reproduce import list_suites, reproduce

    if list_only:
        for line in list_suites():
            click.echo(line)
        return 0
    code, report_dir, notes = reproduce(
        suite_name, out, resume, engine, nodes, seeds, sets, target_acc, sys.argv, config_file=config_file, parts=parts
    )
    _echo_report(report_dir, notes)
    return code


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
