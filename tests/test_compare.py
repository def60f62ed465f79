"""`swarmbench compare`: unchanged folders pass, injected regressions fail (exit 1), unusable input exits 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.analysis.compare import Rule, judge, judge_interval
from cli import cli

pytest.importorskip("bench.engine.sim.cluster", reason="the compare fixtures are simulator sweeps (--engine sim)")


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "base"
    result = invoke(
        "sweep",
        "--algo",
        "allreduce,swarm",
        "--nodes",
        "2,4",
        "--set",
        "engine=sim",
        "--set",
        "dataset=digits",
        "--set",
        "epochs=1",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    return out


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_summaries(folder: Path, fn) -> None:
    """Apply fn(DataFrame) -> DataFrame to every cell's summary.csv (what compare reads)."""
    for path in folder.glob("cells/*/summary.csv"):
        fn(pd.read_csv(path)).to_csv(path, index=False)


def as_real_processes(folder: Path) -> None:
    """Pretend the folder came from real processes: throughput becomes a noisy metric judged as a ratio."""
    for path in folder.glob("cells/*/meta.json"):
        meta = json.loads(path.read_text())
        meta["engine"] = "processes"
        path.write_text(json.dumps(meta))


def test_unchanged_folder_passes(baseline, tmp_path):
    current = copy(baseline, tmp_path / "cur")
    result = invoke("compare", str(baseline), str(current))
    assert result.exit_code == 0, result.output
    assert "exit 0" in result.output and "regressed" not in result.output
    data = json.loads(invoke("compare", str(baseline), str(current), "--json").output)
    assert data["exit"] == 0 and data["common_cells"] == 4
    metrics = {c["metric"] for c in data["checks"]}
    # deterministic on the simulator: bytes, and simulated time, throughput and accuracy
    assert {"bytes_sent_total", "samples_per_s", "train_seconds", "test_acc"} <= metrics
    assert {c["verdict"] for c in data["checks"]} == {"ok"}


def test_doubled_bytes_is_a_regression(baseline, tmp_path):
    current = copy(baseline, tmp_path / "cur")

    def double_swarm_bytes(s):
        s.loc[s["algorithm"] == "swarm", "bytes_sent_total"] *= 2
        return s

    edit_summaries(current, double_swarm_bytes)
    result = invoke("compare", str(baseline), str(current))
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if "| changed" in line]
    assert len(lines) == 4  # bytes_sent_total and bytes_per_sample of swarm at 2 and 4 nodes
    assert all(line.startswith("| swarm") and "+100.00 %" in line for line in lines)
    assert "make reference" in result.output
    data = json.loads(invoke("compare", str(baseline), str(current), "--json").output)
    bad = {(c["keys"]["nodes"], c["metric"]) for c in data["checks"] if c["verdict"] == "changed"}
    assert bad == {
        ("2", "bytes_sent_total"),
        ("4", "bytes_sent_total"),
        ("2", "bytes_per_sample"),
        ("4", "bytes_per_sample"),
    }
    # --metric filters; the other metrics are not judged
    only = invoke("compare", str(baseline), str(current), "--metric", "test_acc")
    assert only.exit_code == 0, only.output


def test_a_tiny_tolerance_for_simulated_time(baseline, tmp_path):
    current = copy(baseline, tmp_path / "cur")

    def slower(s):
        s["train_seconds"] *= 1.001
        return s

    edit_summaries(current, slower)
    assert invoke("compare", str(baseline), str(current)).exit_code == 1
    relaxed = invoke("compare", str(baseline), str(current), "--tolerance", "train_seconds=0.01")
    assert relaxed.exit_code == 0, relaxed.output
    assert invoke("compare", str(baseline), str(current), "--tolerance", "0.01").exit_code == 0


