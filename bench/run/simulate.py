"""`swarmbench run --engine sim`: a simulated run at one node count, or a scaling series (`--nodes 8,16,32`).

Everything is checked and resolved (data, shards, the cost model of every node count) before anything is written;
each node count then gets the full results contract in its own folder, and a series gets summary.csv, scaling.csv
and meta.json of its own. The simulated cluster itself (`bench.engine.sim.cluster`) writes nothing.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from bench.base.console import RunUI
from bench.base.errors import ResultsUnwritable, UserError, last_line
from bench.base.files import atomic_write_frame, atomic_write_json
from bench.base.signals import Interrupted, deferred, stop_signals
from bench.core.models import build_model
from bench.core.topology import build_topology
from bench.engine.processes.env import detect
from bench.engine.sim.calibrate import resolve as resolve_cost
from bench.engine.sim.cluster import (
    NodeLost,
    OneTorchThread,
    check_memory,
    estimate_bytes,
    eval_subset,
    make_sim_shards,
    resolve_shards,
    simulate_algorithms,
)
from bench.engine.sim.costmodel import CostModel, node_threads
from bench.engine.sim.costonly import (
    COST_ONLY_FACT,
    NO_ACCURACY,
    check_cost_only_memory,
    cost_only_bytes,
    cost_only_dataset,
    simulate_cost_only,
    workload,
)
from bench.engine.sim.costonly import (
    check_workload as check_cost_only_workload,
)
from bench.records.tables import print_scaling, print_tables, write_scaling
from bench.records.write import StagingWriter, build_meta, now_iso, scaling_frame, series_target
from bench.run.outcome import (
    claimed_out_dir,
    interrupted_lines,
    run_status,
    statuses_for,
    unwritable,
    write_results,
)
from bench.run.resume import CellCheckpoint, Resume, keep_records
from bench.training.config import failure_schedule, injects_failures
from bench.training.loop import evaluated_epochs, run_data


def prepare(cfg):
    """Everything checked and resolved before anything is written: (dataset, shard policy, the cost model of
    every node count, number of model parameters). A cost-only run's "dataset" is its workload's input shape
    (`cost_only_dataset`, holding the `Workload`) and its shard policy "none"."""
    series = cfg.node_series or (cfg.nodes,)
    if cfg.compute == "cost-only":
        wl = workload(cfg)
        check_cost_only_workload(cfg, wl)
        check_cost_only_memory(max(series), wl)
        shape = cost_only_dataset(wl)
        shape.workload = wl
        return shape, "none", {n: resolve_cost(cfg, shape, n) for n in series}, wl.parameters
    dataset = eval_subset(cfg, run_data(cfg, download=cfg.download))
    model = build_model(cfg.model, dataset.input_shape, dataset.num_classes, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    check_memory(n_params, max(series), evaluated_epochs(cfg.epochs, cfg.eval_every), cfg.algorithms)
    policy = resolve_shards(cfg, dataset, series)
    costs: dict[int, CostModel] = {}
    by_threads: dict[int, CostModel] = {}
    with OneTorchThread():
        for n in series:
            if cfg.calibrate == "host":  # measured on n real processes: per node count
                costs[n] = resolve_cost(cfg, dataset, n)
                continue
            threads = node_threads(cfg, n) if cfg.calibrate == "node" else 1
            if threads not in by_threads:  # calibration depends on the node's threads only
                by_threads[threads] = resolve_cost(cfg, dataset, n)
            costs[n] = by_threads[threads]
    return dataset, policy, costs, n_params


def execute_sim(
    cfg, out: str | None, argv: list[str], interactive: bool | None = None, resume: Resume | None = None
) -> int:
    """`swarmbench run --engine sim`: one node count, or a scaling series (`--nodes 8,16,32`). `resume`: continue
    that interrupted run in its folder (`bench.run.resume`)."""
    if detect() is not None:
        raise UserError("--engine sim runs every node in this one process: start it without mpirun/torchrun/srun")
    with claimed_out_dir(out, resume=resume is not None) as out_dir, stop_signals():
        return _simulate_into(cfg, out_dir, argv, interactive, resume)


def _simulate_into(cfg, out_dir: Path, argv: list[str], interactive: bool | None, resume: Resume | None) -> int:
    dataset, policy, costs, n_params = prepare(cfg)
    series = tuple(sorted(cfg.node_series))
    largest = max(series or (cfg.nodes,))
    cost_only = cfg.compute == "cost-only"
    facts = {
        "shards": policy,
        "memory_estimate_bytes": (
            cost_only_bytes(largest, dataset.workload)
            if cost_only
            else estimate_bytes(n_params, largest, evaluated_epochs(cfg.epochs, cfg.eval_every), cfg.algorithms)
        ),
        "model_parameters": n_params,
        "eval_samples": 0 if cost_only else len(dataset.y_test),
        "torch_threads": 1,
        "time": "simulated seconds (virtual clocks); no wall-clock time in the results",
    }
    if cost_only:
        facts["compute"] = COST_ONLY_FACT
    summaries, records, status = [], {}, "ok"
    with RunUI(cfg.algorithms, interactive) as ui:
        console = ui.console
        for n in series or (cfg.nodes,):
            cfg_n = dataclasses.replace(cfg, nodes=n, node_series=())
            world_dir = out_dir / f"n{n}" if series else out_dir
            if series:
                console.print(f"{n} nodes -> {world_dir}")
            summary, status, interrupted = _run_one(
                cfg_n, world_dir, argv, dataset, policy, costs[n], facts, ui, None if series else resume
            )
            summaries.append(summary)
            if series:
                records[n] = _read_records(world_dir)
            if status != "ok":
                break
    if not series:
        console.print(f"results: {out_dir}")
        print_tables(summaries[0], console, no_accuracy=NO_ACCURACY if cost_only else None)
    else:
        scaling = _finish_series(cfg, out_dir, argv, summaries, records, costs, facts, status)
        console.print(f"results: {out_dir}")
        print_scaling(scaling, series_target(cfg)[1], console)
    if interrupted is not None:
        for line in interrupted_lines(out_dir, interrupted.name, resumable=not series):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        raise interrupted
    return 0 if status == "ok" else 1


def _finish_series(cfg, out_dir: Path, argv, summaries, records, costs: dict[int, CostModel], facts, status: str):
    """The series folder's own files: summary.csv (every node count), scaling.csv/.md and meta.json."""
    import pandas as pd

    series = tuple(sorted(cfg.node_series))
    cost = costs[series[0]]
    combined = pd.concat(summaries, ignore_index=True)
    atomic_write_frame(out_dir / "summary.csv", combined)
    target, goal = series_target(cfg)
    scaling = scaling_frame(combined, records, target, cost.one_node_samples_per_s(cfg.batch_size))
    write_scaling(out_dir, scaling, goal)
    first = dataclasses.replace(cfg, nodes=series[0])
    meta = build_meta(first, run_id=out_dir.name, argv=argv, engine="sim", backend="none", transport="sim")
    meta["topology"] = {
        str(n): build_topology(cfg.topology, n, degree=cfg.degree, seed=cfg.seed).describe() for n in series
    }
    meta["cost_model"] = cost.to_dict()
    if any(c != cost for c in costs.values()):  # calibrated per node count (threads or processes differ)
        meta["cost_model_by_nodes"] = {str(n): c.to_dict() for n, c in costs.items()}
    meta["sim"] = facts
    meta["series"] = {str(n): f"n{n}" for n in series[: len(summaries)]}
    meta["ended_at"] = now_iso()
    meta["status"] = status
    meta["algorithms"] = {name: {"status": _worst(combined, name), "reason": ""} for name in cfg.algorithms}
    try:
        atomic_write_json(out_dir / "meta.json", meta)
    except OSError as exc:
        raise unwritable(out_dir, exc) from exc
    return scaling


