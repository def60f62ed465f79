"""`swarmbench tune`: a grid search of each algorithm's hyperparameters on the validation split, written as a
config file that `run`, `sweep` and `reproduce` read with `--config`.

The grid runs as a sweep (bench.experiments.sweep: one cell per grid point, every algorithm inside each cell under
one identical launch, per-cell folders, `--resume`), so a tuning folder is an ordinary sweep folder that
`swarmbench report` reads. For each algorithm the chosen grid point is the trial whose averaged model has the
highest validation accuracy (`val_acc` after the last epoch) among the trials that finished `ok`; ties go to the
lower validation loss, then to the first grid point in the grid's order. A trial that diverged or failed is never
chosen, whatever its accuracy. A language model has no accuracy: its lowest validation loss (the lowest validation
perplexity) wins.

    DIR/tuned.toml   one [ALGO] table per algorithm with its chosen values; a comment header says the grid, the
                     metric and the budget
    DIR/trials.csv   every trial: algorithm, the grid values, val_acc, val_loss, status, reason, chosen
    DIR/...          the sweep's own files (meta.json with a `tune` entry, cells/, logs/, summary.csv, tables)

With successive halving (`--halving`) each rung is such a sweep folder, DIR/rung-<r>/, and trials.csv says each
trial's rung and epochs.
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
    algorithms = [a for a in algorithms if any(a in cell.algorithms for cell in cells)]  # all: those of the model
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
        ranked = ranked_trials(rows)
        if not ranked:
            counts = rows["status"].value_counts()
            listing = ", ".join(f"{status}: {n}" for status, n in counts.items()) or "none ran"
            out.append(Choice(algo, why_none=f"none of its {len(rows)} trials finished ok ({listing})"))
            continue
        best = ranked[0]
        values = {k: best[k] for k in axes if applies(k, algo)}
        out.append(Choice(algo, values, str(best["cell"]), _finite(best["val_acc"]), _finite(best["val_loss"])))
    return out


def ranked_trials(rows) -> list[Any]:
    """The rows with status ok and a finite val_acc, best first: highest val_acc, then lowest val_loss (a missing
    loss ranks last), then the lowest `order` (the grid's order). A language model's rows (no val_acc, a finite
    val_loss): lowest val_loss (= lowest validation perplexity), then `order`."""
    ranked = []
    for _, row in rows.iterrows():
        acc, loss = _finite(row["val_acc"]), _finite(row["val_loss"])
        if row["status"] != "ok" or (acc is None and loss is None):
            continue
        # A language model has no accuracy: the lowest validation loss wins, which is the lowest perplexity.
        ranked.append(((-acc if acc is not None else 0.0, math.inf if loss is None else loss, int(row["order"])), row))
    return [row for _, row in sorted(ranked, key=lambda item: item[0])]


TRIAL_COLUMNS = ("algorithm", "order", "cell", "val_acc", "val_loss", "status", "reason", "chosen", "rung", "epochs")


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


def tuned_toml(choices: list[Choice], tuning: Tuning, budget: str) -> str:
    cfg = tuning.base
    settings = {k: v for k, v in tuning.spec.fixed.items() if k != "algorithms" and k not in tuning.axes}
    lines = [
        "# swarmbench tune: each algorithm's grid point with the highest validation accuracy",
        f"# metric: {METRIC}, the averaged model's validation accuracy after the last epoch (val_fraction "
        f"{cfg.val_fraction:g}); highest wins;",
        f"#   ties: lower {TIE_BREAK}, then the first grid point; a diverged or failed trial is never chosen",
        f"#   (a language model has no {METRIC}: lowest {TIE_BREAK}, i.e. validation perplexity, wins)",
        f"# grid: {grid_text(tuning.axes)} ({len(tuning.cells)} grid points)",
        f"# budget: {budget} of {cfg.dataset} ({cfg.model}) on {cfg.nodes} nodes, "
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
        score = f"{METRIC} {c.val_acc:.4f}{loss}" if c.val_acc is not None else f"{TIE_BREAK} {c.val_loss:.4f}"
        lines += [f"# trial {c.cell}: {score}", ""]
    text = "\n".join(lines)
    tomllib.loads(text)  # what run --config will read back: a bug here must not write a broken file
    return text


def print_trials(trials, columns: list[str]) -> None:
    """Every trial as one rich table: `columns` (the grid values, and rungs), the metric, the status, the choice."""
    from rich.console import Console

    def value(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)

    def metric(v: Any) -> str:
        x = _finite(v)
        return "-" if x is None else f"{x:.4f}"

    rows = [
        [
            r["algorithm"],
            *(value(r[k]) for k in columns),
            metric(r["val_acc"]),
            metric(r["val_loss"]),
            str(r["status"]),
            "◀ chosen" if r["chosen"] else "",
        ]
        for _, r in trials.iterrows()
    ]
    headers = ["algorithm", *columns, "val acc", "val loss", "status", ""]
    print_table(headers, rows, title="tune: every trial", console=Console(highlight=False, width=180))


def run_rung(tuning: Tuning, spec: SweepSpec, out: str, resume: bool, argv: list[str], rung: dict[str, Any]):
    """One sweep of trials (the whole grid, or a rung of successive halving) into `out`: (exit status, trials)."""
    out_dir, spec, stored = prepare_out(out, resume, spec)
    extra = {"tune": {"metric": METRIC, "tie_break": TIE_BREAK, "algorithms": tuning.algorithms, **rung}}
    code, out_dir = execute_sweep(spec, out_dir, stored, argv=argv, extra_meta=extra)
    return code, trials_frame(out_dir, tuning)


def finish(out_dir: Path, tuning: Tuning, trials, choices: list[Choice], columns: list[str], budget: str) -> None:
    """Mark the chosen trials, write trials.csv and tuned.toml (atomically), print the table and the choices."""
    chosen = {(c.algorithm, c.cell) for c in choices if c.cell}
    rungs = trials["rung"] if "rung" in trials.columns else [0] * len(trials)
    last = max(rungs, default=0)  # successive halving chooses in its last rung
    trials["chosen"] = [
        (a, c) in chosen and r == last for a, c, r in zip(trials["algorithm"], trials["cell"], rungs, strict=True)
    ]
    atomic_write_frame(out_dir / TRIALS_FILE, trials.drop(columns=["order"]))
    atomic_write_text(out_dir / TUNED_FILE, tuned_toml(choices, tuning, budget))
    print_trials(trials, columns)
    for c in choices:
        if c.cell:
            print(f"tune: {c.algorithm}: {', '.join(f'{k}={v}' for k, v in c.values.items()) or 'no axis applies'}")
        else:
            print(f"tune: {c.algorithm}: not tuned: {c.why_none}")
    print(f"tuned: {out_dir / TUNED_FILE} (use: swarmbench run --config {out_dir / TUNED_FILE})")


def run_tuning(tuning: Tuning, out: str | None, resume: bool, argv: list[str]) -> tuple[int, Path, list[Choice]]:
    """Run the grid as a sweep into `out`, choose, write tuned.toml and trials.csv; (exit status, folder, choices):
    0 when every cell ran and every algorithm has a choice, else 1 (tuned.toml holds the choices there are)."""
    if out is None and not resume:
        out = str(new_results_folder("tune"))
    code, trials = run_rung(tuning, tuning.spec, str(out), resume, argv, {})
    choices = choose(trials, tuning.algorithms)
    budget = f"{len(tuning.cells)} trials per algorithm, each {tuning.base.epochs} epoch(s)"
    finish(Path(str(out)), tuning, trials, choices, list(tuning.axes), budget)
    return (1 if code or any(not c.cell for c in choices) else 0), Path(str(out)), choices


# ---- successive halving -------------------------------------------------------------------------------------------


def halving_rungs(n: int, epochs: int, eta: int) -> list[tuple[int, int]]:
    """(configurations, epochs per trial) of each rung of successive halving: n configurations, then the best
    ceil(n / eta) of them, ... down to one; the last rung trains the full `epochs`, each earlier one eta times fewer
    (at least one). A rung that would train as long as the one before is not run: the one before keeps fewer."""
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / eta))
    last = len(sizes) - 1
    rungs = [(size, max(1, round(epochs / eta ** (last - i)))) for i, size in enumerate(sizes)]
    return [rung for i, rung in enumerate(rungs) if i == 0 or rung[1] != rungs[i - 1][1]]


def rung_spec(tuning: Tuning, survivors: dict[str, list[int]], epochs: int) -> SweepSpec:
    """The grid points some algorithm still holds, each run with those algorithms only, at `epochs`."""
    grids = []
    for i, cell in enumerate(tuning.cells):
        algos = [a for a in tuning.algorithms if i in survivors[a]]
        if algos:
            grids.append(Grid(axes={"algorithm": algos, **{k: [cell.params[k]] for k in tuning.axes}}))
    return normalize(SweepSpec(fixed={**tuning.spec.fixed, "epochs": epochs}, grids=grids, source=tuning.spec.source))


def check_halving(tuning: Tuning, eta: int) -> list[tuple[int, int]]:
    """The rungs, every grid point checked at every rung's epochs (a warmup or milestone past a short rung)."""
    if eta < 2:
        raise UserError(f"--eta must be at least 2 (keep the best 1/eta of each rung), got {eta}")
    rungs = halving_rungs(len(tuning.cells), tuning.base.epochs, eta)
    everyone = {a: list(range(len(tuning.cells))) for a in tuning.algorithms}
    for r, (_, epochs) in enumerate(rungs):
        cells = expand(rung_spec(tuning, everyone, epochs))
        for cell, cfg in zip(cells, check_cells(cells), strict=True):
            if cfg is None:
                raise UserError(
                    f"successive halving trains rung {r} for {epochs} epoch(s), where grid point {cell.id} cannot "
                    f"run: {cell.error}: raise --epochs or drop --halving"
                )
    return rungs


def run_halving(
    tuning: Tuning, eta: int, out: str | None, resume: bool, argv: list[str]
) -> tuple[int, Path, list[Choice]]:
    """Successive halving (Jamieson and Talwalkar 2016; Li et al. 2018, Hyperband's inner loop) per algorithm:
    rung r runs each algorithm's surviving grid points for rung r's epochs into DIR/rung-r/ and keeps the best
    1/eta of them by the same rule as the grid (diverged or failed trials never survive); the last rung trains the
    full epochs and its best is chosen."""
    import pandas as pd

    rungs = check_halving(tuning, eta)
    if out is None and not resume:
        out = str(new_results_folder("tune"))
    out_dir = Path(str(out))
    if not resume and out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(
            f"--out '{out}' exists and is not empty: pass --resume to continue that tuning, or a new folder"
        )
    survivors = {a: list(range(len(tuning.cells))) for a in tuning.algorithms}
    dropped: dict[str, str] = {}
    frames, codes = [], []
    for r, (_, epochs) in enumerate(rungs):
        spec = rung_spec(tuning, survivors, epochs)
        if not spec.grids:
            break
        rung = {"rung": r, "epochs": epochs, "eta": eta}
        code, trials = run_rung(tuning, spec, str(out_dir / f"rung-{r}"), resume, argv, rung)
        codes.append(code)
        frames.append(trials.assign(rung=r, epochs=epochs))
        keep = rungs[r + 1][0] if r + 1 < len(rungs) else 1
        for algo in tuning.algorithms:
            ranked = ranked_trials(trials[trials["algorithm"] == algo])
            if survivors[algo] and not ranked:
                dropped[algo] = f"no trial of rung {r} ({epochs} epoch(s)) finished ok"
            survivors[algo] = [int(row["order"]) for row in ranked[:keep]]
    trials = pd.concat(frames, ignore_index=True)
    last = frames[-1]
    choices = choose(last[last["rung"] == len(frames) - 1], tuning.algorithms)
    for c in choices:
        if not c.cell and c.algorithm in dropped:
            c.why_none = dropped[c.algorithm]
    sizes = ", ".join(str(size) for size, _ in rungs)
    budget = f"successive halving (eta {eta}): rungs of {sizes} trials per algorithm, each "
    budget += f"{', '.join(str(epochs) for _, epochs in rungs)} epoch(s)"
    finish(out_dir, tuning, trials, choices, ["rung", "epochs", *tuning.axes], budget)
    return (1 if any(codes) or any(not c.cell for c in choices) else 0), out_dir, choices


def tune(
    given: dict[str, Any],
    grid_items: tuple[str, ...],
    config_file: str | None,
    sets: tuple[str, ...],
    out: str | None,
    resume: bool,
    argv: list[str],
    halving: bool = False,
    eta: int = 3,
) -> int:
    """`swarmbench tune`: defaults < --config < run options < --set, the --grid axes over them; with `halving`
    (eta >= 2) successive halving instead of the full grid at full epochs."""
    checks.resolve(given, config_file, sets)  # the settings without the grid: their mistakes named as `run` names them
    fixed = config_settings(config_file) | given
    fixed |= parse_set(sets)
    tuning = plan(fixed, parse_grid(grid_items))
    if halving:
        code, _, _ = run_halving(tuning, eta, out, resume, argv)
    else:
        code, _, _ = run_tuning(tuning, out, resume, argv)
    return code
