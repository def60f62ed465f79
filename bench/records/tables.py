"""The three tables (throughput, accuracy, communication) as CSV and Markdown, and their terminal rendering."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.base.files import atomic_write_frame, atomic_write_text

# table name -> [(summary column, header, format)]
TABLES: dict[str, list[tuple[str, str, str]]] = {
    "throughput": [
        ("algorithm", "algorithm", "s"),
        ("nodes", "nodes", "d"),
        ("status", "status", "s"),
        ("samples", "samples", "d"),
        ("train_seconds", "train s", ".2f"),
        ("samples_per_s", "samples/s", ",.0f"),
        ("speedup_vs_allreduce", "vs allreduce", ".2f"),
        ("step_ms_median", "step ms (median)", ".2f"),
        ("step_ms_p10", "p10", ".2f"),
        ("step_ms_p90", "p90", ".2f"),
    ],
    "accuracy": [
        ("algorithm", "algorithm", "s"),
        ("nodes", "nodes", "d"),
        ("status", "status", "s"),
        ("epochs", "epochs", "d"),
        ("test_acc", "test acc (avg model)", ".4f"),
        ("node_acc_mean", "node acc mean", ".4f"),
        ("node_acc_min", "min", ".4f"),
        ("node_acc_max", "max", ".4f"),
        ("final_loss", "train loss", ".4f"),
        ("consensus_distance", "consensus dist", ".3g"),
    ],
    "comm": [
        ("algorithm", "algorithm", "s"),
        ("nodes", "nodes", "d"),
        ("topology", "topology", "s"),
        ("bits", "bits", "d"),
        ("quantizer", "quantizer", "s"),
        ("local_steps", "H", "d"),
        ("bytes_sent_total", "MB sent (all nodes)", ".3f:MB"),
        ("bytes_per_node_per_step", "KB/node/step", ".2f:KB"),
        ("bytes_grad", "MB grad", ".3f:MB"),
        ("bytes_model", "MB model", ".3f:MB"),
        ("bytes_control", "KB control", ".2f:KB"),
        ("interactions_per_node", "interactions/node", ".1f"),
        ("staleness_mean", "staleness (steps)", ".2f"),
        ("decode_failures", "decode failures", "d"),
        ("comm_fraction", "comm fraction", ".3f"),
    ],
}


def table_frames(summary) -> dict[str, Any]:
    """The three tables as DataFrames with raw (unformatted) numbers."""
    s = summary.copy()
    base = s.loc[s["algorithm"] == "allreduce", "samples_per_s"]
    ref = base.iloc[0] if len(base) and base.notna().all() else None
    s["speedup_vs_allreduce"] = s["samples_per_s"] / ref if ref else None
    for q in ("median", "p10", "p90"):
        s[f"step_ms_{q}"] = s[f"step_seconds_{q}"] * 1000.0
    return {name: s[[c for c, _, _ in cols]] for name, cols in TABLES.items()}


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    fmt, _, unit = spec.partition(":")
    if unit:
        value = value / {"KB": 1e3, "MB": 1e6}[unit]
    if fmt == "d":
        return str(int(value))
    if fmt == "s":
        return str(value)
    return format(value, fmt)


def formatted(name: str, frame) -> tuple[list[str], list[list[str]]]:
    cols = TABLES[name]
    headers = [h for _, h, _ in cols]
    rows = [[_fmt(row[c], f) for c, _, f in cols] for row in frame.to_dict("records")]
    return headers, rows


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    align = ["---" if i == 0 else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_tables(out_dir: Path, summary) -> None:
    for name, frame in table_frames(summary).items():
        atomic_write_frame(out_dir / f"{name}.csv", frame)
        atomic_write_text(out_dir / f"{name}.md", markdown(*formatted(name, frame)))


def print_tables(summary, console=None) -> None:
    """Render the three tables with rich (plain text when the output is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    for name, frame in table_frames(summary).items():
        headers, rows = formatted(name, frame)
        table = Table(title=name, title_justify="left")
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            table.add_row(*r)
        console.print(table)


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(c, r"\textbackslash{}" if c == "\\" else c) for c in str(text))
    return out.replace("±", r"$\pm$").replace("÷", r"$\div$")


def latex(headers: list[str], rows: list[list[str]], caption: str = "", label: str = "") -> str:
    """A booktabs table (\\toprule, \\midrule, \\bottomrule): first column left-aligned, the rest right."""
    spec = "l" + "r" * (len(headers) - 1)
    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in headers) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


SCALING: list[tuple[str, str, str]] = [
    ("algorithm", "algorithm", "s"),
    ("nodes", "nodes", "d"),
    ("status", "status", "s"),
    ("samples_per_s", "samples/s", ",.0f"),
    ("speedup_vs_one_node", "speedup vs 1 node", ".1f"),
    ("scaling_efficiency", "efficiency", ".3f"),
    ("speedup_vs_smallest", "vs smallest", ".2f"),
    ("comm_fraction", "comm fraction", ".3f"),
    ("time_to_target_s", "time to target s", ".3f"),
    ("epochs_to_target", "epochs to target", "d"),
    ("test_acc", "final test acc", ".4f"),
    ("train_seconds", "train s", ".3f"),
    ("bytes_per_node_per_step", "KB/node/step", ".2f:KB"),
]


def _scaling_formatted(frame, target: float) -> tuple[list[str], list[list[str]]]:
    headers = [h.replace("target", f"acc {target:g}") for _, h, _ in SCALING]
    rows = [[_fmt(row[c], f) for c, _, f in SCALING] for row in frame.to_dict("records")]
    return headers, rows


def write_scaling(out_dir: Path, frame, target: float) -> None:
    """scaling.csv (raw numbers) and scaling.md (the formatted table) of a simulated series."""
    atomic_write_frame(out_dir / "scaling.csv", frame)
    atomic_write_text(out_dir / "scaling.md", markdown(*_scaling_formatted(frame, target)))


def print_scaling(frame, target: float, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    headers, rows = _scaling_formatted(frame, target)
    table = Table(title="scaling (simulated seconds)", title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
