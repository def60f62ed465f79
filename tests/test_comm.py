"""Tier 2/3: the communication module on real gloo processes (loopback, FileStore), at odd and even sizes."""

from __future__ import annotations

import random

import pytest
import torch

from bench.core.comm import HEADER_BYTES, ring_allreduce_bytes
from bench.engine.processes.localworld import run_world

WORLDS = [2, 3, 4]


def _collectives(rank, world, comm):
    t = torch.full((10,), float(rank))
    comm.allreduce_mean(t, "grad")
    ex = comm.neighbor_exchange(torch.full((3,), float(rank)), "model")
    comm.publish(torch.full((5,), 100.0 + rank), stamp=7 + rank)
    comm.fence()  # everyone has published
    peer = comm.neighbors()[0]
    got, stamp = comm.read(peer, "model", torch.zeros(5))
    assert stamp == 7 + peer
    comm.fence()  # every read is answered before counters are read
    return t.tolist(), {p: v.tolist() for p, v in ex.items()}, peer, got.tolist(), comm.stats.snapshot()


@pytest.mark.parametrize("world", WORLDS)
def test_collectives_and_reads(tmp_path, world):
    results = run_world(_collectives, world, tmp_path)
    mean = sum(range(world)) / world
    for rank, (t, ex, peer, got, stats) in enumerate(results):
        assert t == pytest.approx([mean] * 10)
        for p, v in ex.items():
            assert v == [float(p)] * 3
        assert got == [100.0 + peer] * 5
        # Closed-form bytes: ring allreduce volume; exchange 12 bytes per neighbour; read = header, 8 + 20 back.
        assert stats["grad"]["bytes_sent"] == ring_allreduce_bytes(40, world)
        neighbours = len(ex)
        readers = sum(1 for r in results if r[2] == rank)
        assert stats["model"]["bytes_sent"] == 12 * neighbours + 28 * readers
        assert stats["model"]["bytes_recv"] == 12 * neighbours + 28
        assert stats["control"]["bytes_sent"] == HEADER_BYTES
        assert stats["control"]["bytes_recv"] == HEADER_BYTES * readers


def _async_allreduce(rank, world, comm):
    buf = torch.arange(30, dtype=torch.float32) * (rank + 1)  # integer sums: exact whatever the order of addition
    flat = buf.clone()
    comm.allreduce_mean(flat, "grad")
    before = comm.stats.snapshot()["grad"]
    pieces = [buf[20:], buf[5:20], buf[:5]]  # slices of one buffer from its end, as gradient buckets
    handles = [comm.allreduce_mean_async(p, "grad") for p in pieces]
    for h in handles:
        h.wait()
    handles[0].wait()  # waiting again neither blocks nor divides again
    return flat.tolist(), buf.tolist(), before, comm.stats.snapshot()["grad"]


@pytest.mark.parametrize("world", [2, 3])
def test_async_allreduce_of_slices_equals_the_flat_allreduce_and_counts_its_bytes(tmp_path, world):
    results = run_world(_async_allreduce, world, tmp_path)
    mean = sum(range(1, world + 1)) / world
    for flat, sliced, before, after in results:
        assert flat == [i * mean for i in range(30)]
        assert sliced == flat
        assert before["bytes_sent"] == ring_allreduce_bytes(120, world)
        # Each asynchronous allreduce counts its own ring volume and one message, as a blocking one does.
        sliced_bytes = sum(ring_allreduce_bytes(4 * n, world) for n in (10, 15, 5))
        assert after["bytes_sent"] == after["bytes_recv"] == before["bytes_sent"] + sliced_bytes
        assert after["msgs_sent"] == after["msgs_recv"] == 1 + 3
        assert after["seconds"] >= before["seconds"]


def _pairwise(rank, world, comm, rounds, seed):
    gen = torch.Generator().manual_seed(seed * 100 + rank)
    live = torch.randn(1000, generator=gen, dtype=torch.float32)
    initial = live.clone()
    comm.expose(live)
    comm.fence()
    rng = random.Random(seed * 31 + rank)
    for _ in range(rounds):
        peer = rng.choice(comm.neighbors())
        comm.average_with(peer, "model")
    comm.fence()
    total = live.clone().double()
    comm.allreduce_sum(total, "eval")
    init_total = initial.clone().double()
    comm.allreduce_sum(init_total, "eval")
    return total.tolist(), init_total.tolist(), live.tolist()


