"""`swarmbench tune`: a grid search of each algorithm's hyperparameters on the validation split, written as a
config file that `run`, `sweep` and `reproduce` read with `--config`.

The grid runs as a sweep (bench.experiments.sweep: one cell per grid point, every algorithm inside each cell under
one identical launch, per-cell folders, `--resume`), so a tuning folder is an ordinary sweep folder that
`swarmbench report` reads. For each algorithm the chosen grid point is the trial whose averaged model has the
highest validation accuracy (`val_acc` after the last epoch) among the trials that finished `ok`; ties go to the
lower validation loss, then to the first grid point in the grid's order. A trial that diverged or failed is never
chosen, whatever its accuracy.

    DIR/tuned.toml   one [ALGO] table per algorithm with its chosen values; a comment header says the grid, the
                     metric and the budget
    DIR/trials.csv   every trial: algorithm, the grid values, val_acc, val_loss, status, reason, chosen
    DIR/...          the sweep's own files (meta.json with a `tune` entry, cells/, logs/, summary.csv, tables)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.analysis.load import load_results
from bench.base.console import print_table
from bench.base.errors import UserError
from bench.base.files import atomic_write_frame, atomic_write_text
from bench.base.host import new_results_folder
from bench.base.tomlfile import tomllib
from bench.experiments.sweep import (
    ALGO_KEYS,
    Cell,
    Grid,
    SweepSpec,
    check_cells,
    execute_sweep,
    expand,
    normalize,
    parse_grid,
    prepare_out,
)
from bench.run import checks
from bench.training.config import HYPER_KEYS, RunConfig, algo_fields, config_settings, parse_set

METRIC = "val_acc"  # the averaged model's accuracy on the validation split after the last epoch: higher wins
TIE_BREAK = "val_loss"  # among equal accuracies: lower wins; then the first grid point
TUNED_FILE = "tuned.toml"
TRIALS_FILE = "trials.csv"


@dataclass
class Tuning:
    """A validated grid search: the sweep to run, its cells (in grid order) and the algorithms tuned."""

    spec: SweepSpec
    cells: list[Cell]
    algorithms: list[str]
    base: RunConfig  # the first grid point's resolved configuration (the budget the header reports)

    @property
    def axes(self) -> dict[str, list[Any]]:
        return self.spec.grids[0].axes


@dataclass
class Choice:
    """One algorithm's outcome: the chosen grid values, or why none could be chosen."""

    algorithm: str
    values: dict[str, Any] = field(default_factory=dict)  # the axes that apply to this algorithm -> chosen value
    cell: str = ""  # the chosen trial's cell; "" when no trial could be chosen
    val_acc: float | None = None
    val_loss: float | None = None
    why_none: str = ""


def applies(key: str, algorithm: str) -> bool:
    """Whether grid axis `key` is a setting that `algorithm`'s [ALGO] table can hold."""
    if "." in key:
        return key.partition(".")[0] == algorithm
    return key in algo_fields(algorithm)


def plan(fixed: dict[str, Any], grid: dict[str, list[Any]], source: str = "--grid", text: str = "") -> Tuning:
    """Check a grid search before anything runs or is written (UserError, one line, otherwise).

    `fixed`: raw settings (RunConfig keys, `ALGO.key`, `algorithms`); `grid`: axis -> raw values."""
    if not grid:
        raise UserError("nothing to tune: pass a grid axis, e.g. --grid lr=0.01,0.05,0.2")
    for key, values in grid.items():
        if key in ALGO_KEYS:
            raise UserError(
                f"'{key}' cannot be a grid axis of tune: each algorithm is tuned on its own; choose them with --algo"
            )
        if not values:
            raise UserError(f"grid axis '{key}' has no values: give at least one, e.g. --grid {key}=V1,V2")
    spec = normalize(SweepSpec(fixed=dict(fixed), grids=[Grid(axes=dict(grid))], source=source), text)
    if spec.fixed.get("node_series"):
        raise UserError("tune runs at one node count: pass --nodes N (tune once per node count for a series)")
    algorithms = list(spec.fixed.get("algorithms") or RunConfig().algorithms)
    axes = spec.grids[0].axes
    for key, values in axes.items():
        users = [a for a in algorithms if applies(key, a)]
        if not users and "." in key:
            algo = key.partition(".")[0]
            raise UserError(f"grid axis '{key}' tunes {algo}, which is not tuned here: add --algo {algo} or drop it")
        if not users:
            raise UserError(
                f"grid axis '{key}' is not a hyperparameter of {', '.join(algorithms)}: tune keys an [ALGO] table "
                f"holds ({', '.join(HYPER_KEYS)}, or an algorithm's own such as swarm.local_steps); "
                f"fix {key} with --set {key}=VALUE"
            )
        if any(v is None for v in values):
            raise UserError(f"grid axis '{key}': 'none' cannot be a tuned value: give the values to try")
        for algo in users if "." not in key else ():
            if f"{algo}.{key}" in spec.fixed or f"{algo}.{key}" in axes:
                raise UserError(
                    f"'{algo}.{key}' is set and overrides the grid axis '{key}' for {algo}: "
                    f"drop {algo}.{key} (--set, --config or the grid) or the axis"
                )
    cells = expand(spec)
    configs = check_cells(cells)
    for cell, cfg in zip(cells, configs, strict=True):
        if cfg is None:
            raise UserError(f"grid point {cell.id} cannot run: {cell.error}")
    base = configs[0]
    if not base.val_fraction > 0:
        raise UserError("tune chooses on the validation split: set --val-fraction above 0 (e.g. 0.1)")
    return Tuning(spec=spec, cells=cells, algorithms=algorithms, base=base)


