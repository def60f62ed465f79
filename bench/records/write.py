"""The results contract: tidy records, meta.json, summary.csv and the three tables, all written atomically.

Workers append their rows to per-rank staging files under `DIR/.staging/`; `finalize` merges them into
`records.jsonl`, derives `summary.csv` and the tables from the records alone (so any engine that emits the
same rows gets the same tables), writes `meta.json`, and removes the staging folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import __version__
from bench.base.errors import ResultsUnwritable
from bench.base.files import LineLog, atomic_write_frame, atomic_write_json, atomic_write_text
from bench.records.rounds import INTERVAL_METHOD, combine, throughput_columns
from bench.records.tables import REFERENCE_ALGORITHM, write_tables
from bench.records.tensorboard import write_events
from bench.training.config import hyper, injects_failures

SCHEMA_VERSION = 1
STAGING = ".staging"
SUMMARY_COLUMNS = [
    "algorithm",
    "nodes",
    "topology",
    "bits",
    "local_steps",
    "seed",
    "status",
    "epochs",
    "samples",
    "train_seconds",
    "samples_per_s",
    "tokens_per_s",
    "rounds",
    "samples_per_s_median",
    "samples_per_s_lo",
    "samples_per_s_hi",
    "samples_per_s_drift",
    "samples_per_s_ratio_median",
    "samples_per_s_ratio_lo",
    "samples_per_s_ratio_hi",
    "test_acc",
    "val_acc",
    "val_loss",
    "target",
    "time_to_target_s",
    "epochs_to_target",
    "best_test_acc",
    "best_epoch",
    "node_acc_mean",
    "node_acc_min",
    "node_acc_max",
    "test_ppl",
    "val_ppl",
    "best_test_ppl",
    "node_ppl_mean",
    "node_ppl_min",
    "node_ppl_max",
    "final_loss",
    "bytes_sent_total",
    "bytes_per_node_per_step",
    "comm_fraction",
    "serve_seconds",
    "test_loss",
    "consensus_distance",
    "step_seconds_median",
    "step_seconds_p10",
    "step_seconds_p90",
    "steps_per_node",
    "tokens",
    "eval_seconds",
    "bytes_grad",
    "bytes_model",
    "bytes_control",
    "bytes_eval",
    "interactions_per_node",
    "staleness_mean",
    "step_lag",
    "decode_failures",
    "quantizer",
    "dataset",
    "model",
    "batch_size",
    "lr",
    "partition",
]


class StagingWriter:
    """One worker's rows, one whole line per write (`LineLog`): a crash keeps everything recorded so far, and a full
    disk ends the writer with `ResultsUnwritable`, never with half a line."""

    def __init__(self, out_dir: Path, rank: int | str, run_id: str, nodes: int) -> None:
        path = out_dir / STAGING / f"rank{rank}.jsonl"
        try:
            self.log = LineLog(path)
        except OSError as exc:
            raise ResultsUnwritable(
                f"cannot write the records to '{path}': {exc.strerror or exc}: choose a folder you can write to"
            ) from exc
        self.base = {"run_id": run_id, "nodes": nodes}

    def write(self, row: dict[str, Any]) -> None:
        row = {**self.base, **{k: v for k, v in row.items() if k != "type"}}
        try:
            self.log.write(json.dumps(row))
        except OSError as exc:
            raise ResultsUnwritable(
                f"cannot write the records to '{self.log.path}': {exc.strerror or exc}: "
                "free some space or choose another --out"
            ) from exc

    def close(self) -> None:
        self.log.close()


def git_facts() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]  # the checkout: bench/records/write.py
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def host_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    try:
        facts["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        facts["memory_bytes"] = None
    return facts


def build_meta(cfg, *, run_id: str, argv: list[str], engine: str, backend: str, transport: str) -> dict[str, Any]:
    import torch

    return {
        "schema_version": SCHEMA_VERSION,
        "swarmbench_version": __version__,
        "run_id": run_id,
        "git": git_facts(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "host": host_facts(),
        "engine": engine,
        "launcher": cfg.launcher,
        "backend": backend,
        "transport": transport,
        "topology": _topology(cfg.topology, cfg.nodes, degree=cfg.degree, seed=cfg.seed).describe(),
        "config": cfg.stored(),
        # Each algorithm's optimizer hyperparameters as resolved (run values, then its own), and its peak lr.
        "hyperparameters": {
            name: {**dataclasses.asdict(hyper(cfg, name)), "peak_lr": hyper(cfg, name).peak_lr(cfg.nodes)}
            for name in cfg.algorithms
        },
        "rounds": {
            "repeat": cfg.repeat,
            "orders": [list(order) for order in cfg.round_orders()],
            "order": "as given" if cfg.repeat == 1 else "random.Random('swarmbench-round:SEED:ROUND').shuffle",
            "interval": INTERVAL_METHOD,
        },
        "argv": argv,
        "started_at": now_iso(),
        "ended_at": None,
        "status": "running",
        "algorithms": {name: {"status": "pending", "reason": ""} for name in cfg.algorithms},
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_staging(out_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    staging = out_dir / STAGING
    for path in sorted(staging.glob("rank*.jsonl")) if staging.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    # A worker killed mid-write leaves at most its last line torn; the rest is kept.
                    continue
    return rows


DIVERGED_MARGIN = 0.05  # accuracy above chance that counts as having learned something


def divergence(records, algorithm: str) -> str | None:
    """Why a finished algorithm's run diverged, or None: its training or test loss became non-finite, or the
    averaged model's test accuracy fell below chance + DIVERGED_MARGIN after having been above it. Such a run is
    flagged `diverged`, never reported as a result. With --repeat every round is judged on its own."""
    if records is None or not len(records):
        return None
    r = records[records["algorithm"] == algorithm]
    rounds = _rounds(r)
    if len(rounds) > 1:
        for number, g in rounds.items():
            why = _diverged(g)
            if why:
                return f"round {number}: {why}"
        return None
    return _diverged(r)


def _diverged(r) -> str | None:
    losses = r[r["metric"].isin(["train_loss", "test_loss", "diverged"])]
    bad = losses[losses["value"].map(lambda v: not math.isfinite(v)) | (losses["metric"] == "diverged")]
    if len(bad):
        first = bad.sort_values("epoch").iloc[0]
        return f"{first['metric']} became non-finite by epoch {int(first['epoch'])}"
    chance = r[(r["metric"] == "chance_acc") & r["rank"].isna()]["value"]
    acc = r[(r["metric"] == "test_acc") & r["rank"].isna()].sort_values("epoch")
    if chance.empty or acc.empty:
        return None
    floor = float(chance.iloc[0]) + DIVERGED_MARGIN
    best_acc, best_epoch = -1.0, None
    for epoch, value in zip(acc["epoch"], acc["value"], strict=True):
        if best_acc >= floor and value < floor:
            return (
                f"test accuracy fell to {value:.3f} at epoch {int(epoch)} after {best_acc:.3f} at epoch "
                f"{int(best_epoch)} (chance {float(chance.iloc[0]):.3f})"
            )
        if value > best_acc:
            best_acc, best_epoch = value, epoch
    return None


def _rounds(r) -> dict[int, Any]:
    """One algorithm's records by round (1..K); records without rounds are one round."""
    if "round" not in r.columns or r["round"].isna().all():
        return {1: r}
    return {int(k): g for k, g in r.groupby("round", sort=True)}


