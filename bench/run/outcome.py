"""What every run writes to and ends with, on either engine: its results folder (claimed with a lock for the run's
life), each algorithm's status, and the results written even when the run was interrupted or the disk filled up."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.base.errors import ResultsUnwritable, UserError
from bench.base.files import LOCK_NAME, FolderLock, atomic_write_json
from bench.base.host import new_results_folder
from bench.records.write import STAGING, finalize, now_iso
from bench.training.config import RunConfig


def check_out_dir(out: str | None) -> Path:
    """The run's results folder: --out if it is new or empty, else a fresh one under results/."""
    if out is None:
        return new_results_folder()
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out '{out}' exists and is not a folder: choose a new folder name")
    if path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()):
        raise UserError(f"--out '{out}' exists and is not empty: choose a new folder or remove it first")
    return path


@contextlib.contextmanager
def claimed_out_dir(out: str | None, resume: bool = False) -> Iterator[Path]:
    """The results folder (`check_out_dir`), created and locked (DIR/.lock) until the block ends: a second run into
    the same folder fails with a UserError. A block that ends with nothing written removes the folder it created,
    so an error before the run starts leaves no partial results behind. `resume`: the folder of the interrupted run
    that `swarmbench run --resume` continues (it holds that run's results)."""
    path = Path(out) if out is not None else new_results_folder()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out '{out}' exists and is not a folder: choose a new folder name")
    created = [p for p in (path, *path.parents) if not p.exists()]  # this folder and its missing parents
    try:
        path.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(path)
        locked = lock.acquire()
    except OSError as exc:
        _remove_empty(created)
        why = exc.strerror or str(exc)
        raise UserError(f"--out '{path}' is not writable ({why}): choose a folder you can write to") from None
    if not locked:
        holder = lock.holder()
        by = f" (process {holder})" if holder else ""
        raise UserError(f"--out '{path}' is in use by another run{by}: wait for it to finish or choose another folder")
    try:
        if not resume:
            check_out_dir(str(path))  # checked under the lock: nobody else writes there now
        yield path
    finally:
        lock.release()
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a run created, deepest first, as long as they are empty (a run's results stay)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def statuses_for(
    cfg: RunConfig,
    started: list[str],
    done: list[str],
    failure: tuple[str, str] | None,
    interrupted: str | None = None,
    lost: dict[str, str] | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Per algorithm ok/failed/interrupted/skipped and the reason, from the progress seen (one cell_start and one
    cell_done per algorithm and round), the failure (who, error) and the signal that interrupted the run (e.g.
    "SIGINT"), if any. An algorithm is ok once all its --repeat rounds are done. `lost`: the algorithms a cell of
    which failed while the run went on (a node failed under --on-failure continue), with why: failed."""
    statuses, reasons = {}, {}
    who, error = failure if failure else ("", "")
    for name in cfg.algorithms:
        finished = done.count(name)
        running = started.count(name) > finished  # it was in a round when the run ended
        rounds = f" ({finished} of {cfg.repeat} rounds done)" if cfg.repeat > 1 else ""
        if lost and name in lost:
            statuses[name] = "failed"
            reasons[name] = lost[name]
        elif finished >= cfg.repeat:
            statuses[name] = "ok"
        elif running and interrupted:
            statuses[name] = "interrupted"
            reasons[name] = f"stopped by {interrupted}{rounds}"
        elif running and failure:
            statuses[name] = "failed"
            reasons[name] = f"{who}: {error}{rounds}"
        else:
            statuses[name] = "skipped"
            if interrupted:
                when = "before it started" if not finished else "between its rounds"
                reasons[name] = f"the run was stopped by {interrupted} {when}{rounds}"
            elif failure:
                reasons[name] = f"another algorithm failed{rounds}" if finished else "an earlier algorithm failed"
            else:
                reasons[name] = ""
    if failure and not started and not interrupted:
        reasons = {name: f"workers failed before training: {who}: {error}" for name in cfg.algorithms}
    return statuses, reasons


def unwritable(folder: Path, exc: OSError) -> ResultsUnwritable:
    """The one line for a results folder that stopped taking writes."""
    why = exc.strerror or str(exc)
    return ResultsUnwritable(f"cannot write the results to '{folder}': {why}: free some space or choose another --out")


def run_status(failed: bool, interrupted: str | None) -> str:
    return "interrupted" if interrupted else "failed" if failed else "ok"


def write_results(
    out_dir: Path, cfg, meta: dict[str, Any], statuses: dict[str, str], reasons: dict[str, str], status: str
) -> Any:
    """`finalize`, or when the folder no longer takes writes (a full disk, a folder made read-only): meta.json with
    status failed if even that can be written, the records left in the staging folder, and ResultsUnwritable."""
    try:
        return finalize(out_dir, cfg, meta, statuses, reasons, status)
    except OSError as exc:
        reason = f"cannot write the results to '{out_dir}': {exc.strerror or exc}"
        quick = {**meta, "status": "failed", "ended_at": now_iso(), "error": reason}
        quick["algorithms"] = {
            n: {"status": "failed" if statuses.get(n) != "skipped" else "skipped", "reason": reason}
            for n in cfg.algorithms
        }
        with contextlib.suppress(OSError):  # the folder may take no write at all: the error line says it
            atomic_write_json(out_dir / "meta.json", quick)
        kept = f"; the records so far are in '{out_dir / STAGING}'" if (out_dir / STAGING).is_dir() else ""
        raise ResultsUnwritable(f"{reason}{kept}: free some space or choose another --out") from exc


def records_kept(out_dir: Path) -> int:
    try:
        with open(out_dir / "records.jsonl", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def interrupted_lines(out_dir: Path, signal_name: str, resumable: bool = True) -> list[str]:
    """What an interrupted run prints after writing its results: what was kept, and the command that continues it
    in the same folder (`swarmbench run --resume DIR`: the finished cells are kept, the others run), or for what
    cannot be resumed (a simulated series) the command that runs its configuration again into a new folder."""
    kept = (
        f"interrupted by {signal_name}: every worker stopped; {records_kept(out_dir)} records kept in {out_dir} "
        "(status interrupted)"
    )
    if not resumable:
        again = shlex.join(["swarmbench", "run", "--config", str(out_dir / "meta.json"), "--out", f"{out_dir}-2"])
        return [kept, f"to run this configuration again: {again}"]
    return [kept, f"to continue it: {shlex.join(['swarmbench', 'run', '--resume', str(out_dir)])}"]