# ---- choosing -----------------------------------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def choose(trials, algorithms: list[str]) -> list[Choice]:
    """Each algorithm's best trial: among the rows with status ok and a finite `val_acc`, the highest `val_acc`;
    ties: the lower `val_loss` (a missing loss ranks last), then the lower `order` (the grid's order).

    `trials` has columns algorithm, order, status, val_acc, val_loss, cell and one per grid axis (None where the
    axis does not apply to the algorithm)."""
    axes = [c for c in trials.columns if c not in TRIAL_COLUMNS]
    out = []
    for algo in algorithms:
        rows = trials[trials["algorithm"] == algo]
        ranked = []
        for _, row in rows.iterrows():
            acc = _finite(row["val_acc"])
            if row["status"] == "ok" and acc is not None:
                loss = _finite(row["val_loss"])
                ranked.append(((-acc, math.inf if loss is None else loss, int(row["order"])), row))
        if not ranked:
            counts = rows["status"].value_counts()
            listing = ", ".join(f"{status}: {n}" for status, n in counts.items()) or "none ran"
            out.append(Choice(algo, why_none=f"none of its {len(rows)} trials finished ok ({listing})"))
            continue
        _, best = min(ranked, key=lambda item: item[0])
        values = {k: best[k] for k in axes if applies(k, algo)}
        out.append(Choice(algo, values, str(best["cell"]), _finite(best["val_acc"]), _finite(best["val_loss"])))
    return out


TRIAL_COLUMNS = ("algorithm", "order", "cell", "val_acc", "val_loss", "status", "reason", "chosen")


def trials_frame(out_dir: Path, tuning: Tuning):
    """Every trial of a finished tuning folder: one row per (grid point, algorithm), in the grid's order."""
    import pandas as pd

    summary = load_results(out_dir).summary
    by_cell = {c.id: (i, c) for i, c in enumerate(tuning.cells)}
    rows = []
    for algo in tuning.algorithms:
        for _, r in summary[summary["algorithm"] == algo].iterrows():
            order, cell = by_cell[str(r["cell"])]
            row = {"algorithm": algo, "order": order, "cell": cell.id}
            row |= {k: (cell.params[k] if applies(k, algo) else None) for k in tuning.axes}
            row |= {k: r.get(k) for k in ("val_acc", "val_loss", "status", "reason")}
            rows.append(row)
    rows.sort(key=lambda row: (tuning.algorithms.index(row["algorithm"]), row["order"]))
    return pd.DataFrame(rows, columns=["algorithm", "order", "cell", *tuning.axes, *TRIAL_COLUMNS[3:7]])


# ---- writing ------------------------------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A setting as a TOML value (the types RunConfig and the algorithms' Configs hold)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def grid_text(axes: dict[str, list[Any]]) -> str:
    """'lr ∈ {0.01, 0.05, 0.2}' for every axis: what each method was tuned on."""
    return "; ".join(f"{k} ∈ {{{', '.join(toml_value(v) for v in values)}}}" for k, values in axes.items())