@pytest.mark.parametrize("world", [2, 3, 5])
def test_atomic_pairwise_average_conserves_sum_and_reaches_mean(tmp_path, world):
    """Learning rate 0, random models: no lost update (sum conserved), no deadlock, consensus at the mean."""
    results = run_world(_pairwise, world, tmp_path, 60, world, topology="complete")
    total, init_total, _ = results[0]
    assert torch.allclose(torch.tensor(total), torch.tensor(init_total), atol=1e-3)
    mean = torch.tensor(init_total, dtype=torch.float64) / world
    for _, _, live in results:
        assert torch.allclose(torch.tensor(live).double(), mean, atol=1e-3)


def _codec_volumes(rank, world, comm, numel):
    from bench.core.codec import BITS, QUANTIZERS, Codec, CodecConfig

    out = []
    model = torch.randn(numel, generator=torch.Generator().manual_seed(rank)) * 0.01
    for bits in BITS:
        for quantizer in QUANTIZERS:
            codec = Codec(CodecConfig(bits=bits, quantizer=quantizer, eps=1e-3))
            comm.start_cell(codec, 0)
            live = model.clone()
            comm.expose(live)
            comm.publish(live, stamp=1)
            comm.fence()
            peer = comm.neighbors()[0]
            comm.read(peer, "model", live)
            comm.neighbor_exchange(live, "model")
            if rank == 0:
                comm.average_with(peer, "model")
            comm.fence()
            out.append(
                (bits, quantizer, codec.wire_bytes(numel), codec.bitmap_bytes(numel), comm.stats.snapshot()["model"])
            )
    return out


def test_bytes_per_exchange_match_closed_form_for_every_codec(tmp_path):
    """read = 8 + m, neighbour exchange = m per neighbour, average = m out and m + f back; m = Codec.wire_bytes,
    f = Codec.bitmap_bytes (one bit per bucket for the lattice quantizer below 32 bits, else 0)."""
    numel = 5000
    results = run_world(_codec_volumes, 2, tmp_path, numel)
    for rank, rows in enumerate(results):
        for bits, quantizer, m, f, model in rows:
            # Rank 0 initiates one average with rank 1, which serves it and replies with the failure bitmap.
            assert f == (1 if quantizer == "lattice" and bits < 32 else 0)  # 5 buckets of 1024: one byte
            assert model["bytes_recv"] == (8 + m) + m + m + (f if rank == 0 else 0), (bits, quantizer)
            assert model["bytes_sent"] == (8 + m) + m + m + (f if rank == 1 else 0), (bits, quantizer)
            if bits == 8:
                assert 4 * numel / m >= 3.9
            if bits == 4:
                assert 4 * numel / m >= 7.5
    assert {r[0] for r in results[0]} == {2, 4, 8, 16, 32}


def test_real_clock_and_comm_timers_synchronize_cuda(monkeypatch):
    """CUDA kernels and NCCL collectives return when enqueued: the real engine's clock and the comm layer's timers
    must synchronize the device before reading the time (checked here without a GPU: the synchronizer is recorded)."""
    from bench.core.comm import make_comm
    from bench.core.topology import build_topology
    from bench.engine.processes.worker import WallClock

    calls: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    gpu = torch.device("cuda", 0)
    clock = WallClock(gpu)
    clock.now()
    assert calls == [gpu]
    comm = make_comm("p2p", 0, 1, build_topology("complete", 1), 10.0, now=clock.now)
    with comm._timed("grad"):
        pass
    assert calls == [gpu] * 3  # start and end of the timed call
    WallClock(torch.device("cpu")).now()
    with make_comm("p2p", 0, 1, build_topology("complete", 1), 10.0)._timed("grad"):
        pass
    assert calls == [gpu] * 3  # nothing to wait for on the CPU


def _staleness(rank, world, comm):
    comm.publish(torch.full((5,), float(rank)), stamp=3)
    comm.set_step(10 + rank)  # the live model took 7 + rank more steps since the copy
    comm.fence()
    comm.read(comm.neighbors()[0], "model", torch.zeros(5))
    comm.fence()
    return comm.neighbors()[0], comm.stats.staleness_sum, comm.stats.staleness_reads


@pytest.mark.parametrize("world", [2, 3])
def test_staleness_is_the_owners_live_step_minus_the_stamp_of_the_copy_read(tmp_path, world):
    """p2p: the responder knows its owner's live step, so the owner counts each read's staleness (no extra bytes)."""
    results = run_world(_staleness, world, tmp_path)
    for rank, (_, stale, reads) in enumerate(results):
        readers = sum(1 for peer, _, _ in results if peer == rank)
        assert reads == readers
        assert stale == (10 + rank - 3) * readers
