"""--allreduce-impl horovod: the same AllReduce SGD through Horovod's allreduces under horovodrun."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cli import cli
from tests.test_launchers import _check_results

HOROVOD = importlib.util.find_spec("horovod") is not None
HOROVODRUN = shutil.which("horovodrun", path=str(Path(sys.executable).parent)) or shutil.which("horovodrun")


def test_horovod_impl_needs_a_launcher_horovod_can_join(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["run", "--allreduce-impl", "horovod", "--launcher", "local", "--out", str(out)])
    assert r.exit_code == 2 and "horovod" in r.output.lower()
    assert not out.exists()


@pytest.mark.skipif(not (HOROVOD and HOROVODRUN), reason="Horovod is not built in this Python (make horovod)")
def test_horovod_allreduce_matches_torch(tmp_path):
    """`--launcher horovodrun` starts a world whose results hold to the launchers' contract, and AllReduce SGD (and
    local SGD's averages) through Horovod's allreduces give what torch.distributed's give."""
    common = [
        "run",
        "--algo",
        "allreduce",
        "--algo",
        "local_sgd",
        "--launcher",
        "horovodrun",
        "--nodes",
        "2",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        # AllReduce SGD's gradient in 3 buckets, so several asynchronous Horovod allreduces are in flight at once
        "--set",
        "allreduce.first_bucket_mb=0.002",
        "--set",
        "allreduce.bucket_cap_mb=0.02",
    ]
    frames = {}
    for impl in ("torch", "horovod"):
        out = tmp_path / impl
        also = ["--algo", "swarm"] if impl == "torch" else []  # the launch's contract, with a one-sided algorithm
        r = CliRunner().invoke(cli, [*common, *also, "--allreduce-impl", impl, "--out", str(out)])
        assert r.exit_code == 0, r.output
        frames[impl] = pd.read_csv(out / "summary.csv").set_index("algorithm").loc[["allreduce", "local_sgd"]]
    meta = _check_results(tmp_path / "torch", 2, "horovodrun", "spawned", ("allreduce", "local_sgd", "swarm"))
    assert "Horovod" in meta["launch"]["rendezvous"]
    for col in ("test_acc", "bytes_sent_total", "bytes_grad", "bytes_model", "samples"):
        assert frames["torch"][col].tolist() == pytest.approx(frames["horovod"][col].tolist(), abs=1e-6), col