def derive_rounds(records, cfg) -> dict[str, dict[int, dict[str, Any]]]:
    """algorithm -> round -> that round's measurements, derived from its records alone (`_derive`)."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for algo in cfg.algorithms:
        r = records[records["algorithm"] == algo] if len(records) else records
        if len(r):
            out[algo] = {k: _derive(g, cfg.nodes) for k, g in _rounds(r).items()}
    return out


def summarize(records, cfg, statuses: dict[str, str], by_round: dict[str, dict[int, dict[str, Any]]] | None = None):
    """One summary row per algorithm, derived from the tidy records only: with --repeat each measurement is its
    median over the rounds, and samples/s has its interval and drift (`bench.records.rounds`)."""
    import pandas as pd

    by_round = derive_rounds(records, cfg) if by_round is None else by_round
    target, goal = run_target(cfg, records)
    sps = {a: {k: d["samples_per_s"] for k, d in per.items() if d.get("samples_per_s")} for a, per in by_round.items()}
    columns = summary_columns(cfg)
    rows = []
    for algo in cfg.algorithms:
        status = statuses.get(algo, "skipped")
        row: dict[str, Any] = {c: None for c in columns}
        row.update(
            algorithm=algo,
            nodes=cfg.nodes,
            topology=cfg.topology,
            bits=cfg.bits if _quantizable(algo) else 32,
            seed=cfg.seed,
            status=status,
            epochs=cfg.epochs,
            dataset=cfg.dataset,
            model=cfg.model,
            batch_size=cfg.batch_size,
            lr=hyper(cfg, algo).peak_lr(cfg.nodes),
            partition=cfg.partition,
        )
        if algo in by_round:
            row.update(combine(by_round[algo]))
            if goal is not None:
                row.update(target=goal, **rounds_to_target(records, algo, target))
            row.update(throughput_columns(sps[algo], sps.get(REFERENCE_ALGORITHM), cfg.seed))
            row["rounds"] = len(by_round[algo])
            if status == "ok" and divergence(records, algo):
                row["status"] = "diverged"
        row["quantizer"] = cfg.quantizer if (row["bits"] or 32) < 32 else "none"
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def summary_columns(cfg) -> list[str]:
    """SUMMARY_COLUMNS, with `nodes_alive` after `nodes` when nodes of the run may fail (`injects_failures`): a run
    without failure injection writes the summary it wrote before."""
    if not injects_failures(cfg):
        return SUMMARY_COLUMNS
    at = SUMMARY_COLUMNS.index("nodes") + 1
    return [*SUMMARY_COLUMNS[:at], "nodes_alive", *SUMMARY_COLUMNS[at:]]


ROUND_COLUMNS = ["algorithm", "round", "position", "samples_per_s", "train_seconds", "test_acc", "comm_fraction"]
ROUND_COLUMNS += ["step_seconds_median", "samples", "bytes_sent_total"]


def round_frame(by_round: dict[str, dict[int, dict[str, Any]]], cfg):
    """rounds.csv: one row per (algorithm, round) with the round's own measurements and the algorithm's position
    (1-based) in that round's order."""
    import pandas as pd

    orders = cfg.round_orders()
    rows = []
    for number, order in enumerate(orders, 1):
        for position, algo in enumerate(order, 1):
            derived = by_round.get(algo, {}).get(number)
            if derived is not None:
                rows.append({**derived, "algorithm": algo, "round": number, "position": position})
    return pd.DataFrame(rows).reindex(columns=ROUND_COLUMNS)


