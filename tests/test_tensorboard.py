"""TensorBoard event files: what they hold is what records.jsonl and summary.csv say; --no-tensorboard skips them."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli import cli

ARGS = ["run", "--engine", "sim", "--nodes", "3", "--dataset", "digits", "--epochs", "2"]


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_files_hold_the_records(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, [*ARGS, "--algo", "swarm", "--algo", "allreduce", "--out", str(out)])
    assert r.exit_code == 0, r.output
    records = pd.read_json(out / "records.jsonl", lines=True)
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["allreduce", "swarm"]
    assert not any(p.name.startswith(".") for p in out.iterdir())
    for algorithm in ("swarm", "allreduce"):
        tags = _scalars(out / "tensorboard" / algorithm)
        mine = records[records["algorithm"] == algorithm]
        acc = mine[(mine["metric"] == "test_acc") & mine["rank"].isna()]
        assert [s for s, _ in tags["avg_model/test_acc"]] == list(acc["epoch"])  # float32 in the event file
        assert [v for _, v in tags["avg_model/test_acc"]] == pytest.approx(list(acc["value"]), rel=1e-6)
        loss = mine[(mine["metric"] == "train_loss") & (mine["rank"] == 2)]
        assert [s for s, _ in tags["node2/train_loss"]] == list(loss["epoch"])
        assert [v for _, v in tags["node2/train_loss"]] == pytest.approx(list(loss["value"]), rel=1e-6)
        row = summary[summary["algorithm"] == algorithm].iloc[0]
        assert tags["run/samples_per_s"] == [(2, pytest.approx(row["samples_per_s"], rel=1e-6))]
        # The HParams view: the run's hyperparameters and final metrics.
        hp = EventAccumulator(str(out / "tensorboard" / algorithm))
        hp.Reload()
        content = hp.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in content
        start = content["_hparams_/session_start_info"]
        assert algorithm.encode() in start and b"final/test_acc" in content["_hparams_/experiment"]


def test_no_tensorboard_writes_none(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, [*ARGS, "--algo", "swarm", "--no-tensorboard", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert not (out / "tensorboard").exists()
