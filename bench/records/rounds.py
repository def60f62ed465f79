"""Rounds of one launch (`swarmbench run --repeat K`): a metric's median over the rounds, its 95 % interval, and how
far it moved from round to round.

The interval is a percentile bootstrap of the median: the rounds are resampled with replacement, the median of every
resample taken, and the 2.5th and 97.5th percentiles of those medians are the bounds. It needs no assumption about
how throughput is distributed (a noisy machine gives skewed, heavy-tailed timings), but with few rounds it cannot be
wider than [min, max] of the rounds, which holds the true median with probability 1 - 2^(1-K) only (K = 5: 94 %):
it is a 95 % interval in name from about K = 6 on. Resampling is seeded by the run's seed, so the same records
always give the same bounds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

CONFIDENCE = 0.95
RESAMPLES = 10_000
INTERVAL_METHOD = (
    f"percentile bootstrap of the median over the rounds ({RESAMPLES} resamples, {CONFIDENCE:.0%}, seeded by --seed)"
)


def median_interval(values: Sequence[float], seed: int) -> tuple[float, float, float]:
    """(median, lo, hi) of `values` (one per round); lo and hi are nan for a single round, and equal the median when
    every round gave the same value (the simulator)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    median = float(np.median(v))
    if len(v) < 2:
        return median, math.nan, math.nan
    if np.all(v == v[0]):
        return median, median, median
    picks = np.random.default_rng(seed).integers(0, len(v), size=(RESAMPLES, len(v)))
    medians = np.median(v[picks], axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(medians, [tail, 100 - tail])
    return median, float(lo), float(hi)


def drift(values: Sequence[float]) -> float:
    """How far one algorithm's value moved across rounds: max / min (1 = not at all); nan for one round."""
    if len(values) < 2 or min(values) <= 0:
        return math.nan
    return max(values) / min(values)


def combine(per_round: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One summary row's measurements from each round's: a value every round agrees on as it is, else the median
    over the rounds (the lower middle value for counts, so a count stays one that was measured)."""
    keys = dict.fromkeys(k for row in per_round.values() for k in row)
    out: dict[str, Any] = {}
    for key in keys:
        values = [row[key] for row in per_round.values() if row.get(key) is not None]
        if not values:
            continue
        if all(v == values[0] for v in values):
            out[key] = values[0]
        elif all(isinstance(v, int) for v in values):
            out[key] = statistics.median_low(values)
        else:
            out[key] = statistics.median(values)
    return out


def throughput_columns(
    sps: dict[int, float], reference: dict[int, float] | None, seed: int
) -> dict[str, float | int | None]:
    """The summary's round columns from one algorithm's samples/s by round and the reference algorithm's (allreduce)
    by round: the median, interval and drift of samples/s, and of its ratio to the reference in the same round
    (pairing by round cancels what the machine did during that round)."""
    out: dict[str, float | int | None] = {}
    if not sps:
        return out
    values = [sps[k] for k in sorted(sps)]
    median, lo, hi = median_interval(values, seed)
    out.update(samples_per_s_median=median, samples_per_s_lo=_num(lo), samples_per_s_hi=_num(hi))
    out["samples_per_s_drift"] = _num(drift(values))
    if reference:
        ratios = [sps[k] / reference[k] for k in sorted(sps) if reference.get(k)]
        if ratios:
            median, lo, hi = median_interval(ratios, seed)
            out.update(samples_per_s_ratio_median=median, samples_per_s_ratio_lo=_num(lo))
            out["samples_per_s_ratio_hi"] = _num(hi)
    return out


def _num(value: float) -> float | None:
    return None if math.isnan(value) else value
