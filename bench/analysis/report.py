"""`swarmbench report DIR`: tables (Markdown, CSV, LaTeX/booktabs, Parquet) and plots for any results folder.

Seeds are aggregated per setting: Markdown and LaTeX cells read `mean ± h`, where h is the half-width of the 95 %
confidence interval from Student's t-distribution with n - 1 degrees of freedom (n seeds); CSV and Parquet
carry the raw mean, standard deviation, interval bounds and n. Everything is computed first and then written
file by file atomically, so a bad request (an absent metric for an explicitly requested plot, ...) leaves
nothing half-written.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.analysis.load import add_time_to_target, aggregate, load_results
from bench.analysis.plots import PLOTS, Absent, render
from bench.base.console import closest
from bench.base.errors import UserError
from bench.base.files import atomic_write_bytes, atomic_write_text
from bench.base.formatting import fmt_key, fmt_value
from bench.records.tables import FORMATS, is_language_model, latex, markdown

KEY_HEADERS = {"local_steps": "H", "fail_nodes": "failed"}
CI_NOTE = (
    "Cells with several seeds read mean ± h, h = half-width of the 95 % confidence interval "
    "(Student's t-distribution, n - 1 degrees of freedom, n seeds)."
)

# table -> (title, [(metric column, header, format, scale)])
TABLE_METRICS: dict[str, tuple[str, list[tuple[str, str, str, float]]]] = {
    "throughput": (
        "Throughput (training only)",
        [
            ("samples_per_s", "samples/s", ",.0f", 1.0),
            ("tokens_per_s", "tokens/s", ",.0f", 1.0),
            ("speedup_vs_allreduce", "vs allreduce (same run)", ".2f", 1.0),
            ("train_seconds", "train s", ".2f", 1.0),
            ("step_seconds_median", "step ms (median)", ".2f", 1e3),
        ],
    ),
    "accuracy": (
        "Accuracy",
        [
            ("test_acc", "test acc (avg model)", ".4f", 1.0),
            ("node_acc_mean", "node acc mean", ".4f", 1.0),
            ("test_ppl", "test ppl (avg model)", ".2f", 1.0),
            ("node_ppl_mean", "node ppl mean", ".2f", 1.0),
            ("final_loss", "train loss", ".4f", 1.0),
            ("consensus_distance", "consensus dist", ".3g", 1.0),
            ("time_to_target_s", "s to target acc", ".2f", 1.0),
        ],
    ),
    "comm": (
        "Communication",
        [
            ("bytes_sent_total", "MB sent (all nodes)", ".3f", 1e-6),
            ("bytes_per_sample", "B/sample", ",.0f", 1.0),
            ("bytes_per_node_per_step", "KB/node/step", ".2f", 1e-3),
            ("comm_fraction", "comm fraction", ".3f", 1.0),
            ("sync_share", "sync / compute", ".3f", 1.0),
        ],
    ),
}


LM_ONLY = {"test_ppl", "node_ppl_mean", "tokens_per_s"}
CLASSIFIER_ONLY = {"test_acc", "node_acc_mean"}


@dataclass
class Table:
    name: str
    title: str
    headers: list[str]
    rows: list[list[str]]  # formatted for Markdown / LaTeX
    raw: Any  # DataFrame with unformatted numbers for CSV / Parquet
    note: str = ""


def fmt_ci(row: dict[str, Any], metric: str, spec: str, scale: float = 1.0) -> str:
    """'mean' or 'mean ± h' (h: half-width of the 95 % t-interval) from an aggregated row."""
    mean = row.get(f"{metric}_mean")
    text = fmt_value(mean, spec, scale)
    lo, hi = row.get(f"{metric}_ci_lo"), row.get(f"{metric}_ci_hi")
    if text != "-" and lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        text += " ± " + fmt_value((hi - lo) / 2, spec, scale)
    return text


def shown_keys(results) -> list[str]:
    """Identity columns worth a table column: nodes always, the others when they vary."""
    rest = [k for k in results.group_keys[1:] if k != "nodes"]
    return ["nodes", *results.varying(rest)]


def build_tables(results, target_acc: float | None = None, goal: str | None = None) -> list[Table]:
    """The throughput / accuracy / comm tables with seeds aggregated, a nodes pivot, and failed cells. `goal` names a
    language model's target ('ppl 150'; `target_acc` is then that perplexity)."""
    if target_acc is not None:  # the report's target, over any the runs had
        add_time_to_target(results, target_acc)
    keys = shown_keys(results)
    agg = aggregate(results.summary, results.group_keys)
    many_seeds = len(agg) and int(agg["n"].max()) > 1
    tables = []
    # A language model's cells have perplexities and tokens/s, a classifier's accuracies (bench.records.tables).
    lm = is_language_model(results.summary)
    other_task = CLASSIFIER_ONLY if lm else LM_ONLY
    for name, (title, metrics) in TABLE_METRICS.items():
        title = "Perplexity (lower is better)" if lm and name == "accuracy" else title
        metrics = [m for m in metrics if f"{m[0]}_mean" in agg.columns and m[0] not in other_task]
        if target_acc is None:
            metrics = [m for m in metrics if m[0] != "time_to_target_s"]
        headers = ["algorithm", *(KEY_HEADERS.get(k, k) for k in keys), *(["seeds"] if many_seeds else [])]
        reach = f"s to {goal or f'acc {target_acc:g}'}" if target_acc is not None else ""
        headers += [h if m != "time_to_target_s" else reach for m, h, _, _ in metrics]
        rows = []
        for row in agg.to_dict("records"):
            cells = [str(row["algorithm"]), *(fmt_key(row.get(k)) for k in keys)]
            cells += [str(row["n"])] if many_seeds else []
            cells += [fmt_ci(row, m, f, s) for m, _, f, s in metrics]
            rows.append(cells)
        raw_cols = [*results.group_keys, "n"]
        raw_cols += [f"{m}_{x}" for m, _, _, _ in metrics for x in ("mean", "std", "ci_lo", "ci_hi")]
        raw = agg[[c for c in raw_cols if c in agg.columns]] if len(agg) else agg
        tables.append(Table(name, title, headers, rows, raw, CI_NOTE if many_seeds else ""))
    ok = results.ok_rows()
    if ok["nodes"].nunique() > 1:
        rows_by = ["algorithm", *[k for k in keys if k != "nodes"]]
        tables.append(
            pivot_table(
                agg,
                rows_by,
                "nodes",
                "samples_per_s",
                ",.0f",
                name="scaling",
                title="Throughput (samples/s) by node count",
                note=CI_NOTE if many_seeds else "",
            )
        )
    failed = results.summary[results.summary["status"] != "ok"]
    if len(failed):
        cols = ["cell", "algorithm", "status", "reason"]
        raw = failed[cols].reset_index(drop=True)
        rows = [[fmt_key(v).replace("|", "\\|") for v in r] for r in raw.itertuples(index=False)]
        tables.append(Table("failed", "Cells that did not finish", cols, rows, raw))
    return tables


