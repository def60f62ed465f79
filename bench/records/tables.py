"""The three tables (throughput, accuracy, communication) as CSV and Markdown, and their terminal rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.base.console import print_table
from bench.base.files import atomic_write_frame, atomic_write_text
from bench.base.formatting import fmt_spec, is_missing

FORMATS = {"md": ".md", "csv": ".csv", "latex": ".tex", "parquet": ".parquet"}  # report table files: suffix
REFERENCE_ALGORITHM = "allreduce"  # same-run reference for noisy throughput (ratios, never absolute numbers)

# table name -> [(summary column, header, format)]
TABLES: dict[str, list[tuple[str, str, str]]] = {
    "throughput": [
        ("algorithm", "algorithm", "s"),
        ("nodes", "nodes", "d"),
        ("nodes_alive", "alive", "d"),  # shown only when nodes of the run may fail (--fail, --fail-p)
        ("status", "status", "s"),
        ("samples", "samples", "d"),
        ("train_seconds", "train s", ".2f"),
        ("samples_per_s", "samples/s", ",.0f"),
        ("rounds", "rounds", "d"),  # the round columns: shown only when a run had --repeat > 1 (ROUND_COLUMNS)
        ("samples_per_s_lo", "95 % lo", ",.0f"),
        ("samples_per_s_hi", "95 % hi", ",.0f"),
        ("samples_per_s_drift", "drift max/min", ".2f"),
        ("speedup_vs_allreduce", "vs allreduce", ".2f"),  # with rounds: the median of the per-round ratios
        ("step_ms_median", "step ms (median)", ".2f"),
        ("step_ms_p10", "p10", ".2f"),
        ("step_ms_p90", "p90", ".2f"),
    ],
    "accuracy": [
        ("algorithm", "algorithm", "s"),
        ("nodes", "nodes", "d"),
        ("nodes_alive", "alive", "d"),
        ("status", "status", "s"),
        ("target", "target", "s"),  # the target columns: shown only when a run had --target-acc/--target-ppl
        ("time_to_target_s", "s to target", ".3f"),
        ("epochs_to_target", "epochs to target", "d"),
        ("epochs", "epochs", "d"),
        ("lr", "lr (peak)", ".4g"),
        ("test_acc", "test acc (avg model)", ".4f"),
        ("val_acc", "val acc", ".4f"),
        ("best_test_acc", "best test acc", ".4f"),
        ("best_epoch", "at epoch", "d"),
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
        ("staleness_mean", "staleness (age of copy read, steps)", ".2f"),
        ("decode_failures", "decode failures", "d"),
        ("comm_fraction", "comm fraction", ".3f"),
        ("serve_seconds", "serve s/node", ".3f"),
    ],
}


# A language model's summary has perplexities (exp of the mean token cross-entropy; lower is better) where a
# classifier's has accuracies, which it leaves empty: next-token accuracy says little about a language model, and the LM
# literature (MLBench, the SwarmSGD paper) reports perplexity. Its accuracy table shows them in the accuracy columns'
# places, and its throughput table adds tokens/s.
_PERPLEXITY = {
    "test_acc": ("test_ppl", "test ppl (avg model)"),
    "val_acc": ("val_ppl", "val ppl"),
    "best_test_acc": ("best_test_ppl", "best test ppl"),
    "node_acc_mean": ("node_ppl_mean", "node ppl mean"),
    "node_acc_min": ("node_ppl_min", "min"),
    "node_acc_max": ("node_ppl_max", "max"),
}
LM_TABLES: dict[str, list[tuple[str, str, str]]] = {
    "throughput": [
        col
        for c, h, f in TABLES["throughput"]
        for col in ([(c, h, f), ("tokens_per_s", "tokens/s", ",.0f")] if c == "samples_per_s" else [(c, h, f)])
    ],
    "accuracy": [(*_PERPLEXITY[c], ".2f") if c in _PERPLEXITY else (c, h, f) for c, h, f in TABLES["accuracy"]],
}


def is_language_model(summary) -> bool:
    """Whether the summary's rows are a language model's (they have perplexities; a classifier's have accuracies)."""
    return any(c in summary.columns and summary[c].notna().any() for c in ("test_ppl", "val_ppl", "tokens"))


def table_columns(summary) -> dict[str, list[tuple[str, str, str]]]:
    """The tables' columns for this summary: perplexity and tokens/s for a language model."""
    return {**TABLES, **LM_TABLES} if is_language_model(summary) else TABLES


def speedup_vs_allreduce(summary, by: tuple[str, ...] = ("nodes",)):
    """Each row's samples/s over allreduce's in the same run (the rows that agree on `by`): the same-run reference
    for noisy throughput. NaN where that run has no allreduce row with a positive throughput."""
    import pandas as pd

    keys = list(by)
    sps = pd.to_numeric(summary["samples_per_s"], errors="coerce")
    ref = summary.loc[summary["algorithm"] == REFERENCE_ALGORITHM, keys].assign(_ref=sps).drop_duplicates(keys)
    ref_sps = summary[keys].merge(ref, on=keys, how="left")["_ref"]
    return pd.Series(sps.to_numpy() / ref_sps.where(ref_sps > 0).to_numpy(), index=summary.index)


ROUND_COLUMNS = ("rounds", "samples_per_s_lo", "samples_per_s_hi", "samples_per_s_drift")
TARGET_COLUMNS = ("target", "time_to_target_s", "epochs_to_target")


def repeated(summary) -> bool:
    """Whether some row of the summary is the median of several rounds (--repeat)."""
    import pandas as pd

    return "rounds" in summary.columns and bool((pd.to_numeric(summary["rounds"], errors="coerce") > 1).any())


def table_frames(summary) -> dict[str, Any]:
    """The three tables as DataFrames with raw (unformatted) numbers; with rounds, samples/s and the other
    measurements are medians over the rounds, and the throughput table adds the interval and the drift."""
    s = summary.copy()
    s["speedup_vs_allreduce"] = speedup_vs_allreduce(s)
    for q in ("median", "p10", "p90"):
        s[f"step_ms_{q}"] = s[f"step_seconds_{q}"] * 1000.0
    skip = () if repeated(s) else ROUND_COLUMNS
    if "target" not in s.columns or s["target"].isna().all():  # no time to target asked for
        skip = (*skip, *TARGET_COLUMNS)
    if "nodes_alive" not in s.columns:  # no failure injection
        skip = (*skip, "nodes_alive")
    if repeated(s):  # the median of the per-round ratios: paired by round, a slow phase of the machine cancels
        s["speedup_vs_allreduce"] = s["samples_per_s_ratio_median"].where(s["rounds"] > 1, s["speedup_vs_allreduce"])
    return {name: s[[c for c, _, _ in cols if c not in skip]] for name, cols in table_columns(summary).items()}


def drift_line(summary) -> str | None:
    """One line: how far each algorithm's samples/s moved across the rounds of a --repeat run (max / min)."""
    if not repeated(summary):
        return None
    rows = summary.to_dict("records")
    drifts = [(r["algorithm"], r["samples_per_s_drift"]) for r in rows]
    parts = [f"{name} {d:.2f}" for name, d in drifts if not is_missing(d)]
    k = int(summary["rounds"].max())
    return f"drift of samples/s over {k} rounds (max / min, 1.00 = none): " + ", ".join(parts)


def formatted(name: str, frame) -> tuple[list[str], list[list[str]]]:
    lm = LM_TABLES.get(name)
    present = list(frame.columns)
    lm_frame = lm is not None and present == [c for c, _, _ in lm if c in present]
    cols = [col for col in (lm if lm_frame else TABLES[name]) if col[0] in present]
    headers = [h for _, h, _ in cols]
    rows = [[fmt_spec(row[c], f) for c, _, f in cols] for row in frame.to_dict("records")]
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


def print_tables(summary, console=None, no_accuracy: str | None = None) -> None:
    """Render the three tables with rich (plain text when the output is not a terminal); with `no_accuracy` (why
    a run measured none) that line in place of the accuracy table."""
    for name, frame in table_frames(summary).items():
        if name == "accuracy" and no_accuracy:
            if console is None:
                print(no_accuracy)
            else:
                console.print(no_accuracy, markup=False, highlight=False, soft_wrap=True)
            continue
        print_table(*formatted(name, frame), title=name, title_justify="left", console=console)
    line = drift_line(summary)
    if line:
        if console is None:
            print(line)
        else:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


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


def _scaling_formatted(frame, goal: str) -> tuple[list[str], list[list[str]]]:
    cols = SCALING
    if is_language_model(frame):  # perplexity in accuracy's place, as in the accuracy table
        cols = [("test_ppl", "final test ppl", ".2f") if c == "test_acc" else (c, h, f) for c, h, f in SCALING]
    headers = [h.replace("target", goal) for _, h, _ in cols]
    rows = [[fmt_spec(row[c], f) for c, _, f in cols] for row in frame.to_dict("records")]
    return headers, rows


def write_scaling(out_dir: Path, frame, goal: str) -> None:
    """scaling.csv (raw numbers) and scaling.md (the formatted table) of a simulated series; `goal` names the
    time-to-target columns' target (e.g. 'acc 0.9', 'ppl 300')."""
    atomic_write_frame(out_dir / "scaling.csv", frame)
    atomic_write_text(out_dir / "scaling.md", markdown(*_scaling_formatted(frame, goal)))


def print_scaling(frame, goal: str, console=None) -> None:
    headers, rows = _scaling_formatted(frame, goal)
    print_table(headers, rows, title="scaling (simulated seconds)", title_justify="left", console=console)
