"""`swarmbench compare BASELINE CURRENT`: match the cells of two results folders and judge every metric.

Rows are matched on the identity columns (algorithm, nodes, topology, bits, local_steps, seed, every grid key)
and the settings (dataset, model, epochs, batch size, lr, partition). How a metric is judged depends on what it
is, never on absolute numbers measured on two machines:

- deterministic metrics (bytes, samples, steps; and with the simulator also simulated time, throughput and
  accuracy) must match within a tiny tolerance; any change is a regression (`changed`): if it is intended,
  regenerate the baseline;
- noisy metrics of real runs (throughput) are judged as ratios to a reference measured in the same run
  (each algorithm's samples/s divided by allreduce's in the same cell) with a tolerance band; only a change in
  the bad direction is a regression (`regressed`), one in the good direction is reported as `improved`;
- when both sides ran with `--repeat` (several rounds), throughput is judged on its 95 % intervals instead of the
  tolerance band: the per-round ratio to allreduce in the same round, regressed only when the current interval lies
  wholly on the bad side of the baseline's (the two do not overlap), improved when wholly on the good side.

Exit 0: nothing regressed; 1: a regression (also a cell missing or failed in CURRENT); 2: unusable input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

from bench.analysis.load import SETTINGS, Results, load_results
from bench.base.console import closest
from bench.base.errors import UserError
from bench.base.formatting import fmt_compact, fmt_key
from bench.records.tables import REFERENCE_ALGORITHM, markdown

REGRESSIONS = {"changed", "regressed", "missing", "failed"}


@dataclass(frozen=True)
class Rule:
    """How one metric is judged for one engine."""

    metric: str
    tolerance: float
    absolute: bool = False  # tolerance in the metric's units, else relative to the baseline
    better: str = ""  # "higher" / "lower": noisy, only the bad direction regresses; "": deterministic, any change
    ratio: bool = False  # divide by the reference algorithm's value in the same cell first
    atol: float = 1e-12  # differences this small are equal whatever the tolerance (values at float zero)
    needs: tuple[str, ...] = ()  # summary columns it is computed from (for the missing-column check)

    def describe(self) -> str:
        kind = "absolute" if self.absolute else "relative"
        basis = f" of the ratio to {REFERENCE} in the same cell" if self.ratio else ""
        judged = "any change regresses" if not self.better else f"{self.better} is better"
        return f"{kind} tolerance {self.tolerance:g}{basis}; {judged}"


REFERENCE = REFERENCE_ALGORITHM  # noisy throughput is judged as a ratio to this algorithm's in the same cell
EXACT = 1e-9  # relative: deterministic counts survive a CSV round trip bit for bit, this only absorbs float printing
SIM = 1e-6  # relative: simulated time and throughput are arithmetic on a cost model
_BYTES = ("bytes_sent_total", "bytes_per_node_per_step", "bytes_per_sample", "bytes_grad", "bytes_model")
DETERMINISTIC = [
    Rule(m, EXACT, needs=(m,) if m != "bytes_per_sample" else ("bytes_sent_total", "samples")) for m in _BYTES
]
DETERMINISTIC += [Rule("bytes_control", EXACT, needs=("bytes_control",)), Rule("samples", EXACT, needs=("samples",))]
DETERMINISTIC += [Rule("steps_per_node", EXACT, needs=("steps_per_node",))]

# engine -> the default rules (besides the deterministic byte counts, which hold for every engine)
RULES: dict[str, list[Rule]] = {
    "sim": [
        *DETERMINISTIC,
        Rule("train_seconds", SIM, needs=("train_seconds",)),
        Rule("samples_per_s", SIM, needs=("samples_per_s",)),
        Rule("comm_fraction", SIM, needs=("comm_fraction",)),
        # Accuracy and losses come out of float reductions whose last bits may differ between CPU instruction
        # sets: 0.001 accuracy is one test image in a thousand.
        Rule("test_acc", 1e-3, absolute=True, needs=("test_acc",)),
        # A language model's perplexity in accuracy's place (no column check: a classifier's summary leaves it empty,
        # and older summaries lack it).
        Rule("test_ppl", 1e-3),
        Rule("final_loss", 1e-3, needs=("final_loss",)),
        # allreduce's models agree up to rounding: 3e-13 on one CPU may be 5e-13 on another.
        Rule("consensus_distance", 1e-3, atol=1e-9, needs=("consensus_distance",)),
    ],
    "processes": [
        *DETERMINISTIC,
        Rule("samples_per_s", 0.3, better="higher", ratio=True, needs=("samples_per_s",)),
        Rule("test_acc", 0.05, absolute=True, better="higher", needs=("test_acc",)),
        Rule("test_ppl", 0.05, better="lower"),  # relative: 5 % of the baseline's perplexity
    ],
}
# Metrics a user may ask for with --metric that are not judged by default on real runs.
EXTRA_REAL = [
    Rule("train_seconds", 0.3, better="lower", ratio=True, needs=("train_seconds",)),
    Rule("final_loss", 0.2, better="lower", needs=("final_loss",)),
    Rule("consensus_distance", 0.5, better="lower", needs=("consensus_distance",)),
    Rule("comm_fraction", 0.1, absolute=True, better="lower", needs=("comm_fraction",)),
    Rule("node_acc_mean", 0.05, absolute=True, better="higher", needs=("node_acc_mean",)),
]


def rules_for(engine: str, wanted: list[str] | None) -> list[Rule]:
    base = RULES.get(engine, RULES["processes"])  # an unknown engine is treated as real processes (noisy)
    if not wanted:
        return base
    everything = {r.metric: r for r in [*EXTRA_REAL, *base]} if engine != "sim" else {r.metric: r for r in base}
    return [everything[m] for m in wanted if m in everything]


def known_metrics() -> list[str]:
    names: list[str] = []
    for r in [*RULES["sim"], *RULES["processes"], *EXTRA_REAL]:
        if r.metric not in names:
            names.append(r.metric)
    return names


def parse_tolerances(items: tuple[str, ...]) -> tuple[float | None, dict[str, float]]:
    """`--tolerance 0.1` (every metric) and `--tolerance samples_per_s=0.3` (one metric)."""
    glob: float | None = None
    per: dict[str, float] = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        try:
            tol = float(value)
        except ValueError:
            raise UserError(f"--tolerance '{item}' is not a number or METRIC=NUMBER: write e.g. 0.05") from None
        if not tol >= 0:
            raise UserError(f"--tolerance '{item}' must be >= 0")
        if not sep:
            glob = tol
            continue
        if key not in known_metrics():
            raise UserError(
                f"--tolerance: unknown metric '{key}'{closest(key, known_metrics())}: "
                f"choose from {', '.join(known_metrics())}"
            )
        per[key] = tol
    return glob, per


@dataclass
class Check:
    cell: str
    keys: dict[str, Any]
    metric: str
    baseline: float | None
    current: float | None
    change: float | None
    verdict: str
    rule: str = ""
    note: str = ""


def _norm(value: Any) -> str:
    try:
        f = float(value)
        return fmt_key(f) if not math.isnan(f) else "-"
    except (TypeError, ValueError):
        return "-" if value is None else str(value)


def _match_keys(base, cur) -> list[str]:
    keys = ["algorithm"]
    for k in [*base.keys, *cur.keys, *SETTINGS]:
        if k not in keys and k in base.summary.columns and k in cur.summary.columns:
            keys.append(k)
    return keys


def _index(results, keys: list[str], label: str) -> dict[tuple, dict[str, Any]]:
    out: dict[tuple, dict[str, Any]] = {}
    for row in results.summary.to_dict("records"):
        k = tuple(_norm(row[c]) for c in keys)
        if k in out:
            shown = ", ".join(f"{c}={v}" for c, v in zip(keys, k, strict=True))
            raise UserError(
                f"{label} '{results.folder}' has two rows for the same cell ({shown}): compare cannot match them"
            )
        out[k] = row
    return out


def _value(row: dict[str, Any], metric: str) -> float | None:
    try:
        v = float(row.get(metric))
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def judge(rule: Rule, b: float | None, c: float | None) -> tuple[float | None, str]:
    """(change, verdict): change is relative (or absolute for absolute rules) from b to c."""
    if b is None and c is None:
        return None, "skipped"
    if b is None:
        return None, "new"
    if c is None:
        return None, "missing"
    if abs(c - b) <= rule.atol:
        return (c - b if rule.absolute else 0.0), "ok"
    if rule.absolute:
        change = c - b
    elif b == 0:
        change = 0.0 if c == 0 else math.copysign(math.inf, c)
    else:
        change = (c - b) / abs(b)
    if abs(change) <= rule.tolerance * (1 + 1e-12) + 1e-15:
        return change, "ok"
    if not rule.better:
        return change, "changed"
    good = change > 0 if rule.better == "higher" else change < 0
    return change, "improved" if good else "regressed"


def compare(
    baseline: str,
    current: str,
    metrics: tuple[str, ...] = (),
    tolerances: tuple[str, ...] = (),
) -> tuple[list[Check], dict[str, Any]]:
    """Every check, and the facts of the comparison; UserError (exit 2) when the input is unusable.

    The steps: read both folders (`load_sides`), match their rows (`match_rows`), judge every row found on both
    sides metric by metric (`judge_row`), and name the rows only one side has."""
    glob, per = parse_tolerances(tolerances)
    wanted = _known(metrics)
    base, cur = load_sides(baseline, current, wanted)
    match = match_rows(base, cur, baseline, current)
    checks: list[Check] = []
    for k, brow in match.baseline.items():
        crow = match.current.get(k)
        if crow is None:
            checks.append(
                Check(match.label(k), match.cell(k), "-", None, None, None, "missing", note="cell absent from current")
            )
            continue
        checks += judge_row(match, k, brow, crow, wanted, glob, per)
    for k in match.current:
        if k not in match.baseline:
            checks.append(
                Check(match.label(k), match.cell(k), "-", None, None, None, "new", note="cell absent from baseline")
            )
    info = {
        "baseline": str(baseline),
        "current": str(current),
        "engines": sorted(base.engines | cur.engines),
        "match_keys": match.keys,
        "common_cells": len(match.common),
    }
    return checks, info


def _known(metrics: tuple[str, ...]) -> list[str]:
    """The metrics asked for with --metric, each one compare knows."""
    for m in metrics:
        if m not in known_metrics():
            raise UserError(
                f"--metric: unknown metric '{m}'{closest(m, known_metrics())}: choose from {', '.join(known_metrics())}"
            )
    return list(metrics)


def load_sides(baseline: str, current: str, wanted: list[str]) -> tuple[Results, Results]:
    """Both folders, read and checked to be comparable: one results schema, one engine, and the summary columns
    every rule to apply needs."""
    base, cur = load_results(baseline), load_results(current)
    if base.schema_version != cur.schema_version:
        raise UserError(
            f"results schema versions differ: baseline {base.schema_version}, current {cur.schema_version}: "
            "regenerate the baseline with this swarmbench (e.g. make reference)"
        )
    if base.engines and cur.engines and base.engines != cur.engines:
        raise UserError(
            f"engines differ: baseline {', '.join(sorted(base.engines))}, current {', '.join(sorted(cur.engines))}: "
            "compare results of the same engine"
        )
    kinds = {"sim" if _yes(d) else "processes" for d in [*base.summary["deterministic"], *cur.summary["deterministic"]]}
    for label, res in (("baseline", base), ("current", cur)):
        for engine in kinds:
            for rule in rules_for(engine, wanted):
                missing = [c for c in rule.needs if c not in res.present]
                other = cur if res is base else base
                if missing and (wanted or all(c in other.present for c in rule.needs)):
                    raise UserError(
                        f"{label} '{res.folder}' lacks the column(s) {', '.join(missing)} "
                        f"(needed for {rule.metric}): compare folders written by the same swarmbench"
                    )
    return base, cur


@dataclass
class Match:
    """The rows of both sides by their match key: the values of the `keys` columns, normalized (`_norm`)."""

    keys: list[str]
    baseline: dict[tuple, dict[str, Any]]
    current: dict[tuple, dict[str, Any]]
    shown: list[str]  # the key columns a check's cell label names (algorithm, nodes and what varies)
    columns: set[str] = field(default_factory=set)  # summary columns both sides have

    @property
    def common(self) -> list[tuple]:
        return [k for k in self.baseline if k in self.current]

    def cell(self, k: tuple) -> dict[str, Any]:
        return dict(zip(self.keys, k, strict=True))

    def label(self, k: tuple) -> str:
        kd = self.cell(k)
        return " ".join([kd["algorithm"], *(f"{c}={kd[c]}" for c in self.shown if c != "algorithm")])


def match_rows(base: Results, cur: Results, baseline: str, current: str) -> Match:
    """Index both sides' rows on the identity and settings columns they share; at least one row must match."""
    keys = _match_keys(base, cur)
    match = Match(
        keys=keys,
        baseline=_index(base, keys, "baseline"),
        current=_index(cur, keys, "current"),
        shown=[k for k in keys if k in ("algorithm", "nodes") or k in base.varying(keys) or k in cur.varying(keys)],
        columns=set(base.summary.columns) & set(cur.summary.columns),
    )
    if not match.common:
        raise UserError(f"no common cells between '{baseline}' and '{current}'{_why_disjoint(base, cur, keys)}")
    return match


