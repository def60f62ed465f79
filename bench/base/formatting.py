"""Numbers as text: the one home of the formatting rules of the run tables, reports, plots, compare and benchmarks.

The table variants print a missing value (None, a float NaN) as "-" (`fmt_auto`, for benchmark rows: blank); the
variants differ in how a number is shaped because their readers differ (a results table, a grid key, a verdict, a
timing, a plot label).
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "-"
UNITS = {"KB": 1e3, "MB": 1e6}  # `fmt_spec` units: the value is divided by this first


def is_missing(value: Any) -> bool:
    """None or a float NaN: a cell with nothing measured."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_spec(value: Any, spec: str) -> str:
    """A run-table cell: `spec` is a format spec, 'd' (an integer) or 's' (text), optionally with a unit
    (':KB', ':MB': the value divided by 1e3 or 1e6 first)."""
    if is_missing(value):
        return MISSING
    fmt, _, unit = spec.partition(":")
    if unit:
        value = value / UNITS[unit]
    if fmt == "d":
        return str(int(value))
    if fmt == "s":
        return str(value)
    return format(value, fmt)


def fmt_value(value: Any, spec: str, scale: float = 1.0) -> str:
    """A report cell: the value times `scale` in the format `spec`; text that is no number as it is."""
    if is_missing(value):
        return MISSING
    try:
        v = float(value) * scale
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return MISSING
    return format(v, spec)


def fmt_key(value: Any) -> str:
    """A grid key or identity value: integral floats (a CSV round trip) without their '.0'."""
    if is_missing(value):
        return MISSING
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def fmt_compact(value: float | None) -> str:
    """A compared metric: thousands separated from 10,000 on, else 4 significant digits."""
    if value is None:
        return MISSING
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def fmt_auto(value: Any) -> str:
    """A benchmark cell of any type: 3 significant digits, scientific notation for very large or small numbers."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def fmt_bytes(value: float) -> str:
    """A byte count in the largest unit it reaches (B, kB, MB, GB), 3 significant digits: a plot's label."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} B"
