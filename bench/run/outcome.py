"""What every run writes to and ends with, on either engine: its results folder and each algorithm's status."""

from __future__ import annotations

from pathlib import Path

from bench.base.errors import UserError
from bench.base.host import new_results_folder
from bench.training.config import RunConfig


def check_out_dir(out: str | None) -> Path:
    """The run's results folder: --out if it is new or empty, else a fresh one under results/."""
    if out is None:
        return new_results_folder()
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out '{out}' exists and is not a folder: choose a new folder name")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"--out '{out}' exists and is not empty: choose a new folder or remove it first")
    return path


def statuses_for(
    cfg: RunConfig, started: list[str], done: list[str], failure: tuple[str, str] | None
) -> tuple[dict[str, str], dict[str, str]]:
    """Per algorithm ok/failed/skipped and the reason, from the progress seen and the failure (who, error)."""
    statuses, reasons = {}, {}
    who, error = failure if failure else ("", "")
    for name in cfg.algorithms:
        if name in done:
            statuses[name] = "ok"
        elif name in started and failure:
            statuses[name] = "failed"
            reasons[name] = f"{who}: {error}"
        else:
            statuses[name] = "skipped"
            reasons[name] = "an earlier algorithm failed" if failure else ""
    if failure and not started:
        reasons = {name: f"workers failed before training: {who}: {error}" for name in cfg.algorithms}
    return statuses, reasons
