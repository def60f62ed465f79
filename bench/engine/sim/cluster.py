"""The simulated cluster: N virtual nodes in one process, real models and data, simulated (virtual) time.

Every node runs the shared training loop `bench.training.loop.run_cell` unchanged, in its own greenlet, with a `SimComm`
(a `bench.core.comm.Comm`, so bytes are counted exactly as on real processes) and a `SimClock`. Nothing here knows an
algorithm by name.

Scheduling (discrete events). Each node has a virtual clock. Every `comm`/`clock` call that advances a node's
clock is a switch point: the node goes back to the scheduler unless it is still the earliest node, and the
scheduler always resumes the node with the smallest (virtual time, rank). So everything any node does happens in
global (time, rank) order: when a node acts at instant t, every other node has done all it does before t and
nothing after. Consequences:
- a one-sided `read` at t returns the partner's last model published at or before t (never a later one);
- `average_with` runs the partner's `serve_average` at the initiator's instant t. A compute section is charged
  on exit, so a partner inside one at t (its model lock held, in the real engine) has its update already in
  memory: the average then lands at the end of that section, and the initiator waits for it (with
  `--calibrate host` the measured round trip already holds that wait, `bench.engine.sim.hostcal`);
- a directed message (`send`) arrives by the link model (queued behind earlier transfers on both links, then the
  latency); `recv` returns the oldest message of that sender once it has arrived, blocking until it is sent;
  `recv_any` the message of the listed senders that arrives first (ties: the lowest rank);
- a synchronous collective completes when its last participant arrives: everyone leaves at
  max(arrivals, link availability) + the collective's modelled time (`bench.engine.sim.costmodel`);
- asynchronous allreduces (AllReduce SGD's gradient buckets, started from autograd hooks during the backward
  pass) are recorded with the instant their bucket became ready, modelled from where the bucket lies in the flat
  gradient buffer (`SimClock.ready_at`); the first `wait()` of a node joins them as one collective, which the last
  node to wait completes: bucket k starts at max(its readiness on every node, the end of bucket k-1, link
  availability) and takes its modelled time, and everyone leaves at max(arrivals, the last bucket's end). A
  bucket's allreduce thus overlaps the rest of the backward pass, as with PyTorch's DDP.

Time is only ever simulated: wall time is read for nothing but the benchmark's engine-overhead counters, which
never reach the results folder.
"""

from __future__ import annotations

import ctypes
import dataclasses
import heapq
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from bench.base.errors import UserError
from bench.core.comm import (
    HEADER_BYTES,
    MAIL_HEADER_BYTES,
    STAMP_BYTES,
    Comm,
    CommStats,
    Copy,
    ring_allreduce_bytes,
)
from bench.core.models import SharedModule
from bench.core.topology import build_topology
from bench.engine.sim import collectives, costmodel
from bench.engine.sim.costmodel import CostModel
from bench.training.config import failure_schedule
from bench.training.loop import Failure, NodeFailed, Shards, make_shards, node_seed, run_cell, run_rounds
from bench.training.registry import ALGORITHMS

MAX_NODES = 4096  # the largest world the simulator accepts (memory and time grow linearly with it)
MAX_COST_ONLY_NODES = 1 << 17  # --compute cost-only: a node holds tens of kB, the limit is the scheduler's time
SHARD_POLICIES = ("auto", "split", "sample")
# Memory: each node holds its algorithm's `model_copies` model-sized buffers (4 for SwarmSGD: parameters,
# gradients, momentum, the published copy) and one snapshot per evaluated epoch beyond the first (after its last
# step a node frees its gradients and momentum, which makes room for one), plus NODE_OVERHEAD_BYTES of its own
# objects (state of its random streams, greenlet stack, tensor headers) and the evaluation's gather of one float64
# per node; the nodes share one module, one evaluation model and the data. RUNTIME_BYTES is what a simulation adds
# to the process once (torch's lazily loaded parts, the first optimizer step's imports, and the heap that loading
# the data left free, which the nodes fill again). Measured by `tests/test_sim_memory.py` and
# `python -m bench.diagnostics.benchmarks sim-memory`.
NODE_OVERHEAD_BYTES = 64_000
RUNTIME_BYTES = 140_000_000
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
MMAP_THRESHOLD_BYTES = 16 * 1024  # blocks from this size up get mappings of their own (`return_freed_memory`)


# ---- the cluster: clocks, links, scheduler ----------------------------------------------------------------------


class _Bucket:
    """An asynchronous allreduce of one node (`SimComm._allreduce_sum_async`): its tensor, the virtual instant it
    was ready to go, its modelled seconds."""

    __slots__ = ("tensor", "ready", "seconds")

    def __init__(self, tensor: torch.Tensor, ready: float, seconds: float) -> None:
        self.tensor, self.ready, self.seconds = tensor, ready, seconds


class _BucketWork:
    """The handle of a simulated asynchronous allreduce: `wait()` completes every bucket the node started."""

    __slots__ = ("_cluster", "_rank")

    def __init__(self, cluster: Cluster, rank: int) -> None:
        self._cluster, self._rank = cluster, rank

    def wait(self) -> None:
        self._cluster.wait_buckets(self._rank)


class Sizes:
    """What the cluster charges a message's bytes and a comm-layer operation's coordinates as: themselves, when the
    nodes train their real models. A cost-only simulation (`bench.engine.sim.costonly`) charges its stand-in
    payload as the named workload's instead."""

    def bytes(self, nbytes: int) -> int:
        """Bytes a message of `nbytes` (payload with its stamps and bitmaps, not the request headers) is charged."""
        return nbytes

    def coords(self, numel: int) -> int:
        """Coordinates a piece of comm-layer work on `numel` coordinates is charged."""
        return numel

    def span(self, t: torch.Tensor) -> tuple[int, float]:
        """An allreduced tensor as charged: (its coordinates, the share of the backward pass after which they are
        all computed, `backward_share`), read off where it lies in its buffer (a gradient bucket is a slice)."""
        return t.numel(), backward_share(t)


