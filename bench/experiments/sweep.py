"""`swarmbench sweep`: the cartesian product of a grid, run cell by cell into one results folder.

A cell is one `swarmbench run` invocation: one grid point of every key but `algorithm`, with all the grid's
algorithms run one after another under that one identical launch (same processes, data, shards, initial weights
and sample budget), so allreduce measured in the same cell is the reference for noisy throughput ratios.

Layout of a sweep folder:

    DIR/meta.json          kind "sweep": the spec, the grid keys, every cell's params, status and reason
    DIR/cells/<cell-id>/   a complete `swarmbench run` results folder per cell
    DIR/logs/<cell-id>.log that cell's terminal output
    DIR/summary.csv        every cell's summary rows, the grid keys as columns
    DIR/aggregate.csv      seeds aggregated: mean, std and a 95 % t-interval per metric
    DIR/throughput.md ...  the tables (bench.analysis.report), seeds aggregated

`--resume` skips the cells whose own meta.json says ok, continues a stopped cell whose run can be resumed
(`bench.run.resume`) and reruns the others; a failed cell is recorded
(status failed and the reason) and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import re
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import __version__
from bench.analysis.load import aggregate, load_results
from bench.analysis.report import build_tables, write_tables
from bench.base.console import LiveProgress, closest
from bench.base.errors import UserError
from bench.base.files import atomic_write_frame, atomic_write_json
from bench.base.host import new_results_folder
from bench.base.signals import stop_signals
from bench.base.tomlfile import flatten_settings, key_line, load_toml_text
from bench.records.read import read_meta
from bench.records.write import SCHEMA_VERSION, git_facts, now_iso
from bench.run import checks, orchestrate
from bench.run.resume import CHECKPOINT, Resume, open_resume
from bench.training.config import RunConfig, apply_overrides, config_settings, parse_set
from bench.training.registry import ALGORITHMS, runs_on

ALGO_KEYS = ("algorithm", "algorithms", "algo")  # the grid axis that is run inside each cell
SWEEP_META_KEYS = ("schema_version", "kind", "spec", "grid_keys", "cells")


# ---- the spec -----------------------------------------------------------------------------------------------------


@dataclass
class Grid:
    """One cartesian product: `axes` (key -> values, "algorithm" among them) over `fixed` settings."""

    axes: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass
class SweepSpec:
    """Fixed settings (RunConfig keys, `ALGO.key` for per-algorithm ones) and one or more grids."""

    fixed: dict[str, Any]
    grids: list[Grid]
    source: str = "options"

    def to_json(self) -> dict[str, Any]:
        # Pairs, not objects: meta.json is written with sorted keys, and the order of the keys makes the cell ids.
        return {
            "fixed": self.fixed,
            "grids": [
                {
                    "name": g.name,
                    "axes": [[k, v] for k, v in g.axes.items()],
                    "fixed": [[k, v] for k, v in g.fixed.items()],
                }
                for g in self.grids
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> SweepSpec:
        def pairs(value: Any) -> dict[str, Any]:
            return dict(value) if isinstance(value, list) else dict(value or {})

        grids = [
            Grid(axes=pairs(g["axes"]), fixed=pairs(g.get("fixed")), name=g.get("name", "")) for g in data["grids"]
        ]
        return cls(fixed=data.get("fixed", {}), grids=grids, source=source)


@dataclass
class Cell:
    id: str
    params: dict[str, Any]  # the sweep's grid keys -> this cell's value
    settings: dict[str, Any]  # every key set for this cell but the algorithms
    algorithms: list[str]
    error: str = ""  # a setting this cell cannot run with (impossible topology, ...): recorded as failed


def split_values(values: tuple[str, ...]) -> list[str]:
    """--nodes 2,4 --nodes 8 -> ['2', '4', '8']."""
    return [v.strip() for raw in values for v in str(raw).split(",") if v.strip()]


def parse_grid(items: tuple[str, ...]) -> dict[str, list[str]]:
    """Repeated `--grid KEY=V1,V2` options -> {KEY: ['V1', 'V2']} (a later KEY replaces an earlier one)."""
    axes: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--grid '{item}' is not KEY=V1,V2: write e.g. --grid lr=0.05,0.1")
        axes[key.strip()] = split_values((values,))
    return axes


def spec_from_toml(path: str) -> tuple[SweepSpec, str]:
    """A sweep file: top-level keys and [ALGO] tables are fixed settings, `[grid]` holds the axes."""
    p = Path(path)
    data, text = load_toml_text(p)
    grid = data.pop("grid", None)
    if grid is None:
        raise UserError(f"'{path}' has no [grid] table: add one, e.g. [grid] nodes = [2, 4]")
    if not isinstance(grid, dict):
        raise UserError(f"'{path}'{key_line(text, 'grid')} (key 'grid'): must be a table [grid], not a value")
    fixed = flatten_settings(data)
    axes = {}
    for key, values in grid.items():
        if isinstance(values, dict):
            for sub, v in values.items():  # [grid.swarm] local_steps = [...] -> swarm.local_steps
                axes[f"{key}.{sub}"] = v if isinstance(v, list) else [v]
        else:
            axes[key] = values if isinstance(values, list) else [values]
    return SweepSpec(fixed=fixed, grids=[Grid(axes=axes)], source=str(p)), text


def build_spec(
    file: str | None,
    axes_from_options: dict[str, tuple[str, ...]],
    grid_items: tuple[str, ...],
    sets: tuple[str, ...],
    config_file: str | None = None,
) -> tuple[SweepSpec | None, str]:
    """Settings: --config < the file's < --set; axes: the file's, replaced by command-line axes of the same key."""
    config = config_settings(config_file)
    spec, text = spec_from_toml(file) if file else (None, "")
    axes: dict[str, list[Any]] = {}
    for key, values in axes_from_options.items():
        if values:
            axes[key] = split_values(values)
    axes.update(parse_grid(grid_items))
    fixed = parse_set(sets)
    if spec is None and not axes and not fixed and not config:
        return None, text
    if spec is None:
        spec = SweepSpec(fixed={}, grids=[Grid(axes={})])
    spec.fixed = {**config, **spec.fixed}
    for key, values in axes.items():
        for g in spec.grids:
            for alias in ALGO_KEYS if key in ALGO_KEYS else (key,):
                g.axes.pop(alias, None)
            g.axes[key] = values
    spec.fixed.update(fixed)
    return spec, text


# ---- expansion and checks -----------------------------------------------------------------------------------------


def _algorithms(value: Any, where: str) -> list[str]:

    names = value if isinstance(value, list | tuple) else [s for s in str(value).split(",") if s]
    out: list[str] = []
    for name in names:
        name = str(name).strip()
        if name == "all":
            out.extend(a for a in ALGORITHMS if a not in out)
            continue
        if name not in ALGORITHMS:
            raise UserError(
                f"{where}: unknown algorithm '{name}'{closest(name, ALGORITHMS)}: choose from {', '.join(ALGORITHMS)}"
            )
        if name not in out:
            out.append(name)
    return out


def normalize(spec: SweepSpec, text: str = "") -> SweepSpec:
    """Every key known and every value converted to its field's type, before anything runs (exit 2 otherwise).

    An unknown key or a value of the wrong type names the file, the line and the key (or the option)."""
    base = RunConfig().to_dict()

    def typed(key: str, value: Any, what: str) -> Any:
        where = f"'{spec.source}'{key_line(text, key)} (key '{key}')" if text else f"{what} '{key}'"
        if key in ALGO_KEYS:
            return _algorithms(value, where)
        try:
            out = apply_overrides(base, {key: value}, spec.source)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        if "." in key:
            algo, _, sub = key.partition(".")
            return out["algo_options"][algo][sub]
        return out[key]

    fixed = {("algorithms" if k in ALGO_KEYS else k): typed(k, v, "--set") for k, v in spec.fixed.items()}
    grids = []
    for g in spec.grids:
        axes: dict[str, list[Any]] = {}
        for key, values in g.axes.items():
            if not values:
                raise UserError(f"the grid has zero cells: axis '{key}' is empty ({spec.source}): give it values")
            if key in ALGO_KEYS:
                axes["algorithm"] = _algorithms(values, f"'{spec.source}'{key_line(text, key)} (key '{key}')")
            else:
                axes[key] = [typed(key, v, "grid axis") for v in values]
        grids.append(Grid(axes=axes, fixed={k: typed(k, v, "setting") for k, v in g.fixed.items()}, name=g.name))
    return SweepSpec(fixed=fixed, grids=grids, source=spec.source)


def grid_keys(spec: SweepSpec) -> list[str]:
    """Keys that may differ between cells, in order of appearance (algorithm excluded)."""
    keys: list[str] = []
    for g in spec.grids:
        for key in [*g.axes, *g.fixed]:
            if key not in ALGO_KEYS and key not in keys:
                keys.append(key)
    return keys


def cell_id(params: dict[str, Any]) -> str:
    """'nodes=4,bits=8,seed=0': readable, unique per params, safe as a folder name."""
    if not params:
        return "cell"
    parts = []
    for key, value in params.items():
        value = json.dumps(value) if isinstance(value, list | dict) else str(value)
        parts.append(f"{key}={re.sub(r'[^A-Za-z0-9._-]', '-', value)}")
    ident = ",".join(parts)
    if len(ident) > 120:
        ident = ident[:100] + "-" + hashlib.sha1(ident.encode()).hexdigest()[:10]
    return ident


def expand(spec: SweepSpec) -> list[Cell]:
    """The cartesian product of every grid; grid points with the same settings share one cell."""
    defaults = RunConfig().to_dict()
    keys = grid_keys(spec)
    default_algos = _algorithms(spec.fixed.get("algorithms", ["all"]), "algorithms")
    # "all" (normalized to every name) is every algorithm that runs on the cell's model, as `--algo all` of a run.
    everything = set(default_algos) == set(ALGORITHMS)
    fixed = {k: v for k, v in spec.fixed.items() if k != "algorithms"}
    cells: dict[str, Cell] = {}
    for g in spec.grids:
        names = list(g.axes)
        for combo in itertools.product(*(g.axes[k] for k in names)):
            point = dict(zip(names, combo, strict=True))
            algos = default_algos
            if "algorithm" in point:
                algos = [point.pop("algorithm")]
            settings = {**fixed, **g.fixed, **point}
            if everything and "algorithm" not in g.axes:
                model, compute = (settings.get(k, defaults[k]) for k in ("model", "compute"))
                algos = [a for a in algos if runs_on(a, model, compute)]
            params = {k: settings.get(k, defaults.get(k)) for k in keys}
            ident = cell_id(params)
            if ident in cells:
                if cells[ident].settings != settings:
                    raise UserError(
                        f"two grid points share cell id '{ident}' with different settings: "
                        "make the differing key a grid key"
                    )
                cells[ident].algorithms += [a for a in algos if a not in cells[ident].algorithms]
            else:
                cells[ident] = Cell(id=ident, params=params, settings=settings, algorithms=list(algos))
    if not cells:
        raise UserError(f"the grid has zero cells ({spec.source}): give every axis at least one value")
    return list(cells.values())


def resolve_cell(cell: Cell):
    return checks.resolve({**cell.settings, "algorithms": cell.algorithms})


def check_cells(cells: list[Cell]) -> list[Any]:
    """Resolve every cell's RunConfig; a cell that cannot run keeps its reason (all failing: exit 2)."""
    configs = []
    for cell in cells:
        try:
            configs.append(resolve_cell(cell))
        except UserError as exc:
            cell.error = str(exc)
            configs.append(None)
    if all(c is None for c in configs):
        raise UserError(f"no cell of the grid can run; the first says: {cells[0].error}")
    return configs


