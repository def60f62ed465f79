"""Honest status: a run whose loss becomes non-finite, or whose averaged model falls back to chance after having
learned, is `diverged` (summary.csv, meta.json, tables), and the best accuracy is reported beside the final one."""

from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner

from bench.records.write import DIVERGED_MARGIN, divergence
from cli import cli


def _records(accs: list[float], losses: list[float] | None = None, chance: float = 0.1) -> pd.DataFrame:
    rows = [{"algorithm": "a", "rank": None, "epoch": None, "metric": "chance_acc", "value": chance}]
    for epoch, acc in enumerate(accs, 1):
        rows.append({"algorithm": "a", "rank": None, "epoch": epoch, "metric": "test_acc", "value": acc})
    for epoch, loss in enumerate(losses or [], 1):
        rows.append({"algorithm": "a", "rank": 0, "epoch": epoch, "metric": "train_loss", "value": loss})
    return pd.DataFrame(rows)


def test_divergence_rules():
    floor = 0.1 + DIVERGED_MARGIN
    assert divergence(_records([0.5, 0.8, 0.9]), "a") is None
    assert divergence(_records([0.05, 0.09, 0.1]), "a") is None  # never learned: a poor run, not a diverged one
    assert divergence(_records([0.5, 0.9, floor + 0.01]), "a") is None  # worse, still above chance + margin
    reason = divergence(_records([0.5, 0.9, 0.6, 0.09]), "a")
    assert reason and "fell to 0.090 at epoch 4 after 0.900 at epoch 2" in reason
    assert "non-finite by epoch 2" in divergence(_records([0.5, 0.6], [1.0, float("nan")]), "a")
    assert divergence(_records([0.5, 0.6], [1.0, float("inf")]), "b") is None  # another algorithm's rows


def test_a_run_with_a_huge_learning_rate_is_diverged_not_ok(tmp_path):
    out = tmp_path / "out"
    args = ["run", "--engine", "sim", "--nodes", "2", "--epochs", "2", "--lr", "50", "--algo", "allreduce"]
    r = CliRunner().invoke(cli, [*args, "--algo", "swarm", "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["status"]) == ["diverged", "diverged"]
    algos = json.loads((out / "meta.json").read_text())["algorithms"]
    assert all(a["status"] == "diverged" and "non-finite" in a["reason"] for a in algos.values())
    assert "diverged" in (out / "throughput.md").read_text()


def test_best_accuracy_beside_the_final_one(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli, ["run", "--engine", "sim", "--nodes", "2", "--epochs", "3", "--algo", "swarm", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    row = pd.read_csv(out / "summary.csv").iloc[0]
    assert row["status"] == "ok"
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    accs = {rec["epoch"]: rec["value"] for rec in records if rec["metric"] == "test_acc" and rec["rank"] is None}
    assert row["best_test_acc"] == max(accs.values())
    assert row["best_epoch"] == min(e for e, v in accs.items() if v == max(accs.values()))
