"""Launchers: environment detection, the command lines built, and real launches under mpirun, torchrun and
horovodrun (ours and user-started), including a killed rank and a --nodes mismatch."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.base.errors import UserError
from bench.engine.processes.env import LaunchEnv, detect, expand_hostlist, expand_tasks_per_node, under_mpi
from bench.engine.processes.launchers import (
    BRACKET_TAG,
    LAUNCHERS,
    SRUN_TAG,
    Launcher,
    find_binary,
    horovodrun_argv,
    mpirun_argv,
    require_binary,
    srun_argv,
    torchrun_argv,
    worker_command,
)
from bench.engine.processes.spawn import LauncherLog, Outcome, StreamParser, split_event
from bench.engine.processes.worker import EVENT_MARKER
from cli import cli

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLI = [PY, "-c", "import cli; cli.main()"]
# Small and quick: a collective algorithm and the one-sided one.
RUN_ARGS = ["--algo", "allreduce", "--algo", "swarm", "--dataset", "digits", "--model", "mlp", "--epochs", "1"]
RUN_ARGS += ["--batch-size", "32"]
TIMEOUT_S = 120  # per launch; generous because 2 cores may be shared with other work

MPIRUN = shutil.which("mpirun")
HAS_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    not (MPIRUN and HAS_MPI4PY),
    reason=f"needs Open MPI's mpirun ({MPIRUN or 'missing'}) and mpi4py ({'ok' if HAS_MPI4PY else 'missing'})",
)
TORCHRUN = find_binary("torchrun")
needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found next to this Python or on PATH")


def _horovod_problem() -> str | None:
    if find_binary("horovodrun") is None:
        return "horovodrun not found (build Horovod with `make horovod`)"
    probe = subprocess.run([PY, "-c", "import horovod.torch"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        return f"horovod.torch does not import: {lines[-1] if lines else probe.returncode}"
    return None


# ---- environment detection (pure functions of a mapping) -----------------------------------------------------


def test_no_launcher_detected():
    assert detect({}) is None
    assert detect({"PATH": "/usr/bin", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}) is None


def test_torchrun_detected():
    env = {
        "TORCHELASTIC_RUN_ID": "abc",
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_WORLD_SIZE": "4",
        "MASTER_ADDR": "node01",
        "MASTER_PORT": "29400",
    }
    found = detect(env)
    assert found == LaunchEnv(
        "torchrun", 3, 8, 1, 2, num_hosts=4, master_addr="node01", master_port=29400, job_id="abc"
    )
    assert found.single_host is False
    # Without TORCHELASTIC_RUN_ID (torch.distributed.launch, hand-set variables): the five variables suffice.
    plain = {k: v for k, v in env.items() if k not in ("TORCHELASTIC_RUN_ID", "GROUP_WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    found = detect(plain)
    assert (found.launcher, found.rank, found.world_size, found.single_host) == ("torchrun", 3, 8, None)


def test_horovodrun_detected():
    env = {
        "HOROVOD_RANK": "1",
        "HOROVOD_SIZE": "2",
        "HOROVOD_LOCAL_RANK": "1",
        "HOROVOD_LOCAL_SIZE": "2",
        "HOROVOD_CROSS_SIZE": "1",
        "HOROVOD_HOSTNAME": "localhost",
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": "127.0.0.1",
        "HOROVOD_GLOO_RENDEZVOUS_PORT": "1234",
    }
    found = detect(env)
    assert found == LaunchEnv("horovodrun", 1, 2, 1, 2, num_hosts=1, master_addr="127.0.0.1", master_port=1234)
    assert found.single_host is True


def test_open_mpi_detected():
    env = {
        "OMPI_COMM_WORLD_RANK": "2",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "0",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    }
    found = detect(env)
    assert (found.launcher, found.rank, found.world_size, found.local_rank, found.local_world_size) == (
        "mpirun",
        2,
        4,
        0,
        2,
    )
    assert found.single_host is False


def test_pmi_detected():
    env = {"PMI_RANK": "0", "PMI_SIZE": "3", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "3", "PMI_JOBID": "7"}
    assert detect(env) == LaunchEnv("mpiexec", 0, 3, 0, 3, job_id="7")
    assert detect({"PMI_RANK": "1", "PMI_SIZE": "2"}).single_host is None  # no local counts: unknown


def test_srun_detected_with_expanded_nodelist():
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "2",
        "SLURM_NTASKS": "16",  # the allocation's tasks; the step's own count wins
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_STEP_NUM_NODES": "4",
        "SLURM_STEP_NODELIST": "gpu[01-03],login7",
        "SLURM_STEP_TASKS_PER_NODE": "2(x3),2",
    }
    found = detect(env)
    assert found == LaunchEnv(
        "srun", 5, 8, 1, 2, num_hosts=4, hosts=("gpu01", "gpu02", "gpu03", "login7"), job_id="4242"
    )
    # A batch script or an salloc shell also has SLURM_PROCID and SLURM_NTASKS, but no job step: no launch.
    batch = {k: v for k, v in env.items() if not k.startswith("SLURM_STEP")}
    assert detect(batch) is None
    # Older srun without the step variables: fall back to the job's.
    older = {**batch, "SLURM_STEP_ID": "1", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NNODES": "2"}
    found = detect(older)
    assert (found.world_size, found.hosts, found.num_hosts) == (16, ("n1", "n2"), 2)


def test_detection_order():
    ompi = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}
    torchrun = {"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "WORLD_SIZE": "2"}
    horovod = {"HOROVOD_RANK": "0", "HOROVOD_SIZE": "2"}
    pmi = {"PMI_RANK": "0", "PMI_SIZE": "2"}
    srun = {"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2"}
    assert detect({**ompi, **torchrun}).launcher == "torchrun"
    assert detect({**ompi, **horovod}).launcher == "horovodrun"
    assert detect({**ompi, **pmi, **srun}).launcher == "mpirun"
    assert detect({**pmi, **srun}).launcher == "mpiexec"
    assert detect(srun).launcher == "srun"


def test_detection_rejects_garbage():
    with pytest.raises(UserError, match="OMPI_COMM_WORLD_RANK"):
        detect({"OMPI_COMM_WORLD_RANK": "zero", "OMPI_COMM_WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="rank 2 for a world of 2"):
        detect({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "2"})


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("node01", ["node01"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("a[1-2],b,c[09-10]", ["a1", "a2", "b", "c09", "c10"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("gpu[008-010]-ib", ["gpu008-ib", "gpu009-ib", "gpu010-ib"]),
        ("x[7]", ["x7"]),
    ],
)
def test_expand_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("bad", ["node[01-03", "node]1[", "node[3-1]", "node[a-b]", "n[[1]]"])
def test_expand_hostlist_rejects(bad):
    with pytest.raises(UserError, match="host list"):
        expand_hostlist(bad)


def test_expand_tasks_per_node():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("4") == [4]
    with pytest.raises(UserError):
        expand_tasks_per_node("2(3)")


# ---- command lines ------------------------------------------------------------------------------------------------


WORKER = ["/venv/bin/python", "-m", "bench.engine.processes.worker", "/tmp/x/spec.json"]


def test_mpirun_argv():
    tail = ["--bind-to", "none", "--tag-output", *WORKER]
    assert mpirun_argv("mpirun", 2, WORKER, root=False, cores=2) == ["mpirun", "-np", "2", *tail]
    assert mpirun_argv("mpirun", 4, WORKER, root=True, cores=2) == [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-np",
        "4",
        *tail,
    ]


def test_torchrun_argv():
    argv = torchrun_argv("torchrun", 3, WORKER, log_dir="/tmp/x/logs")
    assert argv[0] == "torchrun" and argv[-3:] == ["-m", "bench.engine.processes.worker", "/tmp/x/spec.json"]
    joined = " ".join(argv)
    for piece in ("--standalone", "--nnodes 1", "--nproc-per-node 3", "--tee 3", "--log-dir /tmp/x/logs"):
        assert piece in joined
    prefix = argv[argv.index("--log-line-prefix-template") + 1]
    assert BRACKET_TAG.fullmatch(prefix.replace("${rank}", "2")).group(1) == "2"  # our parser reads its tag


def test_horovodrun_and_srun_argv():
    assert horovodrun_argv("horovodrun", 2, WORKER) == [
        "horovodrun",
        "--gloo",
        "-np",
        "2",
        "-H",
        "localhost:2",
        *WORKER,
    ]
    assert srun_argv("srun", 8, WORKER) == [
        "srun",
        "--ntasks",
        "8",
        "--kill-on-bad-exit=1",
        "--label",
        "--cpu-bind=none",
        *WORKER,
    ]
    assert SRUN_TAG.match("  3: hello").group(1) == "3"


def test_worker_command_is_this_python():
    assert worker_command("/s.json") == [sys.executable, "-m", "bench.engine.processes.worker", "/s.json"]


def test_missing_binary_names_it_and_the_fix():
    fake = Launcher("fake", "test", binary="no-such-launcher-xyz", install="apt-get install xyz")
    with pytest.raises(UserError, match=r"no-such-launcher-xyz.*apt-get install xyz"):
        require_binary(fake)


@pytest.mark.skipif(find_binary("srun") is not None, reason="srun is installed here")
def test_missing_srun_is_a_user_error(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["run", "--launcher", "srun", "--nodes", "2", "--dataset", "digits", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "`srun`" in r.output and "SLURM" in r.output
    assert not out.exists()


def test_list_shows_launchers():
    r = CliRunner().invoke(cli, ["list"])
    assert r.exit_code == 0
    for name in LAUNCHERS:
        assert f"  {name} " in r.output
    assert set(LAUNCHERS) >= {"local", "mpirun", "torchrun", "horovodrun", "srun"}


# ---- output parsing -------------------------------------------------------------------------------------------


def test_stream_parser_reassembles_chunked_lines():
    p = StreamParser(BRACKET_TAG, None)
    # Open MPI tags every forwarded chunk, also in mid-line, and another rank's line may land in between.
    assert p.feed('[1,1]<stdout>:{"a": [1,1]<stdout>:1}') == [(1, '{"a": 1}')]
    assert p.feed("[1,0]<stdout>:partial[1,1]<stdout>:whole line") == [(1, "whole line")]
    assert p.feed("[1,0]<stdout>: rest") == [(0, "partial rest")]
    assert p.feed("mpirun noticed something") == [(None, "mpirun noticed something")]
    assert p.feed("[3]<stderr>:horovod style") == [(3, "horovod style")]
    local = StreamParser(None, 2)
    assert local.feed("[1,0]<stdout>:kept as is") == [(2, "[1,0]<stdout>:kept as is")]


def test_split_event():
    text, event = split_event("noise" + EVENT_MARKER + json.dumps({"type": "cell_start", "algorithm": "swarm"}))
    assert text == "noise" and event == {"type": "cell_start", "algorithm": "swarm"}
    assert split_event(EVENT_MARKER + "{torn") == (EVENT_MARKER + "{torn", None)
    assert split_event("plain") == ("plain", None)


def test_launcher_log_names_the_killed_rank():
    outcome = Outcome()
    log = LauncherLog()
    log.feed("mpirun noticed that process rank 1 with PID 123 on node vm exited on signal 9 (Killed).", outcome)
    assert outcome.signalled == [1] and outcome.errors[1] == "killed by signal SIGKILL"
    outcome, log = Outcome(), LauncherLog()
    for line in [
        "Failures:",
        "  rank      : 0 (local_rank: 0)",
        "  exitcode  : -15 (pid: 1)",
        "Root Cause (first observed failure):",
        "[0]:",
        "  rank      : 2 (local_rank: 2)",
        "  exitcode  : -9 (pid: 9)",
    ]:
        log.feed(line, outcome)
    assert outcome.signalled == [2] and outcome.root_cause() == (2, "killed by signal SIGKILL")


# ---- real launches --------------------------------------------------------------------------------------------


def _run(cmd: list[str], timeout: float = TIMEOUT_S, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def _mpirun(n: int) -> list[str]:
    argv = [MPIRUN or "mpirun"]
    if os.geteuid() == 0:
        argv.append("--allow-run-as-root")
    return [*argv, "--oversubscribe", "-np", str(n)]


def _check_results(out: Path, nodes: int, launcher: str, mode: str, algos=("allreduce", "swarm")) -> dict:
    """The results contract of a finished launch: every algorithm ok, rows from every rank, launch facts."""
    import pandas as pd

    names = {p.name for p in out.iterdir()}
    assert {"meta.json", "records.jsonl", "summary.csv", "throughput.md", "accuracy.md", "comm.md"} <= names
    assert not any(n.startswith(".") for n in names), names  # no staging or temporary files left
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "ok" and meta["launcher"] == launcher and meta["config"]["nodes"] == nodes
    assert meta["launch"]["mode"] == mode
    assert meta["launch"]["rendezvous"]
    assert len(meta["hosts"]) == nodes
    assert meta["backend"] == "gloo"
    if launcher != "local":
        assert meta["launch"]["env"]["launcher"] == launcher and meta["launch"]["env"]["world_size"] == nodes
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["algorithm"]) == list(algos)
    assert (summary["status"] == "ok").all(), summary
    assert (summary["test_acc"] > 0.5).all(), summary[["algorithm", "test_acc"]]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    for algo in algos:
        ranks = {r["rank"] for r in records if r["algorithm"] == algo and r["rank"] is not None}
        assert ranks == set(range(nodes)), (algo, ranks)
    assert {r["run_id"] for r in records} == {out.name}
    return meta


@needs_mpi
def test_launcher_mpirun(tmp_path):
    """3 ranks on the p2p responder path (a user-started world below takes the transport `auto` resolves to)."""
    nodes, out = 3, tmp_path / "out"
    r = _run(
        [*CLI, "run", "--launcher", "mpirun", "--nodes", str(nodes), *RUN_ARGS, "--transport", "p2p", "--out", str(out)]
    )
    assert r.returncode == 0, r.stdout + r.stderr
    meta = _check_results(out, nodes, "mpirun", "spawned")
    assert meta["launch"]["command"][0].endswith("mpirun") and "--tag-output" in meta["launch"]["command"]
    assert "mpi4py" in meta["launch"]["rendezvous"]
    assert meta["transport"] == "p2p"
    assert "allreduce: started" in r.stdout and "results:" in r.stdout


@needs_mpi
def test_user_started_mpirun(tmp_path):
    out = tmp_path / "out"
    r = _run([*_mpirun(2), *CLI, "run", *RUN_ARGS, "--out", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    meta = _check_results(out, 2, "mpirun", "external")
    assert meta["config"]["nodes"] == 2  # --nodes defaulted to the launcher's world size
    assert meta["transport"] == "rma"  # what `auto` resolves to under MPI on one host
    # Rank 0 alone prints progress and the tables, once, as plain text.
    assert r.stdout.count("allreduce: started") == 1 and r.stdout.count("results:") == 1
    assert "\x1b[" not in r.stdout


@needs_mpi
def test_nodes_mismatch_under_mpirun_exits_2_on_every_rank(tmp_path):
    out = tmp_path / "out"
    r = _run([*_mpirun(2), *CLI, "run", "--nodes", "3", "--dataset", "digits", "--out", str(out)])
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all("--nodes 3 does not match the 2 ranks mpirun started" in e for e in errors)
    assert not out.exists()


@needs_mpi
def test_bad_out_dir_under_mpirun_exits_2_on_every_rank(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    r = _run([*_mpirun(2), *CLI, "run", "--dataset", "digits", "--epochs", "1", "--out", str(out)])
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("is not empty") == 2  # rank 0 decided, every rank said it
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def _rank_pids(rank: int) -> list[int]:
    """Worker processes of our launch with the given MPI rank."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"bench.engine.processes.worker" in argv and f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            pids.append(int(entry.name))
    return pids