# ---- running ------------------------------------------------------------------------------------------------------


class SweepUI(LiveProgress):
    """A rich progress bar (cells done/total, elapsed, ETA) on a terminal; plain lines otherwise."""

    def __init__(self, total: int, interactive: bool | None = None) -> None:
        from rich.console import Console

        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        # Bound to the real stdout now: each cell's own output is redirected to its log while it runs.
        self.console = Console(file=sys.stdout, highlight=False, width=None if self.interactive else 180)
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.ran_seconds: list[float] = []
        self.progress = None
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                TextColumn("sweep"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
                TextColumn("{task.fields[note]}"),
                console=self.console,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.task = self.progress.add_task("sweep", total=total, note="", eta="-")

    def line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False)
        else:
            print(text, flush=True)

    def start(self, cell: Cell) -> None:
        if self.progress is not None:
            self.progress.update(self.task, note=cell.id)
        else:
            print(f"sweep: [{self.done + 1}/{self.total}] {cell.id}: running {', '.join(cell.algorithms)}", flush=True)

    def eta(self) -> str:
        """Mean seconds of the cells run so far times the cells left (cells skipped on resume cost nothing)."""
        if not self.ran_seconds or self.done >= self.total:
            return "-" if self.done < self.total else "0:00"
        left = int(sum(self.ran_seconds) / len(self.ran_seconds) * (self.total - self.done))
        return f"{left // 60}:{left % 60:02d}"

    def finish(self, cell: Cell, status: str, reason: str, seconds: float | None) -> None:
        self.done += 1
        if seconds is not None:
            self.ran_seconds.append(seconds)
        took = f" in {seconds:.1f} s" if seconds is not None else ""
        why = f": {reason}" if reason and status != "ok" else ""
        if self.progress is not None:
            self.progress.update(self.task, advance=1, eta=self.eta())
            if status != "ok":
                self.line(f"{cell.id}: {status}{why}")
        else:
            eta = f", ETA {self.eta()}" if self.done < self.total and self.ran_seconds else ""
            print(f"sweep: [{self.done}/{self.total}] {cell.id}: {status}{took}{why}{eta}", flush=True)