def _worst(summary, algorithm: str) -> str:
    statuses = set(summary.loc[summary["algorithm"] == algorithm, "status"])
    for s in ("failed", "interrupted", "diverged", "skipped"):
        if s in statuses:
            return s
    return "ok" if statuses else "skipped"


def _run_one(cfg, out_dir: Path, argv, dataset, policy: str, cost: CostModel, facts, ui, resume: Resume | None):
    """One node count: the full results contract in `out_dir`. Returns (summary, run status, the Interrupted
    exception when a signal stopped it). With `resume`, the finished cells' records are kept and they are not
    run again; DIR/checkpoint.json names the finished cells as the run goes (`bench.run.resume`)."""
    cost_only = cfg.compute == "cost-only"
    shards = None if cost_only else make_sim_shards(cfg, dataset, policy)
    meta = build_meta(cfg, run_id=out_dir.name, argv=argv, engine="sim", backend="none", transport="sim")
    done: frozenset[tuple[str, int]] = frozenset()
    if resume is not None:
        keep_records(resume, lambda row: "rank-all.jsonl")  # the simulator stages one file, rows in event order
        meta.update(resume.meta_facts())
        done = resume.done
    meta["cost_model"] = cost.to_dict()
    meta["sim"] = {**facts, "steps_per_epoch": cfg.steps if shards is None else shards.steps_per_epoch}
    if shards is not None and injects_failures(cfg):  # the schedule every algorithm gets: rank -> step it fails at
        total = cfg.epochs * shards.steps_per_epoch
        fail_at = failure_schedule(cfg, total).fail_at
        meta["sim"]["failures"] = {str(r): s for r, s in sorted(fail_at.items()) if s < total}
    try:
        atomic_write_json(out_dir / "meta.json", meta)
    except OSError as exc:
        raise unwritable(out_dir, exc) from exc
    writer = StagingWriter(out_dir, "-all", out_dir.name, cfg.nodes)  # one file, rows in event order
    checkpoint = CellCheckpoint(out_dir, done)
    started: list[str] = []
    finished: list[str] = []
    lost: dict[str, str] = {}  # algorithm -> why a cell of it failed while the run went on (--on-failure continue)

    def emit(event: dict[str, Any]) -> None:
        if event["type"] == "record":
            writer.write(event)
        else:
            ui.event(event)

    def on_event(event: dict[str, Any]) -> None:
        (started if event["type"] == "cell_start" else finished).append(event["algorithm"])
        if event.get("failed"):
            lost.setdefault(event["algorithm"], event["failed"])
        if event["type"] == "cell_done" and not event.get("resumed"):
            writer.log.sync()  # the cell's records are on disk before the checkpoint says it is done
            checkpoint.cell_done(event["algorithm"], event["round"])
        ui.event(event)

    failure, interrupted, unwritable_exc = None, None, None
    try:
        with OneTorchThread():
            if shards is None:
                stats = simulate_cost_only(cfg, dataset.workload, cost, emit, on_event, done)
            else:
                stats = simulate_algorithms(cfg, dataset, shards, cost, emit, on_event, done)
        used = {size: name for s in stats for size, name in s.allreduce_used.items()}
        meta["cost_model"]["allreduce_by_bytes"] = {str(size): used[size] for size in sorted(used)}
    except ResultsUnwritable as exc:  # the disk, not the algorithm: no traceback, the run ends
        failure, unwritable_exc = ("results folder", str(exc)), exc
    except NodeLost as exc:  # an injected failure under --on-failure stop: the run ends, no traceback
        failure = ("failure injection", str(exc))
    except Exception as exc:  # a node raised: that algorithm failed, the later ones are skipped
        traceback.print_exc(file=sys.stderr)
        failure = ("simulator", last_line(exc))
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: keep what was recorded, marked interrupted, then stop
        interrupted = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
    finally:
        writer.close()
    signal_name = interrupted.name if interrupted is not None else None
    statuses, reasons = statuses_for(cfg, started, finished, failure, signal_name, lost)
    status = run_status(failure is not None, signal_name)
    with deferred():  # a Ctrl-C now lets the results be finished first (a second one still exits at once)
        summary = write_results(out_dir, cfg, meta, statuses, reasons, status)
        checkpoint.finish(status)
    if unwritable_exc is not None:
        raise unwritable_exc
    if failure:
        from rich.markup import escape

        ui.console.print(f"[bold red]failed:[/] {escape(failure[1])}", highlight=False)
    return summary, status, interrupted


def _read_records(out_dir: Path):
    import pandas as pd

    return pd.read_json(out_dir / "records.jsonl", lines=True, dtype=False)
