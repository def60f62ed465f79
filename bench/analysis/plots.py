"""The report's figures (matplotlib, Agg canvas; PNG and SVG), each readable on its own: title, the settings it
shows, axis labels with units, legend.

Every plot takes a loaded results folder (`bench.analysis.load.Results`) and returns a matplotlib Figure, or raises
`Absent` naming the missing data (the report then skips it with a note, or fails when it was asked for).
Settings that vary but are not the plot's subject are pinned to one value (the most common; the largest node
count) and the subtitle says which; seeds are averaged.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.analysis.load import add_time_to_target, aggregate, curves, with_keys
from bench.base.formatting import fmt_bytes

LABELS = {"nodes": "n", "bits": "bits", "local_steps": "H", "topology": "topology", "seed": "seed"}


class Absent(Exception):
    """The data a plot needs is not in the folder; the message says what is missing."""


@dataclass(frozen=True)
class Plot:
    title: str
    make: Callable[..., Any]


def _figure(title: str, subtitle: str):
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to files
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def render(fig, ext: str) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=ext, dpi=150 if ext == "png" else None)
    return buf.getvalue()


def _colors(algorithms: list[str]) -> dict[str, Any]:
    """One colour and marker per algorithm, stable across plots (registry order)."""
    import matplotlib

    from bench.training.registry import ALGORITHMS  # imports torch: only when a plot is drawn

    order = list(ALGORITHMS) + [a for a in algorithms if a not in ALGORITHMS]
    cmap = matplotlib.colormaps["tab10"]
    markers = "osD^vP*Xh"
    return {a: (cmap(i % 10), markers[i % len(markers)]) for i, a in enumerate(order)}


def _epoch_lines(ax, data) -> None:
    """One line per algorithm: the value against training seconds, each epoch averaged over seeds."""
    colors = _colors(list(data["algorithm"].unique()))
    for algo, g in _by_algorithm(data):
        m = g.groupby("epoch", as_index=False)[["seconds", "value"]].mean()
        color, marker = colors[algo]
        ax.plot(m["seconds"], m["value"], marker=marker, color=color, label=algo)


def _by_algorithm(frame):
    """(algorithm, rows) in registry order, so every plot lists the algorithms alike."""
    order = list(_colors(list(frame["algorithm"].unique())))
    groups = dict(list(frame.groupby("algorithm", sort=False)))
    return [(a, groups[a]) for a in order if a in groups]


def _readable_log(axis, lo: float, hi: float) -> None:
    """Log-axis ticks as 200k, 1M instead of 2x10^5. Minor ticks: all labelled over a decade or less, only the
    2s and 5s over up to three decades, none beyond (they would crowd)."""
    import math

    from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter

    eng = EngFormatter(sep="")
    decades = math.log10(hi / lo) if lo > 0 and hi > 0 else 99
    axis.set_major_formatter(eng)
    if decades <= 1:
        axis.set_minor_formatter(eng)
    elif decades <= 3:

        def two_five(value: float, pos: int | None = None) -> str:
            mantissa = round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0
            return eng(value, pos) if mantissa in (2.0, 5.0) else ""

        axis.set_minor_formatter(FuncFormatter(two_five))
    else:
        axis.set_minor_formatter(NullFormatter())


def _pin(results, frame, free: list[str]):
    """Keep one value of every identity key that varies within an algorithm and is not in `free`.

    Per algorithm the most common value (counted over cells); ties go to the value most common over all
    algorithms, then to the larger one (nodes) or the first in grid order. Keys that differ only between
    algorithms (H is 1 for allreduce, 4 for swarm) are left alone. Returns the frame and a subtitle naming what
    was pinned."""
    from collections import Counter

    keys = [k for k in results.keys if k not in free and k != "seed" and k in frame.columns]
    pinned = []
    for k in keys:
        label = LABELS.get(k, k)
        if frame.empty:
            break
        if frame.groupby("algorithm")[k].nunique().max() <= 1:
            if k == "nodes" and frame[k].nunique() == 1:
                pinned.append(f"n={frame[k].dropna().iloc[0]}")
            continue
        cells = frame.drop_duplicates(["cell", "algorithm", k]) if "cell" in frame.columns else frame
        overall = Counter(str(v) for v in cells[k].dropna())
        chosen = {}
        for algo, g in cells.groupby("algorithm", sort=False):
            values = [str(v) for v in g[k].dropna()]
            counts = Counter(values)
            top = max(counts.values())
            best = [v for v in dict.fromkeys(values) if counts[v] == top]
            best.sort(key=lambda v: (-overall[v], -_number(v) if k == "nodes" else 0))
            chosen[algo] = best[0]
        frame = frame[[str(v) == chosen[a] for a, v in zip(frame["algorithm"], frame[k], strict=True)]]
        distinct = list(dict.fromkeys(chosen.values()))
        if len(distinct) == 1:
            pinned.append(f"{label}={distinct[0]}")
        else:
            pinned.append(f"{label}: " + ", ".join(f"{a} {v}" for a, v in chosen.items()))
    return frame, ", ".join(pinned)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _seeds_note(frame) -> str:
    if "seed" in frame.columns and frame["seed"].nunique() > 1:
        return f"mean of {frame['seed'].nunique()} seeds"
    return ""


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _time_label(results) -> str:
    return "simulated training time (s)" if results.engines == {"sim"} else "training time (s, wall clock)"


def accuracy_vs_time(results, **_: Any):

    data = curves(results, "test_acc")
    title, label = "Test accuracy", "test accuracy of the averaged model"
    if data.empty:  # a language model: perplexity in accuracy's place (bench.records.tables)
        data = curves(results, "test_ppl")
        title, label = "Test perplexity", "test perplexity of the averaged model (lower is better, log scale)"
    if data.empty:
        raise Absent("no test accuracy or perplexity records (records.jsonl has no test_acc or test_ppl rows)")
    data = with_keys(results, data)
    data, pinned = _pin(results, data, free=[])
    fig, ax = _figure(f"{title} vs training time", _join(pinned, _seeds_note(data)))
    _epoch_lines(ax, data)
    ax.set_xlim(left=0)
    ax.set_xlabel(_time_label(results))
    ax.set_ylabel(label)
    if title == "Test perplexity":
        ax.set_yscale("log")
        _readable_log(ax.yaxis, float(data["value"].min()), float(data["value"].max()))
    ax.legend(title="algorithm")
    return fig


def throughput_scaling(results, **_: Any):

    ok = results.ok_rows()
    ok = ok[ok["samples_per_s"].notna()] if "samples_per_s" in ok else ok.iloc[0:0]
    if ok.empty:
        raise Absent("no throughput (samples_per_s) in the summary")
    if ok["nodes"].nunique() < 2:
        raise Absent(f"needs at least two node counts; this folder has only nodes={ok['nodes'].iloc[0]}")
    ok, pinned = _pin(results, ok, free=["nodes"])
    agg = aggregate(ok, ["algorithm", "nodes"], ["samples_per_s"]).sort_values("nodes")
    fig, ax = _figure("Throughput vs node count", _join(pinned, _seeds_note(ok)))
    colors = _colors(list(agg["algorithm"].unique()))
    for algo, g in _by_algorithm(agg):
        color, marker = colors[algo]
        _errorbar_ci(ax, g, "samples_per_s", color, marker, algo)
    ref_algo = "allreduce" if "allreduce" in set(agg["algorithm"]) else agg["algorithm"].iloc[0]
    ref = agg[agg["algorithm"] == ref_algo].sort_values("nodes").iloc[0]
    nodes = sorted(float(n) for n in agg["nodes"].unique())
    n0, t0 = float(ref["nodes"]), float(ref["samples_per_s_mean"])
    n_max = max(nodes)
    ax.plot(
        nodes,
        [t0 * n / n0 for n in nodes],
        linestyle="--",
        color="grey",
        label=f"ideal linear ({ref_algo} at n={int(n0)} × n/{int(n0)})",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(nodes, [str(int(n)) for n in nodes])
    ax.xaxis.set_minor_formatter("")
    _readable_log(ax.yaxis, float(agg["samples_per_s_mean"].min()), float(agg["samples_per_s_mean"].max()) * n_max / n0)
    ax.set_xlabel("nodes (log scale)")
    ax.set_ylabel("throughput (training samples/s, log scale)")
    ax.legend(title="algorithm", fontsize=8)
    return fig


def bytes_per_sample(results, **_: Any):
    import numpy as np
    from matplotlib.patches import Patch

    ok = results.ok_rows()
    ok = ok[ok["bytes_per_sample"].notna()]
    if ok.empty:
        raise Absent("no communication volume (bytes_sent_total, samples) in the summary")
    ok = ok.copy()
    # The bits a row actually ran with: allreduce in a `bits = 8` cell still sends 32-bit gradients.
    ok["bits_run"] = ok["bits_effective"] if "bits_effective" in ok.columns else ok["bits"]
    ok["bits_run"] = ok["bits_run"].fillna(ok["bits"])
    ok, pinned = _pin(results, ok, free=["bits"])
    m = ok.groupby(["algorithm", "bits_run"], sort=False, as_index=False)["bytes_per_sample"].mean()
    algos = [a for a, _ in _by_algorithm(m)]
    bits = sorted({int(b) for b in m["bits_run"].dropna()}, reverse=True)
    fig, ax = _figure("Bytes sent per training sample", _join(pinned, "training traffic of all nodes"))
    width = 0.8 / max(len(bits), 1)
    shades = {b: 0.35 + 0.65 * (i + 1) / len(bits) for i, b in enumerate(sorted(bits))}
    base = _colors(algos)
    for i, algo in enumerate(algos):
        mine = m[m["algorithm"] == algo].assign(b=lambda f: f["bits_run"].astype(int)).sort_values("b", ascending=False)
        for j, (b, v) in enumerate(zip(mine["b"], mine["bytes_per_sample"].astype(float), strict=True)):
            x = i + (j - (len(mine) - 1) / 2) * width  # an algorithm's own bars, centred on its tick
            ax.bar(x, v, width=width * 0.95, color=base[algo][0], alpha=shades[b], edgecolor="black", linewidth=0.4)
            ax.annotate(fmt_bytes(v), (x, v), ha="center", va="bottom", fontsize=7)
    handles = [Patch(facecolor="grey", alpha=shades[b], label=f"{b} bits") for b in bits]
    ax.set_xticks(np.arange(len(algos)), algos)
    values = m["bytes_per_sample"].astype(float)
    if values.min() > 0 and values.max() / values.min() > 30:
        ax.set_yscale("log")
        _readable_log(ax.yaxis, float(values.min()), float(values.max()))
    ax.set_axisbelow(True)
    ax.set_xlabel("algorithm (bars: bits per exchanged coordinate)")
    ax.set_ylabel("bytes sent per training sample (B)")
    ax.legend(handles=handles, title="quantization")
    return fig


def time_to_target(results, target_acc: float | None = None, goal: str | None = None, **_: Any):
    # `goal` names a language model's target ("test perplexity 150"); `target_acc` is then that perplexity.

    if target_acc is None:
        raise Absent("needs a target: pass --target-acc A (--target-ppl P for a language model)")
    if "time_to_target_s" not in results.summary.columns:
        add_time_to_target(results, target_acc)
    ok = results.ok_rows()
    if ok["time_to_target_s"].notna().sum() == 0:
        if results.records().empty or not {"test_acc", "test_ppl"} & set(results.records()["metric"]):
            raise Absent("no test accuracy records (records.jsonl has no test_acc rows)")
        raise Absent(f"no algorithm reached {goal or f'test accuracy {target_acc:g}'}")
    ok, pinned = _pin(results, ok, free=["nodes"])
    agg = aggregate(ok, ["algorithm", "nodes"], ["time_to_target_s"]).sort_values("nodes")
    never = sorted(set(ok["algorithm"]) - set(agg.loc[agg["time_to_target_s_mean"].notna(), "algorithm"]))
    note = f"never reached: {', '.join(never)}" if never else ""
    if agg["time_to_target_s_mean"].isna().any():
        note = _join(note, "a missing point: not reached in the run")
    goal = goal or f"{target_acc:g} test accuracy"
    fig, ax = _figure(f"Training time to {goal}", _join(pinned, _seeds_note(ok), note))
    colors = _colors(list(agg["algorithm"].unique()))
    for algo, g in _by_algorithm(agg):
        g = g[g["time_to_target_s_mean"].notna()]
        if g.empty:
            continue
        color, marker = colors[algo]
        _errorbar_ci(ax, g, "time_to_target_s", color, marker, algo)
    nodes = sorted(float(n) for n in agg["nodes"].unique())
    if len(nodes) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(nodes, [str(int(n)) for n in nodes])
    ax.xaxis.set_minor_formatter("")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("nodes")
    ax.set_ylabel(f"time to {goal} ({_time_label(results).split(' (')[0]}, s)")
    ax.legend(title="algorithm")
    return fig


def consensus(results, **_: Any):

    data = curves(results, "consensus_distance")
    if data.empty:
        raise Absent("no consensus distance records (records.jsonl has no consensus_distance rows)")
    data = with_keys(results, data)
    # Shown: the algorithms whose node models actually differ at some evaluation (decentralized ones; local SGD
    # between its averagings). AllReduce SGD's stay equal up to float rounding (~1e-13), below the threshold.
    spread = data.groupby("algorithm")["value"].max()
    data = data[data["algorithm"].isin(spread[spread > 1e-9].index)]
    if data.empty:
        raise Absent("consensus distance is 0 everywhere (no decentralized algorithm in this folder)")
    data, pinned = _pin(results, data, free=[])
    fig, ax = _figure(
        "Consensus distance vs training time (algorithms whose node models differ)", _join(pinned, _seeds_note(data))
    )
    _epoch_lines(ax, data)
    ax.set_xlim(left=0)
    values = data["value"].astype(float)
    if (values > 0).all() and values.max() / values.min() > 30:
        ax.set_yscale("log")
    ax.set_xlabel(_time_label(results))
    ax.set_ylabel("consensus distance (1/n) Σ‖xᵢ − x̄‖² (squared L2)")
    ax.legend(title="algorithm")
    return fig


PLOTS: dict[str, Plot] = {
    "accuracy_vs_time": Plot("Test accuracy (perplexity for a language model) vs training time", accuracy_vs_time),
    "throughput_scaling": Plot("Throughput vs node count (log-log, ideal linear line)", throughput_scaling),
    "bytes_per_sample": Plot("Bytes sent per training sample, by algorithm and bits", bytes_per_sample),
    "time_to_target": Plot("Training time to the target test accuracy vs node count", time_to_target),
    "consensus": Plot("Consensus distance vs training time", consensus),
}


def _errorbar_ci(ax, g, metric: str, color, marker, label: str) -> None:
    """Mean of `metric` against nodes, with the half-width of its 95 % interval as error bars."""
    err = ((g[f"{metric}_ci_hi"] - g[f"{metric}_ci_lo"]) / 2).astype(float)
    ax.errorbar(
        g["nodes"].astype(float),
        g[f"{metric}_mean"].astype(float),
        yerr=err.where(err.notna(), 0),
        marker=marker,
        color=color,
        label=label,
        capsize=3,
    )