def run_cell(cfg, out_dir: Path, log_path: Path, argv: list[str], resume: Resume | None = None) -> tuple[str, str]:
    """One cell = one `swarmbench run` (bench.run.orchestrate.execute), its output in `log_path`: (status, reason).
    `resume`: continue the cell's interrupted run in its folder (`swarmbench run --resume`)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a" if resume else "w", encoding="utf-8") as log:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            return _run_cell(cfg, out_dir, log, log_path, argv, resume)


def _run_cell(cfg, out_dir: Path, log, log_path: Path, argv: list[str], resume: Resume | None) -> tuple[str, str]:
    try:
        code = orchestrate.execute(cfg, str(out_dir), argv=argv, interactive=False, resume=resume)
    except UserError as exc:
        print(f"error: {exc}")
        return "failed", str(exc)
    except Exception as exc:  # a bug or a crash in this cell: recorded, the sweep goes on
        traceback.print_exc(file=log)
        return "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
    if code == 0:
        return "ok", ""
    try:
        algos = read_meta(out_dir).get("algorithms", {})
        reason = next((v["reason"] for v in algos.values() if v.get("status") == "failed" and v.get("reason")), "")
    except UserError:
        reason = ""
    return "failed", reason or f"exit status {code} (see {log_path})"


def resumable(cell_dir: Path, cfg) -> Resume | None:
    """The interrupted run of a cell, when it can be continued (`swarmbench run --resume`) with the configuration
    the sweep gives it now; None: run the cell from scratch."""
    if cfg is None or not (cell_dir / CHECKPOINT).is_file():
        return None
    try:
        stored, resume = open_resume(str(cell_dir), {}, None, (), None)
    except UserError:
        return None
    return resume if stored == cfg else None


def cell_finished(path: Path) -> bool:
    """A cell is finished when its own meta.json says ok."""
    try:
        return json.loads((path / "meta.json").read_text(encoding="utf-8")).get("status") == "ok"
    except (OSError, json.JSONDecodeError):
        return False


def sweep_meta(spec: SweepSpec, cells: list[Cell], argv: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "sweep",
        "swarmbench_version": __version__,
        "git": git_facts(),
        "python": sys.version.split()[0],
        "argv": argv,
        "started_at": now_iso(),
        "ended_at": None,
        "status": "running",
        "spec": spec.to_json(),
        "grid_keys": grid_keys(spec),
        "cells": {
            c.id: {"status": "pending", "reason": "", "params": c.params, "algorithms": c.algorithms} for c in cells
        },
        **extra,
    }


def prepare_out(
    out: str | None, resume: bool, spec: SweepSpec | None, own: tuple[str, ...] = ()
) -> tuple[Path, SweepSpec, dict | None]:
    """The sweep folder, the spec to run (a resumed sweep may omit it) and the stored meta when resuming; entries
    named in `own` (written there before the sweep starts, such as a suite's tuning folder) do not count."""
    if out is None:
        if resume:
            raise UserError("--resume needs --out DIR: the sweep folder to continue")
        if spec is None:
            raise UserError("nothing to sweep: pass a grid file (SPEC.toml) or axes such as --nodes 2,4 --seed 0,1")
        return new_results_folder("sweep"), spec, None
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out '{out}' exists and is not a folder: choose a new folder name")
    empty = not path.exists() or not any(p.name not in own for p in path.iterdir())
    if empty:
        if spec is None:
            raise UserError("nothing to sweep: pass a grid file (SPEC.toml) or axes such as --nodes 2,4 --seed 0,1")
        return path, spec, None
    if not resume:
        raise UserError(f"--out '{out}' exists and is not empty: pass --resume to continue that sweep, or a new folder")
    stored = read_meta(path)
    if stored.get("kind") != "sweep" or "spec" not in stored:
        raise UserError(f"--out '{out}' is not a sweep folder: --resume continues folders written by swarmbench sweep")
    stored_spec = SweepSpec.from_json(stored["spec"], source=str(path / "meta.json"))
    if spec is not None and _canonical(spec.to_json()) != _canonical(stored_spec.to_json()):
        raise UserError(
            f"'{out}' holds a different sweep than the one given: resume it with the same grid "
            "(or without SPEC and axes to reuse its own), or choose a new folder"
        )
    return path, stored_spec, stored


def _canonical(data: Any) -> str:
    """Spec identity across the meta.json round trip (both sides normalized: typed values)."""
    return json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))