def judge_row(
    match: Match,
    k: tuple,
    brow: dict[str, Any],
    crow: dict[str, Any],
    wanted: list[str],
    glob: float | None,
    per: dict[str, float],
) -> list[Check]:
    """The checks of one row found on both sides: its status, then each metric by its engine's rule (a
    tolerance from --tolerance replaces the rule's own)."""
    kd, label = match.cell(k), match.label(k)
    if brow["status"] != "ok":
        note = f"baseline status {brow['status']}: not judged"
        return [Check(label, kd, "status", None, None, None, "skipped", note=note)]
    if crow["status"] != "ok":
        note = f"current status {crow['status']}: {crow.get('reason') or 'no reason recorded'}"
        return [Check(label, kd, "status", None, None, None, "failed", note=note)]
    engine = "sim" if _yes(crow.get("deterministic")) and _yes(brow.get("deterministic")) else "processes"
    checks = []
    for rule in rules_for(engine, wanted):
        if rule.metric not in match.columns:
            continue
        rule = replace(rule, tolerance=per.get(rule.metric, glob if glob is not None else rule.tolerance))
        check = judge_metric(match, k, rule, brow, crow)
        if check is not None:
            checks.append(check)
    return checks


def judge_metric(match: Match, k: tuple, rule: Rule, brow: dict[str, Any], crow: dict[str, Any]) -> Check | None:
    """One metric of one row by its rule (a ratio rule first divides by the reference algorithm's value in the
    same cell on each side); None when there is nothing to judge."""
    kd, label = match.cell(k), match.label(k)
    b, c = _value(brow, rule.metric), _value(crow, rule.metric)
    note = ""
    if rule.ratio and kd["algorithm"] == REFERENCE:
        return None  # its own reference: always 1
    bi, ci = _interval(brow, rule), _interval(crow, rule)
    if rule.better and bi is not None and ci is not None:
        change, verdict = judge_interval(rule, bi, ci)
        shown = " vs ".join(f"[{fmt_compact(lo)}, {fmt_compact(hi)}]" for _, lo, hi in (bi, ci))
        basis = f"÷ {REFERENCE} in the same round, " if rule.ratio else ""
        note = f"{basis}median of the rounds; 95 % intervals {shown}"
        return Check(label, kd, rule.metric, bi[0], ci[0], change, verdict, rule.describe() + INTERVAL_RULE, note)
    if rule.ratio:
        rb = _reference(match.baseline, k, match.keys, rule.metric)
        rc = _reference(match.current, k, match.keys, rule.metric)
        if rb is None or rc is None:
            why = f"no {REFERENCE} in this cell to normalize against"
            return Check(label, kd, rule.metric, None, None, None, "skipped", rule.describe(), why)
        b = b / rb if b is not None and rb else None
        c = c / rc if c is not None and rc else None
        note = f"÷ {REFERENCE} in the same cell"
    change, verdict = judge(rule, b, c)
    if verdict == "skipped":
        return None
    return Check(label, kd, rule.metric, b, c, change, verdict, rule.describe(), note)


