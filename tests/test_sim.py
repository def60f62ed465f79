"""The simulated cluster (`--engine sim`): event-order invariants, determinism, bytes equal to the real engine's,
calibration, scaling series and bad input."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench.core.topology import build_topology
from bench.engine.sim import calibrate, collectives, costmodel
from bench.engine.sim import cluster as sim
from bench.records.write import SCALING_COLUMNS, SUMMARY_COLUMNS
from bench.training.config import RunConfig
from cli import cli
from tests.simcost import step_time_cost

HERE = str(Path(__file__).resolve().parent)
BYTE_COLUMNS = ["samples", "steps_per_node", "bytes_sent_total", "bytes_grad", "bytes_model", "bytes_control"]
SMALL = ["--dataset", "digits", "--epochs", "1"]


def _invoke(*args):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


_cost = step_time_cost


def _cluster(n: int, topology: str = "complete", **kw) -> sim.Cluster:
    return sim.Cluster(n, build_topology(topology, n), _cost(**kw), seed=0)


# ---- event order: the simulator's own invariants --------------------------------------------------------------


def test_allreduce_models_follow_the_published_formulas():
    """Thakur, Rabenseifner, Gropp 2005 at the issue's headline case (MLP, 473 KB, 1 GbE, 256 nodes): the ring
    charges 2(N-1) latencies (33 ms), Rabenseifner 2 log2 N latencies and the same bandwidth term (8.3 ms)."""
    link = collectives.Link(50e-6, 1e9 / 8)
    n, p = 473_128, 256
    assert collectives.ring(n, p, link) == pytest.approx(2 * 255 * 50e-6 + 2 * 255 / 256 * n * 8e-9)
    assert collectives.ring(n, p, link) == pytest.approx(0.0330, abs=1e-4)
    assert collectives.rabenseifner(n, p, link) == pytest.approx(2 * 8 * 50e-6 + 2 * 255 / 256 * n * 8e-9)
    assert collectives.rabenseifner(n, p, link) == pytest.approx(0.0083, abs=1e-4)
    assert collectives.recursive_doubling(n, p, link) == pytest.approx(8 * (50e-6 + n * 8e-9))
    assert collectives.binomial_tree(n, p, link) == pytest.approx(16 * (50e-6 + n * 8e-9))
    # not a power of two: the extra ranks hand off and get back the whole vector (two more full steps)
    assert collectives.recursive_doubling(n, 6, link) == pytest.approx(4 * (50e-6 + n * 8e-9))
    # the double binary tree pipelines: never worse than its unpipelined form, near 2 n b for long messages
    big = 100e6
    assert collectives.double_binary_tree(n, p, link) <= 2 * 8 * (50e-6 + n * 8e-9)
    assert collectives.double_binary_tree(big, p, link) == pytest.approx(2 * big * 8e-9, rel=0.06)
    assert collectives.flat(n, 1, link, "auto") == ("none", 0.0)


def test_auto_allreduce_takes_the_cheapest_and_meta_says_which():
    link = collectives.Link(25e-6, 10e9 / 8)
    for p in (2, 3, 5, 8, 64, 1000):
        for n in (64, 4096, 473_128, 50_000_000):
            name, seconds = collectives.flat(n, p, link, "auto")
            assert seconds == min(f(n, p, link) for f in collectives.FORMULAS.values())
            assert seconds == collectives.FORMULAS[name](n, p, link)
    assert collectives.flat(64, 256, link, "auto")[0] == "recursive_doubling"  # latency-bound
    assert collectives.flat(50_000_000, 256, link, "auto")[0] == "rabenseifner"  # bandwidth-bound
    assert collectives.flat(64, 8, link, "tree") == ("binomial_tree", collectives.binomial_tree(64, 8, link))
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    assert set(fields["allreduce_algo"].metadata["choices"]) == set(collectives.CHOICES)


def test_two_level_allreduce_inside_hosts_then_between_them():
    net, nvlink = collectives.Link(25e-6, 10e9 / 8), collectives.Link(2e-6, 3600e9 / 8)
    n, g, hosts = 473_128, 8, 16
    name, seconds = collectives.allreduce(n, g * hosts, net, "auto", g, nvlink)
    inside = 2 * ((g - 1) * 2e-6 + (g - 1) / g * n * 8 / 3600e9)
    between_name, between = collectives.flat(n, hosts, net, "auto")
    assert name == f"hierarchical({between_name})" and seconds == pytest.approx(inside + between)
    assert seconds < collectives.flat(n, g * hosts, net, "auto")[1]  # fewer nodes on the slow network
    assert collectives.allreduce(n, 4, net, "auto", 8, nvlink) == collectives.flat(n, 4, nvlink, "auto")
    cost = _cost(
        allreduce="auto", gpus_per_host=4, intra_host="nvlink4", intra_bandwidth_gbps=3600.0, intra_latency_us=2.0
    )
    assert cost.allreduce_choice(n, 16)[0].startswith("hierarchical(")


def test_pairwise_averages_conserve_the_sum_and_reach_the_mean():
    """Learning rate 0 (no gradient), random models, random partners, uneven compute: averaging only moves mass."""
    n, dim = 6, 50
    cluster = _cluster(n, speed_sigma=0.5, straggler_p=0.2, straggler_k=4.0)
    start = [torch.randn(dim, generator=torch.Generator().manual_seed(r)) for r in range(n)]
    live = [x.clone() for x in start]

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        comm.start_cell(None, 0)
        comm.expose(live[rank])
        comm.fence()
        rng = random.Random(rank)
        for _ in range(60):
            with clock.compute():
                pass
            with clock.compute():
                pass
            comm.average_with(rng.choice(comm.neighbors()), "model")
        comm.fence()

    cluster.run(body)
    total0, total = torch.stack(start).sum(0), torch.stack(live).sum(0)
    assert torch.allclose(total, total0, atol=1e-5)
    for x in live:
        assert torch.allclose(x, total0 / n, atol=1e-3)
    served = sum(c.stats.snapshot()["model"]["msgs_recv"] for c in cluster.comms)
    assert served == 2 * n * 60  # every average: one message in each direction


@pytest.mark.parametrize("bits", [32, 8])
def test_pull_push_conserves_the_sum_and_reaches_the_mean(bits):
    """SwarmSGD's pull-push interaction: the initiator moves at once, the partner folds the deposit in before its
    next compute section. Learning rate 0, uneven compute: the sum is conserved (exactly up to float32 rounding,
    quantized too), raw models reach the mean, and every byte sent is received."""
    from bench.core.codec import Codec, CodecConfig

    n, dim = 6, 3000
    codec = None if bits == 32 else Codec(CodecConfig(bits=bits, eps=0.01))
    cluster = _cluster(n, speed_sigma=0.5, straggler_p=0.2, straggler_k=4.0)
    start = [torch.randn(dim, generator=torch.Generator().manual_seed(r)) * 0.1 for r in range(n)]
    live = [x.clone() for x in start]

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        comm.start_cell(codec, 0)
        comm.expose(live[rank])
        comm.publish(live[rank], stamp=0)
        comm.fence()
        rng = random.Random(rank)
        for i in range(60):
            for _ in range(2):
                with comm.exclusive(), clock.compute():
                    pass
            comm.pull_push(rng.choice(comm.neighbors()), "model")
            comm.publish(live[rank], stamp=i + 1)
        comm.fence()
        comm.finish_cell()

    cluster.run(body)
    total0, total = torch.stack(start).double().sum(0), torch.stack(live).double().sum(0)
    assert torch.allclose(total, total0, atol=1e-5)
    if bits == 32:
        assert max(float((x.double() - total0 / n).abs().max()) for x in live) < 1e-3
    else:
        # Slower to agree: each interaction adds rounding noise of order eps, and when several peers read a slow
        # node's copy before it folds their deposits in, it moves by all their half-differences at once (its own
        # weight can go negative): a deposit cannot be rebased without breaking the exact sum.
        deviation = [float((x.double() - total0 / n).abs().mean()) for x in live]
        initial = [float((x.double() - total0 / n).abs().mean()) for x in start]
        assert max(deviation) < 0.5 * min(initial), (deviation, initial)
    stats = [c.stats.snapshot() for c in cluster.comms]
    for kind in ("model", "control"):
        sent = sum(s[kind]["bytes_sent"] for s in stats)
        assert sent > 0 and sent == sum(s[kind]["bytes_recv"] for s in stats)
    assert sum(s["model"]["msgs_recv"] for s in stats) == 2 * n * 60  # a copy read and a deposit folded in each
    assert all(not c._held and not c._deposits for c in cluster.comms)  # nothing kept past the cell


def test_one_sided_read_sees_exactly_what_was_published_by_the_readers_instant():
    """Never the future, never staler than necessary: the stamp read is the peer's last publish at or before t."""
    n = 7
    cluster = _cluster(n, topology="ring", speed_sigma=0.7, straggler_p=0.3, straggler_k=6.0)
    published: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    reads = []

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        comm.start_cell(None, 0)
        x = torch.zeros(1000)
        comm.publish(x, stamp=0)
        published[rank].append((clock.now(), 0))
        comm.fence()
        rng = random.Random(rank)
        for step in range(1, 80):
            with clock.compute():
                pass
            with clock.compute():
                pass
            comm.publish(x, stamp=step)
            published[rank].append((clock.now(), step))
            if rng.random() < 0.5:
                peer = rng.choice(comm.neighbors())
                t = clock.now()
                _, stamp = comm.read(peer, "model", x)
                reads.append((peer, t, stamp, clock.now()))
        comm.fence()

    cluster.run(body)
    assert len(reads) > 100
    for peer, t, stamp, done in reads:
        at_or_before = [s for when, s in published[peer] if when <= t]
        before = [s for when, s in published[peer] if when < t]
        assert stamp <= at_or_before[-1], "a read saw the future"
        assert stamp >= (before[-1] if before else 0), "a read missed a publish that had happened"
        assert done > t  # a read takes time (latency and bytes on the links)


