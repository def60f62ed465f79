"""A run survives its user and its disk: SIGINT/SIGTERM stop every worker and keep the records (status
interrupted), one results folder takes one run at a time (DIR/.lock), and a folder that cannot be written ends the
run with one line, never a traceback or half a file."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.base.files import LineLog
from cli import cli

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import cli; cli.main()"]
SMALL = ["--dataset", "digits", "--model", "mlp", "--batch-size", "32"]
START_S = 120  # to reach training: generous, 2 cores may be shared with other work
pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see the worker processes")


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (PPid of each process)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            ppid = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
            parent[int(entry.name)] = int(ppid)
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parent.items() if pp == p and c not in out}
        out |= kids
        todo.extend(kids)
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = START_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _stop_all(proc: subprocess.Popen, pids: set[int]) -> None:
    """Test cleanup: nothing this test started may outlive it, whatever failed."""
    for pid in [proc.pid, *pids]:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_sigint_stops_every_worker_and_keeps_the_records(tmp_path):
    out = tmp_path / "out"
    cmd = [*CLI, "run", "--nodes", "3", "--algo", "allreduce", "--algo", "swarm", *SMALL, "--epochs", "400"]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    workers: set[int] = set()
    try:
        staging = [out / ".staging" / f"rank{r}.jsonl" for r in range(3)]
        _wait_for(lambda: all(p.is_file() and p.stat().st_size for p in staging), "every rank recorded", proc)
        workers = _descendants(proc.pid)
        assert len(workers) >= 3, workers
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        output, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        _stop_all(proc, workers)
    assert took < 10, f"stopping took {took:.1f} s"
    assert proc.returncode == 130, output[-3000:]
    assert not [pid for pid in workers if _running(pid)], "a worker outlived the run"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    assert meta["algorithms"]["allreduce"] == {"status": "interrupted", "reason": "stopped by SIGINT"}
    assert meta["algorithms"]["swarm"]["status"] == "skipped"
    assert list(pd.read_csv(out / "summary.csv")["status"]) == ["interrupted", "skipped"]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["rank"] for r in records if r["metric"] == "train_loss"} == {0, 1, 2}  # every rank's rows kept
    assert not (out / ".staging").exists() and not (out / ".lock").exists()
    assert "Traceback" not in output
    assert f"to continue it: swarmbench run --resume {out}" in output


def test_a_second_run_into_a_busy_folder_is_refused_and_sigterm_interrupts(tmp_path):
    out = tmp_path / "out"
    cmd = [*CLI, "run", "--engine", "sim", "--nodes", "4", "--algo", "swarm", *SMALL, "--epochs", "1000"]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        staged = out / ".staging" / "rank-all.jsonl"
        _wait_for(lambda: staged.is_file() and staged.stat().st_size > 0, "the first run recorded", proc)
        second = CliRunner().invoke(
            cli, ["run", "--engine", "sim", "--nodes", "2", "--algo", "swarm", "--out", str(out)]
        )
        assert second.exit_code == 2, second.output
        assert second.output.strip().splitlines() == [
            f"error: --out '{out}' is in use by another run (process {proc.pid}): "
            "wait for it to finish or choose another folder"
        ]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        _stop_all(proc, set())
    assert proc.returncode == 143, output[-3000:]
    assert json.loads((out / "meta.json").read_text())["status"] == "interrupted"
    assert list(pd.read_csv(out / "summary.csv")["status"]) == ["interrupted"]
    assert (out / "records.jsonl").read_text().strip()
    assert not (out / ".lock").exists()


def test_an_unwritable_out_is_one_line_and_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    r = CliRunner().invoke(cli, ["run", "--engine", "sim", "--nodes", "2", "--out", str(blocker / "run")])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"error: --out '{blocker / 'run'}' is not writable (Not a directory): choose a folder you can write to"
    ]


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_ends_the_run_with_one_line_and_status_failed(tmp_path):
    """A file-size limit makes every write past 16 KB fail (EFBIG; Python ignores SIGXFSZ) as a full disk would:
    the records' staging file stops growing mid-run."""
    out = tmp_path / "out"
    cmd = [*CLI, "run", "--engine", "sim", "--nodes", "2", "--algo", "swarm", *SMALL, "--epochs", "6"]
    r = subprocess.run(
        [*cmd, "--no-tensorboard", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_S,
        preexec_fn=_file_size_limit(16 * 1024),
    )
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write the records to '{out / '.staging' / 'rank-all.jsonl'}': ")
    assert line.endswith(": free some space or choose another --out")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed" and meta["algorithms"]["swarm"]["status"] == "failed"
    assert list(pd.read_csv(out / "summary.csv")["status"]) == ["failed"]
    lines = (out / "records.jsonl").read_bytes().split(b"\n")
    assert len(lines) > 30 and lines[-1] == b"" and all(json.loads(x) for x in lines[:-1])  # only whole lines


def test_results_that_cannot_be_written_leave_no_half_file(tmp_path):
    """finalize on a folder that takes no file past 16 KB: records.jsonl (larger) is never written in part, meta.json
    (smaller) says failed, and the records stay in the staging folder."""
    from bench.base.errors import ResultsUnwritable
    from bench.records.write import STAGING, build_meta
    from bench.run.outcome import write_results
    from bench.training.config import resolve

    cfg = resolve({"algorithms": ["swarm"], "nodes": 2})
    meta = build_meta(cfg, run_id="x", argv=[], engine="sim", backend="none", transport="sim")
    rows = [{"algorithm": "swarm", "rank": 0, "epoch": e, "metric": "train_loss", "value": 1.0} for e in range(1000)]
    (tmp_path / STAGING).mkdir()
    (tmp_path / STAGING / "rank0.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
    try:
        with pytest.raises(ResultsUnwritable, match="File too large; the records so far are in"):
            write_results(tmp_path, cfg, meta, {"swarm": "ok"}, {"swarm": ""}, "ok")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert sorted(p.name for p in tmp_path.iterdir()) == [STAGING, "meta.json"]  # no temporary file left either
    assert json.loads((tmp_path / "meta.json").read_text())["status"] == "failed"
    assert len((tmp_path / STAGING / "rank0.jsonl").read_text().splitlines()) == 1000


def test_line_log_lines_are_complete_or_absent(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": ')  # a writer killed mid-line
    log = LineLog(path)
    log.write('{"a": 3}')
    whole = b'{"a": 1}\n{"a": 2}\n{"a": 3}\n'
    assert path.read_bytes() == whole
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(whole) + 10, hard))  # room for 10 bytes of the next line
    try:
        with pytest.raises(OSError, match="File too large"):
            log.write('{"a": "' + "x" * 100 + '"}')
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        log.close()
    assert path.read_bytes() == whole  # the 10 bytes written were taken back


def test_a_signal_while_the_results_are_written_is_raised_once_they_are():
    from bench.base.signals import Interrupted, deferred, stop_signals

    finished = []
    with pytest.raises(Interrupted) as caught, stop_signals(), deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler has run by now: it must not have raised
        finished.append(True)
    assert finished == [True] and caught.value.exit_code == 143
    with pytest.raises(Interrupted), stop_signals():  # outside deferred(): at once
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_the_printed_command_runs_the_same_configuration(tmp_path):
    """`--config DIR/meta.json` (what an interrupted run prints) resolves to the configuration that run had."""
    from bench.records.write import build_meta
    from bench.training.config import resolve

    cfg = resolve({"algorithms": ["swarm", "allreduce"], "nodes": 3}, None, ["swarm.local_steps=8", "lr=0.1"])
    meta = build_meta(cfg, run_id="x", argv=[], engine="processes", backend="gloo", transport="p2p")
    (tmp_path / "meta.json").write_text(json.dumps(meta, default=str))
    assert resolve({}, str(tmp_path / "meta.json")) == cfg