@needs_mpi
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker process")
def test_killed_rank_under_mpirun_fails_fast(tmp_path):
    out = tmp_path / "out"
    cmd = [*CLI, "run", "--launcher", "mpirun", "--nodes", "3", *RUN_ARGS, "--transport", "p2p", "--out", str(out)]
    cmd[cmd.index("--epochs") + 1] = "400"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        staging = out / ".staging" / "rank1.jsonl"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (staging.exists() and staging.stat().st_size > 0):
            time.sleep(0.2)
        assert staging.exists(), "the run never started training"
        pids = _rank_pids(1)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        killed_at = time.monotonic()
        output, _ = proc.communicate(timeout=60)
        assert time.monotonic() - killed_at < 10, "the other ranks were not stopped within 10 s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, output
    assert re.search(r"failed: rank 1: killed by signal SIGKILL", output), output[-2000:]
    assert not _rank_pids(0) and not _rank_pids(2)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed"
    assert meta["algorithms"]["allreduce"] == {"status": "failed", "reason": "rank 1: killed by signal SIGKILL"}
    assert meta["algorithms"]["swarm"]["status"] == "skipped"
    assert (out / "records.jsonl").read_text().strip()
    assert not (out / ".staging").exists()


def test_user_started_srun_environment(tmp_path):
    """srun itself is not needed to test what its tasks do: two processes with the variables srun sets meet on
    the first node of the step at the port derived from the job id, and write one results folder."""
    out = tmp_path / "out"
    job = str(1000 + os.getpid() % 8000)  # a port of its own for concurrent test runs
    base = {
        "SLURM_JOB_ID": job,
        "SLURM_STEP_ID": "0",
        "SLURM_NODEID": "0",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_STEP_NUM_NODES": "1",
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_STEP_TASKS_PER_NODE": "2",
    }
    cmd = [*CLI, "run", *RUN_ARGS, "--out", str(out)]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
        )
        for r in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs
    meta = _check_results(out, 2, "srun", "external")
    assert meta["launch"]["rendezvous"] == f"TCPStore at 127.0.0.1:{15000 + int(job) % 10000}"
    assert "results:" in outputs[0] and outputs[1].strip() == ""  # rank 1 prints nothing when all is well