def tuned_toml(choices: list[Choice], tuning: Tuning) -> str:
    cfg = tuning.base
    settings = {k: v for k, v in tuning.spec.fixed.items() if k != "algorithms"}
    lines = [
        "# swarmbench tune: each algorithm's grid point with the highest validation accuracy",
        f"# metric: {METRIC}, the averaged model's validation accuracy after the last epoch (val_fraction "
        f"{cfg.val_fraction:g}); highest wins;",
        f"#   ties: lower {TIE_BREAK}, then the first grid point; a diverged or failed trial is never chosen",
        f"# grid: {grid_text(tuning.axes)} ({len(tuning.cells)} trials per algorithm)",
        f"# budget: each trial {cfg.epochs} epoch(s) of {cfg.dataset} ({cfg.model}) on {cfg.nodes} nodes, "
        f"batch {cfg.batch_size} per node, seed {cfg.seed}, engine {cfg.engine}",
    ]
    if settings:
        lines.append("# settings: " + ", ".join(f"{k} = {toml_value(v)}" for k, v in settings.items()))
    lines += [f"# every trial: {TRIALS_FILE} next to this file; use: swarmbench run --config {TUNED_FILE}", ""]
    for c in choices:
        if not c.cell:
            lines += [f"# {c.algorithm}: not tuned: {c.why_none}", ""]
            continue
        lines.append(f"[{c.algorithm}]")
        lines += [f"{k.partition('.')[2] or k} = {toml_value(v)}" for k, v in c.values.items()]
        loss = f", {TIE_BREAK} {c.val_loss:.4f}" if c.val_loss is not None else ""
        lines += [f"# trial {c.cell}: {METRIC} {c.val_acc:.4f}{loss}", ""]
    text = "\n".join(lines)
    tomllib.loads(text)  # what run --config will read back: a bug here must not write a broken file
    return text


def print_trials(trials, choices: list[Choice], axes: list[str]) -> None:
    from rich.console import Console

    chosen = {(c.algorithm, c.cell) for c in choices if c.cell}

    def value(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)

    def metric(v: Any) -> str:
        x = _finite(v)
        return "-" if x is None else f"{x:.4f}"

    rows = [
        [
            r["algorithm"],
            *(value(r[k]) for k in axes),
            metric(r["val_acc"]),
            metric(r["val_loss"]),
            str(r["status"]),
            "◀ chosen" if (r["algorithm"], r["cell"]) in chosen else "",
        ]
        for _, r in trials.iterrows()
    ]
    headers = ["algorithm", *axes, "val acc", "val loss", "status", ""]
    print_table(headers, rows, title="tune: every trial", console=Console(highlight=False, width=180))


def run_tuning(tuning: Tuning, out: str | None, resume: bool, argv: list[str]) -> tuple[int, Path, list[Choice]]:
    """Run the grid as a sweep into `out`, choose, write tuned.toml and trials.csv; (exit status, folder, choices):
    0 when every cell ran and every algorithm has a choice, else 1 (tuned.toml holds the choices there are)."""
    if out is None and not resume:
        out = str(new_results_folder("tune"))
    out_dir, spec, stored = prepare_out(out, resume, tuning.spec)
    extra = {"tune": {"metric": METRIC, "tie_break": TIE_BREAK, "algorithms": tuning.algorithms}}
    code, out_dir = execute_sweep(spec, out_dir, stored, argv=argv, extra_meta=extra)
    trials = trials_frame(out_dir, tuning)
    choices = choose(trials, tuning.algorithms)
    chosen = {(c.algorithm, c.cell) for c in choices if c.cell}
    trials["chosen"] = [(a, c) in chosen for a, c in zip(trials["algorithm"], trials["cell"], strict=True)]
    atomic_write_frame(out_dir / TRIALS_FILE, trials.drop(columns=["order"]))
    atomic_write_text(out_dir / TUNED_FILE, tuned_toml(choices, tuning))
    print_trials(trials, choices, list(tuning.axes))
    for c in choices:
        if c.cell:
            print(f"tune: {c.algorithm}: {', '.join(f'{k}={v}' for k, v in c.values.items()) or 'no axis applies'}")
        else:
            print(f"tune: {c.algorithm}: not tuned: {c.why_none}")
    print(f"tuned: {out_dir / TUNED_FILE} (use: swarmbench run --config {out_dir / TUNED_FILE})")
    return (1 if code or any(not c.cell for c in choices) else 0), out_dir, choices


def tune(
    given: dict[str, Any],
    grid_items: tuple[str, ...],
    config_file: str | None,
    sets: tuple[str, ...],
    out: str | None,
    resume: bool,
    argv: list[str],
) -> int:
    """`swarmbench tune`: defaults < --config < run options < --set, the --grid axes over them."""
    checks.resolve(given, config_file, sets)  # the settings without the grid: their mistakes named as `run` names them
    fixed = config_settings(config_file) | given
    fixed |= parse_set(sets)
    code, _, _ = run_tuning(plan(fixed, parse_grid(grid_items)), out, resume, argv)
    return code
