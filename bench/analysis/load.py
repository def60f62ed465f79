"""Any results folder read back as one frame: a single `swarmbench run` folder or a sweep (`DIR/cells/<id>/`).

Rows are (cell, algorithm[, nodes]); a sweep adds its grid keys as columns holding the *requested* values (a
non-quantizable algorithm in a `bits = 8` cell still ran at 32 bits: the value it ran with stays in
`bits_effective`). Seeds are aggregated into mean, sample standard deviation and a 95 % confidence interval from
Student's t-distribution with n - 1 degrees of freedom (`aggregate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.base.errors import UserError
from bench.records.read import read_meta, read_records
from bench.records.tables import speedup_vs_allreduce
from bench.records.write import SUMMARY_COLUMNS, rounds_to_target

# The columns that identify a measurement wherever it was taken; a sweep adds its own grid keys.
IDENTITY = ["algorithm", "nodes", "topology", "bits", "local_steps", "seed"]
# Settings that must agree for two rows to be the same experiment (compare matches on them too).
SETTINGS = ["dataset", "model", "epochs", "batch_size", "lr", "partition"]
# Summary columns that are text, not measurements.
TEXT_COLUMNS = {"algorithm", "topology", "status", "quantizer", "dataset", "model", "partition", "cell", "engine"}
TEXT_COLUMNS |= {"deterministic"}
# Derived per row, then aggregated like any measurement.
DERIVED = ["bytes_per_sample", "speedup_vs_allreduce", "sync_share", "seconds_per_sample"]


@dataclass
class Results:
    """One results folder: `summary` has a row per (cell, algorithm, nodes) with grid keys as columns."""

    folder: Path
    kind: str  # "run" or "sweep"
    meta: dict[str, Any]
    schema_version: int
    summary: Any  # pandas DataFrame
    grid_keys: list[str]  # what varies between cells (never "algorithm"), in the sweep's order
    cell_dirs: dict[str, Path] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)  # columns the summary files themselves hold
    _records: Any = None

    @property
    def engines(self) -> set[str]:
        return set(self.summary["engine"].dropna().astype(str))

    @property
    def keys(self) -> list[str]:
        """Identity columns besides `algorithm`: the grid keys, then the standard ones present."""
        out = [k for k in self.grid_keys if k in self.summary.columns]
        out += [k for k in IDENTITY[1:] if k not in out and k in self.summary.columns]
        return out

    @property
    def group_keys(self) -> list[str]:
        """What aggregation over seeds groups by: algorithm and every identity column but seed."""
        return ["algorithm", *[k for k in self.keys if k != "seed"]]

    def varying(self, columns: list[str]) -> list[str]:
        """The subset of `columns` with more than one distinct value among the ok rows."""
        ok = self.ok_rows()
        return [c for c in columns if c in ok.columns and ok[c].astype(str).nunique() > 1]

    def ok_rows(self):
        return self.summary[self.summary["status"] == "ok"]

    def records(self):
        """All cells' tidy records, with a `cell` column (read once, on first use)."""
        if self._records is None:
            import pandas as pd

            frames = []
            for cell, path in record_dirs(self):
                r = read_records(path)
                if len(r):
                    r["cell"] = cell
                    frames.append(r)
            self._records = pd.concat(frames, ignore_index=True) if frames else read_records(self.folder / "-")
            if "cell" not in self._records.columns:
                self._records["cell"] = None
        return self._records


def record_dirs(results: Results) -> list[tuple[str, Path]]:
    """(cell, folder holding records.jsonl): a simulator scaling series keeps one run folder per node count."""
    out = []
    for cell, path in results.cell_dirs.items():
        meta = results.meta if path == results.folder else read_meta(path)
        series = meta.get("series")
        if isinstance(series, dict) and series:
            out += [(cell, path / sub) for sub in series.values()]
        else:
            out.append((cell, path))
    return out


