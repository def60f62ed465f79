"""The results contract, read side: a folder's meta.json and records.jsonl (report, compare, sweep --resume)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.base.errors import UserError


def read_meta(folder: Path) -> dict[str, Any]:
    """A results folder's meta.json, or a UserError saying why the folder is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"'{folder}' is not a folder: pass a results folder written by swarmbench")
    path = folder / "meta.json"
    if not path.is_file():
        raise UserError(f"'{folder}' is not a results folder (no meta.json): pass a folder written by swarmbench")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"'{path}' is not valid JSON ({exc}): the results folder is damaged") from None
    if not isinstance(meta, dict) or "schema_version" not in meta:
        raise UserError(f"'{path}' has no schema_version: '{folder}' is not a swarmbench results folder")
    return meta


def read_records(folder: Path):
    """records.jsonl as a DataFrame with the tidy columns (empty frame when the file is absent)."""
    import pandas as pd

    path = Path(folder) / "records.jsonl"
    rows = []
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    frame = pd.DataFrame(rows)
    for col in ("run_id", "algorithm", "nodes", "rank", "epoch", "step", "metric", "value", "kind"):
        if col not in frame.columns:
            frame[col] = None
    return frame