def pivot_table(
    agg,
    rows_by: list[str],
    column: str,
    metric: str,
    spec: str,
    *,
    name: str,
    title: str,
    scale: float = 1.0,
    note: str = "",
    row_order: list[str] | None = None,
    descending: bool = False,
) -> Table:
    """Rows = methods (and any other keys), columns = the values of `column`, cells = metric mean ± h."""
    import pandas as pd

    if agg.empty or f"{metric}_mean" not in agg.columns:
        return Table(name, title, [*rows_by], [], pd.DataFrame(columns=rows_by), note)
    columns = sorted(agg[column].dropna().unique(), key=_sort_key, reverse=descending)
    groups = list(agg.groupby(rows_by, sort=False, dropna=False))
    if row_order:
        rank = {a: i for i, a in enumerate(row_order)}
        groups.sort(key=lambda kv: rank.get(kv[0][0] if isinstance(kv[0], tuple) else kv[0], len(rank)))
    headers = [*rows_by, *(f"{column}={fmt_key(c)}" if column != "nodes" else fmt_key(c) for c in columns)]
    if column == "nodes":
        headers = [*rows_by, *(f"{fmt_key(c)} nodes" for c in columns)]
    body, raw = [], []
    for keys, g in groups:
        keys = keys if isinstance(keys, tuple) else (keys,)
        by_col = {fmt_key(r[column]): r for r in g.to_dict("records")}
        body.append(
            [*(fmt_key(k) for k in keys), *(fmt_ci(by_col.get(fmt_key(c), {}), metric, spec, scale) for c in columns)]
        )
        for c in columns:
            r = by_col.get(fmt_key(c), {})
            raw.append(
                {
                    **dict(zip(rows_by, keys, strict=True)),
                    column: c,
                    "n": r.get("n"),
                    **{f"{metric}_{x}": r.get(f"{metric}_{x}") for x in ("mean", "std", "ci_lo", "ci_hi")},
                }
            )
    return Table(name, title, headers, body, pd.DataFrame(raw), note)


