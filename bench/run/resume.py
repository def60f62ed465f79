"""Checkpoints and `swarmbench run --resume DIR`: continue an interrupted run in its own folder, with the
configuration stored in DIR/meta.json.

The unit of a checkpoint is the cell: one algorithm in one round (`bench.training.loop.run_rounds`). A cell depends
only on the configuration (seeds, shards, initial weights are derived from it), never on the cells before it, so a
run that keeps the records of its finished cells and runs the others writes the same records as one that was never
stopped. DIR/checkpoint.json lists the finished cells; it is rewritten (atomically) once a cell's records are all on
disk, and removed when the run ends ok. A resumed run drops the partial records of the cell that was running (it
runs that cell again from its start) and keeps every other line as it was.

Inside a cell, real processes only (`--checkpoint-every E`): every node saves its state after every E-th epoch
(`bench.training.loop.node_state`), and checkpoint.json's `partial` names the last epoch all nodes saved; a resumed
run keeps each rank's rows up to it and starts that cell from there.

Why not inside a cell in the simulator: a consistent mid-cell state is more than every node's model, optimizer,
sampler and random streams. Asynchronous nodes are at different virtual instants, inside different calls (a node
may be in a compute section, another blocked in a collective, a third waiting on a message still on its link), and
that state lives on the nodes' greenlet stacks. Stopping every node at its own epoch boundary would change the order
of events (the simulated trajectory) and so the results; restarting the cell is exact.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bench.base.errors import UserError
from bench.base.files import atomic_write_json, atomic_write_text
from bench.records.checkpoints import CHECKPOINT, NODE_STATES, cell_folder, state_path
from bench.records.write import STAGING, now_iso
from bench.run.checks import resolve
from bench.training.config import RunConfig

Cell = tuple[str, int]  # (algorithm, round)


class CellCheckpoint:
    """DIR/checkpoint.json: the cells finished so far, and the last epoch checkpoint of the running cell (`partial`:
    {algorithm, round, epoch}, real processes with --checkpoint-every). `cell_done` is called once the cell's
    records are on disk, `epoch_done` once every node's state of that epoch is saved."""

    def __init__(self, out_dir: Path, done: frozenset[Cell] = frozenset(), partial: dict | None = None) -> None:
        self.out_dir = out_dir
        self.path = out_dir / CHECKPOINT
        self.done: list[Cell] = sorted(done, key=lambda c: (c[1], c[0]))
        self.partial = partial
        self._write()

    def cell_done(self, algorithm: str, number: int) -> None:
        self.done.append((algorithm, number))
        self.partial = None
        self._write()
        shutil.rmtree(cell_folder(self.out_dir, algorithm, number), ignore_errors=True)

    def epoch_done(self, algorithm: str, number: int, epoch: int) -> None:
        old, self.partial = self.partial, {"algorithm": algorithm, "round": number, "epoch": epoch}
        self._write()
        if old is not None and old["epoch"] != epoch:  # the previous epoch's node states are not needed any more
            for path in cell_folder(self.out_dir, old["algorithm"], old["round"]).glob(f"rank*-epoch{old['epoch']}.*"):
                path.unlink(missing_ok=True)

    def _write(self) -> None:
        done = [list(c) for c in self.done]
        atomic_write_json(self.path, {"version": 1, "cells_done": done, "partial": self.partial})

    def finish(self, status: str) -> None:
        """A run that ended ok has nothing left to resume."""
        if status == "ok":
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.out_dir / NODE_STATES, ignore_errors=True)


@dataclass
class Resume:
    """What `swarmbench run --resume DIR` continues."""

    out_dir: Path
    done: frozenset[Cell]  # the cells whose records are kept
    previous: dict[str, Any]  # the interrupted run's meta.json
    partial: dict[str, Any] | None = None  # {algorithm, round, epoch}: the running cell's last epoch checkpoint
    kept: int = 0  # record lines kept (set by `keep_records`)

    def meta_facts(self) -> dict[str, Any]:
        """What the resumed run's meta.json keeps from the interrupted one, and the resume itself."""
        before = self.previous.get("resumed") or []
        entry = {
            "at": now_iso(),
            "from_status": self.previous.get("status"),
            "cells_kept": [list(c) for c in sorted(self.done, key=lambda c: (c[1], c[0]))],
            "records_kept": self.kept,
        }
        if self.partial is not None:
            entry["from_epoch"] = dict(self.partial)
        return {
            "argv": self.previous.get("argv"),
            "started_at": self.previous.get("started_at"),
            "resumed": [*before, entry],
        }


