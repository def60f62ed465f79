"""Both one-sided transports (gloo responder "p2p", MPI windows "rma") behind the same Comm interface."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pairwise_scenarios import BUCKET, NUMEL, expected_one_average, many_averages, one_average

from bench.base.errors import UserError
from bench.core.comm import HEADER_BYTES, MAIL_HEADER_BYTES, resolve_transport
from bench.core.topology import build_topology
from bench.engine.sim.cluster import Cluster
from tests.simcost import step_time_cost

HERE = Path(__file__).parent
MPIRUN = shutil.which("mpirun")
try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(not (MPIRUN and HAVE_MPI4PY), reason="needs Open MPI's mpirun and mpi4py")


def _mpirun(tmp_path: Path, world: int, transport: str, scenario: str) -> list[dict]:
    cmd = [MPIRUN, "--oversubscribe", "-np", str(world), "-x", "GLOO_SOCKET_IFNAME=lo", "-x", "PYTHONPATH"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    cmd += [
        sys.executable,
        str(HERE / "mpi_transport_check.py"),
        str(tmp_path / f"store-{transport}"),
        transport,
        scenario,
    ]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    store = tmp_path / f"store-{transport}"
    return [json.loads(Path(f"{store}.rank{r}.json").read_text()) for r in range(world)]


@needs_mpi
def test_directed_messages_under_mpi_on_the_rma_transport(tmp_path):
    """send/recv under mpirun with MPI windows for the one-sided operations: the mailbox still runs on gloo
    (tests/test_related_algorithms.py covers p2p); exactly once, in order, dtype kept; bytes = payload + a 16-byte
    header, counted on both sides."""
    world = 3
    for r in _mpirun(tmp_path, world, "rma", "mail"):
        pred = (r["rank"] - 1) % world
        assert r["transport"] == "rma"
        assert r["got"] == [[float(10 * pred + k)] * 4 for k in range(3)]
        assert r["raw"] == [pred + i for i in range(5)] and r["raw_dtype"] == "torch.uint8"
        stats = r["stats"]
        assert stats["model"]["bytes_sent"] == stats["model"]["bytes_recv"] == 3 * 16
        assert stats["grad"]["bytes_sent"] == stats["grad"]["bytes_recv"] == 5
        assert stats["control"]["bytes_sent"] == stats["control"]["bytes_recv"] == 4 * MAIL_HEADER_BYTES


@needs_mpi
@pytest.mark.parametrize("world", [2, 3])
def test_both_transports_give_the_same_reads(tmp_path, world):
    """A deterministic schedule (publish, fence, read successor) reads the same models and stamps."""
    p2p = _mpirun(tmp_path, world, "p2p", "read")
    rma = _mpirun(tmp_path, world, "rma", "read")
    for a, b in zip(p2p, rma, strict=True):
        assert a["transport"] == "p2p" and b["transport"] == "rma"
        assert a["got"] == b["got"] == [100.0 * ((a["rank"] + 1) % world) + i for i in range(10)]
        assert a["stamp"] == b["stamp"] == (a["rank"] + 1) % world + 1
        # Model bytes are the same on both; RMA's control message is an 8-byte counter increment.
        assert a["stats"]["model"]["bytes_recv"] == b["stats"]["model"]["bytes_recv"] == 8 + 40
        assert a["stats"]["model"]["bytes_sent"] == b["stats"]["model"]["bytes_sent"] == 8 + 40
        # (and the RMA owner sends its 8-byte live step counter with each read it serves)
        assert a["stats"]["control"]["bytes_sent"] == 32 and b["stats"]["control"]["bytes_sent"] == 8 + 8
        # RMA's reader also gets the owner's live step counter (8 bytes) to measure the read's staleness.
        assert b["stats"]["control"]["bytes_recv"] == 8 + 8  # the increment of its own counter, the live step
    # Staleness = the owner's live step at read time - the stamp of the copy read = 4 for every read; p2p counts
    # it on the owner (its responder knows the live step), RMA on the reader (it Gets the owner's counter).
    for rows in (p2p, rma):
        assert sum(r["staleness_sum"] for r in rows) == 4 * world
        assert sum(r["staleness_reads"] for r in rows) == world


@needs_mpi
@pytest.mark.parametrize(
    ("transport", "scenario"), [("p2p", "average"), ("rma", "average"), ("p2p", "pushpull"), ("rma", "pushpull")]
)
def test_pairwise_averages_conserve_sum_on_each_transport(tmp_path, transport, scenario):
    """Learning rate 0: sum of models conserved (raw and 8-bit lattice), raw models reach the mean; with
    atomic averages (`average_with`) and with SwarmSGD's pull-push interaction (`pull_push`: the partner folds
    the deposit in later). Every byte one node counts as sent another counts as received."""
    rows = _mpirun(tmp_path, 3, transport, scenario)
    # 8 bits with eps 0.01 decode within (2**7 - 1/2) * 0.01 = 1.275 of the sender's values. Initial models are
    # within about 0.4 of 0, and p2p's passive side averages atomically under its model lock, so it never leaves
    # that. RMA's owner folds deposits in later, each computed against the version the initiator read: with every
    # node averaging back to back (no steps in between), overlapping averages can overshoot (a node moved by its
    # own average and by deposits naming its older version), and models can spread past the radius for a while.
    # Such buckets fail on one side, are skipped by both, and the sum stays exact (drift) all the same.
    apart = 2 * max(r["8"]["peak"] for r in rows)
    for row in rows:
        for bits in ("32", "8"):
            assert row[bits]["drift"] < 1e-5, row
        assert row["32"]["failures"] == 0
        assert row["8"]["failures"] == 0 or (transport == "rma" and apart > 1.275), (apart, row)
    for bits in ("32", "8"):
        for kind in ("model", "control"):
            sent = sum(r[bits]["stats"][kind]["bytes_sent"] for r in rows)
            assert sent > 0 and sent == sum(r[bits]["stats"][kind]["bytes_recv"] for r in rows), (bits, kind)
        # Initial models differ by ~0.3 in max-norm; RMA averages use the partner's last published copy (up to a
        # step stale), so consensus is reached more slowly there: 100 rounds bring both well inside 1e-2.
        assert row["32"]["spread"] < 1e-2


def _total(rows: list[dict], key: str) -> torch.Tensor:
    return torch.tensor([r[key] for r in rows], dtype=torch.float64).sum(0)


def _check_one_average(rows: list[dict], transport: str) -> None:
    """One average, rank 0 with rank 1, with buckets failing on the initiator only, the partner only, both, and
    ties decoding on both (tests/pairwise_scenarios.py): both skip the union, conserve the sum bit for bit, and
    count the closed-form bytes."""
    exp = expected_one_average()
    for rank in (0, 1):
        row = rows[rank]
        assert row["failures"] == exp["failures"][rank], (transport, rank)
        assert row["skipped"] == exp["skipped"], (transport, rank)  # the union: failed on either side
        assert row["final"] == exp["final"][rank], (transport, rank)  # midpoint outside the union, unmoved inside
    assert 0 < exp["failures"][0] < exp["skipped"] and 0 < exp["failures"][1] < exp["skipped"]
    assert torch.equal(_total(rows, "final"), _total(rows, "initial"))  # every operation exact (see the module)
    m, f = exp["wire"], exp["bitmap"]
    assert f == -(-NUMEL // BUCKET // 8)  # one bit per bucket
    initiator, partner = rows[0]["stats"], rows[1]["stats"]
    if transport == "rma":  # 8 + m in (version, message), 8 + f + m out (version, bitmap, message), counter 8 + 8
        assert initiator["model"]["bytes_recv"] == partner["model"]["bytes_sent"] == 8 + m
        assert initiator["model"]["bytes_sent"] == partner["model"]["bytes_recv"] == 8 + f + m
        assert initiator["control"]["bytes_sent"] == partner["control"]["bytes_recv"] == 8
        assert initiator["control"]["bytes_recv"] == partner["control"]["bytes_sent"] == 8
    else:  # request header and m out, m and the bitmap back
        assert initiator["model"]["bytes_sent"] == partner["model"]["bytes_recv"] == m
        assert initiator["model"]["bytes_recv"] == partner["model"]["bytes_sent"] == m + f
        assert initiator["control"]["bytes_sent"] == partner["control"]["bytes_recv"] == HEADER_BYTES


def _check_many_averages(rows: list[dict], transport: str, rounds: int = 30) -> None:
    """Concurrent averages near the radius: the sum is conserved bit for bit, some buckets failed, some on one side
    only, and the bytes add up to the closed form per interaction."""
    assert torch.equal(_total(rows, "final"), _total(rows, "initial"))
    failures, skipped = sum(r["failures"] for r in rows), sum(r["skipped"] for r in rows)
    # Per average, both sides count the union U and each its own failures F: 2|U| - |F_a| - |F_b| is the number of
    # buckets that failed on one side only.
    assert failures > 0 and skipped > failures, (transport, failures, skipped)
    m, f = expected_one_average()["wire"], expected_one_average()["bitmap"]
    interactions = rounds * len(rows)
    sent = sum(r["stats"]["model"]["bytes_sent"] for r in rows)
    assert sent == sum(r["stats"]["model"]["bytes_recv"] for r in rows)
    if transport == "rma":
        full = sum(r["inbox_full"] for r in rows)  # deposits that found no free slot went as 4 bytes per coordinate
        assert sent == interactions * (2 * m + 16 + f) - full * (8 + f + m - 4 * NUMEL)
        assert sum(r["stats"]["control"]["bytes_sent"] for r in rows) == interactions * 16
    else:
        assert sent == interactions * (2 * m + f)


def test_averages_near_the_radius_conserve_the_sum_exactly_in_the_simulator():
    """The simulated cluster runs the same scenarios as p2p and rma under mpirun (test below)."""
    cost = step_time_cost()
    rows: dict[str, list[dict]] = {"one": [{}] * 3, "many": [{}] * 3}

    def body(rank: int) -> None:
        comm = cluster.comms[rank]
        rows["one"][rank] = one_average(comm)
        rows["many"][rank] = many_averages(comm)

    cluster = Cluster(3, build_topology("complete", 3), cost, seed=0)
    cluster.run(body)
    _check_one_average(rows["one"], "sim")
    _check_many_averages(rows["many"], "sim")


@needs_mpi
@pytest.mark.parametrize("transport", ["p2p", "rma"])
def test_averages_near_the_radius_conserve_the_sum_exactly(tmp_path, transport):
    """Lattice failures on one side only: both sides skip the same buckets, so the sum of models stays exact."""
    rows = _mpirun(tmp_path, 3, transport, "radius")
    _check_one_average([r["one"] for r in rows], transport)
    _check_many_averages([r["many"] for r in rows], transport)
    if transport == "rma":  # rank 1 never drains while rank 0 averages with it INBOX_SLOTS + 2 times
        full = [r["full"] for r in rows]
        assert torch.equal(_total(full, "final"), _total(full, "initial"))
        exp = expected_one_average()
        m, f = exp["wire"], exp["bitmap"]
        assert full[0]["inbox_full"] == 2
        assert full[0]["stats"]["model"]["bytes_sent"] == full[1]["stats"]["model"]["bytes_recv"]
        assert full[0]["stats"]["model"]["bytes_sent"] == 4 * (8 + f + m) + 2 * 4 * NUMEL
        assert full[0]["stats"]["model"]["bytes_recv"] == full[1]["stats"]["model"]["bytes_sent"] == 6 * (8 + m)


@needs_mpi
@pytest.mark.parametrize("transport", ["p2p", "rma"])
def test_async_allreduce_on_each_transport(tmp_path, transport):
    from bench.core.comm import ring_allreduce_bytes

    world = 3
    for row in _mpirun(tmp_path, world, transport, "allreduce"):
        assert row["transport"] == transport
        assert row["sliced"] == row["flat"] == [i * 2.0 for i in range(30)]  # mean of 1, 2, 3 times i
        volume = ring_allreduce_bytes(120, world) + sum(ring_allreduce_bytes(4 * n, world) for n in (10, 15, 5))
        assert row["stats"]["grad"]["bytes_sent"] == volume
        assert row["stats"]["grad"]["msgs_sent"] == 4


def test_resolve_transport():
    assert resolve_transport("p2p", under_mpi=True, single_host=True) == "p2p"
    assert resolve_transport("auto", under_mpi=False, single_host=True) == "p2p"
    assert resolve_transport("auto", under_mpi=True, single_host=False) == "p2p"
    if HAVE_MPI4PY:
        assert resolve_transport("auto", under_mpi=True, single_host=True) == "rma"
    with pytest.raises(UserError, match="--transport rma needs"):
        resolve_transport("rma", under_mpi=False, single_host=True)