def load_results(folder: str | Path) -> Results:
    """Read a run or sweep folder; a UserError names what makes it unusable."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.get("kind") == "sweep":
        return _load_sweep(folder, meta)
    return _load_run(folder, meta)


def _read_summary(folder: Path):
    import pandas as pd

    path = folder / "summary.csv"
    if not path.is_file():
        raise UserError(f"'{folder}' has no summary.csv (the run did not finish): rerun it or pass another folder")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"'{path}' is not a readable CSV ({exc}): the results folder is damaged") from None
    missing = [c for c in ("algorithm", "nodes", "status") if c not in frame.columns]
    if missing:
        raise UserError(f"'{path}' lacks the column(s) {', '.join(missing)}: it was not written by swarmbench")
    return frame


def _run_rows(folder: Path, meta: dict[str, Any], cell: str):
    frame = _read_summary(folder)
    frame.insert(0, "cell", cell)
    frame["engine"] = meta.get("engine")
    # Simulated time is deterministic unless the simulator timed real steps on this machine (calibrate).
    calibrate = (meta.get("config") or {}).get("calibrate", "none")
    frame["deterministic"] = meta.get("engine") == "sim" and calibrate in ("none", False)
    algos = meta.get("algorithms") or {}
    frame["reason"] = [str((algos.get(a) or {}).get("reason") or "") for a in frame["algorithm"]]
    return frame


def _load_run(folder: Path, meta: dict[str, Any]) -> Results:
    rows = _run_rows(folder, meta, str(meta.get("run_id") or folder.name))
    present = set(rows.columns)
    summary = _finish(rows, [])
    return Results(
        folder=folder,
        kind="run",
        meta=meta,
        schema_version=int(meta["schema_version"]),
        summary=summary,
        grid_keys=[],
        cell_dirs={summary["cell"].iloc[0] if len(summary) else folder.name: folder},
        present=present,
    )


def _load_sweep(folder: Path, meta: dict[str, Any]) -> Results:
    import pandas as pd

    grid_keys = [k for k in meta.get("grid_keys", []) if k != "algorithm"]
    versions: dict[int, list[str]] = {int(meta["schema_version"]): ["sweep"]}
    frames, dirs, present = [], {}, set()
    for cell, info in (meta.get("cells") or {}).items():
        cell_dir = folder / "cells" / cell
        params = info.get("params", {})
        rows = None
        if (cell_dir / "meta.json").is_file() and (cell_dir / "summary.csv").is_file():
            cell_meta = read_meta(cell_dir)
            versions.setdefault(int(cell_meta["schema_version"]), []).append(cell)
            rows = _run_rows(cell_dir, cell_meta, cell)
            present |= set(rows.columns)
            dirs[cell] = cell_dir
        if rows is None:  # failed before anything was written: one row per algorithm says so
            rows = pd.DataFrame(
                [
                    {"cell": cell, "algorithm": a, "status": info.get("status", "failed"), "reason": info.get("reason")}
                    for a in info.get("algorithms", [])
                ]
            )
        for key in grid_keys:
            if key in rows.columns and key in params and not _same(rows[key], params[key]):
                rows[f"{key}_effective"] = rows[key]
            if key in params:
                rows[key] = params[key]
        if info.get("reason") and "reason" in rows.columns:
            blank = (rows["status"] != "ok") & ~rows["reason"].fillna("").astype(bool)
            rows.loc[blank, "reason"] = info["reason"]
        frames.append(rows)
    if len(versions) > 1:
        listing = "; ".join(f"version {v}: {', '.join(cells[:3])}" for v, cells in sorted(versions.items()))
        raise UserError(f"'{folder}' mixes results schema versions ({listing}): regenerate the older cells")
    if not frames:
        raise UserError(f"sweep folder '{folder}' lists no cells: its meta.json is damaged or the sweep never started")
    summary = _finish(pd.concat(frames, ignore_index=True), grid_keys)
    return Results(
        folder=folder,
        kind="sweep",
        meta=meta,
        schema_version=int(meta["schema_version"]),
        summary=summary,
        grid_keys=grid_keys,
        cell_dirs=dirs,
        present=present | set(grid_keys),
    )


def _same(column, value) -> bool:
    return bool((column.astype(str) == str(value)).all())


def _finish(frame, grid_keys: list[str]):
    """Add the standard columns that are missing and the derived measurements."""
    for col in ["cell", *SUMMARY_COLUMNS, *grid_keys, "engine", "deterministic", "reason"]:
        if col not in frame.columns:
            frame[col] = None
    import pandas as pd

    frame["reason"] = frame["reason"].fillna("").astype(str)
    frame["nodes"] = pd.to_numeric(frame["nodes"], errors="coerce").astype("Int64")
    frame = add_derived(frame)
    return frame


def add_derived(frame):
    """bytes per sample, samples/s relative to allreduce in the same cell, sync time over compute time, seconds per
    training sample."""
    import numpy as np
    import pandas as pd

    f = frame.copy()
    num = lambda c: pd.to_numeric(f[c], errors="coerce")  # noqa: E731
    samples = num("samples")
    f["bytes_per_sample"] = num("bytes_sent_total") / samples.where(samples > 0)
    f["speedup_vs_allreduce"] = speedup_vs_allreduce(f, by=("cell", "nodes"))
    frac = num("comm_fraction")
    # comm_fraction is blocked-communication time over training time; over compute time it is c / (1 - c).
    f["sync_share"] = (frac / (1 - frac)).where(frac < 1, np.nan)
    # the time to a fixed number of samples at the run's throughput (a suite table scales it to its own count)
    rate = num("samples_per_s")
    f["seconds_per_sample"] = 1 / rate.where(rate > 0)
    return f


# ---- aggregation over seeds ---------------------------------------------------------------------------------------


def t_critical(n: int, confidence: float = 0.95) -> float:
    """Two-sided Student t quantile for n samples (n - 1 degrees of freedom); nan when n < 2."""
    if n < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, n - 1))


def numeric_metrics(frame) -> list[str]:
    """Measurement columns: numeric, not identity, not text."""
    import pandas as pd

    skip = set(IDENTITY) | TEXT_COLUMNS | set(SETTINGS) | {"reason", "seed"}
    out = []
    for c in frame.columns:
        if c in skip or c.endswith("_effective"):
            continue
        if pd.to_numeric(frame[c], errors="coerce").notna().any():
            out.append(c)
    return out


def aggregate(frame, group: list[str], metrics: list[str] | None = None):
    """Mean, std, 95 % t-interval and n per group of ok rows: columns `<m>_mean/_std/_ci_lo/_ci_hi` and `n`."""
    import pandas as pd

    ok = frame[frame["status"] == "ok"]
    metrics = metrics if metrics is not None else numeric_metrics(ok)
    group = [g for g in group if g in ok.columns]
    rows = []
    if ok.empty:
        return pd.DataFrame(columns=[*group, "n"])
    for keys, g in ok.groupby(group, sort=False, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row: dict[str, Any] = dict(zip(group, keys, strict=True))
        row["n"] = len(g)
        for m in metrics:
            v = pd.to_numeric(g[m], errors="coerce").dropna()
            n = len(v)
            mean = float(v.mean()) if n else math.nan
            std = float(v.std(ddof=1)) if n > 1 else math.nan
            half = t_critical(n) * std / math.sqrt(n) if n > 1 else math.nan
            row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_ci_lo": mean - half, f"{m}_ci_hi": mean + half})
        rows.append(row)
    return pd.DataFrame(rows)


# ---- curves over training time ------------------------------------------------------------------------------------


def curves(results: Results, metric: str):
    """Per (cell, algorithm, nodes, epoch): the global `metric` and the cumulative training seconds then.

    Training seconds are the slowest rank's at that epoch (what a user waits for); an empty frame when the
    records hold no such metric.
    """
    import pandas as pd

    r = results.records()
    cols = ["cell", "algorithm", "nodes", "epoch", "seconds", "value"]
    if r.empty or metric not in set(r["metric"]):
        return pd.DataFrame(columns=cols)
    r = r[r["epoch"].notna()]
    val = r[(r["metric"] == metric) & r["rank"].isna()][["cell", "algorithm", "nodes", "epoch", "value"]]
    secs = r[(r["metric"] == "train_seconds") & r["rank"].notna()]
    secs = secs.groupby(["cell", "algorithm", "nodes", "epoch"], as_index=False)["value"].max()
    out = val.merge(secs.rename(columns={"value": "seconds"}), on=["cell", "algorithm", "nodes", "epoch"])
    out = out.astype({"value": float, "seconds": float}).sort_values(["cell", "algorithm", "nodes", "epoch"])
    return out[cols].reset_index(drop=True)


def with_keys(results: Results, frame):
    """Join the identity columns (grid keys, seed, ...) of each (cell, algorithm, nodes) onto `frame`."""
    keys = [k for k in results.keys if k != "nodes"]
    cols = ["cell", "algorithm", "nodes", *keys]
    info = results.ok_rows()[cols].drop_duplicates(["cell", "algorithm", "nodes"])
    frame = frame.astype({"nodes": "Int64"})
    info = info.astype({"nodes": "Int64"})
    return frame.merge(info, on=["cell", "algorithm", "nodes"], how="inner")


def time_to_target(results: Results, target: float):
    """Per (cell, algorithm, nodes): training seconds until the averaged model first reached `target` test accuracy
    (nan: never; with --repeat, the median over the rounds, nan unless every round reached it), as the results
    contract defines it (`bench.records.write.rounds_to_target`)."""
    import pandas as pd

    r = results.records()
    rows = []
    for (cell, algo, nodes), g in r.groupby(["cell", "algorithm", "nodes"], sort=False) if len(r) else ():
        seconds = rounds_to_target(g, algo, target).get("time_to_target_s")  # with rounds: their median
        rows.append(
            {
                "cell": cell,
                "algorithm": algo,
                "nodes": nodes,
                "time_to_target_s": float(seconds) if seconds is not None else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["cell", "algorithm", "nodes", "time_to_target_s"])


def add_time_to_target(results: Results, target: float) -> None:
    """Add `time_to_target_s` to results.summary (nan where the target was never reached)."""
    ttt = time_to_target(results, target)
    s = results.summary.drop(columns=["time_to_target_s"], errors="ignore")
    if len(ttt):
        s = s.merge(ttt.astype({"nodes": "Int64"}), on=["cell", "algorithm", "nodes"], how="left")
    else:
        s["time_to_target_s"] = math.nan
    results.summary = s
