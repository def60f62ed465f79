"""Facts about this host that several layers need: the cores this process may use, a new results folder's name."""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path

RESULTS_ROOT = Path("results")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), else all of the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity mask
        return os.cpu_count() or 1


def new_results_folder(prefix: str = "") -> Path:
    """results/[PREFIX-]YYYYmmdd-HHMMSS-RANDOM: a fresh folder name when the user gives no --out."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return RESULTS_ROOT / f"{prefix + '-' if prefix else ''}{stamp}-{secrets.token_hex(3)}"
