"""Atomic pairwise averages just outside the lattice's decodable radius, written once and run on every transport:
in-process on the simulated cluster (tests/test_transports.py) and under mpirun on p2p and rma
(tests/mpi_transport_check.py). Each scenario takes a node's comm and returns a JSON-able dict.

Exactness. Every model is a multiple of EPS / 2 = 2**-9 with |value| < 1, and the lattice spacing is EPS = 2**-8:
decoded values are multiples of EPS, half their difference a multiple of EPS / 2, and every such number below 2**15
is a float32. So no float32 operation of an average rounds, and "the sum of models is conserved" can be asserted as
float64 equality. (With other models the two moves are still exact negations of each other; only adding each to
its float32 model rounds, by at most half an ulp of that model.)

Failures on one side only. ``decodable_radius(8, EPS)`` is 127.5 EPS: lattice indices up to 127 apart always decode.
Indices exactly 128 apart are a tie, which ``torch.round`` breaks to even: a message with index k decodes against
a reference 128 away iff its high part floor(k / 256) is even. So with one index in [0, 128) and the other 128
lower, the message of the lower one fails to decode and the other succeeds: a failure on one side only, by
construction. Indices 200 apart fail on both sides; 128 apart with both high parts even decode on both.
"""

from __future__ import annotations

import random

import torch

from bench.core.codec import Codec, CodecConfig, decodable_radius, suggest_eps

BITS, BUCKET, BUCKETS = 8, 16, 48
NUMEL = BUCKET * BUCKETS
EPS = suggest_eps(BITS, 127 / 256)  # 2**-8 exactly
assert EPS == 2.0**-8 and decodable_radius(BITS, EPS) == 127.5 * EPS
# What happens in each bucket of the one-average scenario (rank 0 initiates with rank 1), cycled over the buckets.
KINDS = ("near", "initiator", "near", "partner", "both", "tie")  # who fails to decode the other's message there


def codec() -> Codec:
    return Codec(CodecConfig(bits=BITS, eps=EPS, bucket=BUCKET))


def kind_of(bucket: int) -> str:
    return KINDS[bucket % len(KINDS)]


def near_radius_indices() -> tuple[torch.Tensor, torch.Tensor]:
    """Lattice indices of rank 0 (the initiator) and rank 1: within 27 of each other, except the first coordinate
    of every bucket that is not "near", which is set 128 or 200 apart as `KINDS` says."""
    gen = torch.Generator().manual_seed(11)
    k0 = torch.randint(0, 100, (NUMEL,), generator=gen)
    k1 = k0 + torch.randint(-27, 28, (NUMEL,), generator=gen)
    for b in range(BUCKETS):
        i, base = b * BUCKET, int(torch.randint(0, 128, (1,), generator=gen))
        kind = kind_of(b)
        if kind == "initiator":  # the partner's index is the lower one: its message fails at the initiator
            k0[i], k1[i] = base, base - 128
        elif kind == "partner":
            k0[i], k1[i] = base - 128, base
        elif kind == "both":
            k0[i], k1[i] = base, base + 200
        elif kind == "tie":  # 128 apart, both high parts 0: decodes on both sides although outside the radius
            k0[i], k1[i] = base, base + 128
    return k0, k1


def expected_one_average() -> dict:
    """What `one_average` must give: failures per side, the skipped buckets and both final models (float64)."""
    k0, k1 = near_radius_indices()
    x0, x1 = k0.double() * EPS, k1.double() * EPS
    kinds = [kind_of(b) for b in range(BUCKETS)]
    skip = torch.tensor([k in ("initiator", "partner", "both") for k in kinds]).repeat_interleave(BUCKET)
    mid = (x0 + x1) / 2
    return {
        "failures": [kinds.count("initiator") + kinds.count("both"), kinds.count("partner") + kinds.count("both")],
        "skipped": sum(k in ("initiator", "partner", "both") for k in kinds),
        "final": [torch.where(skip, x0, mid).tolist(), torch.where(skip, x1, mid).tolist()],
        "wire": codec().wire_bytes(NUMEL),
        "bitmap": codec().bitmap_bytes(NUMEL),
    }


def _result(comm, live: torch.Tensor, initial: torch.Tensor) -> dict:
    return {
        "initial": initial.tolist(),
        "final": live.tolist(),
        "failures": comm.decode_failures,
        "skipped": comm.buckets_skipped,
        "stats": comm.stats.snapshot(),
        "inbox_full": getattr(comm, "inbox_full", 0),
    }


def _start_near_radius(comm) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks 0 and 1 expose the near-radius models (other ranks zeros), then meet: (live model, its initial copy)."""
    comm.start_cell(codec(), 0)
    k = near_radius_indices()
    live = (k[comm.rank].float() * EPS) if comm.rank < 2 else torch.zeros(NUMEL)
    initial = live.clone()
    comm.expose(live)
    comm.fence()
    return live, initial


def one_average(comm) -> dict:
    """Rank 0 averages once with rank 1 (other ranks idle); the partner's side lands by `finish_cell`."""
    live, initial = _start_near_radius(comm)
    if comm.rank == 0:
        comm.average_with(1, "model")
    comm.fence()
    comm.finish_cell()
    return _result(comm, live, initial)


def many_averages(comm, rounds: int = 30) -> dict:
    """Every node averages `rounds` times with random neighbours, concurrently. In every other bucket node r's
    indices are 128 * r plus noise shared by all nodes: neighbours are exact ties there, so the message of the node
    whose high parts are odd fails to decode and the other's decodes (nodes 0 and 2, 256 apart, fail both ways).
    Those buckets fail on one side only whatever the order of the averages, stay skipped and so stay on the
    lattice. The other buckets start within a few EPS and are averaged, onto the half lattice, where randomized
    rounding makes every encoding differ."""
    comm.start_cell(codec(), 0)
    far = (torch.arange(NUMEL) // BUCKET) % 2 == 0
    shared = torch.randint(-6, 7, (NUMEL,), generator=torch.Generator().manual_seed(100))
    own = torch.randint(-6, 7, (NUMEL,), generator=torch.Generator().manual_seed(200 + comm.rank))
    live = torch.where(far, shared + 128 * comm.rank, own + 2 * comm.rank).float() * EPS
    initial = live.clone()
    comm.expose(live)
    comm.fence()
    rng = random.Random(comm.rank)
    for _ in range(rounds):
        with comm.exclusive():  # where a training step would run (rma: drain before, republish after)
            pass
        comm.average_with(rng.choice(comm.neighbors()), "model")
    comm.fence()
    comm.finish_cell()
    return _result(comm, live, initial)


def full_inbox(comm, extra: int = 2) -> dict:
    """rma only: rank 0 averages with rank 1, which never drains before `finish_cell`, `extra` more times than its
    inbox has slots; the deposits beyond go as exact float32 moves."""
    live, initial = _start_near_radius(comm)
    if comm.rank == 0:
        for _ in range(comm.INBOX_SLOTS + extra):
            comm.average_with(1, "model")
    comm.fence()
    comm.finish_cell()
    return _result(comm, live, initial)
