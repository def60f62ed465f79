"""Checkpoints and `swarmbench run --resume DIR`: a simulated run stopped in the middle and resumed writes the same
records.jsonl and summary.csv, byte for byte, as one never stopped; a real run resumes and says so in meta.json;
what cannot be resumed is refused in one line (exit 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import bench.engine.sim.cluster as sim_cluster
from bench.base.signals import Interrupted
from bench.run.resume import CHECKPOINT
from cli import cli
from tests.simcost import interrupt_at
from tests.simcost import sim_cluster as shared_cluster

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import cli; cli.main()"]
SMALL = ["--dataset", "digits", "--model", "mlp", "--batch-size", "32"]
SIM = ["--engine", "sim", "--nodes", "3", *SMALL, "--epochs", "2", "--no-tensorboard"]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _same_bytes(a: Path, b: Path) -> None:
    for name in ("records.jsonl", "summary.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same configuration, never stopped (the folder's own name is the run_id of every row)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    r = _invoke("run", *SIM, "--algo", "sgp", "--algo", "swarm", "--algo", "choco", "--out", out)
    assert r.exit_code == 0, r.output
    assert not (out / CHECKPOINT).exists()  # a run that ended ok has nothing to resume
    return out


@pytest.mark.parametrize("stopped", ["swarm", "choco"])
def test_sim_resume_after_an_interruption_is_byte_identical(tmp_path, monkeypatch, uninterrupted, stopped):
    """Ctrl-C in the middle of a cell (after some of its records): the resumed run keeps the finished cells, runs
    the stopped one again from its start and writes the uninterrupted run's bytes."""
    out = tmp_path / "run"
    real_run_cell = sim_cluster.run_cell

    def run_cell(cfg, name, *args, **kw):
        *rest, emit = args
        if name != stopped:
            return real_run_cell(cfg, name, *rest, emit, **kw)
        seen = []

        def stop_after_a_few(event):
            emit(event)
            seen.append(event)
            if len(seen) == 4:
                raise Interrupted(signal.SIGINT)

        return real_run_cell(cfg, name, *rest, stop_after_a_few, **kw)

    monkeypatch.setattr(sim_cluster, "run_cell", run_cell)
    r = _invoke("run", *SIM, "--algo", "sgp", "--algo", "swarm", "--algo", "choco", "--out", out)
    assert r.exit_code == 130, r.output
    assert f"to continue it: swarmbench run --resume {out}" in r.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["algorithms"][stopped]["status"] == "interrupted"
    finished = json.loads((out / CHECKPOINT).read_text())["cells_done"]
    assert finished == [["sgp", 1]] + ([["swarm", 1]] if stopped == "choco" else [])

    monkeypatch.setattr(sim_cluster, "run_cell", real_run_cell)
    r = _invoke("run", "--resume", out)
    assert r.exit_code == 0, r.output
    _same_bytes(out, uninterrupted)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "ok" and all(a["status"] == "ok" for a in meta["algorithms"].values())
    assert [c[0] for c in meta["resumed"][0]["cells_kept"]] == [c[0] for c in finished]
    assert meta["resumed"][0]["from_status"] == "interrupted"
    assert not (out / CHECKPOINT).exists()

    r = _invoke("run", "--resume", out)  # finished now: nothing to resume
    assert r.exit_code == 2 and "finished (status ok)" in r.output and len(r.output.splitlines()) == 1