def execute_sweep(
    spec: SweepSpec,
    out_dir: Path,
    stored: dict | None,
    argv: list[str],
    interactive: bool | None = None,
    extra_meta: dict[str, Any] | None = None,
    text: str = "",
) -> tuple[int, Path]:
    """Run every cell not yet finished; write the aggregated tables; exit status 0 (all ok) or 1."""
    spec = normalize(spec, text)
    cells = expand(spec)
    configs = check_cells(cells)
    meta = sweep_meta(spec, cells, argv, extra_meta or {})
    if stored is not None:
        meta["started_at"] = stored.get("started_at", meta["started_at"])
        meta["resumed_at"] = now_iso()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "meta.json", meta)
    todo = []
    for cell, cfg in zip(cells, configs, strict=True):
        info = meta["cells"][cell.id]
        if stored is not None and cell_finished(out_dir / "cells" / cell.id):
            info.update(status="ok", reason="", skipped_on_resume=True)
            old = (stored.get("cells") or {}).get(cell.id, {})
            for key in ("seconds", "started_at", "ended_at"):
                if key in old:
                    info[key] = old[key]
        else:
            todo.append((cell, cfg))
    atomic_write_json(out_dir / "meta.json", meta)
    ui = SweepUI(len(cells), interactive)
    skipped = len(cells) - len(todo)
    if skipped:
        ui.line(f"sweep: {skipped} of {len(cells)} cells already finished in {out_dir}: skipped")
    try:
        # SIGTERM too becomes Interrupted (Ctrl-C already is a KeyboardInterrupt): the running cell writes its results
        # with status interrupted and the sweep's meta.json says interrupted, so --resume reruns that cell.
        with stop_signals(), ui:
            ui.done = skipped
            if ui.progress is not None:
                ui.progress.update(ui.task, completed=skipped)
            for cell, cfg in todo:
                info = meta["cells"][cell.id]
                cell_dir = out_dir / "cells" / cell.id
                resume = resumable(cell_dir, cfg)  # an interrupted cell keeps its finished algorithms
                if cell_dir.exists() and resume is None:
                    shutil.rmtree(cell_dir)  # a cell that cannot be resumed is rerun from scratch
                ui.start(cell)
                info.update(status="running", started_at=now_iso())
                atomic_write_json(out_dir / "meta.json", meta)
                t0 = time.monotonic()
                if cfg is None:
                    status, reason, took = "failed", cell.error, None
                else:
                    cell_argv = [*argv, f"[cell {cell.id}]"]
                    log_path = out_dir / "logs" / f"{cell.id}.log"
                    status, reason = run_cell(cfg, cell_dir, log_path, cell_argv, resume)
                    if resume is not None:
                        info["resumed"] = True
                    took = round(time.monotonic() - t0, 3)
                info.update(status=status, reason=reason, ended_at=now_iso())
                if took is not None:
                    info["seconds"] = took
                atomic_write_json(out_dir / "meta.json", meta)
                ui.finish(cell, status, reason, took)
    except BaseException:
        meta["status"] = "interrupted"
        for info in meta["cells"].values():
            if info["status"] == "running":
                info.update(status="interrupted", reason="the sweep was stopped while this cell ran")
        meta["ended_at"] = now_iso()
        atomic_write_json(out_dir / "meta.json", meta)
        again = shlex.join(["swarmbench", "sweep", "--out", str(out_dir), "--resume"])
        print(f"sweep interrupted: the finished cells are kept in {out_dir}; to continue: {again}", flush=True)
        raise
    failed = [c for c in cells if meta["cells"][c.id]["status"] != "ok"]
    meta["status"] = "failed" if failed else "ok"
    meta["ended_at"] = now_iso()
    atomic_write_json(out_dir / "meta.json", meta)
    finalize_sweep(out_dir)
    ui.line(f"sweep: {len(cells) - len(failed)} of {len(cells)} cells ok; results: {out_dir}")
    for c in failed:
        ui.line(f"  failed: {c.id}: {meta['cells'][c.id]['reason']}")
    return (1 if failed else 0), out_dir


