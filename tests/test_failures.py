"""Failure injection (`--fail RANK@STEP`, `--fail-p P`, `--slow RANK@STEP:FACTOR`, `--on-failure stop|continue`) in
the simulator: the schedule, who goes on, what the results say. Bad input is in tests/test_sim.py's table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench.core.topology import build_topology
from bench.records.write import SUMMARY_COLUMNS
from bench.training.config import FAILURE_KEYS, RunConfig, failure_schedule
from bench.training.registry import ALGORITHMS
from cli import cli
from tests.simcost import interrupt_at, sim_cluster

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--engine", "sim", "--nodes", "4", "--dataset", "digits", "--epochs", "1"]


def _invoke(*args):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def _summary(out) -> pd.DataFrame:
    return pd.read_csv(out / "summary.csv").set_index("algorithm")


def test_which_algorithms_survive_a_failure_is_a_property_of_the_class():
    assert {name for name, cls in ALGORITHMS.items() if cls.survives_failures} == {"swarm", "adpsgd"}


def test_schedule_is_seeded_per_node_and_the_same_for_every_algorithm():
    cfg = RunConfig(nodes=64, fail=("3@10", "3@7", "5@0"), fail_p=0.01, seed=1, slow=("2@5:4", "2@1:2"))
    a, b = failure_schedule(cfg), failure_schedule(cfg)
    assert a == b
    assert a.fail_at[3] <= 7 and a.fail_at[5] == 0  # the earliest of a node's failures
    assert set(a.fail_at) == set(range(64))  # every node gets a (possibly late) step from --fail-p
    other = failure_schedule(RunConfig(nodes=64, fail_p=0.01, seed=2))
    assert other.fail_at != {r: s for r, s in a.fail_at.items() if r not in (3, 5)} | {3: 0, 5: 0}
    # geometric with P = 0.01: the mean first failing step is (1 - P) / P = 99
    steps = [s for r, s in failure_schedule(RunConfig(nodes=4096, fail_p=0.01)).fail_at.items()]
    assert 90 < sum(steps) / len(steps) < 108
    assert [a.slowdown(2, s) for s in (0, 1, 4, 5, 9)] == [1.0, 2.0, 2.0, 4.0, 4.0]


def test_a_run_without_failure_injection_stores_the_same_configuration():
    assert not set(FAILURE_KEYS) & set(RunConfig().stored())
    assert RunConfig.from_dict(RunConfig().stored()) == RunConfig()
    cfg = RunConfig(fail=("1@5",), on_failure="continue")
    stored = cfg.stored()
    assert stored["fail"] == ["1@5"] and stored["on_failure"] == "continue"
    assert RunConfig.from_dict(stored) == cfg  # a resumed run keeps its failure schedule


def test_a_failed_node_leaves_the_collectives_it_was_awaited_in():
    """Three nodes wait in the end-of-cell barrier; the fourth fails: the barrier completes at once."""
    cluster = sim_cluster(4)
    done = []

    def body(rank: int) -> None:
        if rank == 3:
            cluster.pause(3, 1.0)
            cluster.kill(3)
            return
        cluster.comms[rank].fence()
        assert cluster.comms[rank].neighbors() == tuple(p for p in build_topology("ring", 4).neighbors(rank) if p != 3)
        t = torch.full((2,), float(rank))
        cluster.comms[rank].allreduce_mean(t, "eval")
        done.append((rank, cluster.clock[rank], t.tolist()))

    cluster.run(body)
    assert sorted(r for r, _, _ in done) == [0, 1, 2]
    assert all(t >= 1.0 and values == [1.0, 1.0] for _, t, values in done)  # the mean of 0, 1, 2


def test_continue_asynchronous_gossip_goes_on_synchronous_collectives_report_failed(tmp_path):
    out = tmp_path / "out"
    algos = ["--algo", "swarm", "--algo", "allreduce", "--algo", "adpsgd", "--algo", "dpsgd"]
    r = _invoke(*SMALL, *algos, "--fail", "1@5", "--on-failure", "continue", "--out", out)
    assert r.exit_code == 0, r.output
    s = _summary(out)
    assert list(s.reset_index().columns) == [*SUMMARY_COLUMNS[:2], "nodes_alive", *SUMMARY_COLUMNS[2:]]
    assert s.loc["swarm", "status"] == s.loc["adpsgd", "status"] == "ok"
    assert s.loc["swarm", "nodes_alive"] == s.loc["adpsgd", "nodes_alive"] == 3
    assert s.loc["swarm", "test_acc"] > 0.5  # the survivors' averaged model, after the failure
    assert s.loc["allreduce", "status"] == s.loc["dpsgd", "status"] == "failed"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "ok" and meta["sim"]["failures"] == {"1": 5}
    reason = meta["algorithms"]["allreduce"]["reason"]
    assert "rank 1 failed at step 5" in reason and "cannot go on" in reason
    records = pd.read_json(out / "records.jsonl", lines=True)
    swarm = records[records["algorithm"] == "swarm"]
    failed = swarm[swarm["metric"] == "node_failed"]
    assert failed["rank"].tolist() == [1] and failed["step"].tolist() == [5]
    steps = swarm[swarm["metric"] == "steps"].set_index("rank")["value"]
    assert steps[1] == 5 and (steps.drop(1) == steps.max()).all()  # the survivors trained to the end
    assert "alive" in (out / "throughput.md").read_text()


def test_stop_ends_the_run_at_the_failure(tmp_path):
    out = tmp_path / "out"
    r = _invoke(*SMALL, "--algo", "swarm", "--algo", "dpsgd", "--fail", "2@3", "--out", out)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed"
    assert meta["algorithms"]["swarm"] == {
        "status": "failed",
        "reason": "failure injection: rank 2 failed at step 3 (--on-failure stop)",
    }
    assert meta["algorithms"]["dpsgd"]["status"] == "skipped"


@pytest.mark.parametrize("algo", ["adpsgd"])
def test_slow_node_slows_the_cluster_and_fail_p_is_deterministic(tmp_path, algo):
    base, slow, p1, p2 = (tmp_path / name for name in ("base", "slow", "p1", "p2"))
    for out, extra in ((base, ()), (slow, ("--slow", "0@0:20"))):
        assert _invoke(*SMALL, "--algo", algo, *extra, "--out", out).exit_code == 0
    assert _summary(slow).loc[algo, "train_seconds"] > 2 * _summary(base).loc[algo, "train_seconds"]
    for out in (p1, p2):
        r = _invoke(*SMALL, "--algo", algo, "--fail-p", "0.05", "--on-failure", "continue", "--out", out)
        assert r.exit_code == 0, r.output
    assert (p1 / "summary.csv").read_bytes() == (p2 / "summary.csv").read_bytes()
    assert _summary(p1).loc[algo, "nodes_alive"] < 4


@pytest.mark.timeout(180)
def test_real_processes_fail_stops_the_launch_and_keeps_the_records(tmp_path):
    """`--fail RANK@STEP` on real processes: the rank exits hard (KILLED_EXIT) at that step, the launch ends as it
    does for a crash (the others stopped, the records kept), and the reason names the rank and the step."""
    out = tmp_path / "out"
    r = _invoke(
        "--nodes", 3, "--dataset", "digits", "--epochs", 1, "--algo", "swarm", "--algo", "allreduce",
        "--fail", "1@4", "--no-tensorboard", "--out", out,
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed"
    assert meta["algorithms"]["swarm"] == {"status": "failed", "reason": "rank 1: failed at step 4 (--fail)"}
    assert meta["algorithms"]["allreduce"]["status"] == "skipped"
    records = pd.read_json(out / "records.jsonl", lines=True)
    failed = records[records["metric"] == "node_failed"]
    assert failed[["rank", "step"]].values.tolist() == [[1, 4]]
    assert _summary(out).loc["swarm", "nodes_alive"] == 2


def _worker_pid(parent: int, rank: int) -> int | None:
    """The pid of rank `rank`'s worker process among `parent`'s children (the local launcher's)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"bench.engine.processes.worker" in argv and argv[-2:] == [str(rank).encode(), b""]:
            return int(proc.name)
    return None


@pytest.mark.timeout(240)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker's pid in /proc")
def test_real_processes_survivors_finish_after_a_rank_is_sigkilled(tmp_path):
    """SwarmSGD (blocking) on 4 real processes under --on-failure continue: rank 2 is SIGKILLed after its first
    epoch; the three survivors finish, evaluate among themselves and the run ends ok."""
    out = tmp_path / "out"
    argv = [sys.executable, str(ROOT / "cli.py"), "run", "--nodes", "4", "--dataset", "digits", "--epochs", "6"]
    argv += ["--batch-size", "8", "--algo", "swarm", "--swarm-mode", "blocking", "--on-failure", "continue"]
    argv += ["--no-tensorboard", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        staging = out / ".staging" / "rank2.jsonl"
        deadline = time.monotonic() + 180
        while b'"train_loss"' not in (staging.read_bytes() if staging.is_file() else b""):
            assert proc.poll() is None and time.monotonic() < deadline, "rank 2 never finished an epoch"
            time.sleep(0.05)
        pid = _worker_pid(proc.pid, 2)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "ok" and meta["algorithms"]["swarm"]["status"] == "ok"
    records = pd.read_json(out / "records.jsonl", lines=True)
    steps = records[records["metric"] == "steps"].set_index("rank")["value"]
    assert sorted(steps.index) == [0, 1, 3] and steps.nunique() == 1  # the survivors trained to the end
    assert records.loc[records["metric"] == "node_failed", "rank"].unique().tolist() == [2]
    summary = _summary(out)
    assert summary.loc["swarm", "nodes_alive"] == 3 and summary.loc["swarm", "test_acc"] > 0.3


def test_a_resumed_run_keeps_its_failure_schedule(tmp_path, monkeypatch):
    """Interrupted in its second algorithm, resumed: the stored --fail and --on-failure apply again, and the results
    are those of the run never stopped."""
    args = [*SMALL, "--algo", "swarm", "--algo", "adpsgd", "--fail", "1@5", "--on-failure", "continue"]
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert _invoke(*args, "--no-tensorboard", "--out", whole).exit_code == 0
    restore = interrupt_at(monkeypatch, "adpsgd")
    assert _invoke(*args, "--no-tensorboard", "--out", out).exit_code == 130
    restore()
    r = CliRunner().invoke(cli, ["run", "--resume", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "summary.csv").read_bytes() == (whole / "summary.csv").read_bytes()
    assert _summary(out).loc["adpsgd", "nodes_alive"] == 3