def _derive(r, nodes: int) -> dict[str, Any]:
    def final(metric: str, scope_global: bool = False):
        m = r[r["metric"] == metric]
        m = m[m["rank"].isna()] if scope_global else m[m["rank"].notna()]
        if m.empty:
            return None
        last = m["epoch"].max() if m["epoch"].notna().any() else None
        return m[m["epoch"] == last] if last is not None else m

    out: dict[str, Any] = {}
    # Nodes that failed (`--fail`, `--fail-p`) left a `node_failed` row; the rest trained to the end.
    out["nodes_alive"] = nodes - int(r.loc[r["metric"] == "node_failed", "rank"].nunique())
    ts = final("train_seconds")
    samples = final("samples")
    steps = final("steps")
    if samples is not None:
        out["samples"] = int(samples["value"].sum())
    if steps is not None:
        out["steps_per_node"] = int(steps["value"].max())
    if ts is not None:
        out["train_seconds"] = float(ts["value"].max())
        if samples is not None and out["train_seconds"] > 0:
            out["samples_per_s"] = out["samples"] / out["train_seconds"]
    tokens = final("tokens")  # language models: every token of a window is a prediction
    if tokens is not None:
        out["tokens"] = int(tokens["value"].sum())
        if out.get("train_seconds"):
            out["tokens_per_s"] = out["tokens"] / out["train_seconds"]
    for key in ("test_acc", "test_loss", "val_acc", "val_loss", "test_ppl", "val_ppl", "consensus_distance"):
        g = final(key, scope_global=True)
        if g is not None:
            out[key] = float(g["value"].iloc[0])
    # Accuracy for classification, perplexity (lower is better) for language models: a run records one of the two.
    for score, pick in (("acc", "idxmax"), ("ppl", "idxmin")):
        curve = r[(r["metric"] == f"test_{score}") & r["rank"].isna()].sort_values("epoch")
        if not curve.empty:  # the first epoch at the best value: an oscillating run shows what it had reached
            best = curve.loc[getattr(curve["value"], pick)()]
            out[f"best_test_{score}"] = float(best["value"])
            out["best_epoch"] = int(best["epoch"])
        node = final(f"node_{score}")
        if node is not None:
            out[f"node_{score}_mean"] = float(node["value"].mean())
            out[f"node_{score}_min"] = float(node["value"].min())
            out[f"node_{score}_max"] = float(node["value"].max())
    loss = final("train_loss")
    if loss is not None:
        out["final_loss"] = float(loss["value"].mean())
    ev = r[r["metric"] == "eval_seconds"]
    if not ev.empty:
        out["eval_seconds"] = float(ev.groupby("rank")["value"].sum().max())
    for key in ("step_seconds_median", "step_seconds_p10", "step_seconds_p90"):
        m = final(key)
        if m is not None:
            out[key] = float(m["value"].median())
    ls = final("local_steps")
    if ls is not None:
        out["local_steps"] = int(ls["value"].max())
    inter = final("algo_interactions")
    if inter is not None:
        out["interactions_per_node"] = float(inter["value"].sum()) / nodes
    bits = final("bits")
    if bits is not None:
        out["bits"] = int(bits["value"].max())
    fails = final("decode_failures")
    if fails is not None:
        out["decode_failures"] = int(fails["value"].sum())
    # Staleness: the age of the copy read (owner's live step at read time - the copy's stamp), over all reads.
    stale, reads = final("staleness_sum"), final("staleness_reads")
    if stale is not None and reads is not None and reads["value"].sum() > 0:
        out["staleness_mean"] = float(stale["value"].sum() / reads["value"].sum())
    # Step lag: the reader's steps minus the partner's steps at publication (relative progress; may be negative).
    lag, reads = final("algo_step_lag_sum"), final("algo_reads")
    if lag is not None and reads is not None and reads["value"].sum() > 0:
        out["step_lag"] = float(lag["value"].sum() / reads["value"].sum())
    sent = r[r["metric"] == "comm_bytes_sent"]
    if not sent.empty:
        by_kind = sent.groupby("kind")["value"].sum()
        for kind in ("grad", "model", "control", "eval"):
            out[f"bytes_{kind}"] = int(by_kind.get(kind, 0))
        train_bytes = int(sum(v for k, v in by_kind.items() if k != "eval"))
        out["bytes_sent_total"] = train_bytes
        if out.get("steps_per_node"):
            out["bytes_per_node_per_step"] = train_bytes / nodes / out["steps_per_node"]
    serve = final("serve_seconds")
    if serve is not None:  # mean per node: time spent serving peers (p2p responder, RMA window owner)
        out["serve_seconds"] = float(serve["value"].mean())
    # Blocked time of every training-traffic kind, publish included (encoding a copy is communication work).
    secs = r[(r["metric"] == "comm_seconds") & (r["kind"] != "eval")]
    if ts is not None and not secs.empty:
        per_rank = secs.groupby("rank")["value"].sum()
        train = ts.set_index("rank")["value"]
        fractions = (per_rank / train.reindex(per_rank.index)).dropna()
        if not fractions.empty:
            out["comm_fraction"] = float(fractions.mean())
    return out