def test_scheduler_runs_every_event_in_time_then_rank_order_and_finds_deadlocks_and_errors():
    """Nodes switch to one another directly; whatever runs, runs in global (virtual time, rank) order. A node whose
    peers all wait forever is a deadlock the run names; a node's exception ends the run."""
    n = 9
    cluster = _cluster(n)
    events: list[tuple[float, int]] = []

    def body(rank: int) -> None:
        t = 0.0
        for i in range(40):
            events.append((cluster.clock[rank], rank))
            t += 1.0 + (rank * 7_919 + i) % 13 * 0.1
            cluster.pause(rank, t)
        events.append((cluster.clock[rank], rank))

    cluster.run(body)
    assert len(events) == n * 41 and events == sorted(events)
    assert cluster.switches >= n * 30  # nodes interleave: most pauses switch

    stuck = _cluster(3)

    def waits_for_the_next(rank: int) -> None:
        stuck.comms[rank].start_cell(None, 0)
        stuck.recv(rank, (rank + 1) % 3)

    with pytest.raises(RuntimeError, match="simulated deadlock: 3 nodes wait forever"):
        stuck.run(waits_for_the_next)

    failing = _cluster(4)

    def fails_late(rank: int) -> None:
        for step in range(5):
            failing.pause(rank, step + rank * 0.1)
        if rank == 2:
            raise ValueError("rank 2 broke")
        failing.pause(rank, 10.0)

    with pytest.raises(ValueError, match="rank 2 broke"):
        failing.run(fails_late)


def test_collective_completes_at_last_arrival_plus_the_ring_formula():
    n, numel = 5, 10_000
    cluster = _cluster(n, speed_sigma=0.8)
    tensors = [torch.full((numel,), float(r)) for r in range(n)]
    arrivals, leaves = {}, {}

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        comm.start_cell(None, 0)
        with clock.compute():
            pass
        arrivals[rank] = clock.now()
        comm.allreduce_mean(tensors[rank], "grad")
        leaves[rank] = clock.now()

    cluster.run(body)
    expected = max(arrivals.values()) + cluster.cost.allreduce_seconds(4 * numel, n)
    assert len(set(arrivals.values())) == n  # heterogeneous speeds: everyone arrived at a different time
    assert all(t == pytest.approx(expected, rel=1e-12) for t in leaves.values())
    assert all(torch.equal(t, torch.full((numel,), 2.0)) for t in tensors)
    ring = 2 * (n - 1) * 20e-6 + 2 * (n - 1) / n * 4 * numel / (10e9 / 8)
    assert cluster.cost.allreduce_seconds(4 * numel, n) == pytest.approx(ring)