@needs_torchrun
def test_launcher_torchrun(tmp_path):
    out = tmp_path / "out"
    r = _run([*CLI, "run", "--launcher", "torchrun", "--nodes", "2", *RUN_ARGS, "--out", str(out)])
    assert r.returncode == 0, r.stdout + r.stderr
    meta = _check_results(out, 2, "torchrun", "spawned")
    assert meta["launch"]["rendezvous"].startswith("torchrun store")


@needs_torchrun
def test_user_started_torchrun(tmp_path):
    out = tmp_path / "out"
    cmd = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "cli", "run", *RUN_ARGS, "--out", str(out)]
    r = _run(cmd, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    _check_results(out, 2, "torchrun", "external")
    assert r.stdout.count("results:") == 1


def test_under_mpi_is_one_answer_for_every_mpi_process_manager():
    """The parent predicting the transport and the workers resolving it ask the same question: Open MPI's mpirun
    and MPICH's mpiexec (PMI) both start MPI ranks; the other launchers do not."""
    has_mpi4py = importlib.util.find_spec("mpi4py") is not None
    open_mpi = detect({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})
    mpich = detect({"PMI_RANK": "1", "PMI_SIZE": "2"})
    assert (open_mpi.launcher, mpich.launcher) == ("mpirun", "mpiexec")
    assert under_mpi(open_mpi.launcher) is has_mpi4py
    assert under_mpi(mpich.launcher) is has_mpi4py
    for name in ("local", "torchrun", "horovodrun", "srun"):
        assert under_mpi(name) is False
