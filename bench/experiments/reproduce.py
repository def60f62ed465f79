"""`swarmbench reproduce SUITE`: run a suite shipped as a TOML file (bench/experiments/suites/) and lay its tables
out like the paper's (rows = methods, columns = node counts or settings), in Markdown and LaTeX, with the plots.

A suite is a sweep with several parts (each a grid over shared settings; identical cells of different parts run
once) plus table definitions. It runs into `results/<suite>/` (or `--out`) as an ordinary sweep folder whose
meta.json also carries the suite, so `swarmbench report` and `swarmbench compare` work on it as on any other.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.analysis.report import build_report
from bench.base.console import closest
from bench.base.errors import UserError
from bench.base.tomlfile import flatten_settings, key_line, load_toml_text
from bench.experiments.sweep import Grid, SweepSpec, execute_sweep, normalize, prepare_out, split_values
from bench.experiments.tune import TUNED_FILE, Tuning, grid_text, plan, run_halving, run_tuning
from bench.training.config import RUN_FIELDS, config_settings, parse_set

SUITE_KEYS = {"name", "title", "description", "engine", "target_acc"}
PART_KEYS = {"name", "title", "grid", "settings"}
TUNE_KEYS = {"grid", "settings", "algorithms", "halving", "eta", "by"}
TUNE_FOLDER = "tune"  # inside the suite's folder: the tuning sweep, its tuned.toml and trials.csv
TABLE_KEYS = {"name", "title", "part", "metric", "columns", "format", "scale", "algorithms", "note", "descending"}


@dataclass
class Part:
    name: str
    title: str
    grid: dict[str, list[Any]]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class SuiteTable:
    name: str
    title: str
    part: str
    metric: str
    columns: str  # the grid key laid out as columns (nodes, bits, local_steps, ...)
    format: str = ".4g"
    scale: float = 1.0
    algorithms: list[str] = field(default_factory=list)  # rows, in this order; empty: every algorithm of the part
    note: str = ""
    descending: bool = False  # columns from the largest value (32, 16, 8, 4 bits)


@dataclass
class TuneBudget:
    """A suite's `[tune]` table: every method is tuned on `grid` (at the shared settings plus `settings`) before the
    parts run, and runs them at its chosen values."""

    grid: dict[str, list[Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    algorithms: list[str] = field(default_factory=list)  # empty: every algorithm of the suite's parts
    eta: int = 0  # successive halving keeping the best 1/eta per rung; 0: the full grid at the full epochs
    by: str = ""  # a setting the parts differ in (e.g. "model"): tune once per value, for the parts with that value


@dataclass
class Suite:
    name: str
    title: str
    description: str
    engine: str  # "sim" or "processes": what the suite is meant to run on
    settings: dict[str, Any]
    parts: list[Part]
    tables: list[SuiteTable]
    target_acc: float | None = None
    source: str = ""
    tune: TuneBudget | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "engine": self.engine,
            "target_acc": self.target_acc,
            "parts": [p.__dict__ for p in self.parts],
            "tables": [t.__dict__ for t in self.tables],
        }


def suites_dir():
    return importlib.resources.files("bench.experiments") / "suites"


def shipped() -> dict[str, Any]:
    """Suite name -> its TOML resource, for every suite shipped in the package."""
    return {
        p.name[: -len(".toml")]: p
        for p in sorted(suites_dir().iterdir(), key=lambda p: p.name)
        if p.name.endswith(".toml")
    }


def load_suite(name: str) -> Suite:
    """A shipped suite by name, or a suite TOML file by path; UserError names the line and key of a mistake."""
    available = shipped()
    if name in available:
        with importlib.resources.as_file(available[name]) as path:
            data, text = load_toml_text(Path(path))
        source = f"suite '{name}'"
    elif name.endswith(".toml"):
        data, text = load_toml_text(Path(name))
        source = name
    else:
        raise UserError(
            f"unknown suite '{name}'{closest(name, available)}: choose from {', '.join(available)} "
            "(swarmbench reproduce --list) or pass a suite .toml file"
        )
    return parse_suite(data, text, source)


def parse_suite(data: dict[str, Any], text: str, source: str) -> Suite:
    def bad(key: str, problem: str) -> UserError:
        return UserError(f"{source}{key_line(text, key)} (key '{key}'): {problem}")

    def check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in table:
            if key not in allowed:
                raise bad(key, f"unknown key in {where}: valid keys are {', '.join(sorted(allowed))}")

    head = data.get("suite")
    if not isinstance(head, dict) or "name" not in head:
        raise UserError(f'{source}: needs a [suite] table with at least name = "..."')
    check_keys(head, SUITE_KEYS, "[suite]")
    unknown = set(data) - {"suite", "settings", "parts", "tables", "tune"}
    if unknown:
        key = sorted(unknown)[0]
        raise bad(key, "unknown table: a suite has [suite], [settings], [tune], [[parts]] and [[tables]]")
    tune = None
    if "tune" in data:
        table = data["tune"]
        if not isinstance(table, dict) or not isinstance(table.get("grid"), dict):
            raise UserError(f"{source}: [tune] needs a grid table, e.g. [tune] grid = {{lr = [0.01, 0.05, 0.2]}}")
        check_keys(table, TUNE_KEYS, "[tune]")
        if not isinstance(table.get("halving", False), bool):
            raise bad("halving", "must be true or false: halving = true tunes by successive halving")
        if isinstance(table.get("eta", 3), bool) or not isinstance(table.get("eta", 3), int):
            raise bad("eta", "must be an integer of at least 2: the best 1/eta of each rung go on")
        tune = TuneBudget(
            grid={k: (v if isinstance(v, list) else [v]) for k, v in table["grid"].items()},
            settings=flatten_settings(table.get("settings", {})),
            algorithms=[str(a) for a in table.get("algorithms", [])],
            eta=int(table.get("eta", 3)) if table.get("halving", False) else 0,
            by=str(table.get("by", "")),
        )
    engine = head.get("engine", "processes")
    if engine not in ("sim", "processes"):
        raise bad("engine", f"engine must be 'sim' or 'processes', got {engine!r}")
    parts = []
    for p in data.get("parts", []):
        check_keys(p, PART_KEYS, "[[parts]]")
        if "name" not in p or not isinstance(p.get("grid"), dict):
            raise UserError(f'{source}: every [[parts]] needs name = "..." and a [parts.grid] table')
        grid = {k: (v if isinstance(v, list) else [v]) for k, v in p["grid"].items()}
        settings = flatten_settings(p.get("settings", {}))
        parts.append(Part(name=p["name"], title=p.get("title", p["name"]), grid=grid, settings=settings))
    if not parts:
        raise UserError(f"{source}: has no [[parts]]: a suite needs at least one grid")
    if tune is not None and tune.by:
        shared = flatten_settings(data.get("settings", {}))
        for part in parts:
            if tune.by in part.grid or (tune.by not in part.settings and tune.by not in shared):
                raise bad(
                    "by",
                    f"[tune] by = '{tune.by}' needs one value of '{tune.by}' per part, but part '{part.name}' "
                    + ("spreads it over a grid axis" if tune.by in part.grid else "sets none (nor does [settings])")
                    + f": set {tune.by} in its [parts.settings]",
                )
    names = {p.name for p in parts}
    tables = []
    for t in data.get("tables", []):
        check_keys(t, TABLE_KEYS, "[[tables]]")
        for key in ("name", "part", "metric", "columns"):
            if key not in t:
                raise UserError(f"{source}: a [[tables]] entry lacks {key} = ...")
        if t["part"] not in names:
            raise bad("part", f"table '{t['name']}' names part '{t['part']}', which is not one of {', '.join(names)}")
        tables.append(
            SuiteTable(
                name=t["name"],
                title=t.get("title", t["name"]),
                part=t["part"],
                metric=t["metric"],
                columns=t["columns"],
                format=t.get("format", ".4g"),
                scale=float(t.get("scale", 1.0)),
                algorithms=list(t.get("algorithms", [])),
                note=t.get("note", ""),
                descending=bool(t.get("descending", False)),
            )
        )
    target = head.get("target_acc")
    return Suite(
        name=head["name"],
        title=head.get("title", head["name"]),
        description=head.get("description", ""),
        engine=engine,
        settings=flatten_settings(data.get("settings", {})),
        parts=parts,
        tables=tables,
        target_acc=float(target) if target is not None else None,
        source=source,
        tune=tune,
    )


def sim_available() -> bool:
    """The simulator engine exists in this install: a module bench.engine.sim.cluster and an `engine` run setting."""
    try:
        found = importlib.util.find_spec("bench.engine.sim.cluster") is not None
    except ImportError:
        found = False
    return found and "engine" in RUN_FIELDS


def suite_spec(
    suite: Suite,
    engine: str,
    nodes: tuple[str, ...],
    seeds: tuple[str, ...],
    sets: tuple[str, ...],
    config: dict[str, Any] | None = None,
):
    """The suite as a sweep: shared settings (+ the engine) < `config` (a --config file's settings, e.g. a tune's
    tuned.toml) < --set, one grid per part; --nodes/--seed replace axes."""
    fixed = dict(suite.settings)
    if engine == "sim":
        fixed["engine"] = "sim"
    fixed.update(config or {})
    fixed.update(parse_set(sets))
    grids = []
    for p in suite.parts:
        axes = dict(p.grid)
        settings = dict(p.settings)
        for key, values in (("nodes", nodes), ("seed", seeds)):
            if values:
                settings.pop(key, None)
                axes[key] = split_values(values)
        grids.append(Grid(axes=axes, fixed=settings, name=p.name))
    return SweepSpec(fixed=fixed, grids=grids, source=suite.source)


def list_suites() -> list[str]:
    lines = []
    for name in shipped():
        suite = load_suite(name)
        parts = ", ".join(p.name for p in suite.parts)
        lines.append(f"{name:<20} [{suite.engine}] {suite.title} (parts: {parts})")
    return lines


def reproduce(
    suite_name: str | None,
    out: str | None,
    resume: bool,
    engine: str | None,
    nodes: tuple[str, ...],
    seeds: tuple[str, ...],
    sets: tuple[str, ...],
    target_acc: float | None,
    argv: list[str],
    config_file: str | None = None,
    parts: tuple[str, ...] = (),
) -> tuple[int, Path, list[str]]:
    """`swarmbench reproduce SUITE`: run the suite as a sweep into `out` (default results/<suite>), then its report;
    (exit status: 0 every cell ok, else 1; the report folder; notes about the report). `parts`: only these parts
    (and their tables)."""
    if not suite_name:
        raise UserError("name a suite: swarmbench reproduce SUITE (swarmbench reproduce --list shows them)")
    suite = select_parts(load_suite(suite_name), parts)
    engine = engine or suite.engine
    if engine == "sim" and not sim_available():
        raise UserError(
            f"suite '{suite.name}' runs on the simulator (--engine sim), which this swarmbench does not have yet: "
            "pass --engine processes to run it on real processes (noisy, not deterministic)"
        )
    spec = normalize(suite_spec(suite, engine, nodes, seeds, sets, config_settings(config_file)))
    out = out or str(Path("results") / suite.name)
    suite_json = suite.to_json()
    tune_code = 0
    # tune every method first, then run the parts at the chosen values; a bad [tune] table is refused before anything
    # runs; nothing to tune when no part trains (cost-only parts)
    tunings = plan_suite_tunings(suite, spec) if suite.tune is not None else []
    if tunings:
        if not resume:
            prepare_out(out, resume, spec, own=())  # so is an existing results folder
        tune_code, suite_json["tune"] = tune_suite(suite.tune, spec, tunings, out, resume, argv)
    out_dir, spec, stored = prepare_out(out, resume, spec, own=(TUNE_FOLDER,))
    extra = {"suite": suite.name, "suite_spec": suite_json, "suite_engine": engine}
    code, out_dir = execute_sweep(spec, out_dir, stored, argv=argv, extra_meta=extra)
    report_dir, notes = build_report(out_dir, target_acc=target_acc if target_acc is not None else suite.target_acc)
    return max(code, tune_code), report_dir, notes


def select_parts(suite: Suite, names: tuple[str, ...]) -> Suite:
    """The suite with only the parts named (and the tables of those parts); every part when none is named."""
    if not names:
        return suite
    wanted = split_values(names)
    if not wanted:
        raise UserError(f"--part names no part; suite '{suite.name}' has {', '.join(p.name for p in suite.parts)}")
    known = [p.name for p in suite.parts]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UserError(f"suite '{suite.name}' has no part {', '.join(unknown)}; its parts: {', '.join(known)}")
    keep = [p for p in suite.parts if p.name in wanted]
    kept = {p.name for p in keep}
    return replace(suite, parts=keep, tables=[t for t in suite.tables if t.part in kept])


def trains(grid: Any, spec: SweepSpec) -> bool:
    """A part's runs train models (not `compute = "cost-only"`, which moves a stand-in and has no accuracy)."""
    return grid.fixed.get("compute", spec.fixed.get("compute", "real")) != "cost-only"


