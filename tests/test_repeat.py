"""`swarmbench run --repeat K`: interleaved rounds on the same started workers, their order, records and intervals."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.records.rounds import combine, drift, median_interval
from bench.run.outcome import statuses_for
from bench.training.config import RunConfig
from cli import cli

ALGOS = ("allreduce", "swarm")
TINY = ["--dataset", "digits", "--epochs", "1", "--batch-size", "16", "--no-tensorboard"]


def _run(out, *extra):
    args = ["run", "--algo", ALGOS[0], "--algo", ALGOS[1], "--nodes", "2", *TINY, "--out", str(out), *extra]
    return CliRunner().invoke(cli, args)


@pytest.fixture(scope="module")
def repeated_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("repeat") / "out"
    result = _run(out, "--repeat", "2", "--seed", "3")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_rounds_on_real_processes(repeated_run):
    out, output = repeated_run
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "ok" and meta["launch"]["mode"] == "spawned"
    orders = meta["rounds"]["orders"]
    assert orders == [list(o) for o in RunConfig(algorithms=ALGOS, repeat=2, seed=3).round_orders()]
    assert all(sorted(order) == sorted(ALGOS) for order in orders)
    # The order the cells really ran in, from rank 0's rows (staged in execution order).
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    ran = list(dict.fromkeys((r["round"], r["algorithm"]) for r in records if r["rank"] == 0))
    assert ran == [(number, name) for number, order in enumerate(orders, 1) for name in order]
    assert {r["round"] for r in records} == {1, 2}
    assert "(round 2 of 2)" in output and "drift of samples/s over 2 rounds" in output

    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["algorithm"]) == list(ALGOS) and (summary["status"] == "ok").all()
    assert (summary["rounds"] == 2).all()
    rounds = pd.read_csv(out / "rounds.csv")
    assert len(rounds) == 4 and set(rounds["round"]) == {1, 2}
    for row in summary.to_dict("records"):
        per = rounds[rounds["algorithm"] == row["algorithm"]]["samples_per_s"]
        # the summary's samples/s is the median of the rounds' own, inside its interval
        assert row["samples_per_s"] == pytest.approx(per.median())
        assert row["samples_per_s_median"] == pytest.approx(per.median())
        assert per.min() - 1e-6 <= row["samples_per_s_lo"] <= row["samples_per_s_median"] <= row["samples_per_s_hi"]
        assert row["samples_per_s_hi"] <= per.max() + 1e-6
        assert row["samples_per_s_drift"] == pytest.approx(per.max() / per.min())
        assert row["samples"] == int(rounds[rounds["algorithm"] == row["algorithm"]]["samples"].iloc[0])
    ref = rounds[rounds["algorithm"] == "allreduce"].set_index("round")["samples_per_s"]
    swarm = summary.set_index("algorithm").loc["swarm"]
    ratios = rounds[rounds["algorithm"] == "swarm"].set_index("round")["samples_per_s"] / ref
    assert swarm["samples_per_s_ratio_median"] == pytest.approx(ratios.median())
    assert "95 % lo" in (out / "throughput.md").read_text()
    table = pd.read_csv(out / "throughput.csv").set_index("algorithm")
    assert table.loc["swarm", "speedup_vs_allreduce"] == pytest.approx(swarm["samples_per_s_ratio_median"])


def test_simulated_rounds_agree_exactly(tmp_path):
    out = tmp_path / "sim"
    args = ["run", "--engine", "sim", "--algo", "swarm", "--nodes", "2", *TINY[:-1], "--repeat", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    # TensorBoard: each round's curves in a run of its own under the algorithm's
    assert {p.name for p in (out / "tensorboard" / "swarm").iterdir() if p.is_dir()} == {"round1", "round2"}
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert row["rounds"] == 2 and row["samples_per_s_drift"] == 1.0
    assert row["samples_per_s_lo"] == row["samples_per_s_median"] == row["samples_per_s_hi"] == row["samples_per_s"]


@pytest.mark.parametrize("value", ["0", "-2"])
def test_repeat_below_one_exits_2(tmp_path, value):
    out = tmp_path / "bad"
    result = _run(out, "--repeat", value)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--repeat must be at least 1" in lines[0] and "--repeat K" in lines[0], lines
    assert not out.exists()


def test_round_orders_are_seeded_shuffles():
    algos = ("allreduce", "local_sgd", "dpsgd", "adpsgd", "swarm")
    one = RunConfig(algorithms=algos, repeat=1)
    assert one.round_orders() == [algos]  # one round: the order given
    cfg = RunConfig(algorithms=algos, repeat=6, seed=1)
    orders = cfg.round_orders()
    assert len(orders) == 6 and all(sorted(o) == sorted(algos) for o in orders)
    assert orders == RunConfig(algorithms=algos, repeat=6, seed=1).round_orders()  # seeded: every rank agrees
    assert len(set(orders)) > 1  # shuffled per round
    assert RunConfig(algorithms=algos, repeat=6, seed=2).round_orders() != orders


def test_median_interval():
    assert median_interval([5.0, 5.0, 5.0], seed=0) == (5.0, 5.0, 5.0)  # identical rounds: zero width
    m, lo, hi = median_interval([7.0], seed=0)
    assert m == 7.0 and math.isnan(lo) and math.isnan(hi)
    values = [10.0, 12.0, 11.0, 30.0, 10.5, 11.5, 9.5]
    m, lo, hi = median_interval(values, seed=0)
    assert m == 11.0 and 9.5 <= lo < m < hi <= 30.0
    assert hi < 30.0  # the median's interval is not dragged to an outlier
    assert median_interval(values, seed=0) == (m, lo, hi)
    assert drift([10.0, 12.5, 11.0]) == pytest.approx(1.25) and math.isnan(drift([3.0]))
    assert combine({1: {"samples": 100, "x": 1.0}, 2: {"samples": 100, "x": 3.0}}) == {"samples": 100, "x": 2.0}


def test_an_algorithm_is_ok_only_after_all_its_rounds():
    cfg = RunConfig(algorithms=ALGOS, repeat=2)
    # round 2: swarm ran first and finished, allreduce failed
    started, done = ["allreduce", "swarm", "swarm", "allreduce"], ["allreduce", "swarm", "swarm"]
    statuses, reasons = statuses_for(cfg, started, done, ("rank 1", "boom"))
    assert statuses == {"allreduce": "failed", "swarm": "ok"}
    assert reasons["allreduce"] == "rank 1: boom (1 of 2 rounds done)"
    # Ctrl-C after swarm's second round, before allreduce's: allreduce was not running
    statuses, reasons = statuses_for(cfg, started[:3], done, None, "SIGINT")
    assert statuses == {"allreduce": "skipped", "swarm": "ok"}
    assert reasons["allreduce"] == "the run was stopped by SIGINT between its rounds (1 of 2 rounds done)"