def _sort_key(value: Any) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def paper_tables(results) -> list[Table]:
    """The suite's tables from a suite's results folder: rows = methods, columns = the table's key (nodes,
    bits, H, ...), cells = the metric with seeds aggregated. Each table reads the cells of its part, as run
    (the grids stored in meta.json, so --nodes/--seed overrides are honoured)."""
    suite_json = results.meta.get("suite_spec") or {}
    grids = {g.get("name"): g for g in (results.meta.get("spec") or {}).get("grids", [])}
    out = []
    for t in suite_json.get("tables", []):
        grid = grids.get(t["part"])
        if grid is None:
            continue
        rows = results.summary
        axes, fixed = dict(grid.get("axes", [])), dict(grid.get("fixed", []))
        for key, values in axes.items():
            if key != "algorithm" and key in rows.columns:
                rows = rows[rows[key].astype(str).isin([str(v) for v in values])]
        for key, value in fixed.items():
            if key in rows.columns:
                rows = rows[rows[key].astype(str) == str(value)]
        wanted = [str(a) for a in (t.get("algorithms") or axes.get("algorithm", []))]
        if wanted:
            rows = rows[rows["algorithm"].isin(wanted)]
        agg = aggregate(rows, ["algorithm", t["columns"]], [t["metric"]])
        many = len(agg) and int(agg["n"].max()) > 1
        tuned = (suite_json.get("tune") or {}).get("text", "")
        tuned = tuned[:1].upper() + tuned[1:] + "." if tuned else ""
        note = " ".join(x for x in (t.get("note", ""), tuned, CI_NOTE if many else "") if x)
        # The settings the part ran at, as run (after --nodes/--seed/--set): part of the title.
        held = {k: v for k, v in fixed.items() if k in ("nodes", "bits", "local_steps", "topology")}
        held |= {k: v[0] for k, v in axes.items() if len(v) == 1 and k not in ("algorithm", "seed", t["columns"])}
        shown = ", ".join(f"{KEY_HEADERS.get(k, k)}={v}" for k, v in held.items())
        table = pivot_table(
            agg,
            ["algorithm"],
            t["columns"],
            t["metric"],
            t.get("format", ".4g"),
            name=f"paper_{t['name']}",
            title=t.get("title", t["name"]) + (f" ({shown})" if shown else ""),
            scale=float(t.get("scale", 1.0)),
            note=note,
            row_order=wanted,
            descending=bool(t.get("descending", False)),
        )
        if t["columns"] != "nodes":
            label = KEY_HEADERS.get(t["columns"], t["columns"])
            table.headers = [table.headers[0], *(h.replace(f"{t['columns']}=", f"{label}=") for h in table.headers[1:])]
        out.append(table)
    return out