def open_resume(
    folder: str, given: dict[str, Any], config_file: str | None, sets: tuple[str, ...], out: str | None
) -> tuple[RunConfig, Resume]:
    """The stored configuration and the finished cells of DIR, after checking that it can be resumed and that no
    option given beside --resume conflicts with it (every refusal is one UserError line)."""
    path = Path(folder)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"--resume '{folder}' holds no meta.json: pass the results folder of an interrupted run")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--resume '{folder}': meta.json is not readable ({exc}): pass a run's folder") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise UserError(f"--resume '{folder}' is not a run's results folder (a sweep? use `swarmbench sweep --resume`)")
    if meta.get("series") or meta["config"].get("node_series"):
        raise UserError(f"--resume '{folder}' is a simulated scaling series: resume is per run; rerun the series")
    if meta.get("launch", {}).get("mode") == "external":
        raise UserError(
            f"--resume '{folder}': that run was started by {meta.get('launcher')} on every rank; "
            "resume it with swarmbench starting the workers (--launcher), or run it again"
        )
    again = f"swarmbench run --config {meta_path} --out NEW"
    if meta.get("status") == "ok":
        raise UserError(f"--resume '{folder}': that run finished (status ok), nothing to resume; run it again: {again}")
    checkpoint = path / CHECKPOINT
    if not checkpoint.is_file():
        raise UserError(f"--resume '{folder}' has no checkpoint ({CHECKPOINT}); to run it again: {again}")
    if config_file:
        raise UserError("--resume runs the configuration stored in DIR/meta.json: drop --config")
    if sets:
        raise UserError("--resume runs the configuration stored in DIR/meta.json: drop --set")
    if out is not None and Path(out).resolve() != path.resolve():
        raise UserError(f"--resume continues '{folder}' in place: drop --out")
    try:
        saved = json.loads(checkpoint.read_text())
        done = frozenset((str(a), int(r)) for a, r in saved["cells_done"])
        partial = saved.get("partial")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--resume '{folder}': {CHECKPOINT} is not readable ({exc}); run it again: {again}") from None
    stored = resolve({}, str(meta_path))
    _check_conflicts(stored, given, str(meta_path))
    if partial is not None and not all(_node_counts(path, partial, stored.nodes)):
        partial = None  # a node's state is missing: that cell runs again from its start
    return stored, Resume(path, done, meta, partial)


def _node_counts(out_dir: Path, partial: dict[str, Any], nodes: int) -> list[int | None]:
    """Per rank, the record rows it had written at the epoch checkpoint `partial` (None where its files are gone)."""
    folder = cell_folder(out_dir, partial["algorithm"], partial["round"])
    counts: list[int | None] = []
    for rank in range(nodes):
        try:
            state = state_path(folder, rank, partial["epoch"])
            counts.append(json.loads(state.with_suffix(".json").read_text())["records"] if state.is_file() else None)
        except (OSError, ValueError, KeyError):
            counts.append(None)
    return counts


def partial_rows(resume: Resume, nodes: int) -> dict[str, int]:
    """Staging file -> the rows of the partially done cell it keeps (the rows each rank wrote before the epoch
    checkpoint it resumes from; rank 0 also wrote the rows of no rank)."""
    if resume.partial is None:
        return {}
    return {f"rank{r}.jsonl": int(n or 0) for r, n in enumerate(_node_counts(resume.out_dir, resume.partial, nodes))}


def _check_conflicts(stored: RunConfig, given: dict[str, Any], meta_path: str) -> None:
    """An option given beside --resume must agree with the stored configuration (it may restate it)."""
    if not given:
        return
    merged = resolve(given, meta_path)
    if merged == stored:
        return
    new, old = merged.to_dict(), stored.to_dict()
    for f in fields(RunConfig):
        if new[f.name] != old[f.name]:
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            raise UserError(
                f"{flag} {_show(new[f.name])} conflicts with the interrupted run's {f.name} = {_show(old[f.name])}: "
                "drop it to resume (or run a new folder with --config DIR/meta.json)"
            )


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def keep_records(
    resume: Resume, staging_file: Callable[[dict[str, Any]], str], partial: dict[str, int] | None = None
) -> int:
    """Rewrite DIR's staging files with the record lines of the finished cells, byte for byte, in their order, and
    of the partially done cell (`resume.partial`) the first `partial[file]` lines of each staging file.

    The lines come from the staging files when the run was killed before merging them (SIGKILL, power loss), else
    from records.jsonl (written by an interrupted or failed run). `staging_file(row)` names the staging file a row
    belongs to ("rank0.jsonl", ...). Returns the number of lines kept."""
    out_dir = resume.out_dir
    staging = out_dir / STAGING
    sources = sorted(staging.glob("rank*.jsonl")) if staging.is_dir() else []
    if not sources and (out_dir / "records.jsonl").is_file():
        sources = [out_dir / "records.jsonl"]
    kept: dict[str, list[str]] = {}
    partial = dict(partial or {})
    cell = (resume.partial["algorithm"], resume.partial["round"]) if resume.partial else None
    for source in sources:
        for line in source.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill: its cell is run again anyway
                continue
            key, name = (row.get("algorithm"), row.get("round")), staging_file(row)
            if key in resume.done:
                kept.setdefault(name, []).append(line)
            elif key == cell and partial.get(name, 0) > 0:
                kept.setdefault(name, []).append(line)
                partial[name] -= 1
    for name, lines in kept.items():
        atomic_write_text(staging / name, "".join(line + "\n" for line in lines))
    for source in sources:
        if source.parent == staging and source.name not in kept:
            source.unlink()
    resume.kept = sum(len(lines) for lines in kept.values())
    return resume.kept