RUN_STATUSES = ("ok", "failed", "interrupted")  # meta.json's run status once a run has ended


def finalize(
    out_dir: Path, cfg, meta: dict[str, Any], statuses: dict[str, str], reasons: dict[str, str], status: str
) -> Any:
    """Merge staging rows, write records/summary/tables/meta atomically, with the run's `status` (RUN_STATUSES);
    return the summary frame. The staging folder is removed only once everything else is written."""
    assert status in RUN_STATUSES, status
    import pandas as pd

    rows = read_staging(out_dir)
    records = pd.DataFrame(rows)
    columns = ["run_id", "algorithm", "round", "nodes", "rank", "epoch", "step", "metric", "value", "kind"]
    for col in columns:
        if col not in records.columns:
            records[col] = None
    records = records[columns]
    atomic_write_text(out_dir / "records.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    by_round = derive_rounds(records, cfg)
    summary = summarize(records, cfg, statuses, by_round)
    if cfg.repeat > 1:
        atomic_write_frame(out_dir / "rounds.csv", round_frame(by_round, cfg))
    statuses, reasons = dict(statuses), dict(reasons)
    for name in summary.loc[summary["status"] == "diverged", "algorithm"]:
        statuses[name], reasons[name] = "diverged", divergence(records, name) or ""
    atomic_write_frame(out_dir / "summary.csv", summary)
    write_tables(out_dir, summary)
    if getattr(cfg, "tensorboard", False):
        write_events(out_dir, records, summary, cfg)
    meta = dict(meta)
    meta["ended_at"] = now_iso()
    meta["status"] = status
    meta["algorithms"] = {
        name: {"status": statuses.get(name, "skipped"), "reason": reasons.get(name, "")} for name in cfg.algorithms
    }
    atomic_write_json(out_dir / "meta.json", meta)
    if (out_dir / STAGING).exists():
        shutil.rmtree(out_dir / STAGING)
    return summary


SCALING_COLUMNS = [
    "algorithm",
    "nodes",
    "status",
    "samples_per_s",
    "speedup_vs_one_node",
    "scaling_efficiency",
    "speedup_vs_smallest",
    "comm_fraction",
    "time_to_target_s",
    "epochs_to_target",
    "test_acc",
    "test_ppl",
    "train_seconds",
    "steps_per_node",
    "bytes_per_node_per_step",
]


def time_to_target(records, algorithm: str, target: float | None) -> tuple[float | None, int | None]:
    """(training seconds, epoch) when the averaged model's validation accuracy (test accuracy when the run held no
    validation split out) first reached `target`, else (None, None). For a language model (records of perplexity),
    `target` is a perplexity and reaching it means falling to it or below.

    The seconds are the slowest node's elapsed training time at the end of that epoch (evaluation excluded).
    """
    if records is None or not len(records) or target is None:
        return None, None
    r = records[records["algorithm"] == algorithm]
    metrics = set(r["metric"])
    lm = bool(metrics & {"test_ppl", "val_ppl"})
    score = "ppl" if lm else "acc"
    metric = f"val_{score}" if f"val_{score}" in metrics else f"test_{score}"
    curve = r[(r["metric"] == metric) & r["rank"].isna()].sort_values("epoch")
    hit = curve[curve["value"] <= target] if lm else curve[curve["value"] >= target]
    if hit.empty:
        return None, None
    epoch = int(hit["epoch"].iloc[0])
    secs = r[(r["metric"] == "train_seconds") & (r["epoch"] == epoch)]["value"]
    return (float(secs.max()) if len(secs) else None), epoch


SERIES_TARGET_ACC = 0.9  # a classifier series' scaling table times this accuracy when --target-acc is not given


def series_target(cfg) -> tuple[float | None, str]:
    """A simulated series' time-to-target goal and its name in the scaling table: --target-acc for a classifier
    (SERIES_TARGET_ACC when not given), --target-ppl for a language model (None when not given: the columns stay
    empty)."""
    from bench.core.data import DATASETS, LANGUAGE_MODEL

    if DATASETS[cfg.dataset].task != LANGUAGE_MODEL:
        acc = cfg.target_acc if cfg.target_acc is not None else SERIES_TARGET_ACC
        return acc, f"acc {acc:g}"
    return cfg.target_ppl, f"ppl {cfg.target_ppl:g}" if cfg.target_ppl is not None else "target (no --target-ppl)"


def run_target(cfg, records) -> tuple[float | None, str | None]:
    """A run's time-to-target goal (--target-acc or --target-ppl; at most one applies to its task) and how the
    accuracy table names it: the metric it is read on and the bound, e.g. 'val_acc >= 0.9', 'val_ppl <= 300'
    (test_* when the run held no validation split out). (None, None) when no target was set."""
    target = cfg.target_acc if cfg.target_acc is not None else cfg.target_ppl
    if target is None:
        return None, None
    lm = cfg.target_acc is None
    score = "ppl" if lm else "acc"
    metrics = set(records["metric"]) if len(records) else set()
    metric = f"val_{score}" if f"val_{score}" in metrics or cfg.val_fraction > 0 else f"test_{score}"
    return target, f"{metric} {'<=' if lm else '>='} {target:g}"


def rounds_to_target(records, algorithm: str, target: float) -> dict[str, Any]:
    """time_to_target_s and epochs_to_target of one algorithm; with --repeat, the medians over the rounds, and
    missing unless every round reached the target (a goal reached in some rounds only is not reached reliably)."""
    r = records[records["algorithm"] == algorithm]
    hits = [time_to_target(g, algorithm, target) for g in _rounds(r).values()]
    if not hits or any(seconds is None for seconds, _ in hits):
        return {}
    return {
        "time_to_target_s": statistics.median(seconds for seconds, _ in hits),
        "epochs_to_target": int(statistics.median_low(epoch for _, epoch in hits)),
    }


def scaling_frame(summary, records_by_nodes: dict[int, Any], target: float | None, one_node_samples_per_s: float):
    """One row per (algorithm, node count) of a simulated series, from the per-count summaries and records.

    speedup_vs_one_node = samples/s / one nominal node's samples/s (batch / its modelled step time: no
    communication, no peers); scaling_efficiency = that speedup / nodes (1 = linear); speedup_vs_smallest =
    samples/s over the same algorithm's at the series' smallest node count.
    """
    import pandas as pd

    rows = []
    for row in summary.to_dict("records"):
        algo, n = row["algorithm"], int(row["nodes"])
        sps = row.get("samples_per_s")
        ok = sps is not None and not pd.isna(sps)
        base = summary[(summary["algorithm"] == algo) & summary["samples_per_s"].notna()]
        base = base.sort_values("nodes")
        first = float(base["samples_per_s"].iloc[0]) if len(base) else None
        seconds, epoch = time_to_target(records_by_nodes.get(n), algo, target)
        speedup = sps / one_node_samples_per_s if ok and one_node_samples_per_s > 0 else None
        rows.append(
            {
                "algorithm": algo,
                "nodes": n,
                "status": row["status"],
                "samples_per_s": sps if ok else None,
                "speedup_vs_one_node": speedup,
                "scaling_efficiency": speedup / n if speedup is not None else None,
                "speedup_vs_smallest": sps / first if ok and first else None,
                "comm_fraction": row.get("comm_fraction"),
                "time_to_target_s": seconds,
                "epochs_to_target": epoch,
                "test_acc": row.get("test_acc"),
                "test_ppl": row.get("test_ppl"),
                "train_seconds": row.get("train_seconds"),
                "steps_per_node": row.get("steps_per_node"),
                "bytes_per_node_per_step": row.get("bytes_per_node_per_step"),
            }
        )
    frame = pd.DataFrame(rows, columns=SCALING_COLUMNS)
    order = {name: i for i, name in enumerate(dict.fromkeys(summary["algorithm"]))}
    frame["_o"] = frame["algorithm"].map(order)
    return frame.sort_values(["_o", "nodes"], kind="stable").drop(columns="_o").reset_index(drop=True)


# The topology and the registry import torch: the read side (analysis, `swarmbench report`) imports this module
# without needing them, so they are imported when a run writes its results.
def _topology(spec: str, nodes: int, **kw):
    from bench.core.topology import build_topology

    return build_topology(spec, nodes, **kw)


def _quantizable(algorithm: str) -> bool:
    from bench.training.registry import ALGORITHMS

    return ALGORITHMS[algorithm].quantizable
