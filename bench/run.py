"""`swarmbench run`: validate everything, then launch, then write the results contract and print the tables."""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path

from bench.config import RunConfig
from bench.errors import UserError

RESULTS_ROOT = Path("results")


def check_out_dir(out: str | None) -> Path:
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return RESULTS_ROOT / f"{stamp}-{secrets.token_hex(3)}"
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out '{out}' exists and is not a folder: choose a new folder name")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"--out '{out}' exists and is not empty: choose a new folder or remove it first")
    return path


def preflight(cfg: RunConfig) -> None:
    """Checks that need the data and the model: done before anything is written."""
    from bench.data import load_dataset
    from bench.models import build_model
    from bench.train import make_shards

    dataset = load_dataset(cfg.dataset, cfg.seed, cfg.data_dir)
    build_model(cfg.model, dataset.input_shape, dataset.num_classes, cfg.seed)
    make_shards(cfg, dataset)


def execute(cfg: RunConfig, out: str | None, argv: list[str], interactive: bool | None = None) -> int:
    """Run every selected algorithm under one launch; returns the process exit status (0 ok, 1 failed)."""
    from bench.engine.launch import LAUNCHERS
    from bench.records import atomic_write_json, build_meta, finalize
    from bench.report import print_tables
    from bench.ui import RunUI

    out_dir = check_out_dir(out)
    preflight(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = out_dir.name
    meta = build_meta(cfg, run_id=run_id, argv=argv, engine="processes", backend="gloo", transport="p2p")
    atomic_write_json(out_dir / "meta.json", meta)
    with RunUI(cfg.algorithms, interactive) as ui:
        outcome = LAUNCHERS[cfg.launcher].launch(cfg, out_dir, run_id, ui)
    statuses, reasons = {}, {}
    failed_rank, error = outcome.root_cause() if outcome.failed else (None, "")
    who = "the launcher" if failed_rank == -1 else f"rank {failed_rank}"
    for name in cfg.algorithms:
        if name in outcome.done:
            statuses[name] = "ok"
        elif name in outcome.started and outcome.failed:
            statuses[name] = "failed"
            reasons[name] = f"{who}: {error}"
        else:
            statuses[name] = "skipped"
            reasons[name] = "an earlier algorithm failed" if outcome.failed else ""
    if outcome.failed and not outcome.started:
        reasons = {name: f"workers failed before training: {who}: {error}" for name in cfg.algorithms}
    summary = finalize(out_dir, cfg, meta, statuses, reasons, outcome.failed)
    ui.console.print(f"results: {out_dir}")
    print_tables(summary, ui.console)
    if outcome.failed:
        from rich.markup import escape

        ui.console.print(f"[bold red]failed:[/] {escape(who)}: {escape(error)}", highlight=False)
        return 1
    return 0