INTERVAL_RULE = "; with rounds on both sides: regressed only when the 95 % intervals do not overlap"


def _interval(row: dict[str, Any], rule: Rule) -> tuple[float, float, float] | None:
    """(median, lo, hi) over a --repeat run's rounds of what `rule` judges (for a ratio rule the per-round ratio
    to the reference), or None when the row has no interval (one round, or an older summary)."""
    prefix = f"{rule.metric}_ratio" if rule.ratio else rule.metric
    values = [_value(row, f"{prefix}_{part}") for part in ("median", "lo", "hi")]
    if any(v is None for v in values):
        return None
    median, lo, hi = values
    return median, lo, hi  # type: ignore[return-value]


def judge_interval(
    rule: Rule, b: tuple[float, float, float], c: tuple[float, float, float]
) -> tuple[float | None, str]:
    """(change of the medians, verdict) from two (median, lo, hi) intervals: `regressed` only when the current
    interval lies wholly on the bad side of the baseline's, `improved` wholly on the good side, else `ok` (they
    overlap, whatever the medians did). The tolerance plays no part."""
    (bm, blo, bhi), (cm, clo, chi) = b, c
    change = cm - bm if rule.absolute else (cm - bm) / abs(bm) if bm else None
    if chi < blo:
        return change, "regressed" if rule.better == "higher" else "improved"
    if clo > bhi:
        return change, "improved" if rule.better == "higher" else "regressed"
    return change, "ok"


