"""`swarmbench doctor`: every item is reported, and each status agrees with what this machine really has.

The assertions compare against facts read independently here (torch.cuda.is_available(), shutil.which, ...),
never against fixed values, so they hold on a GPU machine as on a CPU-only one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.diagnostics.doctor import (
    PROBE_BUSY_S,
    PROBE_TIMEOUT_S,
    STATUSES,
    build_item,
    probe_item,
    read_build_status,
    rma_probe,
)
from cli import cli

KEYS = [
    "python",
    "torch",
    "torchvision",
    "cuda",
    "dist.gloo",
    "dist.nccl",
    "launcher.mpirun",
    "launcher.torchrun",
    "launcher.srun",
    "launcher.horovodrun",
    "mpi4py",
    "transport.p2p",
    "transport.rma",
    "horovod",
    "horovod.build",
    "mpi.passive_progress",
    "cores",
    "memory",
]


def _on_path_or_beside_python(name: str) -> bool:
    return bool(shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent)))


@pytest.fixture(scope="module")
def report() -> dict:
    """One `swarmbench doctor --json --no-probe` run, shared by the tests below (it spawns a few checks)."""
    result = CliRunner().invoke(cli, ["doctor", "--json", "--no-probe"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["items"]


def test_json_has_every_item_with_a_valid_status_and_a_reason(report):
    assert list(report) == KEYS
    for key, item in report.items():
        assert item["key"] == key
        assert item["status"] in STATUSES
        assert item["detail"].strip(), f"{key} has no detail"
        assert "\n" not in item["detail"], f"{key}: the reason must be one line"


def test_versions_and_machine_facts(report):
    import torch
    import torchvision

    assert report["python"]["status"] == "ok" and platform.python_version() in report["python"]["detail"]
    assert report["torch"]["detail"] == torch.__version__
    assert report["torchvision"]["detail"] == torchvision.__version__
    assert report["cores"]["data"]["usable"] == len(os.sched_getaffinity(0))
    memory = report["memory"]["data"]
    assert 0 < memory["available_gib"] <= memory["total_gib"]


def test_cuda_and_backends_agree_with_torch(report):
    import torch
    import torch.distributed as dist

    cuda = report["cuda"]
    assert (cuda["status"] == "ok") == torch.cuda.is_available()
    assert cuda["data"]["count"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if not torch.cuda.is_available():
        assert cuda["status"] == "missing" and cuda["detail"]
    assert (report["dist.gloo"]["status"] == "ok") == dist.is_gloo_available()
    assert (report["dist.nccl"]["status"] == "ok") == (dist.is_nccl_available() and torch.cuda.is_available())
    assert (report["transport.p2p"]["status"] == "ok") == dist.is_gloo_available()


def test_launchers_mpi_and_horovod_agree_with_this_machine(report):
    for name in ("mpirun", "torchrun", "srun", "horovodrun"):
        item = report[f"launcher.{name}"]
        if _on_path_or_beside_python(name):
            assert item["status"] in ("ok", "failed"), item  # failed: found, but `mpirun --version` broke
        else:
            assert item["status"] == "missing", item
    has_mpi4py = importlib.util.find_spec("mpi4py") is not None
    assert (report["mpi4py"]["status"] == "missing") == (not has_mpi4py)
    rma_ok = report["mpi4py"]["status"] == "ok" and report["launcher.mpirun"]["status"] == "ok"
    assert (report["transport.rma"]["status"] == "ok") == rma_ok
    has_horovod = importlib.util.find_spec("horovod") is not None
    assert (report["horovod"]["status"] == "missing") == (not has_horovod)
    assert report["mpi.passive_progress"]["status"] == "skipped"


def test_plain_output_is_one_line_per_item_and_exits_0():
    result = CliRunner().invoke(cli, ["doctor", "--no-probe"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(KEYS)
    assert all(line.split()[0] in STATUSES for line in lines)


def test_a_crashing_check_fails_its_items_and_the_report_goes_on(monkeypatch):
    import bench.diagnostics.doctor as doctor

    def broken(*args, **kwargs):
        raise RuntimeError("libtorch_cpu.so: cannot open shared object file")

    monkeypatch.setattr(doctor, "check_torch", broken)
    monkeypatch.setattr(doctor, "check_horovod", broken)
    items = {item.key: item for item in doctor.collect(run_probe=False)}
    assert list(items) == KEYS
    for key in ("torch", "torchvision", "cuda", "dist.gloo", "dist.nccl", "horovod", "horovod.build"):
        assert items[key].status == "failed"
        assert items[key].detail == "RuntimeError: libtorch_cpu.so: cannot open shared object file"
    assert items["transport.p2p"].status == "missing" and "gloo" in items["transport.p2p"].detail


def test_build_status_file_is_reported(tmp_path):
    assert build_item(read_build_status(tmp_path / "absent.txt")).status == "missing"
    status = tmp_path / "horovod-status.txt"
    status.write_text("status=failed\nreason=compiling Horovod (pip wheel) failed (see build.log)\nvariant=cpu\n")
    item = build_item(read_build_status(status))
    assert item.status == "failed" and "compiling Horovod" in item.detail
    status.write_text("status=ok\nreason=built in 200 s\nvariant=cpu\ntorch=2.14.1\n")
    item = build_item(read_build_status(status))
    assert item.status == "ok" and "cpu build for torch 2.14.1" in item.detail


def test_probe_results_are_worded_by_outcome():
    yes = probe_item({"passive": True, "get_ms": 0.4, "busy_s": 1.0, "bytes": 1 << 20})
    assert yes.status == "ok" and yes.detail.startswith("yes (Get took 0.4 ms")
    no = probe_item({"passive": False, "get_ms": 812.0, "busy_s": 1.0, "bytes": 1 << 20})
    assert no.status == "missing" and no.detail.startswith("no (") and "entered MPI" in no.detail
    broken = probe_item({"error": "mpirun exited 1: no slots"})
    assert broken.status == "failed" and broken.detail == "mpirun exited 1: no slots"


MPIRUN = shutil.which("mpirun")


def _is_open_mpi() -> bool:
    return "Open MPI" in subprocess.run([MPIRUN, "--version"], capture_output=True, text=True, timeout=20).stdout


needs_mpi = pytest.mark.skipif(
    MPIRUN is None or importlib.util.find_spec("mpi4py") is None, reason="needs mpirun and mpi4py"
)


@pytest.mark.mpi
@needs_mpi
def test_rma_probe_measures_a_get_against_a_busy_target():
    result = rma_probe(MPIRUN, open_mpi=_is_open_mpi())
    # The ranks themselves check the bytes read; "passive" compares the Get's end with the end of the target's
    # busy loop (no timing threshold here: a loaded machine would make one flaky).
    assert "error" not in result, result["error"]
    assert isinstance(result["passive"], bool)
    assert result["busy_s"] == PROBE_BUSY_S and 0 < result["get_ms"] < PROBE_TIMEOUT_S * 1000
    item = probe_item(result)
    assert item.status == ("ok" if result["passive"] else "missing")
    assert item.detail.startswith("yes (" if result["passive"] else "no (")


@pytest.mark.mpi
@needs_mpi
def test_rma_probe_timeout_is_reported_not_hung():
    result = rma_probe(MPIRUN, open_mpi=_is_open_mpi(), timeout=0.5)  # shorter than the target's busy loop alone
    assert result == {"error": "probe timed out after 0.5 s (mpirun and its ranks stopped)"}
    assert probe_item(result).status == "failed"