REAL = Sizes()


class _Collective:
    __slots__ = ("op", "arrivals", "payloads", "seconds")

    def __init__(self, op: str, seconds: float = 0.0) -> None:
        self.op = op
        self.arrivals: dict[int, float] = {}
        self.payloads: dict[int, Any] = {}
        self.seconds = seconds  # the collective's modelled time (`collective`)


class NodeLost(Exception):
    """A node failed and the cell cannot go on (`--on-failure stop`, or an algorithm that does not survive failures):
    the cell ends as failed, with this one-line reason."""


class Cluster:
    """One run cell (one algorithm at one node count): clocks, links, published models and the scheduler."""

    def __init__(self, nodes: int, topology, cost: CostModel, seed: int, sizes: Sizes = REAL, schedule=None) -> None:
        from greenlet import getcurrent

        self.n = nodes
        self.cost = cost
        self.sizes = sizes
        self.clock = [0.0] * nodes  # each node's virtual time
        self.busy_until = [0.0] * nodes  # end of the node's current compute section (its model lock)
        self.cpu_until = [0.0] * nodes  # end of the node's current one-sided read (busy cores, see SimClock)
        self.out_free = [0.0] * nodes  # when the node's out-link / in-link is next free
        self.in_free = [0.0] * nodes
        self.published: list[Copy | None] = [None] * nodes
        self._heap: list[tuple[float, int]] = []
        self._greenlets: list[Any] = []
        self._hub = getcurrent()
        self._blocked: dict[int, str] = {}
        self._coll: _Collective | None = None
        self._xcount = [0] * nodes  # neighbour exchanges entered, per node
        self._mail: dict[tuple[int, int], list] = {}  # (rank, k) -> [message, arrival, readers left]
        self._xwait: dict[int, tuple[int, tuple[int, ...], float]] = {}
        self._xresult: dict[int, dict[int, torch.Tensor]] = {}
        self._mailbox: dict[tuple[int, int], deque[tuple[float, torch.Tensor]]] = {}  # (src, dst) -> in flight
        self._receiving: dict[int, tuple[int, ...]] = {}  # a node blocked in recv -> the senders it waits for
        self.switches = 0
        self.overhead_s = 0.0  # wall time in scheduling and bookkeeping (benchmark only)
        self.payload_s = 0.0  # wall time moving simulated payloads (allreduce sums)
        self.allreduce_used: dict[int, str] = {}  # message bytes -> the allreduce algorithm the cost model chose
        self._work: dict[tuple, float] = {}  # `work_seconds` already asked
        self.buckets: list[list[_Bucket]] = [[] for _ in range(nodes)]  # started asynchronous allreduces, per node
        self.alive = tuple(range(nodes))  # the nodes that have not failed (`kill`)
        self.dead: set[int] = set()
        speeds = self.speeds = cost.speed_factors(seed, nodes)
        self.comms = [SimComm(self, r, nodes, topology) for r in range(nodes)]
        self.clocks = [
            SimClock(
                self,
                r,
                cost.fb_seconds * speeds[r],
                cost.update_seconds * speeds[r],
                cost.straggler_stream(seed, r) if cost.straggler_p > 0 or cost.jitter else None,  # only if drawn
                cost.straggler_p,
                cost.straggler_k,
                cost.jitter,
                schedule.slow.get(r, ()) if schedule is not None else (),
            )
            for r in range(nodes)
        ]

    def work_seconds(self, op: str, codec_key: tuple[str | None, int], numel: int) -> float:
        """Seconds at speed 1 of the comm layer's `op` under a codec's (quantizer, bits) on a tensor of `numel`
        elements, as charged (`sizes`); kept per argument: every node asks the same few each step."""
        key = (op, codec_key, numel)
        seconds = self._work.get(key)
        if seconds is None:
            seconds = self._work[key] = self.cost.work_seconds(
                costmodel.work_op(op, *codec_key), self.sizes.coords(numel)
            )
        return seconds

    # ---- scheduler ----
    def run(self, body) -> None:
        """Run `body(rank)` for every node to completion in virtual-time order; a node's exception propagates.

        The hub (this greenlet) starts each node once, in (time, rank) order, and gets control back when a node
        ends or when no node can run (a deadlock). In between, a node that pauses or blocks switches straight to
        the next node (`_switch_to_next`): one switch per pause, not two through the hub."""
        from greenlet import greenlet

        hub = self._hub
        self._greenlets = [greenlet(lambda r=r: body(r), parent=hub) for r in range(self.n)]
        self._heap = [(0.0, r) for r in range(self.n)]
        heapq.heapify(self._heap)
        t_hub = time.perf_counter()
        try:
            while self._heap:
                _, rank = heapq.heappop(self._heap)
                g = self._greenlets[rank]
                self.overhead_s += time.perf_counter() - t_hub
                self.switches += 1
                g.switch()
                t_hub = time.perf_counter()
            stuck = [r for r, g in enumerate(self._greenlets) if not g.dead]
            if stuck:
                what = ", ".join(f"rank {r} in {self._blocked.get(r, '?')}" for r in stuck[:4])
                raise RuntimeError(f"simulated deadlock: {len(stuck)} nodes wait forever ({what})")
        finally:
            for g in self._greenlets:
                if not g.dead:
                    g.throw()  # GreenletExit: unwinds the node's stack (its finally blocks run)
            self._greenlets = []

    def pause(self, rank: int, t: float) -> None:
        """Advance `rank`'s clock to t; let every node with an earlier event run first."""
        self.clock[rank] = t
        heap = self._heap
        if heap and heap[0] < (t, rank):
            self._switch_to_next((t, rank))

    def block(self, rank: int, what: str) -> None:
        """Suspend `rank` until another node `wake`s it (a collective it joined completes)."""
        self._blocked[rank] = what
        self._switch_to_next(None)

    def _switch_to_next(self, me: tuple[float, int] | None) -> None:
        """Leave the running node (back on the heap at `me`, or off it: blocked) for the earliest node on the heap,
        switching to it directly. A node that has not started yet is started by the hub (a greenlet starts on the
        stack of whoever first switches to it: started from the hub, nodes do not nest), so is an empty heap
        (the hub finds the deadlock)."""
        heap = self._heap
        if heap:
            g = self._greenlets[heap[0][1]]
            if g:  # started and not dead: a node on the heap is never dead
                self.switches += 1
                if me is None:
                    heapq.heappop(heap)
                else:
                    heapq.heapreplace(heap, me)
                g.switch()
                return
        if me is not None:
            heapq.heappush(heap, me)
        self._hub.switch()

    def wake(self, rank: int, t: float) -> None:
        del self._blocked[rank]
        self.clock[rank] = t
        heapq.heappush(self._heap, (t, rank))

    # ---- links ----
    def p2p(self, src: int, dst: int, nbytes: int, t: float) -> float:
        """Send nbytes from src to dst at t; returns the arrival time (queued behind earlier transfers)."""
        return self.leg(src, dst, (self.cost.wire_seconds(nbytes), self.cost.latency), t)

    def leg(self, src: int, dst: int, cost: tuple[float, float], t: float) -> float:
        """One message that occupies both links for cost[0] seconds, then arrives cost[1] seconds later."""
        start = max(t, self.out_free[src], self.in_free[dst])
        done = start + cost[0]
        self.out_free[src] = self.in_free[dst] = done
        return done + cost[1]

    # ---- operations ----
    def _join(self, rank: int, op: str, payload: Any, t0: float, seconds: float = 0.0) -> _Collective | None:
        """Join the current global collective `op`. Every arrival but the last blocks until the last one wakes it
        and gets None; the last gets the completed collective (then `_release` it)."""
        c = self._coll
        if c is None:
            c = self._coll = _Collective(op)
        elif c.op != op:
            raise RuntimeError(f"rank {rank} entered {op} while others are in {c.op}: nodes diverged")
        c.arrivals[rank] = self.clock[rank]
        c.payloads[rank] = payload
        c.seconds = seconds
        if len(c.arrivals) < len(self.alive):
            self.overhead_s += time.perf_counter() - t0
            self.block(rank, op)
            return None
        self._coll = None
        return c

    def _release(self, rank: int, c: _Collective, end: float, t0: float) -> None:
        """The collective holds every link until `end`, when everyone leaves it."""
        self.out_free = [end] * self.n
        self.in_free = [end] * self.n
        for r in c.arrivals:
            if r != rank:
                self.wake(r, end)
        self.overhead_s += time.perf_counter() - t0

    def collective(self, rank: int, op: str, payload: Any, seconds: float) -> None:
        """Join the current global collective; the last arrival completes it for everyone."""
        t0 = time.perf_counter()
        c = self._join(rank, op, payload, t0, seconds)
        if c is None:
            return
        self._complete(rank, c, t0)

    def _complete(self, rank: int, c: _Collective, t0: float) -> None:
        """`rank` completes collective `c`: the last to arrive, or a node whose failure made the others enough (at
        the instant it failed)."""
        last = max(c.arrivals.values()) if rank in c.arrivals else max(*c.arrivals.values(), self.clock[rank])
        end = max(last, max(self.out_free), max(self.in_free)) + c.seconds
        self._release(rank, c, end, t0)
        if c.op == "allreduce":
            self._sum([c.payloads[r] for r in sorted(c.payloads)])
        if rank in c.arrivals:
            self.pause(rank, end)

    def kill(self, rank: int) -> None:
        """Node `rank` failed (`--on-failure continue`, an algorithm that survives it): it leaves the live nodes, so
        later collectives (the end-of-cell fence, evaluation) are the survivors', and a collective they are all
        waiting in already completes now. Its neighbours stop choosing it (`SimComm.neighbors`)."""
        self.alive = tuple(r for r in self.alive if r != rank)
        self.dead.add(rank)
        c = self._coll
        if c is not None and self.alive and len(c.arrivals) == len(self.alive):
            if c.op != "barrier" and c.op != "allreduce":
                raise RuntimeError(f"rank {rank} failed while the others wait in {c.op}, which needs every node")
            self._coll = None
            self._complete(rank, c, time.perf_counter())

    def _sum(self, tensors: list[torch.Tensor]) -> None:
        """Every tensor <- their sum, added in rank order (deterministic, and the same for any slice of them)."""
        t1 = time.perf_counter()
        total = tensors[0].clone()
        for x in tensors[1:]:
            total.add_(x)
        for x in tensors:
            x.copy_(total)
        self.payload_s += time.perf_counter() - t1

    def start_bucket(self, rank: int, t: torch.Tensor, ready: float, seconds: float) -> _BucketWork:
        """Record an asynchronous allreduce of `rank`, ready to go at virtual time `ready` (no switch: this runs
        inside autograd, in the middle of a compute section)."""
        self.buckets[rank].append(_Bucket(t, ready, seconds))
        return _BucketWork(self, rank)

    def wait_buckets(self, rank: int) -> None:
        """The node waits for its asynchronous allreduces: the first wait joins all it started as one collective
        (later waits find them done). Bucket k starts once every node has it ready, the previous bucket is done
        and the links are free; the last node to wait completes them all for everyone."""
        mine = self.buckets[rank]
        if not mine:
            return
        t0 = time.perf_counter()
        self.buckets[rank] = []
        c = self._join(rank, "allreduce buckets", mine, t0)
        if c is None:
            return
        per_node = [c.payloads[r] for r in range(self.n)]
        sizes = {tuple(b.tensor.numel() for b in buckets) for buckets in per_node}
        if len(sizes) != 1:
            raise RuntimeError(f"nodes started different asynchronous allreduces ({sorted(sizes)}): nodes diverged")
        free = max(max(self.out_free), max(self.in_free))
        for k, bucket in enumerate(per_node[0]):
            free = max(free, *(buckets[k].ready for buckets in per_node)) + bucket.seconds
        end = max(free, max(c.arrivals.values()))
        self._release(rank, c, end, t0)
        for k in range(len(per_node[0])):
            self._sum([buckets[k].tensor for buckets in per_node])
        self.pause(rank, end)

    def exchange(self, rank: int, msg: torch.Tensor, peers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        """Synchronous neighbour exchange: a node completes once each of its neighbours entered the same round."""
        t0 = time.perf_counter()
        k = self._xcount[rank]
        self._xcount[rank] += 1
        self._mail[(rank, k)] = [msg, self.clock[rank], len(peers)]
        self._xwait[rank] = (k, peers, self.clock[rank])
        for r in (rank, *peers):
            w = self._xwait.get(r)
            if w is not None and all((p, w[0]) in self._mail for p in w[1]):
                self._complete_exchange(r, rank)
        self.overhead_s += time.perf_counter() - t0
        if rank in self._xwait:
            self.block(rank, "neighbor_exchange")
        else:
            self.pause(rank, self.clock[rank])
        return self._xresult.pop(rank)

    def _complete_exchange(self, r: int, current: int) -> None:
        k, peers, arrival = self._xwait.pop(r)
        got: dict[int, torch.Tensor] = {}
        start = max(arrival, self.out_free[r], self.in_free[r])
        nbytes = 0
        for p in peers:
            box = self._mail[(p, k)]
            got[p] = box[0]
            start = max(start, box[1])
            nbytes += self.sizes.bytes(box[0].numel())
            box[2] -= 1
            if box[2] == 0:
                del self._mail[(p, k)]
        wire, latency = self.cost.exchange_seconds(nbytes)
        busy = start + wire
        self.out_free[r] = self.in_free[r] = busy
        self._xresult[r] = got
        end = busy + latency
        if r == current:
            self.clock[r] = end
        else:
            self.wake(r, end)

    def read(self, rank: int, peer: int, nbytes: int, keep: bool = False) -> torch.Tensor:
        t0 = time.perf_counter()
        copy = self.published[peer]  # as of this instant: every earlier event has run, no later one has
        if copy is None:
            raise RuntimeError(f"rank {rank} read from rank {peer}, which published nothing")
        owner = self.comms[peer]
        blob = owner.serve_read(copy, keep=keep)  # encodes the copy on its first read only (lazy publish)
        if blob.numel() != nbytes:
            raise RuntimeError(f"rank {rank} read {nbytes} bytes from rank {peer}, which published {blob.numel()}")
        serve = owner.take_service()  # the owner's encoding, if this read was the copy's first
        charged = self.sizes.bytes(blob.numel())
        legs = self.cost.one_sided_legs("read", charged - STAMP_BYTES)
        if legs is None:
            t = self.p2p(rank, peer, HEADER_BYTES, self.clock[rank]) + serve
            t = self.p2p(peer, rank, charged, t)
        else:
            t = self.leg(peer, rank, legs[1], self.leg(rank, peer, legs[0], self.clock[rank]) + serve)
        self.cpu_until[rank] = t
        self.overhead_s += time.perf_counter() - t0
        self.pause(rank, t)
        return blob  # a copy's message is never written again: no copy needed (the reader decodes a clone)

    def deposit(self, rank: int, peer: int, deposit: torch.Tensor) -> None:
        """A pull-push deposit: a one-way message (header + deposit); the sender is done when its link is, the
        partner folds it in at its first model-lock section after it arrives (`SimComm.fold_deposits`)."""
        arrival = self.p2p(rank, peer, HEADER_BYTES + self.sizes.bytes(deposit.numel()), self.clock[rank])
        self.comms[peer].arrive(arrival, deposit)
        self.pause(rank, arrival - self.cost.latency)

    def send(self, rank: int, peer: int, msg: torch.Tensor) -> None:
        """A directed message (header + payload) into `peer`'s mailbox: it occupies both links as any transfer
        and arrives after the latency; the sender is done when its link is (as a pull-push deposit)."""
        nbytes = self.sizes.bytes(msg.numel() * msg.element_size())
        arrival = self.p2p(rank, peer, MAIL_HEADER_BYTES + nbytes, self.clock[rank])
        self._mailbox.setdefault((rank, peer), deque()).append((arrival, msg))
        if rank in self._receiving.get(peer, ()):  # the receiver waits for this very sender: it may go on now
            del self._receiving[peer]
            self.wake(peer, self.clock[rank])
        self.pause(rank, arrival - self.cost.latency)

    def recv(self, rank: int, peer: int) -> torch.Tensor:
        """The oldest message from `peer` to `rank` (FIFO per pair), once it has arrived."""
        queue = self._mailbox.get((peer, rank))
        if not queue:
            self._receiving[rank] = (peer,)
            self.block(rank, f"recv from rank {peer}")
            queue = self._mailbox[(peer, rank)]
        arrival, msg = queue.popleft()
        self.pause(rank, max(self.clock[rank], arrival))
        return msg

    def recv_any(self, rank: int, peers: tuple[int, ...]) -> tuple[int, torch.Tensor]:
        """The message that arrives first from any of `peers` (ties: the lowest rank), once it has arrived. A queued
        message that arrives later than now may still be overtaken by one that a peer has yet to send: the node
        waits until the earliest arrival (every earlier event has run then) and looks again."""
        while True:
            first = None
            for peer in sorted(peers):
                queue = self._mailbox.get((peer, rank))
                if queue and (first is None or queue[0][0] < first[0]):
                    first = (queue[0][0], peer)
            if first is None:
                self._receiving[rank] = tuple(peers)
                self.block(rank, f"recv from any of ranks {sorted(peers)[:4]}")
                continue
            if first[0] <= self.clock[rank]:
                _, msg = self._mailbox[(first[1], rank)].popleft()
                self.pause(rank, self.clock[rank])
                return first[1], msg
            self.pause(rank, first[0])

    def average(self, rank: int, peer: int, msg: torch.Tensor) -> torch.Tensor:
        partner = self.comms[peer]
        reply = partner.serve_average(msg)
        t0 = time.perf_counter()
        serve = partner.take_service()  # the partner's copy, encode, decodes and arithmetic under its model lock
        sent = self.sizes.bytes(msg.numel())
        legs = self.cost.one_sided_legs("average", sent)
        t = self.clock[rank]
        if legs is None:
            t = self.p2p(rank, peer, HEADER_BYTES + sent, t)
            t = max(t, self.busy_until[peer]) + serve  # the partner's model lock: not inside a compute section
            t = self.p2p(peer, rank, self.sizes.bytes(reply.numel()), t)
        else:  # measured in the training loop: the round trip includes the typical wait for the partner's lock
            t = self.leg(peer, rank, legs[1], self.leg(rank, peer, legs[0], t) + serve)
        self.overhead_s += time.perf_counter() - t0
        self.pause(rank, t)
        return reply


class SimComm(Comm):
    """`Comm` of one virtual node: the base class counts bytes; the cluster moves them and charges time."""

    transport = "sim"

    def __init__(self, cluster: Cluster, rank: int, size: int, topology) -> None:
        clock = cluster.clock
        super().__init__(rank, size, topology, lambda: clock[rank])
        self._cluster = cluster
        self._codec_key: tuple[str | None, int] = (None, 32)
        self._pending = 0.0
        self._arriving: list[tuple[float, torch.Tensor]] = []

    def _allreduce_seconds(self, t: torch.Tensor, numel: int) -> float:
        """An allreduce of `t`, charged as `numel` coordinates: the algorithm the cost model picks for its size
        (recorded for meta.json), its modelled time, and the reduction's additions (comm-layer work "reduce") as each
        node of it performs them."""
        c = self._cluster
        nbytes = numel * t.element_size()
        algorithm, seconds = c.cost.allreduce_choice(nbytes, len(c.alive))
        c.allreduce_used[nbytes] = algorithm
        name = algorithm.removeprefix("hierarchical(").rstrip(")")
        adds = collectives.reduced_coordinates(name, len(c.alive)) * numel
        return seconds + (c.cost.work_seconds("reduce", round(adds)) if adds else 0.0)

    def _count_allreduce(self, t: torch.Tensor, kind: str) -> None:
        numel, _ = self._cluster.sizes.span(t)
        vol = ring_allreduce_bytes(numel * t.element_size(), self.size)
        CommStats.add(self.stats, kind, sent=vol, recv=vol, msgs_sent=int(self.size > 1), msgs_recv=int(self.size > 1))

    def _allreduce_sum(self, t: torch.Tensor) -> None:
        numel, _ = self._cluster.sizes.span(t)
        self._cluster.collective(self.rank, "allreduce", t, self._allreduce_seconds(t, numel))

    def neighbors(self) -> tuple[int, ...]:
        """The topology's neighbours that have not failed (`Cluster.kill`)."""
        peers = super().neighbors()
        dead = self._cluster.dead
        return tuple(p for p in peers if p not in dead) if dead else peers

    def alive(self) -> tuple[int, ...]:
        return self._cluster.alive

    def _allreduce_sum_async(self, t: torch.Tensor) -> _BucketWork:
        c = self._cluster
        numel, share = c.sizes.span(t)
        return c.start_bucket(self.rank, t, c.clocks[self.rank].ready_at(share), self._allreduce_seconds(t, numel))

    def _neighbor_exchange(self, msg: torch.Tensor, peers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        return self._cluster.exchange(self.rank, msg, peers)

    def _send(self, peer: int, msg: torch.Tensor) -> None:
        self._cluster.send(self.rank, peer, msg)

    def _recv(self, peer: int) -> torch.Tensor:
        return self._cluster.recv(self.rank, peer)

    def _recv_any(self, peers: tuple[int, ...]) -> tuple[int, torch.Tensor]:
        return self._cluster.recv_any(self.rank, peers)

    def _publish(self, copy: Copy) -> None:
        # Lazy publish, as on real processes: the copy is encoded (and that charged) when first read.
        self._cluster.published[self.rank] = copy

    def _read(self, peer: int, nbytes: int) -> torch.Tensor:
        return self._cluster.read(self.rank, peer, nbytes)

    def _pull_push(self, peer: int, nbytes: int, respond) -> torch.Tensor:
        blob = self._cluster.read(self.rank, peer, nbytes, keep=True)
        deposit, _ = respond(blob)
        self._cluster.deposit(self.rank, peer, deposit)
        self._count_deposit(deposit)
        return blob

    def arrive(self, at: float, deposit: torch.Tensor) -> None:
        """A peer's pull-push deposit reaches this node at virtual time `at`."""
        self._arriving.append((at, deposit))

    def fold_deposits(self, everything: bool = False) -> None:
        """Fold in the deposits that have arrived by now (all of them at the end of the cell); the work is this
        node's, done before its next compute section, and counted as serving peers."""
        if not self._arriving:  # every compute section of every node passes here
            return
        c, now = self._cluster, self._cluster.clock[self.rank]
        waiting = []
        for at, dep in self._arriving:
            if everything or at <= now:
                self._received_deposit(dep)
            else:
                waiting.append((at, dep))
        if len(waiting) == len(self._arriving):
            return
        self._arriving = waiting
        super().fold_deposits()
        seconds = self.take_service()
        if seconds > 0 and not everything:
            c.pause(self.rank, now + seconds)

    def finish_cell(self) -> None:
        with self._model_lock:
            self.fold_deposits(everything=True)
        super().finish_cell()
        self._cluster.published[self.rank] = None  # after the end-of-cell fence nobody reads it any more

    def _average_with(self, peer: int, msg: torch.Tensor, reply_bytes: int) -> torch.Tensor:
        reply = self._cluster.average(self.rank, peer, msg)
        if reply.numel() != reply_bytes:
            raise RuntimeError(f"rank {peer} replied {reply.numel()} bytes to an average, {reply_bytes} expected")
        return reply

    def _barrier(self) -> None:
        c = self._cluster
        c.collective(self.rank, "barrier", None, c.cost.barrier_seconds(len(c.alive)))

    # ---- comm-layer work (copies, averaging arithmetic, codec) ----
    def start_cell(self, codec=None, seed: int = 0) -> None:
        super().start_cell(codec, seed)
        self._codec_key = (self.codec.cfg.quantizer, self.codec.cfg.bits)
        self._pending = 0.0
        self._arriving: list[tuple[float, torch.Tensor]] = []  # pull-push deposits on their way here

    def _work(self, op: str, numel: int) -> None:
        c = self._cluster
        seconds = c.work_seconds(op, self._codec_key, numel) * c.speeds[self.rank]
        if seconds <= 0:
            return
        if self._service:  # working for a peer, at the peer's instant: the cluster charges it (`take_service`)
            self._pending += seconds
            return
        t = c.clock[self.rank] + seconds
        c.cpu_until[self.rank] = max(c.cpu_until[self.rank], t)  # busy on a core (processor sharing)
        c.pause(self.rank, t)

    def take_service(self) -> float:
        """Seconds of work done for a peer since the last call (added to this node's serve_seconds): the peer waits
        for it."""
        seconds, self._pending = self._pending, 0.0
        self.stats.add_serve(seconds)
        return seconds


def backward_share(t: torch.Tensor) -> float:
    """The share of the backward pass after which the gradients in `t` are all computed, read off where `t` lies
    in its buffer: gradients are one flat buffer with the parameters in forward order (`flatten_model`), backward
    produces them in about reverse order, so a slice from offset o of an N-element buffer is complete once the
    last N - o of them are, i.e. after (N - o) / N of the backward pass (cost proportional to parameter count). A
    tensor that is a whole buffer is complete at the end (1)."""
    total = t.untyped_storage().nbytes() // t.element_size()
    return (total - t.storage_offset()) / total if total else 1.0


class SimClock:
    """A node's virtual clock. The training loop runs each SGD step as two `compute()` sections (forward/backward,
    then the optimizer update); each is charged its modelled time when it exits."""

    def __init__(
        self, cluster: Cluster, rank: int, fb: float, update: float, stream, p: float, k: float, jitter=(), slow=()
    ) -> None:
        self._c, self._rank = cluster, rank
        self._slow = slow  # (from step, factor) of `--slow`, by step (`FailureSchedule.slow`)
        self._slowdown = 1.0
        self._steps = 0  # forward/backward sections entered: the step this node is at
        self._costs = (fb, update)
        self._stream, self._p, self._k = stream, p, k
        self._jitter = jitter
        self._phase = 0
        self._straggle = 1.0
        self._end = 0.0
        self._backward: tuple[float, float] | None = None  # (start, end) of the forward/backward section we are in

    def now(self) -> float:
        return self._c.clock[self._rank]

    def ready_at(self, share: float) -> float:
        """The virtual instant when `share` of the backward pass of the running forward/backward section is done:
        the section's first `forward_share` is the forward pass, the rest the backward pass (in proportion to
        parameter count). Outside such a section: now."""
        if self._backward is None:
            return self.now()
        start, end = self._backward
        forward = self._c.cost.forward_share
        return start + (end - start) * (forward + (1 - forward) * share)

    def compute(self) -> SimClock:
        return self

    def __enter__(self) -> SimClock:
        if self._phase == 0 and (self._p > 0 or self._jitter):
            self._straggle = self._k if self._p > 0 and self._stream.random() < self._p else 1.0
            if self._jitter:
                self._straggle *= self._jitter[int(self._stream.random() * len(self._jitter))]
        if self._phase == 0 and self._slow:
            for start, factor in self._slow:
                if start == self._steps:
                    self._slowdown = factor
            self._steps += 1
        c, now = self._c, self._c.clock[self._rank]
        share = 1.0
        if c.cost.shared_cores:
            # Processor sharing: the nodes inside a compute section or a one-sided read right now (on one host a
            # read is the kernel copying through loopback and the partner's responder working), this one
            # included. A node waiting in a collective for a late peer, or in an average mostly for the
            # partner's model lock, does not count: it sleeps.
            busy = (r for r in range(c.n) if r != self._rank and max(c.busy_until[r], c.cpu_until[r]) > now)
            share = c.cost.share(1 + sum(1 for _ in busy))
        self._end = now + self._costs[self._phase] * self._straggle * share * self._slowdown  # 1.0 unless --slow
        self._backward = (now, self._end) if self._phase == 0 else None
        self._phase ^= 1
        c.busy_until[self._rank] = self._end
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._backward = None
        if exc_type is None:
            self._c.pause(self._rank, self._end)
        return False


# ---- data policy and memory -------------------------------------------------------------------------------------


def resolve_shards(cfg, dataset, series: tuple[int, ...]) -> str:
    """`split` (the real engine's disjoint shards) when it works for every node count, else `sample`."""

    n_train = len(dataset.y_train)
    if cfg.batch_size > n_train:
        raise UserError(
            f"--batch-size {cfg.batch_size} is larger than the training set ({n_train} samples): "
            f"use --batch-size {n_train} or less"
        )
    policy = cfg.sim_shards
    if policy in ("auto", "split"):
        for n in series:
            try:
                make_shards(dataclasses.replace(cfg, nodes=n, node_series=()), dataset)
            except UserError as exc:
                if policy == "split" or cfg.partition != "iid":
                    fix = " (or --sim-shards sample with --partition iid)" if policy == "split" else ""
                    raise UserError(f"{exc}{fix}") from None
                return "sample"
        return "split"
    if cfg.partition != "iid":
        raise UserError(
            f"--sim-shards sample draws every node's shard from the whole training set, which has no label skew: "
            f"use --partition iid, or --sim-shards split with --partition {cfg.partition}"
        )
    return "sample"


def make_sim_shards(cfg, dataset, policy: str):
    """Shards for one node count. `sample`: node r's shard is max(batch, n_train // N) samples drawn without
    replacement from the whole training set with its own seed, so shards of different nodes overlap; every node
    takes max(1, n_train // (N * batch)) steps per epoch (the real engine's budget, but at least one step)."""

    if policy == "split":
        return make_shards(cfg, dataset)
    n_train = len(dataset.y_train)
    size = max(cfg.batch_size, n_train // cfg.nodes)
    indices = []
    for r in range(cfg.nodes):
        gen = torch.Generator().manual_seed(node_seed(cfg.seed, r, 5))
        indices.append(torch.randperm(n_train, generator=gen)[:size].sort().values)
    return Shards(indices=indices, steps_per_epoch=max(1, n_train // (cfg.nodes * cfg.batch_size)))


def eval_subset(cfg, dataset):
    """The dataset with its test set (and validation split) cut to the first `eval_samples` (seeded shuffles)."""
    if cfg.eval_samples is None:
        return dataset
    n_test = len(dataset.y_test)
    if cfg.eval_samples > n_test:
        raise UserError(f"--eval-samples {cfg.eval_samples} exceeds the {n_test} test samples: use {n_test} or less")
    k = cfg.eval_samples
    val = {}
    if dataset.x_val is not None and dataset.y_val is not None:
        val = {"x_val": dataset.x_val[:k], "y_val": dataset.y_val[:k]}
    return dataclasses.replace(dataset, x_test=dataset.x_test[:k], y_test=dataset.y_test[:k], **val)


def estimate_bytes(n_params: int, nodes: int, snapshots: int = 1, algorithms=()) -> int:
    """Memory the simulator needs for `nodes` nodes of an n_params model running `algorithms` one after the other
    (the largest `model_copies` of them; SwarmSGD's 4 when none is named) that keep `snapshots` model copies for
    evaluation after training (one per evaluated epoch)."""
    copies = max((ALGORITHMS[name].model_copies for name in algorithms), default=ALGORITHMS["swarm"].model_copies)
    model = 4 * n_params
    per_node = (copies + max(0, snapshots - 1)) * model + NODE_OVERHEAD_BYTES + 8 * (nodes + 7)
    return RUNTIME_BYTES + 2 * model + nodes * round(per_node)


def return_freed_memory() -> None:
    """Have glibc's malloc serve every block of 16 KiB or more from a mapping of its own, given back to the system
    when freed. By default glibc raises that threshold to the size of the first such block freed, after which
    model-sized blocks come from the heap, which the copies that nodes publish and drop every step fragment (at
    256 nodes the resident memory stayed at about 1.7 times what was in use). 16 KiB, not more: a step's
    activations and their gradients (16 KiB each for the MLP at batch 32) are freed when its backward pass ends,
    and from the heap they left holes between what paused nodes keep (about 40 kB per node when every node takes
    several steps, measured with a 64 KiB threshold), at the price of mapping them anew each step (about 15 % more
    CPU time for the MLP). Thousands of nodes with many such tensors each (a ResNet's per-parameter momentum) would
    need more mappings than Linux allows a process (vm.max_map_count, 65,530 by default), which other users of
    mmap (thread stacks, libraries loaded late, the codec's JIT) would then fail to get: glibc maps at most half of
    that many blocks (M_MMAP_MAX) and serves the rest from the heap. Other C libraries have no mallopt (nothing to
    do there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    try:
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        limit = 65_530  # Linux's default
    mallopt(M_MMAP_MAX, limit // 2)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(n_params: int, nodes: int, snapshots: int = 1, algorithms=()) -> int:
    need = estimate_bytes(n_params, nodes, snapshots, algorithms)
    have = available_bytes()
    if have is not None and need > have:
        fewer = ", fewer evaluated epochs (--eval-every)" if snapshots > 1 else ""
        raise UserError(
            f"{nodes} simulated nodes of a {n_params:,}-parameter model need about {need / 2**30:.1f} GiB, "
            f"more than the {have / 2**30:.1f} GiB available: use fewer nodes{fewer} or a smaller model"
        )
    return need


def check_config(cfg) -> None:
    """Sim-only validation (no data loading)."""

    series = cfg.node_series or (cfg.nodes,)
    limit = MAX_COST_ONLY_NODES if cfg.compute == "cost-only" else MAX_NODES
    for n in series:
        if n < 1 or n > limit:
            more = f" (--compute cost-only runs up to {MAX_COST_ONLY_NODES})" if limit == MAX_NODES else ""
            raise UserError(f"--engine sim runs 1 to {limit} nodes, got {n}: use a node count in that range{more}")
    if len(set(series)) != len(series):
        raise UserError(f"--nodes lists a node count twice ({','.join(map(str, series))}): list each once")
    if cfg.sim_shards not in SHARD_POLICIES:
        raise UserError(f"--sim-shards must be one of {', '.join(SHARD_POLICIES)}, got '{cfg.sim_shards}'")
    if cfg.eval_samples is not None and cfg.eval_samples < 1:
        raise UserError(f"--eval-samples must be at least 1, got {cfg.eval_samples}")
    if cfg.launcher != "local":
        raise UserError(f"--engine sim runs every node in this process: drop --launcher {cfg.launcher}")
    if cfg.device != "cpu":
        raise UserError(f"--engine sim runs on the CPU: drop --device {cfg.device}")
    costmodel.check(cfg)


# ---- running ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CellStats:
    """Wall-clock facts of one simulated cell, for the benchmark (never written to results)."""

    nodes: int
    algorithm: str
    wall_s: float
    overhead_s: float
    payload_s: float
    switches: int
    node_steps: int
    allreduce_used: dict[int, str]  # message bytes -> allreduce algorithm (recorded in meta.json)

    @classmethod
    def of(cls, cluster: Cluster, algorithm: str, started: float, node_steps: int) -> CellStats:
        """The facts of a cell that `cluster` has just run, started at perf_counter() = `started`."""
        wall = time.perf_counter() - started
        used = dict(cluster.allreduce_used)
        return cls(
            cluster.n, algorithm, wall, cluster.overhead_s, cluster.payload_s, cluster.switches, node_steps, used
        )


def cell_events(emit, on_event=None):
    """One emit for a simulated run's cells: records and progress go to `emit`, a cell's start and end to
    `on_event` (when given)."""

    def emit_event(event: dict[str, Any]) -> None:
        if event["type"] not in ("cell_start", "cell_done"):
            emit(event)
        elif on_event:
            on_event(event)

    return emit_event


def simulate_algorithms(
    cfg, dataset, shards, cost: CostModel, emit, on_event=None, done: frozenset[tuple[str, int]] = frozenset()
) -> list[CellStats]:
    """Every algorithm of `cfg` on cfg.nodes virtual nodes; records go to `emit`. Raises what a node raises. The
    cells in `done` (algorithm, round) are not run again (`run_rounds`)."""

    topology = build_topology(cfg.topology, cfg.nodes, degree=cfg.degree, seed=cfg.seed)
    device = torch.device("cpu")
    stats = []
    return_freed_memory()

    schedule = failure_schedule(cfg, cfg.epochs * shards.steps_per_epoch)
    survivors = ", ".join(name for name, cls in ALGORITHMS.items() if cls.survives_failures)

    def crash() -> None:
        raise NodeFailed

    def run_one(name: str, emit_round) -> str | None:
        cluster = Cluster(cfg.nodes, topology, cost, cfg.seed, schedule=schedule)
        start = time.perf_counter()
        shared = SharedModule(cfg.model, dataset.input_shape, dataset.num_classes, cfg.seed)  # one for all nodes
        goes_on = cfg.on_failure == "continue" and ALGORITHMS[name].survives_failures

        def body(rank: int) -> None:
            comm, clock = cluster.comms[rank], cluster.clocks[rank]
            at = schedule.fail_at.get(rank)
            failure = Failure(at, crash) if at is not None else None
            try:
                run_cell(
                    cfg, name, dataset, shards, rank, comm, clock, device, emit_round, shared=shared, failure=failure
                )
            except NodeFailed:
                lost = f"rank {rank} failed at step {at}"
                if cfg.on_failure == "stop":
                    raise NodeLost(f"{lost} (--on-failure stop)") from None
                if not goes_on:
                    raise NodeLost(
                        f"{lost} and {name} cannot go on without it (with --on-failure continue only {survivors} do)"
                    ) from None
                if len(cluster.alive) == 1:
                    raise NodeLost(f"{lost}, the last node alive") from None
                cluster.kill(rank)

        lost = None
        try:
            cluster.run(body)
        except NodeLost as exc:
            if cfg.on_failure == "stop":
                raise
            lost = str(exc)  # this algorithm failed; the run goes on with the next one
        stats.append(CellStats.of(cluster, name, start, cfg.nodes * cfg.epochs * shards.steps_per_epoch))
        return lost

    run_rounds(cfg, cell_events(emit, on_event), run_one, done)
    return stats


class OneTorchThread:
    """One torch thread while simulating: results must not depend on the machine's core count."""

    def __enter__(self) -> None:
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.saved)