def test_sim_resume_after_sigkill_is_byte_identical(tmp_path, uninterrupted):
    """SIGKILL once the first cell is checkpointed: nothing was merged (the records are in the staging folder, the
    meta.json still says running); the resumed run still writes the uninterrupted run's bytes."""
    out = tmp_path / "run"
    cmd = [*CLI, "run", *SIM, "--algo", "sgp", "--algo", "swarm", "--algo", "choco", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = out / CHECKPOINT
    try:
        deadline = time.monotonic() + 240
        while not (checkpoint.is_file() and json.loads(checkpoint.read_text() or "{}").get("cells_done")):
            assert proc.poll() is None, proc.communicate()[0][-2000:]
            assert time.monotonic() < deadline, "no cell finished in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert json.loads((out / "meta.json").read_text())["status"] == "running"
    assert not (out / "records.jsonl").exists()
    r = _invoke("run", "--resume", out)
    assert r.exit_code == 0, r.output
    _same_bytes(out, uninterrupted)


def test_resume_refuses_what_it_cannot_continue(tmp_path, uninterrupted):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _invoke("run", "--resume", empty)
    assert r.exit_code == 2 and "holds no meta.json" in r.output and len(r.output.splitlines()) == 1

    # A run folder without a checkpoint (written by an older swarmbench, or a checkpoint removed).
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((uninterrupted / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    r = _invoke("run", "--resume", old)
    assert r.exit_code == 2 and "has no checkpoint" in r.output and len(r.output.splitlines()) == 1

    (old / CHECKPOINT).write_text(json.dumps({"version": 1, "cells_done": [["sgp", 1]]}))
    r = _invoke("run", "--resume", old, "--epochs", "3")
    assert r.exit_code == 2 and len(r.output.splitlines()) == 1
    assert "--epochs 3 conflicts with the interrupted run's epochs = 2" in r.output
    r = _invoke("run", "--resume", old, "--set", "lr=0.5")
    assert r.exit_code == 2 and "drop --set" in r.output and len(r.output.splitlines()) == 1
    r = _invoke("run", "--resume", old, "--out", tmp_path / "elsewhere")
    assert r.exit_code == 2 and "drop --out" in r.output and len(r.output.splitlines()) == 1
    assert sorted(p.name for p in old.iterdir()) == [CHECKPOINT, "meta.json"]  # refused: nothing written


def _interrupt_when(cmd: list[str], ready, what: str) -> str:
    """Start `cmd`, SIGINT it once `ready()` holds (within 240 s), and return its output: it must exit 130."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ready():
            assert proc.poll() is None, proc.communicate()[0][-2000:]
            assert time.monotonic() < deadline, what
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGINT)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 130, output[-3000:]
    return output


def test_sweep_resume_continues_the_interrupted_cell(tmp_path, monkeypatch, uninterrupted):
    """`sweep --resume` keeps the finished algorithms of the cell that was stopped and runs the rest of it."""
    out = tmp_path / "sweep"
    args = ["sweep", "--algo", "sgp,swarm,choco", "--nodes", "3", "--set", "engine=sim", "--set", "dataset=digits"]
    args += ["--set", "model=mlp", "--set", "batch_size=32", "--set", "epochs=2", "--set", "tensorboard=false"]
    restore = interrupt_at(monkeypatch, "swarm")
    r = _invoke(*args, "--out", out)
    assert r.exit_code == 130, r.output
    cell = out / "cells" / "nodes=3"
    assert json.loads((cell / CHECKPOINT).read_text())["cells_done"] == [["sgp", 1]]

    restore()
    r = _invoke(*args, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    meta = json.loads((cell / "meta.json").read_text())
    assert meta["status"] == "ok" and meta["resumed"][0]["cells_kept"] == [["sgp", 1]]
    assert json.loads((out / "meta.json").read_text())["cells"]["nodes=3"]["resumed"] is True
    # The cell's run_id is its folder's name, so only that column differs from the uninterrupted run's rows.
    rows = [{**json.loads(line), "run_id": None} for line in (cell / "records.jsonl").read_text().splitlines()]
    reference = [
        {**json.loads(line), "run_id": None} for line in (uninterrupted / "records.jsonl").read_text().splitlines()
    ]
    assert rows == reference


def test_real_run_resumes_from_an_epoch_checkpoint_and_says_so(tmp_path):
    """Real processes, --checkpoint-every 1: SIGINT once AllReduce SGD is done and SGP (push-sum state) has a
    checkpoint after epoch 2. The interrupted run says how to continue; the resumed run keeps AllReduce SGD's
    records, starts SGP from its last checkpoint, keeps the rows written before it, records every epoch exactly
    once and records the resume in meta.json."""
    out = tmp_path / "run"
    cmd = [*CLI, "run", "--nodes", "2", "--algo", "allreduce", "--algo", "sgp", *SMALL, "--epochs", "12"]
    cmd += ["--checkpoint-every", "1", "--no-tensorboard", "--set", "timeout_s=60", "--out", str(out)]
    checkpoint = out / CHECKPOINT

    def in_sgp() -> bool:
        if not checkpoint.is_file():
            return False
        partial = json.loads(checkpoint.read_text() or "{}").get("partial") or {}
        return partial.get("algorithm") == "sgp" and partial["epoch"] >= 2

    output = _interrupt_when(cmd, in_sgp, "no epoch checkpoint in time")
    assert f"to continue it: swarmbench run --resume {out}" in output
    partial = json.loads(checkpoint.read_text())["partial"]
    assert partial["algorithm"] == "sgp" and partial["round"] == 1
    before = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    kept = [r for r in before if r["algorithm"] == "allreduce"]

    r = subprocess.run([*CLI, "run", "--resume", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "allreduce: kept from the interrupted run" in r.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "ok" and {a["status"] for a in meta["algorithms"].values()} == {"ok"}
    assert meta["resumed"][0]["cells_kept"] == [["allreduce", 1]]
    assert meta["resumed"][0]["from_status"] == "interrupted"
    assert meta["resumed"][0]["from_epoch"] == partial
    assert meta["argv"][-2:] == ["--out", str(out)]  # the interrupted run's command line
    assert not checkpoint.exists() and not (out / ".checkpoints").exists()
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(map(json.dumps, (r for r in rows if r["algorithm"] == "allreduce"))) == sorted(map(json.dumps, kept))
    sgp = [r for r in rows if r["algorithm"] == "sgp"]
    for rank in (0, 1):
        epochs = [r["epoch"] for r in sgp if r["metric"] == "train_loss" and r["rank"] == rank]
        assert sorted(epochs) == list(range(1, 13))  # every epoch once: before the checkpoint kept, after it run
        mine = sorted((r for r in sgp if r["rank"] == rank), key=lambda r: r["epoch"] or 0)
        seconds = [r["value"] for r in mine if r["metric"] == "train_seconds"]
        assert seconds == sorted(seconds)  # the clock went on from the checkpoint
    assert len([r for r in sgp if r["metric"] == "test_acc"]) == 12  # every epoch's snapshot was kept
    assert len([r for r in sgp if r["metric"] == "chance_acc"]) == 1
    steps = {r["value"] for r in sgp if r["metric"] == "steps"}
    pushes = [r["value"] for r in sgp if r["metric"] == "algo_pushes"]
    assert len(steps) == 1 and pushes == [steps.pop()] * 2  # counters went on from the checkpoint too


TIMED = ("seconds", "step_seconds", "staleness")  # metrics that measure the clock, which a resumed cell restarts


@pytest.mark.parametrize(
    "algorithm",
    [
        "allreduce",
        "sgp",
        "osgp",
        "choco",
        "decentlam",
        "d2",
        "gradient_tracking",
        "lead",
        "qg_dsgdm",
        "powersgd",
        "adsaga",
    ],
)
def test_a_node_checkpoint_holds_the_whole_trajectory(algorithm):
    """What `--checkpoint-every` saves is everything a node carries from one epoch to the next (model, momentum,
    algorithm state, sampler, random streams, counters, snapshots): started from every node's epoch-1 state, a cell
    trains exactly as the uninterrupted one did. Run on simulated nodes (run_cell as the real engine calls it), with
    synchronous algorithms, whose arithmetic does not depend on timing, and ADSAGA, whose order of arrivals is the
    simulator's (every node leaves a checkpoint's fence at one instant, in the resumed cell too)."""
    import copy

    import torch

    from bench.run.checks import resolve
    from bench.training.loop import Checkpoints, make_shards, run_cell, run_data
    from bench.training.registry import runs_on

    model = "mlp" if runs_on(algorithm, "mlp") else "logreg"
    cfg = resolve({"dataset": "digits", "model": model, "batch_size": 32, "nodes": 3, "epochs": 3, "bits": 8})
    dataset = run_data(cfg)
    shards = make_shards(cfg, dataset)

    def cell(resumed=None):
        cluster = shared_cluster(3)
        rows, saved = [], {}

        def body(rank: int) -> None:
            def save(epoch, state, rank=rank):
                saved[(rank, epoch)] = copy.deepcopy(state)  # the real engine serializes it at once

            checkpoints = Checkpoints(1, save, resumed[rank] if resumed else None)
            comm, clock = cluster.comms[rank], cluster.clocks[rank]
            run_cell(cfg, algorithm, dataset, shards, rank, comm, clock, torch.device("cpu"), rows.append, checkpoints)

        cluster.run(body)
        records = {
            (r["rank"], r["epoch"], r["metric"], r.get("kind")): r["value"]
            for r in rows
            if r["type"] == "record" and not any(t in r["metric"] for t in TIMED)
        }
        return records, saved

    full, saved = cell()
    resumed, _ = cell({rank: saved[(rank, 1)] for rank in range(3)})
    # Everything but what epoch 1 recorded before its checkpoint (its losses, the run's chance accuracy).
    expected = {k for k in full if k[2] != "chance_acc" and not (k[1] == 1 and k[2] == "train_loss")}
    assert set(resumed) == expected
    assert resumed == {k: full[k] for k in resumed}  # losses, accuracies, bytes, counters: all exactly equal


def test_checkpoints_are_refused_where_a_launcher_started_every_rank(monkeypatch, tmp_path):
    for key, value in {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    r = _invoke("run", "--nodes", "2", *SMALL, "--checkpoint-every", "1", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "cannot be resumed" in r.output and len(r.output.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_checkpoints_are_refused_with_pull_push_deposits(tmp_path):
    """A pull-push deposit on its way when a node saves would be lost: one line, exit 2, nothing written."""
    r = _invoke(
        "run", "--nodes", "2", *SMALL, "--swarm-mode", "pushpull", "--checkpoint-every", "1", "--out", tmp_path / "r"
    )
    assert r.exit_code == 2 and "pull-push deposits" in r.output and len(r.output.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_an_old_meta_json_is_not_given_a_target(tmp_path):
    """Configurations written before targets were per run stored target_acc 0.9 (then every run's default): rerunning
    one (--config OLD/meta.json) does not turn that default into a target, while a newer file keeps its own."""
    from bench.training.config import config_settings

    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, new = tmp_path / "old" / "meta.json", tmp_path / "new" / "meta.json"
    old.write_text(json.dumps({"config": {"nodes": 2, "target_acc": 0.9}}))
    assert "target_acc" not in config_settings(str(old))
    new.write_text(json.dumps({"config": {"nodes": 2, "target_acc": 0.9, "checkpoint_every": 0}}))
    assert config_settings(str(new))["target_acc"] == 0.9
