"""Where a run keeps its checkpoints inside its results folder (`bench.run.resume` says what they mean).

DIR/checkpoint.json names the finished cells (and the last epoch checkpoint of the running one);
DIR/.checkpoints/<algorithm>-round<k>/rank<r>-epoch<e>.pt holds a node's state inside a cell (real processes,
`--checkpoint-every`), with rank<r>-epoch<e>.json beside it: the number of record rows that node had written.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from bench.base.files import atomic_write_bytes, atomic_write_json

CHECKPOINT = "checkpoint.json"
NODE_STATES = ".checkpoints"


def cell_folder(out_dir: Path, algorithm: str, number: int) -> Path:
    return out_dir / NODE_STATES / f"{algorithm}-round{number}"


def state_path(folder: Path, rank: int, epoch: int, suffix: str = ".pt") -> Path:
    return folder / f"rank{rank}-epoch{epoch}{suffix}"


def save_node_state(folder: Path, rank: int, epoch: int, state: dict[str, Any]) -> None:
    """The node's state (torch.save) and its record count, each written atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(state_path(folder, rank, epoch), buf.getvalue())
    atomic_write_json(state_path(folder, rank, epoch, ".json"), {"records": state["records"]})


def load_node_state(folder: Path, rank: int, epoch: int) -> dict[str, Any]:
    import torch

    return torch.load(state_path(folder, rank, epoch), map_location="cpu", weights_only=False)