def test_real_throughput_judged_as_ratio_to_allreduce(baseline, tmp_path):
    base = copy(baseline, tmp_path / "base")
    as_real_processes(base)

    def scaled(factor_swarm, factor_all=1.0):
        def fn(s):
            s["samples_per_s"] *= factor_all
            s.loc[s["algorithm"] == "swarm", "samples_per_s"] *= factor_swarm
            return s

        return fn

    # A machine twice as slow: every absolute number halves, the ratios do not move -> no regression.
    slow = copy(base, tmp_path / "slow")
    edit_summaries(slow, scaled(1.0, 0.5))
    result = invoke("compare", str(base), str(slow))
    assert result.exit_code == 0, result.output
    # swarm loses half its speed relative to allreduce measured in the same run -> regression.
    worse = copy(base, tmp_path / "worse")
    edit_summaries(worse, scaled(0.5))
    result = invoke("compare", str(base), str(worse))
    assert result.exit_code == 1, result.output
    assert "samples_per_s (÷ allreduce in the same cell)" in result.output and "| regressed" in result.output
    assert invoke("compare", str(base), str(worse), "--tolerance", "samples_per_s=0.6").exit_code == 0
    # 10 % slower is within the default band; faster is reported, not a regression
    assert invoke("compare", str(base), str(copy(base, tmp_path / "b10"))).exit_code == 0
    better = copy(base, tmp_path / "better")
    edit_summaries(better, scaled(2.0))
    result = invoke("compare", str(base), str(better))
    assert result.exit_code == 0 and "| improved" in result.output


def with_rounds(intervals: dict[str, tuple[float, float, float]]):
    """Give every row the round columns of a --repeat run: per algorithm (median, lo, hi) of its per-round ratio
    to allreduce (allreduce itself: 1)."""

    def fn(s):
        s["rounds"] = 5
        for algo, (median, lo, hi) in {"allreduce": (1.0, 1.0, 1.0), **intervals}.items():
            rows = s["algorithm"] == algo
            s.loc[rows, "samples_per_s_ratio_median"] = median
            s.loc[rows, "samples_per_s_ratio_lo"] = lo
            s.loc[rows, "samples_per_s_ratio_hi"] = hi
        return s

    return fn


def test_rounds_judged_by_their_intervals(baseline, tmp_path):
    base = copy(baseline, tmp_path / "base")
    as_real_processes(base)
    edit_summaries(base, with_rounds({"swarm": (1.5, 1.3, 1.7)}))

    def verdict(name, interval, *extra):
        cur = copy(base, tmp_path / name)
        edit_summaries(cur, with_rounds({"swarm": interval}))
        result = invoke("compare", str(base), str(cur), "--json", *extra)
        data = json.loads(result.output)
        checks = [c for c in data["checks"] if c["metric"] == "samples_per_s"]
        assert len(checks) == 2 and len({c["verdict"] for c in checks}) == 1, checks  # swarm at 2 and 4 nodes
        return result.exit_code, checks[0]

    # The median fell by 40 % (far beyond the 0.3 band), but the intervals overlap: not a regression.
    code, check = verdict("overlap", (0.9, 0.6, 1.35))
    assert (code, check["verdict"]) == (0, "ok") and check["change"] == pytest.approx(-0.4)
    assert check["baseline"] == 1.5 and "95 % intervals [1.3, 1.7] vs [0.6, 1.35]" in check["note"]
    assert "do not overlap" in check["rule"]
    # Only 15 % lower, but the intervals are apart: a regression, whatever the tolerance.
    code, check = verdict("apart", (1.27, 1.22, 1.29))
    assert (code, check["verdict"]) == (1, "regressed")
    assert verdict("apart-tol", (1.27, 1.2, 1.29), "--tolerance", "samples_per_s=0.9")[1]["verdict"] == "regressed"
    code, check = verdict("faster", (2.0, 1.8, 2.2))
    assert (code, check["verdict"]) == (0, "improved")
    # One side without rounds: the tolerance band on the plain ratio, as before.
    plain = copy(baseline, tmp_path / "plain")
    as_real_processes(plain)
    result = invoke("compare", str(base), str(plain), "--json")
    checks = [c for c in json.loads(result.output)["checks"] if c["metric"] == "samples_per_s"]
    assert checks and all("intervals" not in c["note"] and "÷ allreduce in the same cell" in c["note"] for c in checks)