def plan_suite_tunings(suite: Suite, spec: SweepSpec) -> list[tuple[Any, list[Any], Tuning]]:
    """The suite's [tune] budget as tunings: one for every part, or with `by` one per value of that setting, for
    the parts with that value: (value or None, those parts' grids, the tuning). Each tunes the algorithms of its
    parts (or the [tune] list) on the [tune] grid at the shared settings (after --config and --set) plus the [tune]
    settings and the value."""
    budget = suite.tune
    assert budget is not None
    groups: dict[Any, list[Any]] = {}
    for grid in (g for g in spec.grids if trains(g, spec)):  # a cost-only part has no accuracy to tune for
        groups.setdefault(grid.fixed.get(budget.by, spec.fixed.get(budget.by)) if budget.by else None, []).append(grid)
    out = []
    for value, grids in groups.items():
        algorithms = list(budget.algorithms)
        for grid in grids:
            algorithms += [a for a in grid.axes.get("algorithm", []) if a not in algorithms]
        fixed = {**spec.fixed, **budget.settings, **({budget.by: value} if budget.by else {})}
        if algorithms:
            fixed["algorithms"] = algorithms
        out.append((value, grids, plan(fixed, budget.grid, source=f"{suite.source} [tune]")))
    return out


def tune_suite(
    budget: TuneBudget, spec: SweepSpec, tunings: list, out: str, resume: bool, argv: list[str]
) -> tuple[int, dict[str, Any]]:
    """Run the tunings into OUT/tune (with `by`: OUT/tune/BY=VALUE per value) and set each method's chosen values
    on the parts they were tuned for; (exit status, the report's account of it)."""
    code, chosen, untuned, axes = 0, {}, [], {}
    for value, grids, tuning in tunings:
        axes = tuning.axes
        tune_dir = str(Path(out) / TUNE_FOLDER / (f"{budget.by}={value}" if budget.by else ""))
        if budget.eta:
            step_code, _, choices = run_halving(tuning, budget.eta, tune_dir, resume, argv)
        else:
            step_code, _, choices = run_tuning(tuning, tune_dir, resume, argv)
        code = max(code, step_code)
        for choice in choices:
            for key, chosen_value in choice.values.items():
                name = f"{choice.algorithm}.{key.partition('.')[2] or key}"
                for fixed in [grid.fixed for grid in grids] if budget.by else [spec.fixed]:
                    fixed[name] = chosen_value
        label = f"{budget.by}={value}: " if budget.by else ""
        chosen.update({f"{label}{c.algorithm}": c.values for c in choices})
        untuned += [f"{label}{c.algorithm}" for c in choices if not c.cell]
    where = f"{TUNE_FOLDER}/{budget.by}=*/{TUNED_FILE}" if budget.by else f"{TUNE_FOLDER}/{TUNED_FILE}"
    text = (
        f"each method tuned on {grid_text(axes)}{f' per {budget.by}' if budget.by else ''} (highest validation "
        "accuracy"
        + (f", successive halving with eta {budget.eta}" if budget.eta else "")
        + f"; {where})"
        + (f"; not tuned: {', '.join(untuned)}" if untuned else "")
    )
    return code, {"grid": [[k, v] for k, v in axes.items()], "chosen": chosen, "text": text}