def _bucketed_step(cluster: sim.Cluster, numel: int, parts: int) -> tuple[dict[int, float], list[torch.Tensor]]:
    """One forward/backward section per node that starts `parts` asynchronous allreduces of equal slices of a
    rank-valued flat gradient buffer, last slice first (as autograd hooks start DDP's buckets), then waits."""
    leaves: dict[int, float] = {}
    grads = [torch.zeros(numel) for _ in range(cluster.n)]
    q = numel // parts

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        comm.start_cell(None, 0)
        with clock.compute():
            grads[rank].fill_(float(rank))
            handles = [comm.allreduce_mean_async(grads[rank][k * q : (k + 1) * q], "grad") for k in range(parts)[::-1]]
        for h in handles:
            h.wait()
        leaves[rank] = clock.now()

    cluster.run(body)
    return leaves, grads


def test_gradient_buckets_overlap_the_backward_pass():
    """Bucket k (from the end of the buffer) is ready at fb * (1/3 + 2/3 * k / parts) and its allreduce starts when
    it is ready and the previous one is done: the step ends well before compute + one flat allreduce."""
    n, numel, parts = 3, 40_000, 4
    cluster = _cluster(n)
    leaves, grads = _bucketed_step(cluster, numel, parts)
    fb, cost = 1e-3, cluster.cost
    bucket = cost.allreduce_seconds(4 * numel // parts, n)
    done = 0.0
    for k in range(1, parts + 1):
        done = max(done, fb * (1 / 3 + 2 / 3 * k / parts)) + bucket
    assert all(t == pytest.approx(done, rel=1e-12) for t in leaves.values())
    flat = fb + cost.allreduce_seconds(4 * numel, n)
    assert done < flat - 1e-4  # 1.12 ms instead of 1.25 ms: three of the four buckets hide behind the backward pass
    assert done == pytest.approx(fb + bucket)  # only the last bucket, ready when backward ends, is exposed here
    assert all(torch.equal(g, torch.full((numel,), 1.0)) for g in grads)
    assert cluster.allreduce_used == {4 * numel // parts: "ring"}
    stats = cluster.comms[0].stats.snapshot()["grad"]
    assert stats["msgs_sent"] == parts and stats["seconds"] == pytest.approx(done - fb)  # blocked after the backward


def test_one_bucket_waits_for_the_whole_backward_pass():
    """A model below the first bucket's size is one bucket, ready when the backward pass ends: no overlap, the step
    costs compute + the flat allreduce, exactly as a blocking allreduce after backward."""
    n, numel = 4, 10_000
    cluster = _cluster(n, speed_sigma=0.5)
    leaves, _ = _bucketed_step(cluster, numel, 1)
    slowest = max(cluster.clocks[r]._costs[0] for r in range(n))
    expected = slowest + cluster.cost.allreduce_seconds(4 * numel, n)
    assert all(t == pytest.approx(expected, rel=1e-12) for t in leaves.values())


def _sim_allreduce(tmp_path, name, *extra):
    out = tmp_path / name
    r = _invoke(
        "--engine",
        "sim",
        "--nodes",
        3,
        "--algo",
        "allreduce",
        *SMALL,
        "--network",
        "1gbe",
        "--step-time",
        0.002,
        *extra,
        "--out",
        out,
    )
    assert r.exit_code == 0, r.output
    records = pd.read_json(out / "records.jsonl", lines=True)
    used = json.loads((out / "meta.json").read_text())["cost_model"]["allreduce_by_bytes"]
    return pd.read_csv(out / "summary.csv").iloc[0], records, used


def test_simulated_buckets_keep_the_flat_trajectory_and_shorten_the_step(tmp_path):
    """In the simulator every bucket is summed in rank order, as the flat allreduce is: the same model at any node
    count. The default buckets hold the digits MLP's gradient (104 KB) in one (below DDP's 1 MiB first bucket): the
    same simulated time as the flat allreduce; three small buckets overlap the backward pass (2 ms of compute per
    step, more than the flat allreduce's 1.3 ms on 1 GbE) and save more than their extra latencies cost (median step
    3.04 instead of 3.32 ms)."""
    flat, _, used_flat = _sim_allreduce(tmp_path, "flat", "--set", "allreduce.overlap=false")
    one, _, used_one = _sim_allreduce(tmp_path, "one")
    small, records, used_small = _sim_allreduce(
        tmp_path, "small", "--set", "allreduce.first_bucket_mb=0.002", "--set", "allreduce.bucket_cap_mb=0.02"
    )
    for row in (one, small):
        for col in ("test_acc", "test_loss", "final_loss", "consensus_distance"):
            assert row[col] == flat[col], col
    assert one["train_seconds"] == flat["train_seconds"] and used_one == used_flat
    assert small["train_seconds"] < flat["train_seconds"]
    assert {int(b) for b in used_small} >= {4 * 1290, 4 * 16512, 4 * 8320}  # every bucket size is recorded
    buckets = records[records["metric"] == "algo_buckets"]["value"]
    steps = records[records["metric"] == "steps"]["value"]
    assert (buckets.to_numpy() == 3 * steps.to_numpy()).all()


def test_transfers_on_one_link_are_serialized():
    cluster = _cluster(3)
    wire = cluster.cost.wire_seconds(1_000_000)
    first = cluster.p2p(1, 0, 1_000_000, 0.0)
    second = cluster.p2p(2, 0, 1_000_000, 0.0)  # same receiver: waits for the first
    assert first == pytest.approx(wire + 20e-6)
    assert second == pytest.approx(2 * wire + 20e-6)


def test_measured_operations_replace_the_formulas():
    """Host calibration's measured lines (alpha + beta * bytes) are what the simulator charges, in the cluster."""
    measured = (("allreduce", 2e-3, 1e-9), ("average", 3e-3, 4e-9), ("exchange", 5e-4, 2e-9), ("read", 1e-3, 1e-9))
    cost = _cost(measured=measured, calibration="host", shared_cores=2)
    assert cost.allreduce_seconds(1000, 4) == pytest.approx(2e-3 + 1e-6)
    assert cost.barrier_seconds(4) == pytest.approx(2e-3)
    assert cost.exchange_seconds(1000) == pytest.approx((2e-6, 5e-4))
    assert cost.share(1) == cost.share(2) == 1.0 and cost.share(8) == 4.0  # processor sharing of 2 cores
    assert set(cost.to_dict()["measured"]) == {"allreduce", "average", "exchange", "read"}

    n, numel = 3, 1000
    cluster = sim.Cluster(n, build_topology("ring", n), cost, seed=0)
    leaves: dict[str, dict[int, float]] = {"allreduce": {}, "exchange": {}, "read": {}, "average": {}}

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        comm.start_cell(None, 0)
        t = torch.zeros(numel)
        comm.allreduce_sum(t, "grad")
        leaves["allreduce"][rank] = clock.now()
        comm.neighbor_exchange(t, "model")
        leaves["exchange"][rank] = clock.now()
        comm.publish(t)
        comm.expose(t)
        comm.fence()
        if rank == 0:
            start = clock.now()
            comm.read(1, "model", t)
            leaves["read"][rank] = clock.now() - start
            start = clock.now()
            comm.average_with(1, "model")
            leaves["average"][rank] = clock.now() - start
        comm.fence()

    cluster.run(body)
    ar = 2e-3 + 1e-9 * 4 * numel
    assert all(v == pytest.approx(ar) for v in leaves["allreduce"].values())
    ex = ar + 5e-4 + 2e-9 * 2 * 4 * numel  # degree 2 on a ring of 3
    assert all(v == pytest.approx(ex) for v in leaves["exchange"].values())
    assert leaves["read"][0] == pytest.approx(1e-3 + 1e-9 * 4 * numel)  # the round trip, as measured
    assert leaves["average"][0] == pytest.approx(3e-3 + 4e-9 * 4 * numel)


def test_measured_jitter_keeps_the_mean_and_is_deterministic():
    """Host calibration's step-time jitter: quantiles of the measured steps scaled to mean 1; each node draws from
    its own seeded stream, so a rerun charges the same times and the mean step is the calibrated one."""
    steps = [1.0] * 70 + [3.0] * 30  # a time-shared core: most steps fast, some descheduled
    table = costmodel.jitter_table(steps)
    assert len(table) == costmodel.JITTER_QUANTILES
    assert sum(table) / len(table) == pytest.approx(1.0, abs=1e-5)
    assert max(table) / min(table) == pytest.approx(3.0)
    cost = _cost(fb_seconds=1e-3, update_seconds=0.0, jitter=table, calibration="host")

    def run() -> dict[int, float]:
        cluster = sim.Cluster(2, build_topology("complete", 2), cost, seed=0)
        ends: dict[int, float] = {}

        def body(rank: int) -> None:
            for _ in range(2000):
                with cluster.clocks[rank].compute():
                    pass
                with cluster.clocks[rank].compute():
                    pass
            ends[rank] = cluster.clocks[rank].now()

        cluster.run(body)
        return ends

    first = run()
    assert first == run()
    assert first[0] != first[1]  # each node its own draws
    assert all(t / 2000 == pytest.approx(1e-3, rel=0.05) for t in first.values())


# ---- end to end through the CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "out"
    r = _invoke("--engine", "sim", "--nodes", 4, *SMALL, "--speed-sigma", 0.3, "--straggler-p", 0.1, "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_meta_records_the_allreduce_algorithm_of_every_message_size(tmp_path):
    out = tmp_path / "out"
    r = _invoke("--engine", "sim", "--nodes", "8", "--algo", "allreduce", "--epochs", "1", "--out", out)
    assert r.exit_code == 0, r.output
    used = json.loads((out / "meta.json").read_text())["cost_model"]["allreduce_by_bytes"]
    assert used and set(used.values()) <= set(collectives.ALGORITHMS)
    link = collectives.Link(25e-6, 10e9 / 8)  # the default network profile, 10gbe
    assert all(name == collectives.flat(int(size), 8, link, "auto")[0] for size, name in used.items())


def test_results_contract_and_cost_model_in_meta(sim_run):
    names = {p.name for p in sim_run.iterdir()}
    assert {"meta.json", "records.jsonl", "summary.csv", "throughput.md", "accuracy.md", "comm.md"} <= names
    assert not any(n.startswith(".") for n in names)
    meta = json.loads((sim_run / "meta.json").read_text())
    assert meta["engine"] == "sim" and meta["status"] == "ok"
    cost = meta["cost_model"]
    assert cost["compute"] == "vm-core" and cost["network"] == "10gbe" and cost["speed_sigma"] == 0.3
    assert cost["fb_seconds"] > 0 and "allreduce" in cost["formulas"]
    assert meta["sim"]["shards"] == "split"
    summary = pd.read_csv(sim_run / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert (summary["status"] == "ok").all() and (summary["samples_per_s"] > 0).all()
    assert ((summary["comm_fraction"] > 0) & (summary["comm_fraction"] < 1)).all()
    swarm = summary[summary["algorithm"] == "swarm"].iloc[0]
    assert swarm["staleness_mean"] >= 0 and pd.notna(swarm["step_lag"])  # age of the copy read; relative progress
    assert (summary.loc[summary["algorithm"] == "allreduce", "serve_seconds"] == 0).all()


def test_same_seed_same_bytes(sim_run, tmp_path):
    """Determinism: a second run with the same options writes byte-identical results (folder name aside)."""
    out = tmp_path / "out"
    r = _invoke("--engine", "sim", "--nodes", 4, *SMALL, "--speed-sigma", 0.3, "--straggler-p", 0.1, "--out", out)
    assert r.exit_code == 0, r.output
    for name in ("summary.csv", "records.jsonl", "throughput.md", "accuracy.md", "comm.md"):
        assert (out / name).read_bytes() == (sim_run / name).read_bytes(), name


def test_sim_bytes_equal_real_bytes_and_calibrated_comparison(tmp_path):
    """The same small run on real processes and in the simulator moves exactly the same bytes, by kind; with
    --calibrate the comparison table (simulated vs measured throughput) is built from the two summaries."""
    from bench.diagnostics.benchmarks import compare_engines

    real, simulated = tmp_path / "real", tmp_path / "sim"
    r = _invoke("--nodes", 3, *SMALL, "--out", real)
    assert r.exit_code == 0, r.output
    r = _invoke("--engine", "sim", "--nodes", 3, *SMALL, "--calibrate", "--shared-cores", 2, "--out", simulated)
    assert r.exit_code == 0, r.output
    a, b = pd.read_csv(real / "summary.csv"), pd.read_csv(simulated / "summary.csv")
    assert a[["algorithm", *BYTE_COLUMNS]].equals(b[["algorithm", *BYTE_COLUMNS]])
    assert (b["bytes_sent_total"] > 0).all()
    meta = json.loads((simulated / "meta.json").read_text())
    assert meta["cost_model"]["compute"] == "calibrated" and meta["cost_model"]["shared_cores"] == 2
    rows = compare_engines(a, b)
    assert [row["algorithm"] for row in rows] == list(a["algorithm"])
    assert all(row["sim/real"] > 0 and row["real samples/s"] > 0 for row in rows)


def test_host_calibration_measures_every_operation_on_real_processes(tmp_path):
    """--calibrate host on an odd world: N real processes measure compute and each comm operation; meta.json holds
    the measured lines and the jitter table, the simulator charges them, and the bytes stay the real engine's."""
    out = tmp_path / "host"
    r = _invoke("--engine", "sim", "--nodes", 3, *SMALL, "--calibrate", "host", "--out", out)
    assert r.exit_code == 0, r.output
    cost = json.loads((out / "meta.json").read_text())["cost_model"]
    assert cost["calibration"] == "host" and cost["compute"] == "calibrated-host" and cost["network"] == "measured"
    assert set(cost["measured"]) == {"allreduce", "average", "exchange", "read"}
    for fit in cost["measured"].values():
        assert fit["alpha_s"] >= 0 and fit["beta_s_per_byte"] >= 0 and fit["alpha_s"] + fit["beta_s_per_byte"] > 0
        assert fit["alpha_s"] < 1.0  # seconds: a loopback operation on a small model
    assert len(cost["jitter"]) == costmodel.JITTER_QUANTILES
    assert sum(cost["jitter"]) / len(cost["jitter"]) == pytest.approx(1.0, abs=1e-4)
    assert 0 < cost["fb_seconds"] < 0.5 and cost["shared_cores"] >= 1 and cost["calibration_threads"] >= 1
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["status"] == "ok").all() and (summary["samples_per_s"] > 0).all()


@pytest.mark.timeout(900)
def test_calibration_measures_sane_step_times():
    """--calibrate times the real training loop on one node: positive, plausible, threads restored."""
    from bench.core.data import load_dataset
    from bench.run.checks import resolve

    cfg = resolve({"engine": "sim", "dataset": "digits", "batch_size": 16, "calibrate": "node"})
    threads = torch.get_num_threads()
    fb, update = calibrate.calibrate(cfg, load_dataset("digits", 0), threads=1)
    assert 0 < fb < 0.5 and 0 < update < 0.5
    assert torch.get_num_threads() == threads
    cost = calibrate.resolve(cfg, load_dataset("digits", 0), nodes=4)
    assert cost.compute == "calibrated" and cost.fb_seconds > 0 and cost.calibration_threads == 1
    ops = {op: (fixed, per) for op, fixed, per in cost.work}
    assert {"copy", "average", "encode lattice 8", "decode uniform 4"} <= set(ops)
    assert all(fixed >= 0 and per >= 0 for fixed, per in ops.values()) and ops["encode lattice 8"][1] > 0


def test_scaling_series(tmp_path):
    out = tmp_path / "out"
    r = _invoke(
        "--engine", "sim", "--nodes", "2,4", "--algo", "swarm", "--algo", "allreduce", *SMALL,
        "--network", "1gbe", "--target-acc", 0.5, "--out", out,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "scaling" in r.output
    for n in (2, 4):
        meta = json.loads((out / f"n{n}" / "meta.json").read_text())
        assert meta["config"]["nodes"] == n and meta["engine"] == "sim"
        assert (out / f"n{n}" / "summary.csv").is_file()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["node_series"] == [2, 4] and meta["cost_model"]["network"] == "1gbe"
    scaling = pd.read_csv(out / "scaling.csv")
    assert list(scaling.columns) == SCALING_COLUMNS
    assert list(zip(scaling["algorithm"], scaling["nodes"], strict=True)) == [
        ("swarm", 2), ("swarm", 4), ("allreduce", 2), ("allreduce", 4),
    ]  # fmt: skip
    assert (scaling["samples_per_s"] > 0).all()
    assert (scaling["scaling_efficiency"] == scaling["speedup_vs_one_node"] / scaling["nodes"]).all()
    assert scaling["time_to_target_s"].notna().all()  # digits reaches 0.5 within the epoch
    assert "time to acc 0.5 s" in (out / "scaling.md").read_text()
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4
    # each node count's own accuracy table times the same target: the same seconds and epochs as the scaling table
    assert (summary["target"] == "val_acc >= 0.5").all()
    both = summary.merge(scaling, on=["algorithm", "nodes"], suffixes=("", "_scaling"))
    assert both["time_to_target_s"].tolist() == pytest.approx(both["time_to_target_s_scaling"].tolist(), rel=1e-12)
    assert (both["epochs_to_target"] == both["epochs_to_target_scaling"]).all()


def test_time_to_target_never_reached_reads_dash(tmp_path):
    out = tmp_path / "out"
    r = _invoke("--engine", "sim", "--nodes", 2, "--algo", "swarm", *SMALL, "--target-acc", 1.0, "--out", out)
    assert r.exit_code == 0, r.output
    summary = pd.read_csv(out / "summary.csv")
    assert summary["time_to_target_s"].isna().all() and summary["epochs_to_target"].isna().all()
    header, _, row = (out / "accuracy.md").read_text().splitlines()[:3]
    assert header.startswith("| algorithm | nodes | status | target | s to target | epochs to target |")
    assert row.startswith("| swarm | 2 | ok | val_acc >= 1 | - | - |"), row


def test_many_nodes_sample_overlapping_shards(tmp_path):
    """256 nodes over 1,437 digits: auto falls back to sampled (overlapping) shards, one step per epoch."""
    out = tmp_path / "out"
    r = _invoke("--engine", "sim", "--nodes", 256, *SMALL, "--algo", "swarm", "--eval-samples", 50, "--out", out)
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sim"]["shards"] == "sample" and meta["sim"]["steps_per_epoch"] == 1
    assert meta["sim"]["eval_samples"] == 50
    summary = pd.read_csv(out / "summary.csv")
    assert int(summary.loc[0, "samples"]) == 256 * 32


BAD_SIM_INPUTS = [
    (["--engine", "sim", "--nodes", "5000"], "4096"),
    (["--engine", "sim", "--bandwidth", "0"], "--bandwidth"),
    (["--engine", "sim", "--bandwidth", "-10"], "--bandwidth"),
    (["--engine", "sim", "--latency", "0"], "--latency"),
    (["--engine", "sim", "--step-time", "0"], "--step-time"),
    (["--engine", "sim", "--step-time", "-1"], "--step-time"),
    (["--engine", "sim", "--profile", "vm-cor"], "did you mean 'vm-core'"),
    (["--engine", "sim", "--network", "10gb"], "did you mean '10gbe'"),
    (["--engine", "sim", "--straggler-p", "1.5"], "--straggler-p"),
    (["--engine", "sim", "--straggler-k", "0.5"], "--straggler-k"),
    (["--engine", "sim", "--speed-sigma", "-1"], "--speed-sigma"),
    (["--engine", "sim", "--step-time", "0.01", "--calibrate"], "only one"),
    (["--engine", "sim", "--calibrate", "host", "--nodes", "32"], "at most 16"),
    (["--engine", "sim", "--calibrate", "host", "--shared-cores", "2"], "drop --shared-cores"),
    (["--engine", "sim", "--calibrate", "host", "--latency", "5"], "drop --latency"),
    (["--engine", "sim", "--calibrate", "hots"], "--calibrate"),
    (["--engine", "sim", "--nodes", "4,8,4"], "twice"),
    (["--engine", "sim", "--nodes", "8,x"], "node count"),
    (["--engine", "sim", "--nodes", "256", "--sim-shards", "split"], "--batch-size"),
    (["--engine", "sim", "--nodes", "256", "--partition", "dirichlet"], "--batch-size"),
    (["--engine", "sim", "--sim-shards", "sample", "--partition", "dirichlet"], "--partition iid"),
    (["--engine", "sim", "--eval-samples", "5000"], "--eval-samples"),
    (["--engine", "sim", "--target-acc", "1.5"], "--target-acc must be an accuracy in (0, 1]"),
    (["--target-acc", "0"], "--target-acc must be an accuracy in (0, 1]"),  # real processes check it the same way
    (["--engine", "sim", "--launcher", "mpirun"], "--launcher"),
    (["--engine", "sim", "--model", "resnet20", "--dataset", "digits"], "--calibrate"),
    (["--nodes", "8,16"], "--engine sim"),
    (["--step-time", "0.1"], "--engine sim"),
    (["--network", "1gbe"], "--engine sim"),
    (["--engine", "sim", "--gpus-per-host", "0"], "--gpus-per-host"),
    (["--engine", "sim", "--gpus-per-host", "2", "--intra-host", "nvlinc"], "nvlink4"),
    (["--engine", "sim", "--gpus-per-host", "2", "--calibrate", "host"], "--gpus-per-host"),
    (["--gpus-per-host", "8"], "--engine sim"),
    # Language modelling (tests/test_lm.py): WikiText-2 files missing from --data-dir (this folder has none), a model
    # of the other task, options of the other task.
    (
        ["--engine", "sim", "--dataset", "wikitext2", "--model", "lstm-lm", "--data-dir", HERE],
        "wiki.train.tokens (3 of",
    ),
    (["--engine", "sim", "--dataset", "wikitext2", "--model", "lstm-lm"], "pass --data-dir FOLDER"),
    (["--engine", "sim", "--model", "transformer-lm"], "use --dataset embedded-text"),
    (["--engine", "sim", "--model", "lstm-lm", "--dataset", "digits"], "is a language model"),
    (["--engine", "sim", "--dataset", "embedded-text"], "use --model transformer-lm or --model lstm-lm"),
    (["--engine", "sim", "--dataset", "embedded-text", "--model", "lstm-lm", "--partition", "dirichlet"], "iid"),
    (["--engine", "sim", "--bptt", "8"], "--bptt applies to language-model datasets only"),
    (["--engine", "sim", "--target-ppl", "100"], "use --target-acc"),
    (["--engine", "sim", "--dataset", "embedded-text", "--model", "lstm-lm", "--target-ppl", "0.5"], "at least 1"),
    (["--engine", "sim", "--dataset", "embedded-text", "--model", "lstm-lm", "--target-acc", "0.5"], "--target-ppl"),
    # Cost-only simulation (tests/test_costonly.py): a real engine, --steps without it, its own limits.
    (["--compute", "cost-only", "--steps", "5"], "--engine sim"),  # a real engine
    (["--engine", "sim", "--steps", "5"], "--compute cost-only"),  # --steps with real training
    (["--engine", "sim", "--compute", "cost-only"], "--steps N"),
    (["--engine", "sim", "--compute", "cost-only", "--steps", "0"], "--steps N"),
    (["--engine", "sim", "--compute", "cost-only", "--steps", "5", "--dataset", "imagenett"], "imagenet"),
    (
        ["--engine", "sim", "--compute", "cost-only", "--steps", "5", "--model", "resnet20", "--dataset", "imagenet"],
        "has no entry for resnet20 on 3x224x224",
    ),
    (["--engine", "sim", "--compute", "cost-only", "--steps", "5", "--calibrate"], "--calibrate node"),
    (["--engine", "sim", "--compute", "cost-only", "--steps", "5", "--nodes", "300000"], "1 to 131072"),
    (["--engine", "sim", "--nodes", "8192"], "--compute cost-only runs up to"),
    (["--engine", "sim", "--compute", "cost-only", "--steps", "5", "--target-acc", "0.9"], "drop --target-acc"),
    # Failure injection (tests/test_failures.py).
    (["--engine", "sim", "--fail", "4@10"], "rank 4 is not a node of a 4-node run"),
    (["--engine", "sim", "--nodes", "8,4", "--fail", "6@10"], "rank 6 is not a node of a 4-node run"),
    (["--engine", "sim", "--fail", "1@-1"], "step -1 is negative"),
    (["--engine", "sim", "--fail", "1"], "is not RANK@STEP"),
    (["--engine", "sim", "--fail", "a@b"], "is not RANK@STEP"),
    (["--engine", "sim", "--fail-p", "1"], "--fail-p must be a probability in [0, 1)"),
    (["--engine", "sim", "--fail-p", "-0.1"], "--fail-p must be a probability in [0, 1)"),
    (["--engine", "sim", "--slow", "1@5:0"], "must be a positive number"),
    (["--engine", "sim", "--slow", "1@5"], "is not RANK@STEP:FACTOR"),
    (["--engine", "sim", "--slow", "9@5:2"], "rank 9 is not a node"),
    (["--engine", "sim", "--on-failure", "ignore"], "--on-failure"),
    (["--engine", "sim", "--fail-nodes", "4"], "does not leave a survivor of a 4-node run"),
    (["--fail-nodes", "1"], "--engine sim"),
    (["--fail-p", "0.01"], "--engine sim"),  # real processes: only --fail, and only with --on-failure stop
    # --on-failure continue on real processes: SwarmSGD (blocking) and AD-PSGD on the local launcher's p2p transport
    (["--on-failure", "continue"], "not allreduce, local_sgd, dpsgd"),
    (["--on-failure", "continue", "--algo", "swarm"], "--swarm-mode blocking"),
    (["--on-failure", "continue", "--algo", "adpsgd", "--transport", "rma"], "--transport p2p"),
    (["--on-failure", "continue", "--algo", "adpsgd", "--launcher", "mpirun"], "--launcher local"),
    (["--fail", "4@3"], "rank 4 is not a node of a 4-node run"),
    (["--slow", "1@5:2"], "--engine sim"),
    (["--engine", "sim", "--compute", "cost-only", "--steps", "5", "--fail", "1@2"], "drop --compute cost-only"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_SIM_INPUTS)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, needle):
    out = tmp_path / "out"
    r = _invoke(*args, "--out", out)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert needle in lines[0], lines[0]
    assert not out.exists()


def test_memory_estimate_above_available_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sim, "available_bytes", lambda: 2**30)
    out = tmp_path / "out"
    r = _invoke("--engine", "sim", "--nodes", 1024, "--model", "lenet5", "--out", out)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "GiB" in lines[0] and "1024 simulated nodes" in lines[0], r.output
    assert not out.exists()
    assert sim.estimate_bytes(118_282, 4096) < 8 * 2**30  # the target: 4,096 MLP nodes within 8 GiB


def test_average_with_a_peer_inside_a_compute_section_waits_for_its_end():
    """The real engine's model lock: a passive average lands between two of the peer's compute sections."""
    cluster = _cluster(2)
    cluster.clocks[1]._costs = (1.0, 0.0)  # rank 1: one long forward/backward
    done = {}

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        comm.start_cell(None, 0)
        comm.expose(torch.zeros(10))
        comm.fence()
        with clock.compute():
            pass
        if rank == 0:
            comm.average_with(1, "model")
        done[rank] = clock.now()
        comm.fence()

    cluster.run(body)
    assert done[0] > 1.0  # waited for rank 1's section (1 s) instead of averaging at ~1 ms
    assert done[1] == pytest.approx(1.0, abs=1e-3)


def test_lazy_publish_encodes_each_copy_read_once_with_the_bytes_of_that_copy():
    """Publishing keeps a raw copy; the owner encodes a copy only when it is first read, once however many read it,
    and the reader gets exactly the encoding of that copy (seeded by the copy alone: the same bytes every run)."""
    from bench.core.codec import Codec, CodecConfig

    def run():
        n, steps = 5, 40
        cluster = _cluster(n, topology="ring", speed_sigma=0.5)
        codec = Codec(CodecConfig(bits=8, eps=1e-3))
        plain, encodes = codec.encode, [0]

        def counting(x, **kw):
            encodes[0] += 1
            return plain(x, **kw)

        codec.encode = counting
        published: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}  # (rank, stamp) -> (raw, copy seed)
        blobs: list[tuple[int, torch.Tensor]] = []
        read = cluster.read

        def recording_read(rank: int, peer: int, nbytes: int) -> torch.Tensor:
            blob = read(rank, peer, nbytes)
            blobs.append((peer, blob.clone()))
            return blob

        cluster.read = recording_read

        def body(rank: int) -> None:
            comm, clock = cluster.comms[rank], cluster.clocks[rank]
            comm.start_cell(codec, 3)
            x = torch.randn(600, generator=torch.Generator().manual_seed(rank)) * 0.01
            comm.publish(x, stamp=0)
            published[(rank, 0)] = (x.clone(), cluster.published[rank].seed)
            comm.fence()
            rng = random.Random(rank)
            for step in range(1, steps):
                with clock.compute():
                    x.add_(0.001 * (rank + 1))
                comm.publish(x, stamp=step)
                published[(rank, step)] = (x.clone(), cluster.published[rank].seed)
                if rng.random() < 0.3:
                    comm.read(rng.choice(comm.neighbors()), "model", x)
            comm.fence()

        cluster.run(body)
        return plain, published, blobs, encodes[0], n * steps

    plain, published, blobs, encodes, publishes = run()
    copies_read = set()
    for peer, blob in blobs:
        stamp = int(blob[:8].clone().view(torch.int64)[0])
        raw, seed = published[(peer, stamp)]
        expected = plain(raw, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(blob[8:], expected)  # exactly what a reader of that copy gets
        copies_read.add((peer, stamp))
    assert len(blobs) > 30
    assert encodes == len(copies_read) < publishes / 2  # one encode per copy read, none for the others
    _, _, again, _, _ = run()
    assert [b.tolist() for _, b in again] == [b.tolist() for _, b in blobs]  # same seed, same bytes


def test_staleness_is_the_age_of_the_copy_read_in_the_cluster():
    """Simulator: each read's staleness is the owner's live step at the reader's instant minus the copy's stamp (>= 0,
    counted by the owner); a node publishes only every third step here, so copies age between publishes."""
    n = 6
    cluster = _cluster(n, topology="ring", speed_sigma=0.6, straggler_p=0.2, straggler_k=4.0)
    expected: list[int] = []

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        comm.start_cell(None, 0)
        x = torch.zeros(100)
        comm.publish(x, stamp=0)
        comm.fence()
        rng = random.Random(rank)
        for step in range(1, 60):
            with clock.compute():
                comm.set_step(step)
            if step % 3 == 0:
                comm.publish(x, stamp=step)
            if rng.random() < 0.4:
                peer = rng.choice(comm.neighbors())
                live = cluster.comms[peer].live_step  # at this instant: the read is served now
                _, stamp = comm.read(peer, "model", x)
                assert live - stamp >= 0
                expected.append(live - stamp)
        comm.fence()

    cluster.run(body)
    assert len(expected) > 100 and max(expected) > 0
    assert sum(c.stats.staleness_sum for c in cluster.comms) == sum(expected)
    assert sum(c.stats.staleness_reads for c in cluster.comms) == len(expected)


def test_evaluation_cannot_change_training(tmp_path):
    """Every algorithm, stragglers on: evaluating every epoch or only the last gives the same training trajectory
    (losses, elapsed times, step times, bytes) and the same final metrics; evaluation never synchronizes nodes."""

    def run(eval_every: int) -> pd.DataFrame:
        out = tmp_path / f"e{eval_every}"
        r = _invoke(
            "--engine", "sim", "--nodes", 5, "--dataset", "digits", "--epochs", 3, "--set", f"eval_every={eval_every}",
            "--straggler-p", 0.2, "--straggler-k", 5, "--speed-sigma", 0.3, "--out", out,
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        return pd.read_json(out / "records.jsonl", lines=True).drop(columns=["run_id"])

    every, last = run(1), run(3)
    assert set(every["algorithm"]) == set(RunConfig().algorithms)
    evaluation = {
        "node_acc",
        "node_loss",
        "eval_seconds",
        "test_acc",
        "test_loss",
        "val_acc",
        "val_loss",
        "consensus_distance",
    }

    def training(df: pd.DataFrame) -> pd.DataFrame:
        df = df[~df["metric"].isin(evaluation) & (df.get("kind") != "eval")]
        return df.sort_values(["algorithm", "metric", "rank", "epoch", "kind"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(training(every), training(last))
    assert (every["metric"] == "train_seconds").sum() == len(RunConfig().algorithms) * 5 * 3
    final = ["algorithm", "rank", "metric", "epoch"]
    ev_last = last[last["metric"].isin(evaluation - {"eval_seconds"})].sort_values(final).reset_index(drop=True)
    ev_every = every[every["metric"].isin(evaluation - {"eval_seconds"}) & (every["epoch"] == 3)]
    pd.testing.assert_frame_equal(ev_every.sort_values(final).reset_index(drop=True), ev_last)


def test_comm_work_is_charged_where_the_real_engine_does_it():
    """Copies, codec and averaging arithmetic cost what the profile says, on the worker's own clock or, when it
    serves a peer, as its service time (serve_seconds) that the peer waits for."""
    from bench.core.codec import Codec, CodecConfig

    numel = 1000
    work = (
        ("copy", 1e-3, 0.0),
        ("average", 2e-3, 0.0),
        ("encode lattice 8", 4e-3, 0.0),
        ("decode lattice 8", 0.0, 8e-6),
    )
    cluster = _cluster(3, work=work, latency_us=1e-6, bandwidth_gbps=1e9)  # a free network: only work takes time
    codec = Codec(CodecConfig(bits=8, eps=1e-3))
    t = {}

    def body(rank: int) -> None:
        comm = cluster.comms[rank]
        comm.start_cell(codec, 0)
        x = torch.zeros(numel)
        comm.publish(x, stamp=0) if rank == 2 else comm.expose(x)
        comm.fence()
        start = comm._now()
        if rank == 0:  # average with rank 1: copy, encode, decode mine and theirs, arithmetic, each side
            comm.average_with(1, "model")
            t["average"] = comm._now() - start
        if rank == 2:  # publishing copies the model; rank 1 reads this copy below
            comm.publish(x, stamp=1)
            t["publish"] = comm._now() - start
        comm.fence()
        if rank == 1:  # the first read of rank 2's copy: rank 2 encodes it (service), rank 1 decodes it
            start = comm._now()
            comm.read(2, "model", x)
            t["read"] = comm._now() - start
        comm.fence()

    cluster.run(body)
    own = 1e-3 + 4e-3 + 2 * 8e-3 + 2e-3  # copy, encode, decode its own message and the partner's, average
    partner = own + 8e-3  # and one more decode: predicting the initiator's failures
    assert t["average"] == pytest.approx(own + partner, rel=1e-6)  # its own work, and it waits for the partner's
    assert cluster.comms[1].stats.serve_seconds == pytest.approx(partner, rel=1e-6)
    assert t["publish"] == pytest.approx(1e-3, rel=1e-6)  # a copy; encoded only when read
    assert t["read"] == pytest.approx(4e-3 + 8e-3, rel=1e-3)  # the owner's encode (waited for) + own decode
    assert cluster.comms[2].stats.serve_seconds == pytest.approx(4e-3, rel=1e-6)
    assert cluster.comms[0].stats.serve_seconds == 0


def test_the_training_loop_follows_each_algorithms_learning_rate_schedule():
    from bench.core.data import load_dataset
    from bench.run.checks import resolve
    from bench.training.config import hyper
    from bench.training.loop import make_shards, setup_cell, train_step

    cfg = resolve(
        {"engine": "sim", "nodes": 1, "dataset": "digits", "epochs": 4, "batch_size": 128},
        None,
        ["swarm.warmup_epochs=1", "swarm.lr_schedule=step", "swarm.lr_milestones=2,3"],
    )
    data = load_dataset("digits", 0)
    shards = make_shards(cfg, data)
    for algorithm in ("swarm", "allreduce"):
        cluster = _cluster(1)
        comm, clock = cluster.comms[0], cluster.clocks[0]
        seen = []

        def body(rank: int, algorithm=algorithm, comm=comm, clock=clock, seen=seen) -> None:
            cell = setup_cell(cfg, algorithm, data, shards, 0, comm, clock, torch.device("cpu"))
            cell.algo.start()
            for step in range(4 * shards.steps_per_epoch):
                train_step(cell, data, step, comm, clock)
                seen.append(cell.node.optimizer.param_groups[0]["lr"])

        cluster.run(body)
        h, per = hyper(cfg, algorithm), shards.steps_per_epoch
        assert seen == [pytest.approx(h.lr_at(step / per, 4, 1)) for step in range(4 * per)]
        if algorithm == "swarm":  # warmup from a tenth of lr, then lr, lr/10 and lr/100
            assert seen[0] == pytest.approx(cfg.lr / 10) and seen[-1] == pytest.approx(cfg.lr / 100)
            assert cfg.lr in seen
        else:
            assert set(seen) == {cfg.lr}  # the run's constant lr