def test_failed_and_missing_cells_regress(baseline, tmp_path):
    current = copy(baseline, tmp_path / "cur")

    def fail_swarm(s):
        s.loc[s["algorithm"] == "swarm", "status"] = "failed"
        return s

    edit_summaries(current, fail_swarm)
    result = invoke("compare", str(baseline), str(current))
    assert result.exit_code == 1 and "| failed" in result.output
    current2 = copy(baseline, tmp_path / "cur2")
    edit_summaries(current2, lambda s: s[s["algorithm"] != "swarm"])
    result = invoke("compare", str(baseline), str(current2))
    assert result.exit_code == 1 and "missing: cell absent from current" in result.output


def test_unusable_input_exits_2(baseline, tmp_path):
    def expect2(cur, *extra, message):
        result = invoke("compare", str(baseline), str(cur), *extra)
        assert result.exit_code == 2, result.output
        assert message in result.output and result.output.count("\n") == 1, result.output

    other = copy(baseline, tmp_path / "other")

    def other_dataset(s):
        s["dataset"] = "mnist"
        return s

    edit_summaries(other, other_dataset)
    expect2(other, message="no common cells")
    expect2(other, message="dataset: baseline digits vs current mnist")

    schema = copy(baseline, tmp_path / "schema")
    for path in [schema / "meta.json", *schema.glob("cells/*/meta.json")]:
        meta = json.loads(path.read_text())
        meta["schema_version"] = 2
        path.write_text(json.dumps(meta))
    expect2(schema, message="schema versions differ: baseline 1, current 2")

    nobytes = copy(baseline, tmp_path / "nobytes")
    edit_summaries(nobytes, lambda s: s.drop(columns=["bytes_sent_total"]))
    expect2(nobytes, message="lacks the column(s) bytes_sent_total")

    real = copy(baseline, tmp_path / "real")
    as_real_processes(real)
    expect2(real, message="engines differ: baseline sim, current processes")

    (tmp_path / "empty").mkdir()
    expect2(tmp_path / "empty", message="not a results folder")
    expect2(baseline, "--metric", "bytes_sent", message="unknown metric 'bytes_sent'")
    expect2(baseline, "--tolerance", "samples_per_s=fast", message="is not a number")


def test_judge_rules():
    exact = Rule("bytes_sent_total", 1e-9)
    assert judge(exact, 100.0, 100.0) == (0.0, "ok")
    assert judge(exact, 100.0, 90.0)[1] == "changed"  # deterministic: fewer bytes is a change too
    noisy = Rule("samples_per_s", 0.3, better="higher", ratio=True)
    assert judge(noisy, 1.0, 0.8)[1] == "ok"
    assert judge(noisy, 1.0, 0.6)[1] == "regressed"
    assert judge(noisy, 1.0, 1.5)[1] == "improved"
    acc = Rule("test_acc", 0.05, absolute=True, better="higher")
    assert judge(acc, 0.9, 0.86) == (pytest.approx(-0.04), "ok")
    assert judge(acc, 0.9, None)[1] == "missing"
    assert judge(Rule("consensus_distance", 1e-3, atol=1e-9), 3e-13, 5e-13)[1] == "ok"


def test_judge_interval_rule():
    higher = Rule("samples_per_s", 0.3, better="higher", ratio=True)
    base = (1.0, 0.9, 1.1)
    assert judge_interval(higher, base, (0.7, 0.5, 0.95)) == (pytest.approx(-0.3), "ok")  # overlap
    assert judge_interval(higher, base, (0.85, 0.8, 0.89))[1] == "regressed"  # wholly below
    assert judge_interval(higher, base, (1.2, 1.11, 1.3))[1] == "improved"  # wholly above
    assert judge_interval(higher, base, (1.0, 1.0, 1.0))[1] == "ok"
    lower = Rule("train_seconds", 0.3, better="lower", ratio=True)
    assert judge_interval(lower, base, (1.2, 1.11, 1.3))[1] == "regressed"  # slower, wholly above
    assert judge_interval(lower, base, (0.85, 0.8, 0.89))[1] == "improved"