def finalize_sweep(out_dir: Path) -> None:
    """summary.csv (every row, grid keys first), aggregate.csv (seeds aggregated) and the Markdown/CSV tables."""
    import pandas as pd

    results = load_results(out_dir)
    s = results.summary.copy()
    first = ["cell", *results.grid_keys, "algorithm"]
    s = s[[*first, *[c for c in s.columns if c not in first]]]
    for col in s.columns:  # failed cells' empty rows turn integer columns into floats: keep them integers
        values = pd.to_numeric(s[col], errors="coerce")
        if s[col].dtype.kind == "f" and values.notna().any() and (values.dropna() % 1 == 0).all():
            s[col] = values.astype("Int64")
    atomic_write_frame(out_dir / "summary.csv", s)
    atomic_write_frame(out_dir / "aggregate.csv", aggregate(s, results.group_keys))
    write_tables(build_tables(results), out_dir, ("md", "csv"))


# ---- the command ----------------------------------------------------------------------------------------------


def sweep(
    spec_file: str | None,
    axes: dict[str, tuple[str, ...]],
    grid_items: tuple[str, ...],
    sets: tuple[str, ...],
    out: str | None,
    resume: bool,
    argv: list[str],
    config_file: str | None = None,
) -> int:
    """`swarmbench sweep`: the grid of SPEC.toml and the axes given as options (each replacing the file's axis of
    the same key), over the settings of `config_file` (e.g. a tune's tuned.toml), run into `out` (or a new folder);
    exit status 0 (every cell ok) or 1."""
    spec, text = build_spec(spec_file, axes, grid_items, sets, config_file)
    spec = normalize(spec, text) if spec is not None else None
    out_dir, spec, stored = prepare_out(out, resume, spec)
    code, _ = execute_sweep(spec, out_dir, stored, argv=argv, text=text)
    return code