def _yes(value: Any) -> bool:
    """True for a real boolean true (also numpy's), never for None/NaN."""
    return isinstance(value, bool | int) and not isinstance(value, float) and bool(value) or str(value) == "True"


def _reference(index: dict[tuple, dict[str, Any]], key: tuple, keys: list[str], metric: str) -> float | None:
    """The reference algorithm's value in the same cell: same keys but algorithm (and its own H and bits)."""
    ignore = {"algorithm", "local_steps", "bits"}
    want = {c: v for c, v in zip(keys, key, strict=True) if c not in ignore}
    for k, row in index.items():
        kd = dict(zip(keys, k, strict=True))
        if kd["algorithm"] == REFERENCE and all(kd[c] == v for c, v in want.items()):
            if "cell" in row and row["cell"] != index[key].get("cell"):
                continue
            return _value(row, metric)
    return None


def _why_disjoint(base, cur, keys: list[str]) -> str:
    """Name the key columns whose values do not overlap at all."""
    reasons = []
    for k in keys:
        bv = {_norm(v) for v in base.summary[k]}
        cv = {_norm(v) for v in cur.summary[k]}
        if not bv & cv:
            reasons.append(f"{k}: baseline {', '.join(sorted(bv)[:4])} vs current {', '.join(sorted(cv)[:4])}")
    return (": they differ in " + "; ".join(reasons)) if reasons else ": no row agrees on every key column"