def render_table(table: Table, fmt: str) -> bytes:
    if fmt == "md":
        text = f"{table.title}\n\n" + markdown(table.headers, table.rows)
        return (text + (f"\n{table.note}\n" if table.note else "")).encode()
    if fmt == "csv":
        return table.raw.to_csv(index=False).encode()
    if fmt == "latex":
        caption = table.title + (f". {table.note}" if table.note else "")
        return latex(table.headers, table.rows, caption=caption, label=f"tab:{table.name}").encode()
    if fmt == "parquet":
        buf = io.BytesIO()
        raw = table.raw.copy()
        for c in raw.columns:  # mixed object columns (a grid key with text and numbers) as text
            if raw[c].dtype == object:
                raw[c] = raw[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
        raw.to_parquet(buf, index=False)
        return buf.getvalue()
    raise ValueError(fmt)


def write_tables(tables: list[Table], out_dir: Path, formats: tuple[str, ...]) -> list[Path]:
    """Render every table in every format first (an error writes nothing), then write each file atomically."""
    rendered = {out_dir / f"{t.name}{FORMATS[f]}": render_table(t, f) for t in tables for f in formats}
    for path, data in rendered.items():
        atomic_write_bytes(path, data)
    return list(rendered)


# ---- the report ---------------------------------------------------------------------------------------------------


def facts(results) -> list[str]:
    meta = results.meta
    git = meta.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
    ok = results.ok_rows()
    lines = [
        f"- folder: `{results.folder}` ({results.kind}"
        + (f", {len(results.meta.get('cells', {}))} cells" if results.kind == "sweep" else "")
        + ")",
        f"- engine: {', '.join(sorted(results.engines)) or 'unknown'}; swarmbench {meta.get('swarmbench_version', '?')}"
        f", commit {commit}",
        f"- algorithms: {', '.join(dict.fromkeys(results.summary['algorithm'].astype(str)))}; "
        f"node counts: {', '.join(str(n) for n in sorted(ok['nodes'].dropna().unique()))}",
    ]
    if results.grid_keys:
        lines.append(f"- grid keys: {', '.join(results.grid_keys)}")
    if meta.get("suite"):
        lines.append(f"- suite: {meta['suite']}")
    tuned = ((meta.get("suite_spec") or {}).get("tune") or {}).get("text")
    if tuned:
        lines.append(f"- tuning: {tuned}")
    host = meta.get("host") or {}
    if host:
        lines.append(
            f"- host: {host.get('hostname', '?')}, {host.get('cpu_count', '?')} CPUs, {host.get('platform', '')}"
        )
    lines.append(
        f"- started {meta.get('started_at', '?')}, ended {meta.get('ended_at', '?')}, status {meta.get('status')}"
    )
    return lines


def report_markdown(
    results, tables: list[Table], plots: dict[str, Any], skipped: dict[str, str], formats: tuple[str, ...]
) -> str:
    out = [f"# swarmbench report: {results.folder.name}", "", *facts(results), ""]
    out += ["## Tables", ""]
    for t in tables:
        links = " · ".join(f"[{f}](tables/{t.name}{FORMATS[f]})" for f in formats)
        out += [f"### {t.title}", "", markdown(t.headers, t.rows)]
        if t.note:
            out += [f"_{t.note}_", ""]
        if links:
            out += [f"Files: {links}", ""]
    out += ["## Plots", ""]
    for name in plots:
        out += [f"### {PLOTS[name].title}", "", f"![{PLOTS[name].title}](plots/{name}.png)", ""]
        out += [f"[SVG](plots/{name}.svg)", ""]
    for name, why in skipped.items():
        out += [f"- skipped **{name}**: {why}"]
    return "\n".join(out).rstrip() + "\n"


def build_report(
    folder: str | Path,
    out: str | Path | None = None,
    formats: tuple[str, ...] = tuple(FORMATS),
    plots: tuple[str, ...] = (),
    target_acc: float | None = None,
    target_ppl: float | None = None,
) -> tuple[Path, list[str]]:
    """Write report.md, tables/ and plots/ for a results folder; returns (report folder, notes). Time to target: a
    test accuracy `target_acc` for classifiers, a perplexity `target_ppl` (reached by falling to it) for language
    models."""
    for name in plots:
        if name not in PLOTS:
            raise UserError(f"unknown plot '{name}'{closest(name, PLOTS)}: choose from {', '.join(PLOTS)}")
    if target_acc is not None and not 0 < target_acc <= 1:
        raise UserError(f"--target-acc must be a test accuracy in (0, 1], got {target_acc}")
    if target_ppl is not None and not target_ppl >= 1:
        raise UserError(f"--target-ppl must be a perplexity (at least 1), got {target_ppl}")
    results = load_results(folder)
    lm = is_language_model(results.summary)
    if lm and target_acc is not None:
        raise UserError(f"'{folder}' holds language models, scored by perplexity: use --target-ppl P, not --target-acc")
    if not lm and target_ppl is not None:
        raise UserError(f"'{folder}' holds classifiers, scored by accuracy: use --target-acc A, not --target-ppl")
    suite = results.meta.get("suite_spec")
    if target_acc is None and suite and suite.get("target_acc") is not None:
        target_acc = float(suite["target_acc"])
    goal = None
    if lm:  # time_to_target reads a perplexity target for a language model's records (bench.records.write)
        target_acc, goal = target_ppl, (f"ppl {target_ppl:g}" if target_ppl is not None else None)
    if "time_to_target" in plots and target_acc is None:
        need = "--target-ppl P (a perplexity such as 150)" if lm else "--target-acc A (a test accuracy such as 0.9)"
        raise UserError(f"--plot time_to_target needs {need}")
    tables = build_tables(results, target_acc, goal)
    if suite:  # a `swarmbench reproduce` folder: the paper-style tables first
        tables = paper_tables(results) + tables
    wanted = plots or tuple(PLOTS)
    figures, skipped = {}, {}
    for name in wanted:
        try:
            figures[name] = PLOTS[name].make(
                results, target_acc=target_acc, goal=goal and f"test perplexity {target_acc:g}"
            )
        except Absent as exc:
            if plots:
                raise UserError(f"--plot {name}: {exc} in '{folder}': choose another plot or folder") from None
            skipped[name] = str(exc)
    files = {f"plots/{name}.{ext}": render(fig, ext) for name, fig in figures.items() for ext in ("png", "svg")}
    files |= {f"tables/{t.name}{FORMATS[f]}": render_table(t, f) for t in tables for f in formats}
    report_dir = Path(out) if out is not None else Path(folder) / "report"
    text = report_markdown(results, tables, figures, skipped, formats)
    for rel, data in files.items():
        atomic_write_bytes(report_dir / rel, data)
    for stale in [*(report_dir / "plots").glob("*.*"), *(report_dir / "tables").glob("*.*")]:
        if f"{stale.parent.name}/{stale.name}" not in files:
            stale.unlink()  # from an earlier report of this folder: would contradict report.md
    atomic_write_text(report_dir / "report.md", text)
    notes = [f"skipped plot {name}: {why}" for name, why in skipped.items()]
    return report_dir, notes