def _fmt_change(check: Check) -> str:
    if check.change is None:
        return "-"
    if "absolute" in check.rule:
        return f"{check.change:+.4g}"
    if math.isinf(check.change):
        return "+inf" if check.change > 0 else "-inf"
    return f"{check.change * 100:+.2f} %"


def markdown_report(checks: list[Check], info: dict[str, Any], code: int, show_all: bool = False) -> str:
    rows = []
    for c in checks:
        if c.verdict == "ok" and not show_all:
            continue
        metric = c.metric + (
            f" ({c.note})" if c.note and c.verdict in ("ok", "changed", "regressed", "improved") else ""
        )
        verdict = c.verdict + (
            f": {c.note}" if c.note and c.verdict not in ("ok", "changed", "regressed", "improved") else ""
        )
        verdict = verdict.replace("|", "\\|")  # a failure reason may hold one: keep the table intact
        rows.append([c.cell, metric, fmt_compact(c.baseline), fmt_compact(c.current), _fmt_change(c), verdict])
    counts = _counts(checks)
    head = (
        f"compare: baseline `{info['baseline']}` vs current `{info['current']}` "
        f"({info['common_cells']} common cells; matched on {', '.join(info['match_keys'])})\n\n"
    )
    tail = "\n" + ", ".join(f"{n} {v}" for v, n in counts.items()) + f" -> exit {code}\n"
    if not show_all and counts.get("ok"):
        tail += f"({counts['ok']} ok checks not listed: --all lists them)\n"
    if any(c.verdict == "changed" for c in checks):
        tail += "A deterministic metric changed: if that is intended, regenerate the baseline (make reference).\n"
    if not rows:
        return head + "Every check is within its tolerance.\n" + tail
    return head + markdown(["cell", "metric", "baseline", "current", "change", "verdict"], rows) + tail


def _counts(checks: list[Check]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in checks:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    return counts


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.verdict in REGRESSIONS for c in checks) else 0


def json_report(checks: list[Check], info: dict[str, Any], code: int) -> str:
    """One JSON object: the facts of the comparison, the exit status, verdict counts and every check."""
    rows = [
        {
            "cell": c.cell,
            "keys": c.keys,
            "metric": c.metric,
            "baseline": c.baseline,
            "current": c.current,
            "change": None if c.change is None or math.isinf(c.change) else c.change,
            "verdict": c.verdict,
            "rule": c.rule,
            "note": c.note,
        }
        for c in checks
    ]
    return json.dumps({**info, "exit": code, "counts": _counts(checks), "checks": rows}, indent=2)
