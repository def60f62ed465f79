"""Communication: the one module that talks to torch.distributed, and counts every byte it moves.

`Comm` is the engine-neutral interface every algorithm sees (see docs in README, "Architecture"):
collectives (`allreduce_mean`, its asynchronous twin `allreduce_mean_async`, `neighbor_exchange`), the one-sided
pair (`publish` / `read`) and the atomic pairwise average (`average_with`). `TorchComm` implements it on real
processes; the simulated cluster implements the same interface with virtual time. Both count in the same way
(`CommStats`).

Byte accounting (per node, by kind; closed forms tested in tests/test_comm.py and tests/test_run.py).
With m = the codec's message size for the model (`Codec.wire_bytes`: 4 bytes per parameter unquantized,
packed codes plus 8 header bytes per bucket when quantized):
- allreduce of b bytes over n nodes: the ring algorithm's volume, 2(n-1)/n * b sent and received per node
  (gloo picks its own algorithm internally; the ring volume is the bandwidth-optimal reference), one message.
  Never quantized. An asynchronous allreduce counts the same when it starts (AllReduce SGD's buckets: the sum over
  its buckets per step).
- neighbor_exchange: m sent to and received from each neighbour.
- read: a 32-byte request header (kind "control") to the peer, 8 + m bytes back (stamp + model).
- average_with: header + m bytes to the peer, m + f bytes back (its model and the failure bitmap: f =
  `Codec.bitmap_bytes`, one bit per bucket rounded up to whole bytes for the lattice quantizer below 32 bits, 0
  otherwise); the peer counts the mirror image. RMA (`RmaComm`) differs and says how in its docstring.
- publish: no bytes (the copy stays on this node until a peer reads it); its time is kind "publish".
- send / recv / recv_any (the mailbox): the message's own bytes (b) under its kind plus a 16-byte header (element
  count and dtype, kind "control"), counted by the sender when it sends and by the receiver when it receives, one
  message each: summed over nodes, sent == received once every message is received.
- neighbor_exchange_encoded: like neighbor_exchange, with the algorithm's own message (already encoded) as m.

Lazy publish. `publish` keeps a raw float32 copy of the model and its stamp (a `Copy`); the copy is encoded only
when a peer reads it (`Copy.blob`: at most once per copy, with a generator seeded from the copy's identity, so
every reader of one copy gets the same bytes, whatever the order and timing of reads, and the simulator's bytes
depend only on the seed). SwarmSGD publishes after every step but a neighbour reads about once per H steps, so
this saves H-1 of every H encodes. The RMA transport is the exception: a passive-target read takes whatever bytes
lie in the owner's window, so the owner must encode before any read may arrive, i.e. at every publish
(`RmaComm._publish`); encoding less often would hand readers an older copy, which changes the algorithm.

Time. `KindStats.seconds` is what this node's training thread spent blocked in calls of a kind (publish
included), which `comm_fraction` sums. `CommStats.serve_seconds` is what this node spent serving peers apart
from its own calls: the p2p responder encoding a copy for a read or averaging under the model lock, the RMA
owner decoding and folding peers' deposits into its model and encoding its window copy. AllReduce SGD never serves.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from bench.base.errors import UserError
from bench.core.codec import Codec, CodecConfig

if TYPE_CHECKING:
    from bench.core.compress import Compressor
    from bench.core.topology import Topology

RAW = Codec(CodecConfig(bits=32))  # no quantization: the float32 bytes themselves

HEADER_BYTES = 32  # request header: 4 x int64 (op, requester, message bytes, reserved)
STAMP_BYTES = 8  # int64 stamp (steps taken) in front of every published model


def stamp_bytes(stamp: int) -> torch.Tensor:
    """A copy's stamp as the STAMP_BYTES in front of its message: an int64 in the machine's byte order."""
    return torch.frombuffer(bytearray(stamp.to_bytes(STAMP_BYTES, sys.byteorder, signed=True)), dtype=torch.uint8)


def stamp_of(blob: torch.Tensor) -> int:
    """The stamp in front of a message (`stamp_bytes`'s inverse), read without a copy where the bytes are on the
    host (every node reads thousands of them per second in the simulator)."""
    head = blob[:STAMP_BYTES]
    if not (head.is_cpu and head.is_contiguous()):
        head = head.contiguous().cpu()
    return int(head.numpy().view(np.int64)[0])


MAIL_HEADER_BYTES = 16  # a directed message's header: 2 x int64 (element count, dtype code)
MAIL_DTYPES = (torch.uint8, torch.float32)  # what `send` carries: encoded bytes, or raw float32 values
KINDS = ("grad", "model", "control", "publish", "eval")  # eval traffic is reported apart from training traffic
# Errors that only say a peer went away (gloo's, when the peer's process has ended).
PEER_LOSS_HINTS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "timed out")
DEAD_POLL_S = 0.002  # how often a survivors' fence looks for arrivals and deaths (`--on-failure continue`)


class PeerLost(RuntimeError):
    """The peer of a pairwise exchange has died (`--on-failure continue`): the exchange did not happen."""

    def __init__(self, peer: int) -> None:
        super().__init__(f"rank {peer} is gone")
        self.peer = peer


def lost_a_peer(error: str) -> bool:
    """Whether an error (a message, or a traceback whose last line is the error) only says that a peer went away."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return bool(lines) and any(h in lines[-1] for h in PEER_LOSS_HINTS)


def ring_allreduce_bytes(nbytes: int, n: int) -> int:
    """Bytes one node sends (and receives) in a ring allreduce of `nbytes` over `n` nodes."""
    return (2 * (n - 1) * nbytes) // n


@dataclass
class KindStats:
    bytes_sent: int = 0
    bytes_recv: int = 0
    msgs_sent: int = 0
    msgs_recv: int = 0
    seconds: float = 0.0  # time this node's training thread spent blocked in calls of this kind


@dataclass
class Copy:
    """A published model: the raw float32 values at publish time, their stamp, and (once a peer read it) the
    message a reader receives: 8 stamp bytes + the codec's encoding of `raw`."""

    raw: torch.Tensor | None
    stamp: int
    seed: int  # seeds the codec's randomness for this copy: the bytes depend on the copy alone
    blob: torch.Tensor | None = None
    values: torch.Tensor | None = None  # what `blob` decodes to (kept while a pull-push deposit may name the copy)


@functools.lru_cache(maxsize=8)
def everyone(size: int) -> tuple[int, ...]:
    """The ranks 0..size-1: one tuple per world size, shared (N nodes each holding their own would be O(N^2) memory:
    2.4 GB at 8,192 simulated nodes)."""
    return tuple(range(size))


class _Timed:
    """`with comm._timed(kind):` adds the time the block took (on the comm's clock) to `kind`'s seconds, also when
    it raises. A class, not a generator: every message passes through one."""

    __slots__ = ("_comm", "_kind", "_start")

    def __init__(self, comm: Comm, kind: str) -> None:
        self._comm, self._kind = comm, kind

    def __enter__(self) -> None:
        self._start = self._comm._now()

    def __exit__(self, *exc) -> bool:
        self._comm.stats.add_time(self._kind, self._comm._now() - self._start)
        return False


class _Exclusive:
    """`Comm.exclusive`: the model lock held, the deposits folded in on entry (a class: two per training step)."""

    __slots__ = ("_comm",)

    def __init__(self, comm: Comm) -> None:
        self._comm = comm

    def __enter__(self) -> None:
        lock = self._comm._model_lock
        lock.__enter__()
        try:
            self._comm.fold_deposits()
        except BaseException:
            lock.__exit__(*sys.exc_info())
            raise

    def __exit__(self, *exc) -> bool:
        return bool(self._comm._model_lock.__exit__(*exc))


class CommStats:
    """Per-node counters by kind; thread-safe because a responder thread counts what it serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.kinds: dict[str, KindStats] = defaultdict(KindStats)
        self.serve_seconds = 0.0  # time spent serving peers (responder / window owner side), not in any kind
        # Staleness of reads: sum of (owner's live step at read time - stamp of the copy read), and reads counted.
        # Counted by whichever side learns both numbers: the owner on p2p and in the simulator, the reader on RMA.
        self.staleness_sum = 0
        self.staleness_reads = 0

    def add(self, kind: str, *, sent: int = 0, recv: int = 0, msgs_sent: int = 0, msgs_recv: int = 0) -> None:
        with self._lock:
            k = self.kinds[kind]
            k.bytes_sent += sent
            k.bytes_recv += recv
            k.msgs_sent += msgs_sent
            k.msgs_recv += msgs_recv

    def add_time(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.kinds[kind].seconds += seconds

    def add_serve(self, seconds: float) -> None:
        with self._lock:
            self.serve_seconds += seconds

    def add_staleness(self, steps: int) -> None:
        with self._lock:
            self.staleness_sum += steps
            self.staleness_reads += 1

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {kind: dict(vars(s)) for kind, s in sorted(self.kinds.items())}

    def reset(self) -> None:
        with self._lock:
            self.kinds.clear()
            self.serve_seconds = 0.0
            self.staleness_sum = self.staleness_reads = 0

    def state(self) -> dict[str, Any]:
        """Every counter, for a checkpoint (`load` puts them back)."""
        with self._lock:
            return {
                "kinds": {kind: dict(vars(s)) for kind, s in self.kinds.items()},
                "serve_seconds": self.serve_seconds,
                "staleness": (self.staleness_sum, self.staleness_reads),
            }

    def load(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.kinds.clear()
            for kind, values in state["kinds"].items():
                vars(self.kinds[kind]).update(values)
            self.serve_seconds = state["serve_seconds"]
            self.staleness_sum, self.staleness_reads = state["staleness"]


class Comm:
    """What an algorithm may do on the network. Subclasses implement the `_` hooks for one engine.

    All model tensors are flat 1-D float32 tensors. Model messages (`publish`/`read`, `neighbor_exchange`,
    `average_with`) go through the cell's codec (`bench.core.codec`): engines only move the resulting bytes,
    and the averaging arithmetic lives here, once, for every engine.
    """

    request_bytes = HEADER_BYTES  # control bytes an initiator sends per one-sided operation

    def __init__(self, rank: int, size: int, topology: Topology, now) -> None:
        self.rank = rank
        self.size = size
        self.topology = topology
        self.stats = CommStats()
        self.codec = RAW
        self.decode_failures = 0  # buckets of peers' messages this node failed to decode
        self.buckets_skipped = 0  # buckets left out of averages: failed on either side (counted by both sides)
        self._gen: torch.Generator | None = None  # the codec's randomness (`_codec_stream`)
        self._gen_seed = rank
        self._cell_seed, self._publishes = 0, 0  # seed the codec of each published copy (see `Copy`)
        self._model_lock = contextlib.nullcontext()  # real engines: a lock shared with the responder
        self._live: torch.Tensor | None = None
        self.live_step = 0  # steps this node's live model has taken (the training loop sets it: `set_step`)
        self.model_numel = 0  # coordinates of the model this node publishes or exposes (sizes codec costs)
        self._now = now  # the engine's clock: wall time for processes, virtual time in the simulator
        self._service = 0  # > 0 while working for a peer (`_serving`)
        # Pull-push (`pull_push`): copies read for a deposit, by stamp, with the deposits still to come, and the
        # deposits received and not yet folded in (engines that deliver them here: p2p, the simulator).
        self._held: dict[int, list] = {}
        self._deposits: list[tuple[int, torch.Tensor]] = []
        self._everyone = everyone(size)  # one tuple shared by every node of a world (a simulator holds 65,536)

    # ---- the interface algorithms use -------------------------------------------------------------
    def neighbors(self) -> tuple[int, ...]:
        return self.topology.neighbors(self.rank)

    def process_group(self, kind: str):
        """This communicator as a `torch.distributed.ProcessGroup`, for library code written against one (torch's
        DDP communication hooks: PowerSGD). Its allreduces (sums) are `allreduce_sum` under `kind`: counted and
        timed like the algorithm's own, on real processes and in the simulator alike. Each runs when its result is
        first asked for (its work's or future's `wait` or `value`, or a `then` callback that asks); no other
        collective is offered."""
        return _comm_group(self, kind)

    def charge(self, op: str, numel: int) -> None:
        """The algorithm did work on `numel` coordinates that no comm call did for it (PowerSGD's low-rank
        compression: op "lowrank R" on a matrix's coordinates). Real engines measured it on their clocks; the
        simulator charges the compute profile's cost of `op`, as it charges the comm layer's own work."""
        self._work(op, numel)

    def alive(self) -> tuple[int, ...]:
        """The ranks still running, in order: every rank, unless nodes failed (`--on-failure continue`), when the
        engine has dropped them (from collectives as from `neighbors()`)."""
        return self._everyone

    def allreduce_mean(self, t: torch.Tensor, kind: str) -> None:
        """In place: t <- mean over all (live) nodes (never quantized)."""
        self.allreduce_sum(t, kind)
        live = len(self.alive())
        if live > 1:
            t.div_(live)

    def allreduce_sum(self, t: torch.Tensor, kind: str) -> None:
        """In place: t <- sum over all nodes (counters, evaluation results)."""
        with self._timed(kind):
            if self.size > 1:
                self._allreduce_sum(t)
            self._count_allreduce(t, kind)

    def allreduce_mean_async(self, t: torch.Tensor, kind: str) -> Pending:
        """Start t <- mean over all nodes, in place, and return at once; `wait()` on the handle completes it.

        For overlapping communication with computation (AllReduce SGD launches each gradient bucket from an
        autograd hook while the backward pass goes on). Every node must start the same sequence of asynchronous
        allreduces (same sizes, same order), and nobody may touch `t` before `wait()` returned. The bytes are
        counted here, exactly as `allreduce_mean` counts them; the time counted under `kind` is what `wait()`
        blocks (starting one blocks nothing, and reads no clock: on CUDA that would synchronize the device in the
        middle of the backward pass).
        """
        work = self._allreduce_sum_async(t) if self.size > 1 else None
        self._count_allreduce(t, kind)
        return Pending(self, t, kind, work)

    def _count_allreduce(self, t: torch.Tensor, kind: str) -> None:
        vol = ring_allreduce_bytes(_nbytes(t), self.size)
        self.stats.add(kind, sent=vol, recv=vol, msgs_sent=int(self.size > 1), msgs_recv=int(self.size > 1))

    def neighbor_exchange(self, t: torch.Tensor, kind: str) -> dict[int, torch.Tensor]:
        """Synchronous: send `t` (encoded) to every neighbour; return each neighbour's decoded model."""
        peers = self.neighbors()
        if not peers:
            return {}
        with self._timed(kind):
            msg = self._encode(t)
            got = self._neighbor_exchange(msg, peers)
            n = len(peers)
            self.stats.add(kind, sent=n * msg.numel(), recv=n * msg.numel(), msgs_sent=n, msgs_recv=n)
            return {p: self._decode(m, t) for p, m in got.items()}

    def neighbor_exchange_encoded(self, msg: torch.Tensor, kind: str) -> dict[int, torch.Tensor]:
        """Synchronous: send the algorithm's own, already encoded message (`encode`) to every neighbour; return
        each neighbour's message as sent (decode it with `decode_shared`). The comm layer only moves and counts
        the bytes, so an algorithm that keeps copies of what was delivered (Choco-SGD's x-hat) knows them exactly.
        """
        peers = self.neighbors()
        if not peers:
            return {}
        with self._timed(kind):
            got = self._neighbor_exchange(msg, peers)
            n = len(peers)
            self.stats.add(kind, sent=n * msg.numel(), recv=n * msg.numel(), msgs_sent=n, msgs_recv=n)
            return got

    def encode(self, t: torch.Tensor, kind: str) -> torch.Tensor:
        """`t` in the cell's codec (the message bytes; raw float32 bytes at bits=32), timed under `kind` as
        `neighbor_exchange` times its own encoding. Randomness (the uniform quantizer's dither) is drawn here,
        once, on the sender, from this node's stream."""
        with self._timed(kind):
            return self._encode(t)

    def decode_shared(self, msg: torch.Tensor, numel: int, kind: str) -> torch.Tensor:
        """What every receiver of `msg`, the sender included, decodes it to: a lattice message is decoded against
        zeros, a reference all of them share, so they agree bit for bit (a bucket farther than the lattice radius
        from 0 fails everywhere alike and decodes to 0; `decode_failures` counts it). Timed under `kind`."""
        with self._timed(kind):
            self._work("decode", numel)
            reference = torch.zeros(numel) if self.codec.can_fail else None
            values, failed = self.codec.decode_buckets(msg, numel, reference)
            self.decode_failures += int(failed.sum())
            return values

    def gossip_encoded(
        self, t: torch.Tensor, kind: str, compressor: Compressor | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Compressed gossip for algorithms that keep copies of what was delivered (Choco-SGD's x-hat, LEAD's h):
        encode `t` once (`encode`, or the algorithm's own `compressor`, `bench.core.compress`, with this node's
        random stream), send it to every neighbour (`neighbor_exchange_encoded`) and decode every message alike
        (`decode_shared`, or the compressor's). Returns this node's message as all its receivers decode it, and each
        neighbour's message decoded, on `t`'s device. A compressor's work is charged as "encode NAME" and "decode
        NAME"."""
        n = t.numel()
        if compressor is None:
            msg = self.encode(t, kind)
            theirs = self.neighbor_exchange_encoded(msg, kind)
            q = self.decode_shared(msg, n, kind).to(t.device)
            return q, {peer: self.decode_shared(m, n, kind).to(t.device) for peer, m in theirs.items()}

        def decode(m: torch.Tensor) -> torch.Tensor:
            with self._timed(kind):
                self._work(f"decode {compressor.name}", n)
                return compressor.decode(m, n).to(t.device)

        with self._timed(kind):
            self._work(f"encode {compressor.name}", n)
            msg = compressor.encode(t.detach().to("cpu", torch.float32), self._codec_stream())
        theirs = self.neighbor_exchange_encoded(msg, kind)
        return decode(msg), {peer: decode(m) for peer, m in theirs.items()}

    def send(self, peer: int, msg: torch.Tensor, kind: str) -> None:
        """Directed, exactly once: put `msg` (a flat uint8 or float32 tensor) in `peer`'s mailbox and return
        without waiting for the peer; messages from one sender to one receiver arrive in the order sent."""
        if msg.dtype not in MAIL_DTYPES or msg.dim() != 1:
            raise ValueError(f"send() takes a 1-D uint8 or float32 tensor, got {msg.dtype} {tuple(msg.shape)}")
        with self._timed(kind):
            msg = msg.detach().to("cpu", copy=True)  # the caller may change its tensor as soon as we return
            self._work("copy", msg.numel())
            self._send(peer, msg)
            self.stats.add("control", sent=MAIL_HEADER_BYTES)
            self.stats.add(kind, sent=_nbytes(msg), msgs_sent=1)

    def recv(self, peer: int, kind: str) -> torch.Tensor:
        """The next message `peer` sent to this node (blocks until it is here)."""
        with self._timed(kind):
            msg = self._recv(peer)
            self.stats.add("control", recv=MAIL_HEADER_BYTES)
            self.stats.add(kind, recv=_nbytes(msg), msgs_recv=1)
            return msg

    def recv_any(self, peers: tuple[int, ...], kind: str) -> tuple[int, torch.Tensor]:
        """(sender, message): the first message to arrive from any of `peers` (blocks until one is here), counted as
        `recv` counts it; each sender's messages still arrive in the order sent. For a server that serves whoever
        reports first. Every node that may have a message on its way to this one must be among `peers` (gloo
        receives from any rank)."""
        with self._timed(kind):
            peer, msg = self._recv_any(tuple(peers))
            self.stats.add("control", recv=MAIL_HEADER_BYTES)
            self.stats.add(kind, recv=_nbytes(msg), msgs_recv=1)
            return peer, msg

    def publish(self, t: torch.Tensor, stamp: int = 0) -> None:
        """Make a copy of `t` readable by peers' `read` until the next publish (encoded when first read).

        `stamp` (e.g. the number of steps taken) travels with it so that readers can measure staleness.
        """
        self.model_numel = t.numel()
        self.live_step = max(self.live_step, stamp)  # the live model has taken at least the steps of its copy
        with self._timed("publish"):
            self._publishes += 1
            seed = (self._cell_seed * 1_000_003 + self.rank * 7_919 + self._publishes) % (2**63 - 1)
            # The copy as of the end of its work (the simulator charges the work first), so a node never holds
            # two copies while it waits: nothing changes a publishing node's model during its own copy.
            self._work("copy", t.numel())
            t = t.detach()
            raw = t.clone() if t.is_cpu and t.dtype == torch.float32 else t.to("cpu", dtype=torch.float32, copy=True)
            self._publish(Copy(raw, stamp, seed))

    def blob_of(self, copy: Copy, values: bool = False) -> torch.Tensor:
        """The message a reader of `copy` receives (stamp + encoded model), encoded on first use and kept; with
        `values`, also what it decodes to (`copy.values`: a pull-push deposit is decoded against them)."""
        if copy.blob is None:
            # The copy's own stream for the codec's randomness (none is drawn without quantization).
            gen = torch.Generator().manual_seed(copy.seed) if self.codec.cfg.bits < 32 else None
            copy.blob = torch.cat([stamp_bytes(copy.stamp), self._encode(copy.raw, generator=gen)])
        if values and copy.values is None:
            if copy.raw is None:
                raise RuntimeError(f"rank {self.rank}: copy {copy.stamp} was read plainly before a pull-push read")
            copy.values = self._own_values(copy.blob[STAMP_BYTES:], copy.raw)
        copy.raw = None  # encoded once: the raw values are not needed any more (the simulator's memory)
        return copy.blob

    def set_step(self, step: int) -> None:
        """The training loop tells the comm layer how many steps the live model has taken (after each optimizer
        step): a read's staleness is the owner's live step at read time minus the stamp of the copy read."""
        self.live_step = step

    def read(self, peer: int, kind: str, reference: torch.Tensor) -> tuple[torch.Tensor, int]:
        """One-sided: (the peer's last published model, its stamp); the peer is not interrupted.

        `reference` is this node's own model: it sizes the message and decodes the lattice quantizer.
        """
        with self._timed(kind):
            blob = self._read(peer, STAMP_BYTES + self.codec.wire_bytes(reference.numel()))
            self.stats.add("control", sent=self.request_bytes, msgs_sent=1)
            self.stats.add(kind, recv=blob.numel(), msgs_recv=1)
            stamp = stamp_of(blob)
            return self._decode(blob[STAMP_BYTES:], reference), stamp

    def expose(self, live: torch.Tensor) -> None:
        """Register the node's live model: peers' `average_with` update it in place (under `exclusive`)."""
        with self._model_lock:
            self._live = live
        self.model_numel = live.numel()

    def average_with(self, peer: int, kind: str) -> None:
        """Atomic pairwise average of this node's exposed model with `peer`'s (both move to the average).

        Each side moves by half the difference of the two *decoded* messages, so the sum of all models is
        conserved exactly even with quantization and even if a third node averaged with us meanwhile: a bucket
        that decodes at all decodes to the sender's lattice values whatever the reference, so both sides see the
        same two values and move by exact negations of each other. A lattice bucket that fails to decode on
        either side is skipped by both: we decode the peer's reply against the values our own message decodes
        to, which the peer knows wherever it decoded us, so the peer predicts our failures, skips the union of
        its and ours, and sends that union back as a bitmap (`_lead`, `_follow`). No lock is held across
        nodes: no deadlock.
        """
        with self._timed(kind):
            numel, msg, mine = self._own_message("average_with")
            try:
                reply = self._average_with(peer, msg, msg.numel() + self.codec.bitmap_bytes(numel))
            except PeerLost:  # the peer died (`--on-failure continue`): no average, it is not chosen again
                return
            skip = self.codec.unpack_failures(reply[msg.numel() :], numel)
            move = self._follow(reply[: msg.numel()], mine, skip)
            with self._model_lock:
                self._live.add_(move.to(self._live.device))
            self._work("average", numel)
            self.stats.add("control", sent=HEADER_BYTES, msgs_sent=1)
            self.stats.add(kind, sent=msg.numel(), recv=reply.numel(), msgs_sent=1, msgs_recv=1)

    def _own_message(self, op: str) -> tuple[int, torch.Tensor, torch.Tensor]:
        """The initiator's side of a pairwise average: a copy of the exposed model taken under the model lock,
        encoded: (coordinates, message, the values every receiver decodes it to)."""
        if self._live is None:
            raise RuntimeError(f"{op}() before expose(): expose this node's live model first")
        with self._model_lock:
            snap = self._live.detach().to("cpu", copy=True)
        numel = snap.numel()
        self._work("copy", numel)
        msg = self._encode(snap)
        return numel, msg, self._own_values(msg, snap)

    def pull_push(self, peer: int, kind: str) -> int:
        """The paper's interaction with both endpoints moving, neither waiting for the other: read `peer`'s last
        published copy (one-sided, as `read`), move this node's exposed model to the average, and deposit the
        opposite move with the peer, which folds it in when it next enters `exclusive()` (before its next step).
        Returns the stamp of the copy read.

        The deposit is this node's encoded model, the failure bitmap and the copy's stamp; the peer decodes it
        against the values of the copy read (it keeps them until the deposit arrives: `serve_read(keep=True)`)
        and moves by half the difference outside the skipped buckets, the exact negation of our move (`_lead`,
        `_follow`), so the sum of models is conserved exactly. No lock is held across nodes. Bytes: the read's,
        then a request header (control) and 8 + f + m model bytes sent; the peer counts the mirror image.
        """
        with self._timed(kind):
            numel, msg, mine = self._own_message("pull_push")
            moved: list[torch.Tensor] = []

            def respond(blob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                move, skip = self._lead(blob[STAMP_BYTES:], msg, mine)
                moved.append(move)
                return torch.cat([blob[:STAMP_BYTES], self.codec.pack_failures(skip), msg]), move

            blob = self._pull_push(peer, STAMP_BYTES + msg.numel(), respond)
            self.stats.add("control", sent=self.request_bytes, msgs_sent=1)
            self.stats.add(kind, recv=blob.numel(), msgs_recv=1)
            with self._model_lock:
                self._live.add_(moved[0].to(self._live.device))
            self._work("average", numel)
            stamp = stamp_of(blob)
        return stamp

    def fold_deposits(self) -> None:
        """Fold the pull-push deposits received so far into the exposed model (the caller holds the model lock)."""
        if not self._deposits:
            return
        with self._deposit_lock():
            deposits, self._deposits = self._deposits, []
        numel = self._live.numel()
        m, f = self.codec.wire_bytes(numel), self.codec.bitmap_bytes(numel)
        with self._serving():  # the passive side of peers' pull-pushes
            for stamp, dep in deposits:
                with self._deposit_lock():
                    held = self._held[stamp]
                    held[1] -= 1
                    if held[1] == 0:
                        del self._held[stamp]
                copy = held[0]
                skip = self.codec.unpack_failures(dep[STAMP_BYTES : STAMP_BYTES + f], numel)
                move = self._follow(dep[STAMP_BYTES + f :].clone(), copy.values, skip)
                self._live.add_(move.to(self._live.device))
                self._work("average", numel)
                self.stats.add("control", recv=self.request_bytes, msgs_recv=1)
                self.stats.add("model", recv=STAMP_BYTES + f + m, msgs_recv=1)

    def _received_deposit(self, dep: torch.Tensor) -> None:
        """An engine delivered a peer's pull-push deposit (stamp, bitmap, message): queue it for `fold_deposits`."""
        stamp = stamp_of(dep)
        with self._deposit_lock():
            self._deposits.append((stamp, dep))

    def _deposit_lock(self) -> contextlib.AbstractContextManager:
        """Guards the held copies and received deposits (a responder thread adds to them on real processes)."""
        return contextlib.nullcontext()

    def _await_deposits(self) -> None:
        """At `finish_cell`: return once every read for a deposit has its deposit (engines where it may lag)."""

    def serve_average(self, msg: torch.Tensor, kind: str = "model") -> torch.Tensor:
        """The passive side of `average_with` (called by the engine for a peer's request): returns the reply, our
        encoded model followed by the failure bitmap of the buckets both sides skip."""
        if self._live is None:
            raise RuntimeError(f"rank {self.rank} was asked to average before it exposed its model")
        with self._model_lock, self._serving():
            old = self._live.detach().to("cpu", copy=True)
            self._work("copy", old.numel())
            own = self._encode(old)
            move, skip = self._lead(msg, own, self._own_values(own, old))
            self._live.add_(move.to(self._live.device))
            self._work("average", old.numel())
            reply = torch.cat([own, self.codec.pack_failures(skip)])
        self.stats.add("control", recv=HEADER_BYTES, msgs_recv=1)
        self.stats.add(kind, sent=reply.numel(), recv=msg.numel(), msgs_sent=1, msgs_recv=1)
        return reply

    def serve_read(self, copy: Copy, kind: str = "model", keep: bool = False) -> torch.Tensor:
        """The passive side of a `read` (engines call it when they serve one): the message for `copy`, encoded
        here on its first read (timed as serve_seconds), and counted. `keep`: a pull-push read, whose deposit
        will name the copy by its stamp; the copy's decoded values are kept until that deposit is folded in."""
        with self._serving():
            blob = self.blob_of(copy, values=keep)
        if keep:
            with self._deposit_lock():
                held = self._held.setdefault(copy.stamp, [copy, 0])
                if held[0] is not copy:
                    raise RuntimeError(
                        f"rank {self.rank} published two copies with stamp {copy.stamp}: pull-push names copies by "
                        "their stamps, which must grow from publish to publish"
                    )
                held[1] += 1
        self.stats.add_staleness(self.live_step - copy.stamp)  # the owner knows its live step: no bytes for it
        self.stats.add("control", recv=HEADER_BYTES, msgs_recv=1)
        self.stats.add(kind, sent=blob.numel(), msgs_sent=1)
        return blob

    def barrier(self) -> None:
        with self._timed("control"):
            if self.size > 1:
                self._barrier()
            self.stats.add("control", msgs_sent=int(self.size > 1))

    def fence(self) -> None:
        """The training loop's own synchronization (start and end of a cell): not counted as traffic."""
        if self.size > 1:
            self._barrier()

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Held by the training loop while it computes on or updates the model (passive averages wait). On entry
        the pull-push deposits peers left since the last time are folded into the exposed model."""
        return _Exclusive(self)

    def start_cell(self, codec: Codec | None = None, seed: int = 0) -> None:
        """Fresh counters, the cell's codec, no exposed/published model (between algorithms)."""
        self.stats.reset()
        self.codec = codec or RAW
        self.decode_failures = self.buckets_skipped = 0
        self._gen, self._gen_seed = None, seed * 7_919 + self.rank
        self._cell_seed, self._publishes = seed, 0
        self.live_step = 0
        with self._model_lock:
            self._live = None
        with self._deposit_lock():
            self._held, self._deposits = {}, []

    def state_dict(self) -> dict[str, Any]:
        """The cell's counters, live step and codec stream so far: a checkpoint between two steps."""
        return {
            "stats": self.stats.state(),
            "gen": self._gen.get_state() if self._gen is not None else None,  # None: no quantized encode yet
            "publishes": self._publishes,
            "live_step": self.live_step,
            "failures": (self.decode_failures, self.buckets_skipped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back `state_dict()` after `start_cell`."""
        self.stats.load(state["stats"])
        self._gen = None
        if state["gen"] is not None:
            self._codec_stream().set_state(state["gen"])
        self._publishes = state["publishes"]
        self.live_step = state["live_step"]
        self.decode_failures, self.buckets_skipped = state["failures"]

    def finish_cell(self) -> None:
        """After the end-of-cell fence: engines that learn late what they served count it here, and the last
        pull-push deposits are folded in (every read for a deposit has its deposit by now: `_await_deposits`)."""
        if self._held:
            self._await_deposits()
        with self._model_lock:
            self.fold_deposits()

    def close(self) -> None:
        """Release engine resources once all nodes stop issuing requests."""

    # ---- codec ------------------------------------------------------------------------------------
    def _encode(self, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        t = t.detach()
        self._work("encode", t.numel())
        if self.codec.cfg.bits == 32:  # the float32 bytes themselves (no generator: `blob_of`)
            return (t.clone() if t.is_cpu else t.to("cpu")).view(torch.uint8)
        return self.codec.encode(t.to("cpu", dtype=torch.float32), generator=generator or self._codec_stream())

    def _codec_stream(self) -> torch.Generator:
        """This node's stream for the codec's randomness, made on first use (a node that never encodes with a
        quantizer saves its state: thousands of them in the simulator)."""
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self._gen_seed)
        return self._gen

    def _decode(self, msg: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return self._decode_buckets(msg, reference)[0].to(reference.device)

    def _decode_buckets(self, msg: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A peer's message decoded on the CPU against `reference`: (values, failed buckets); failures counted."""
        self._work("decode", reference.numel())
        ref = reference.detach().to("cpu", torch.float32) if self.codec.can_fail else None  # only lattice needs it
        values, failed = self.codec.decode_buckets(msg, reference.numel(), ref)
        if self.codec.can_fail:
            self.decode_failures += int(failed.sum())
        return values, failed

    # ---- the pairwise average, both sides ---------------------------------------------------------
    def _own_values(self, msg: torch.Tensor, snap: torch.Tensor) -> torch.Tensor:
        """The values every receiver of `msg` (our encoding of `snap`) decodes it to, wherever it decodes.

        A message always decodes against the model it encodes (|x - k*eps| < eps, far inside every radius), so
        a failure here is a bug, not a far peer: raise instead of averaging with values nobody else has.
        """
        if self.codec is RAW:
            return snap
        self._work("decode", snap.numel())
        values, failed = self.codec.decode_buckets(msg, snap.numel(), snap)
        if bool(failed.any()):
            raise RuntimeError(f"rank {self.rank}: {int(failed.sum())} buckets of its own message failed to decode")
        return values

    def _lead(self, msg: torch.Tensor, own_msg: torch.Tensor, own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The side of an average that decides which buckets both sides skip: (our move, skipped buckets).

        `msg` is the peer's message, `own_msg` ours and `own` the values it decodes to. The peer will decode
        `own_msg` against the values of its own message, which we hold exactly wherever we decoded it; in the
        buckets where we did not, we skip anyway. So decoding `own_msg` against what we decoded predicts the
        peer's failures bucket for bucket (`Codec.decode_buckets` is exact and per bucket), and the union with
        ours is what both sides skip.
        """
        theirs, failed = self._decode_buckets(msg, own)
        skip = failed
        if self.codec.can_fail:
            self._work("decode", own.numel())  # predicting the peer's decode of our message
            skip = failed | self.codec.decode_buckets(own_msg, own.numel(), theirs)[1]
        return self._half_difference(theirs, own, skip), skip

    def _follow(self, msg: torch.Tensor, own: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """The other side: our move for the peer's `msg` (decoded against `own`) outside the buckets it skipped."""
        theirs, failed = self._decode_buckets(msg, own)
        if bool((failed & ~skip).any()):
            raise RuntimeError(
                f"rank {self.rank}: a peer's message failed to decode in buckets the peer did not predict; "
                "both sides must run the same codec on the same bytes"
            )
        return self._half_difference(theirs, own, skip)

    def _half_difference(self, theirs: torch.Tensor, own: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(theirs - own) / 2, zero in the skipped buckets. The two sides of an average compute it with the
        roles swapped on the same two float32 vectors, and fl(a - b) = -fl(b - a): exact negations."""
        move = theirs.sub_(own).mul_(0.5)
        skipped = int(skip.sum())
        if skipped:
            move[self.codec.coordinates(skip, move.numel())] = 0.0
        self.buckets_skipped += skipped
        return move

    def _work(self, op: str, numel: int) -> None:
        """The comm layer just did CPU work on `numel` coordinates: "copy", "average" (the pairwise-average
        arithmetic), "encode" or "decode" with the cell's codec. Real engines: their clocks already measured it.
        The simulator charges it (`SimComm`): to the node's clock, or to its service when `_service` is set."""

    # ---- engine hooks: move bytes -----------------------------------------------------------------
    def _allreduce_sum(self, t: torch.Tensor) -> None:
        raise NotImplementedError

    def _allreduce_sum_async(self, t: torch.Tensor) -> Work:
        """Start an in-place sum over all nodes; the returned work's `wait()` returns once `t` holds it."""
        raise NotImplementedError

    def _neighbor_exchange(self, msg: torch.Tensor, peers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        raise NotImplementedError

    def _send(self, peer: int, msg: torch.Tensor) -> None:
        """Deliver `msg` (a private CPU copy) to `peer`'s mailbox; return without waiting for it to be received."""
        raise NotImplementedError

    def _recv(self, peer: int) -> torch.Tensor:
        """The oldest message from `peer` not received yet (blocks until one is there)."""
        raise NotImplementedError

    def _recv_any(self, peers: tuple[int, ...]) -> tuple[int, torch.Tensor]:
        """(sender, its oldest message not received yet) for the first of `peers` whose message is here."""
        raise NotImplementedError

    def _publish(self, copy: Copy) -> None:
        raise NotImplementedError

    def _read(self, peer: int, nbytes: int) -> torch.Tensor:
        raise NotImplementedError

    def _average_with(self, peer: int, msg: torch.Tensor, reply_bytes: int) -> torch.Tensor:
        """Deliver `msg` to `peer`, have it run `serve_average`, return its reply (`reply_bytes` long)."""
        raise NotImplementedError

    def _pull_push(self, peer: int, nbytes: int, respond) -> torch.Tensor:
        """Read `peer`'s copy for a deposit (`nbytes`: stamp + message), call `respond(blob)` -> (deposit, our
        move), deliver the deposit to `peer` and count it; return the blob (`pull_push` counts the read)."""
        raise NotImplementedError

    def _count_deposit(self, deposit: torch.Tensor) -> None:
        self.stats.add("control", sent=self.request_bytes, msgs_sent=1)
        self.stats.add("model", sent=deposit.numel(), msgs_sent=1)

    def _barrier(self) -> None:
        raise NotImplementedError

    def _timed(self, kind: str) -> _Timed:
        return _Timed(self, kind)

    @contextlib.contextmanager
    def _serving(self):
        """Times work done for a peer (serve_seconds). In the simulator the node's clock does not move here, so
        this adds 0: `_work` collects the modelled cost and the cluster charges it (`SimComm.take_service`)."""
        start = self._now()
        self._service += 1
        try:
            yield
        finally:
            self._service -= 1
            self.stats.add_serve(self._now() - start)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _Deferred:
    """A collective's work and future at once, run when its result is first asked for (`wait`, `value`, or a
    callback of `then` that asks): the hook's chain then runs in plain Python frames, where the simulator may
    switch nodes (inside a torch `Future` callback, C++ frames would be on the stack)."""

    def __init__(self, run: Callable[[], Any]) -> None:
        self._run: Callable[[], Any] | None = run
        self._value: Any = None
        self._error: BaseException | None = None

    def value(self) -> Any:
        if self._run is not None:
            run, self._run = self._run, None
            try:
                self._value = run()
            except BaseException as exc:  # as a torch Future: every later wait raises it again
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._value

    def wait(self, timeout=None) -> Any:
        return self.value()

    def get_future(self) -> _Deferred:
        return self

    def then(self, callback: Callable[[_Deferred], Any]) -> _Deferred:
        return _Deferred(lambda: callback(self._forced()))

    def _forced(self) -> _Deferred:
        self.value()
        return self


def _comm_group(comm: Comm, kind: str):
    """`Comm.process_group`: a Python `torch.distributed.ProcessGroup` (as torch's own tests subclass it) whose
    `allreduce` is `comm.allreduce_sum`, deferred (`_Deferred`); the class is built on first use."""
    global _COMM_GROUP
    if _COMM_GROUP is None:
        import torch.distributed as dist

        class CommGroup(dist.ProcessGroup):
            def __init__(self, comm: Comm, kind: str) -> None:
                super().__init__(comm.rank, comm.size)
                self._comm, self._kind = comm, kind

            def size(self) -> int:
                return self._comm.size

            def rank(self) -> int:
                return self._comm.rank

            def getBackendName(self) -> str:
                return "swarmbench-comm"

            def allreduce(self, tensors: list[torch.Tensor], opts=None) -> _Deferred:
                if opts is not None and opts.reduceOp != dist.ReduceOp.SUM:
                    raise NotImplementedError(f"Comm.process_group allreduces sums only, not {opts.reduceOp}")

                def run() -> list[torch.Tensor]:
                    for t in tensors:
                        self._comm.allreduce_sum(t, self._kind)
                    return tensors

                return _Deferred(run)

        _COMM_GROUP = CommGroup
    return _COMM_GROUP(comm, kind)


_COMM_GROUP: Any = None


class Work(Protocol):
    """An engine's collective in flight (torch.distributed's `Work`, a Horovod handle, a simulated bucket)."""

    def wait(self) -> object: ...


class Pending:
    """An allreduce in flight (`Comm.allreduce_mean_async`). `wait()` blocks until `t` holds the mean over all
    nodes (timed under the allreduce's kind); waiting again returns at once."""

    __slots__ = ("_comm", "_t", "_kind", "_work", "done")

    def __init__(self, comm: Comm, t: torch.Tensor, kind: str, work: Work | None) -> None:
        self._comm, self._t, self._kind, self._work = comm, t, kind, work
        self.done = False

    def wait(self) -> None:
        if self.done:
            return
        comm = self._comm
        if self._work is not None:
            with comm._timed(self._kind):
                self._work.wait()
        if comm.size > 1:
            self._t.div_(comm.size)
        self.done = True


def _hvd_name(t: torch.Tensor) -> str:
    """A Horovod operation's name from what Horovod's response cache checks of it: dtype and size."""
    return f"swarmbench.allreduce.{str(t.dtype).removeprefix('torch.')}.{t.numel()}"


class _HorovodWork:
    """A Horovod allreduce handle as a `Work`: `hvd.synchronize` waits for it (in place: `allreduce_async_`)."""

    __slots__ = ("_comm", "_handle")

    def __init__(self, comm: TorchComm, handle) -> None:
        self._comm, self._handle = comm, handle

    def wait(self) -> None:
        self._comm._hvd.synchronize(self._handle)
        self._comm._hvd_open -= 1


# Request opcodes served by the responder thread.
_READ, _AVERAGE, _STOP, _DEPOSIT = 1, 2, 3, 4


def exit_on_responder_error(exc: BaseException, rank: int) -> None:
    """Default for a failed responder thread: say why and end this process now, so peers see it die instead of
    waiting forever for a reply (a worker passes a handler that also reports the error to the launcher)."""
    traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(f"rank {rank}: responder thread failed: {exc!r}", file=sys.stderr, flush=True)
    os._exit(1)


ResponderErrorHandler = Callable[[BaseException, int], None]


class TorchComm(Comm):
    """`Comm` over torch.distributed on real processes ("p2p" transport for one-sided operations).

    Collectives run on the default process group. One-sided operations are served by a responder thread
    per process on two extra gloo groups (requests in, replies out), so a peer's `read` is answered while
    this node's training thread keeps computing. Gloo runs on CPU, so messages live on the CPU.
    """

    transport = "p2p"

    def __init__(
        self,
        rank: int,
        size: int,
        topology: Topology,
        timeout_s: float,
        *,
        responder: bool = True,
        on_responder_error: ResponderErrorHandler = exit_on_responder_error,
        now: Callable[[], float] = time.perf_counter,
        dead_dir: str | None = None,
    ) -> None:
        super().__init__(rank, size, topology, now)
        import torch.distributed as dist

        # `--on-failure continue`: the launch marks a rank that died in `dead_dir` (a file named by its rank). A
        # pairwise exchange with a dead peer is skipped and the peer dropped from `neighbors()`; fences meet through
        # files there among the ranks alive, and collectives run among them (`_survivors_allreduce`).
        self._dead_dir = Path(dead_dir) if dead_dir else None
        self._dead: set[int] = set()
        self._alive = self._everyone
        self._fences = 0
        self._dist = dist
        self._on_responder_error = on_responder_error
        self._hvd = None  # horovod.torch when --allreduce-impl horovod
        self._model_lock = threading.Lock()
        self._pub_lock = threading.Lock()
        self._dep_lock = threading.Lock()  # held copies and received deposits (`Comm.pull_push`)
        self._timeout_s = timeout_s
        self._published: Copy | None = None
        self._responder: threading.Thread | None = None
        # Under nccl the default group only takes CUDA tensors; CPU tensors (encoded messages, evaluation
        # counters) go through a gloo group instead (host staging).
        self._cpu_group = None
        if size > 1 and dist.get_backend() != "gloo":
            self._cpu_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        if size > 1 and responder:
            timeout = timedelta(seconds=timeout_s)
            # Every rank creates both groups in the same order (a torch.distributed requirement).
            self._req = dist.new_group(backend="gloo", timeout=timeout)
            self._rep = dist.new_group(backend="gloo", timeout=timeout)
            self._responder = threading.Thread(target=self._serve, name=f"responder-{rank}", daemon=True)
            self._responder.start()
        # The mailbox (`send`/`recv`): its own gloo group, so its point-to-point messages never pair with a
        # neighbour exchange's on the default group; gloo delivers the messages of one pair in the order sent.
        self._mail_group = None
        self._sending: list[tuple[object, torch.Tensor]] = []  # sends in flight: (work, tensor it must keep alive)
        if size > 1:
            self._mail_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self._survivors_group = None  # the survivors' collectives: point-to-point on a group of their own
        if size > 1 and self._dead_dir is not None:
            self._survivors_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))

    # ---- failures (`--on-failure continue`) ---------------------------------------------------------
    def neighbors(self) -> tuple[int, ...]:
        peers = super().neighbors()
        if self._dead_dir is None:
            return peers
        self._dead |= self._marked_dead()
        return tuple(p for p in peers if p not in self._dead)

    def alive(self) -> tuple[int, ...]:
        """The ranks that met at the last fence: every survivor agrees on them."""
        return self._alive

    def _marked_dead(self) -> set[int]:
        if self._dead_dir is None or not self._dead_dir.is_dir():
            return set()
        return {int(p.name) for p in self._dead_dir.iterdir() if p.name.isdigit()}

    def _lost(self, peer: int, exc: BaseException) -> None:
        """A pairwise exchange with `peer` failed: when it died (`--on-failure continue`) it is dropped, else the
        error stands."""
        if self._dead_dir is None or not lost_a_peer(str(exc)):
            raise exc
        self._dead.add(peer)
        raise PeerLost(peer) from exc

    def _survivors_fence(self) -> None:
        """Every rank alive meets here: each marks its arrival with a file, and waits until every other rank has
        arrived or the launch has marked it dead. The ranks that arrived are then `alive()` for all of them."""
        assert self._dead_dir is not None
        folder = self._dead_dir.parent / f"fence-{self._fences}"
        self._fences += 1
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(self.rank)).touch()
        deadline = time.monotonic() + self._timeout_s
        while True:
            arrived = {int(p.name) for p in folder.iterdir() if p.name.isdigit()}
            dead = self._marked_dead()
            if all(r in arrived or r in dead for r in range(self.size)):
                break
            if time.monotonic() > deadline:
                missing = sorted(set(range(self.size)) - arrived - dead)
                wait = f"{self._timeout_s:g} s waiting for {missing}"
                raise RuntimeError(f"rank {self.rank}: fence timed out after {wait}")
            time.sleep(DEAD_POLL_S)
        self._alive = tuple(sorted(arrived))
        self._dead |= set(range(self.size)) - arrived

    def _survivors_allreduce(self, t: torch.Tensor) -> None:
        """Sum over the ranks alive, point to point: the first gathers every other one's tensor, adds them in rank
        order and sends the sum back."""
        dist, group, alive = self._dist, self._survivors_group, self._alive
        if self.rank != alive[0]:
            dist.send(t, dst=alive[0], group=group)
            dist.recv(t, src=alive[0], group=group)
            return
        parts = [t.clone()]
        for r in alive[1:]:
            part = torch.empty_like(t)
            dist.recv(part, src=r, group=group)
            parts.append(part)
        total = parts[0]
        for part in parts[1:]:
            total.add_(part)
        t.copy_(total)
        for r in alive[1:]:
            dist.send(t, dst=r, group=group)

    @property
    def degraded(self) -> bool:
        """Whether ranks have died (`--on-failure continue`): collectives then run among the survivors."""
        return len(self._alive) < self.size

    def start_cell(self, codec: Codec | None = None, seed: int = 0) -> None:
        super().start_cell(codec, seed)
        with self._pub_lock:
            self._published = None

    # ---- collectives -------------------------------------------------------------------------------
    def use_horovod_allreduce(self) -> None:
        """Run allreduces through Horovod (`--allreduce-impl horovod`); bytes are counted with the same ring
        formula (Horovod's ring allreduce moves 2(n-1)/n of the message per node)."""
        import horovod.torch as hvd

        hvd.init()
        if (hvd.rank(), hvd.size()) != (self.rank, self.size):
            raise RuntimeError(
                f"Horovod sees rank {hvd.rank()} of {hvd.size()}, torch.distributed {self.rank} of {self.size}: "
                "start the workers with horovodrun or mpirun for --allreduce-impl horovod"
            )
        self._hvd = hvd
        self._hvd_open = 0  # asynchronous allreduces started and not yet waited for
        self._hvd_slot = 0  # the next one's place among those in flight together

    def _group_for(self, t: torch.Tensor):
        return self._cpu_group if t.device.type == "cpu" else None

    def _allreduce_sum(self, t: torch.Tensor) -> None:
        if self._hvd is not None:
            # Every rank issues the same sequence of allreduces, so names made of dtype and size agree. The same name at
            # every step (as Horovod's DistributedOptimizer names each parameter) lets Horovod's response cache
            # skip the coordinator's negotiation: a fresh name per call cost about twice the time here.
            self._hvd.allreduce_(t, op=self._hvd.Sum, name=_hvd_name(t))
            return
        if self.degraded:
            self._survivors_allreduce(t)
            return
        self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM, group=self._group_for(t))

    def _allreduce_sum_async(self, t: torch.Tensor) -> Work:
        if self._hvd is not None:
            # Names must differ among the operations in flight together: add the place among them (bucket k of
            # a step is the k-th in flight at every step, so its name is stable too).
            if self._hvd_open == 0:
                self._hvd_slot = 0
            name = f"{_hvd_name(t)}.{self._hvd_slot}"
            self._hvd_slot += 1
            self._hvd_open += 1
            return _HorovodWork(self, self._hvd.allreduce_async_(t, op=self._hvd.Sum, name=name))
        return self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM, group=self._group_for(t), async_op=True)

    def _neighbor_exchange(self, msg: torch.Tensor, peers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        out = {p: torch.empty_like(msg) for p in peers}
        group = self._group_for(msg)
        works = [self._dist.isend(msg, dst=p, group=group) for p in peers]
        works += [self._dist.irecv(out[p], src=p, group=group) for p in peers]
        for w in works:
            w.wait()
        return out

    def _barrier(self) -> None:
        if self._dead_dir is not None:
            self._survivors_fence()
            return
        self._dist.barrier()

    # ---- the mailbox ----------------------------------------------------------------------------------
    def _send(self, peer: int, msg: torch.Tensor) -> None:
        header = torch.tensor([msg.numel(), MAIL_DTYPES.index(msg.dtype)], dtype=torch.int64)
        group = self._mail_group
        for t in (header, msg):
            self._sending.append((self._dist.isend(t, dst=peer, group=group), t))
        self._sending = [(w, t) for w, t in self._sending if not w.is_completed()]

    def _recv(self, peer: int) -> torch.Tensor:
        header = torch.empty(2, dtype=torch.int64)
        self._dist.recv(header, src=peer, group=self._mail_group)
        numel, code = header.tolist()
        msg = torch.empty(numel, dtype=MAIL_DTYPES[code])
        self._dist.recv(msg, src=peer, group=self._mail_group)
        return msg

    def _recv_any(self, peers: tuple[int, ...]) -> tuple[int, torch.Tensor]:
        # Every sender sends a header and then its payload, and the payload is received right after its header:
        # whatever a sender has pending here starts with a header, so an any-source receive takes a header.
        header = torch.empty(2, dtype=torch.int64)
        peer = self._dist.recv(header, src=None, group=self._mail_group)
        if peer not in peers:
            raise RuntimeError(f"rank {self.rank} received a message from rank {peer}, not one of {list(peers)}")
        numel, code = header.tolist()
        msg = torch.empty(numel, dtype=MAIL_DTYPES[code])
        self._dist.recv(msg, src=peer, group=self._mail_group)
        return peer, msg

    def _flush_sends(self) -> None:
        """Wait for the sends still in flight (their receivers received them before the end-of-cell fence)."""
        for work, _ in self._sending:
            work.wait()
        self._sending = []

    def finish_cell(self) -> None:
        self._flush_sends()
        super().finish_cell()

    # ---- one-sided, initiator side ---------------------------------------------------------------
    def _publish(self, copy: Copy) -> None:
        with self._pub_lock:  # the responder encodes the copy when a read arrives (`serve_read`)
            self._published = copy

    def _request(self, op: int, peer: int, nbytes: int, flag: int = 0) -> None:
        header = torch.tensor([op, self.rank, nbytes, flag], dtype=torch.int64)
        self._dist.send(header, dst=peer, group=self._req)

    def _read(self, peer: int, nbytes: int, keep: bool = False) -> torch.Tensor:
        out = torch.empty(nbytes, dtype=torch.uint8)
        self._request(_READ, peer, nbytes, int(keep))
        self._dist.recv(out, src=peer, group=self._rep)
        return out

    def _pull_push(self, peer: int, nbytes: int, respond) -> torch.Tensor:
        blob = self._read(peer, nbytes, keep=True)
        deposit, _ = respond(blob)
        self._request(_DEPOSIT, peer, deposit.numel())
        self._dist.send(deposit, dst=peer, group=self._req)
        self._count_deposit(deposit)
        return blob

    def _deposit_lock(self) -> contextlib.AbstractContextManager:
        return self._dep_lock

    def _await_deposits(self) -> None:
        # After the last fence every deposit has been sent; our responder may still be receiving the last ones.
        deadline = time.monotonic() + self._timeout_s
        while True:
            with self._dep_lock:
                if sum(n for _, n in self._held.values()) <= len(self._deposits):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {self.rank}: pull-push deposits still missing after {self._timeout_s:g} s")
            time.sleep(0.001)

    def _average_with(self, peer: int, msg: torch.Tensor, reply_bytes: int) -> torch.Tensor:
        try:
            self._request(_AVERAGE, peer, msg.numel())
            self._dist.send(msg, dst=peer, group=self._req)
            reply = torch.empty(reply_bytes, dtype=torch.uint8)
            self._dist.recv(reply, src=peer, group=self._rep)
        except RuntimeError as exc:
            self._lost(peer, exc)
        return reply

    # ---- one-sided, responder side ---------------------------------------------------------------
    def _serve(self) -> None:
        dist = self._dist
        header = torch.empty(4, dtype=torch.int64)
        try:
            while True:
                try:
                    src = dist.recv(header, src=None, group=self._req)
                except RuntimeError as exc:
                    if self._dead_dir is None or not lost_a_peer(str(exc)):
                        raise
                    continue  # a requester died before its request was whole (`--on-failure continue`)
                op, requester, nbytes, flag = header.tolist()
                if op == _STOP:
                    return
                try:
                    self._serve_one(op, src, requester, nbytes, flag)
                except RuntimeError as exc:
                    if self._dead_dir is None or not lost_a_peer(str(exc)):
                        raise
                    self._dead.add(src)  # it died while we served it: nothing to answer
        except BaseException as exc:  # the handler ends the process, so no peer waits forever for a reply
            self._on_responder_error(exc, self.rank)

    def _serve_one(self, op: int, src: int, requester: int, nbytes: int, flag: int) -> None:
        """One request of a peer (the responder thread)."""
        dist = self._dist
        if op == _READ:
            with self._pub_lock:
                copy = self._published
            if copy is None:
                raise RuntimeError(f"rank {requester} read from rank {self.rank}, which published nothing")
            # Count first: the reader may read our counters once it has the reply.
            blob = self.serve_read(copy, keep=bool(flag))
            if blob.numel() != nbytes:
                raise RuntimeError(
                    f"rank {requester} read {nbytes} bytes from rank {self.rank}, which published {blob.numel()}"
                )
            dist.send(blob, dst=src, group=self._rep)
        elif op == _AVERAGE:
            incoming = torch.empty(nbytes, dtype=torch.uint8)
            dist.recv(incoming, src=src, group=self._req)
            dist.send(self.serve_average(incoming), dst=src, group=self._rep)
        elif op == _DEPOSIT:
            incoming = torch.empty(nbytes, dtype=torch.uint8)
            dist.recv(incoming, src=src, group=self._req)
            self._received_deposit(incoming)
        else:
            raise RuntimeError(f"unknown request opcode {op} from rank {requester}")

    def close(self) -> None:
        """After a barrier (no request is in flight any more) stop our successor's responder, join ours."""
        if self._responder is None:
            return
        self._barrier()
        alive = self._alive  # after a failure, the next rank alive (every survivor agrees on them since the fence)
        self._request(_STOP, alive[(alive.index(self.rank) + 1) % len(alive)], 0)
        self._responder.join()
        self._responder = None


@dataclass
class _Kept:
    """A model message an RMA node wrote into its window, kept while a peer's deposit may still name it."""

    msg: torch.Tensor  # the encoded model, without the stamp
    raw: torch.Tensor | None  # the model it encodes (its decode reference), dropped once decoded
    values: torch.Tensor | None = None  # what every receiver decodes `msg` to (`Comm._own_values`)


class RmaComm(TorchComm):
    """`Comm` whose one-sided operations use MPI RMA windows (mpi4py), passive target ("rma" transport).

    Collectives and the mailbox (`send`/`recv`, directed messages: TorchComm's gloo point-to-point group) still
    run on torch.distributed; only the one-sided operations use MPI. Each node exposes a model window laid out as
    [reads served: int64 | version: int64 | live step: int64 | stamp: int64 | model message] and, for atomic
    averages, an inbox window [deposits: int64 | INBOX_SLOTS slots of (version: int64 | failure bitmap | message),
    each padded to a multiple of 8 bytes | float32 delta, one per coordinate]. A `read` is Lock(peer, shared) /
    Get / Unlock: the peer's process is not involved at all (Open MPI progresses passive-target RMA on one host
    without the target calling MPI).

    `average_with` takes an exclusive lock on the partner's model window (as the SwarmSGD authors' code did) and
    Gets the message there and its version number: the partner encodes its live model into the window at the
    end of every `exclusive()` (and at `expose`), under that lock, numbering each write. The initiator decodes
    it against the values its own message decodes to, predicts in which buckets the partner will fail to decode
    the initiator's message (as the p2p partner does: `Comm._lead`), and moves by half the difference outside
    the union of both failure sets. Before unlocking the partner's window it deposits its own *encoded* message,
    that union as a bitmap and the version it read in a slot of the partner's inbox (the slot is the old value of
    the deposit counter, taken with Fetch_and_op under an exclusive lock of the inbox). The partner drains its
    inbox when it next enters `exclusive()` (and at `finish_cell`, after the last fence): it decodes each deposit
    against the values of the version named and moves by half the difference outside the bitmap, the exact
    negation of the initiator's move, so the sum of models is conserved exactly. A deposit can only name a
    version written since the partner's previous drain (holding the window lock from Get to deposit keeps the
    partner from writing a newer one in between), so those are all the partner keeps. No initiator ever waits
    for a partner: when all slots are taken (the partner stopped draining: it is evaluating, or finished
    training and waits at the last fence), the initiator accumulates its exact float32 move, negated, into the
    delta area instead (MPI_SUM), which the partner adds at its drain; `inbox_full` counts those. Unquantized
    averages (bits=32) always take that path (no slots): the float32 move is then the message. Locks are always
    taken model window first, inbox second, and an owner holds its own inbox lock only to copy it: no deadlock.

    `pull_push` (SwarmSGD's pull-push mode) reads under a *shared* lock of the partner's window instead (readers
    do not exclude each other), Gets the version with the copy, and deposits as above before unlocking: the
    partner's next write into its window waits for that unlock, so the same two rules hold. The partner
    publishes its copies itself then (`publish`), and its window is no longer rewritten at every `exclusive()`.

    Byte accounting, with m = `Codec.wire_bytes`, f = `Codec.bitmap_bytes` and n coordinates. A read costs the
    reader an 8-byte increment of the owner's served-reads counter (control), the owner's 8-byte live step
    counter (control, which the owner writes after every step: `set_step`) and 8 + m bytes back (stamp,
    message); the reader computes the read's staleness (live step - stamp); the owner learns from its counter
    how many reads it served and counts the mirror image. A pull-push is a read, the 8-byte version (control)
    and a deposit as an average's. An average costs the initiator 8 control bytes each way (the deposit counter's
    Fetch_and_op: the increment, the old value back), 8 + m model bytes received (version, message) and
    8 + f + m model bytes sent (version, bitmap, message), or 4n instead when the partner's slots were full or
    bits=32; the partner counts the mirror image as it drains each deposit. A quantized average thus moves
    2m + 16 + f model bytes, where a float32 delta would move m + 8 + 4n.
    """

    transport = "rma"
    request_bytes = 8  # the reader's increment of the owner's served-reads counter
    INBOX_SLOTS = 4  # quantized deposits an inbox holds between two drains; averages beyond go as float32

    _VERSION = 8  # offset of the version number of the message in the model window
    _LIVE = 16  # offset of the owner's live step counter
    _COUNTERS = 24  # reads served, version, live step (int64 each), then the stamp and the message

    def __init__(
        self, rank: int, size: int, topology: Topology, timeout_s: float, now: Callable[[], float] = time.perf_counter
    ) -> None:
        super().__init__(rank, size, topology, timeout_s, responder=False, now=now)
        from mpi4py import MPI

        self._MPI = MPI
        self._mpi = MPI.COMM_WORLD
        if self._mpi.Get_rank() != rank or self._mpi.Get_size() != size:
            raise RuntimeError(
                f"MPI rank/size {self._mpi.Get_rank()}/{self._mpi.Get_size()} differ from {rank}/{size}: "
                "the rma transport needs the job started by mpirun with one rank per node"
            )
        self._win = None  # the model window
        self._inbox = None  # peers' deposits from their atomic averages
        self._buf = None  # numpy views of our own windows
        self._inbox_buf = None
        self._reset_inbox_state()

    def _reset_inbox_state(self) -> None:
        self._slots = self._slot_bytes = self._delta_at = 0  # inbox layout (set when the model is exposed)
        self._version = 0  # number of the last message written into our window
        self._kept: dict[int, _Kept] = {}  # version -> message, for the deposits that may still name it
        self._averages_served = 0
        self._publishing = False  # the algorithm publishes copies itself (pull-push): no republish per section
        self.inbox_full = 0  # averages initiated here whose partner had no free slot (sent as float32)

    def start_cell(self, codec: Codec | None = None, seed: int = 0) -> None:
        self._free_windows()
        super().start_cell(codec, seed)
        self._reset_inbox_state()

    def _free_windows(self) -> None:
        # Collective: every rank calls it at the same point (start of a cell, close).
        for win in (self._win, self._inbox):
            if win is not None:
                win.Free()
        self._win = self._inbox = self._buf = self._inbox_buf = None

    def _allocate(self, nbytes: int, numel_live: int | None) -> None:
        import numpy as np

        MPI = self._MPI
        self._win = MPI.Win.Allocate(self._COUNTERS + nbytes, disp_unit=1, comm=self._mpi)
        self._buf = np.frombuffer(self._win.tomemory(), dtype=np.uint8)
        self._buf[:] = 0
        if numel_live is not None:
            self._slots = 0 if self.codec is RAW else self.INBOX_SLOTS
            deposit = 8 + self.codec.bitmap_bytes(numel_live) + self.codec.wire_bytes(numel_live)
            self._slot_bytes = -(-deposit // 8) * 8
            self._delta_at = 8 + self._slots * self._slot_bytes
            self._inbox = MPI.Win.Allocate(self._delta_at + 4 * numel_live, disp_unit=1, comm=self._mpi)
            self._inbox_buf = np.frombuffer(self._inbox.tomemory(), dtype=np.uint8)
            self._inbox_buf[:] = 0
        self._mpi.Barrier()  # windows zeroed everywhere before anyone reads

    # ---- owner side --------------------------------------------------------------------------------
    def _publish(self, copy: Copy) -> None:
        # A passive-target read takes whatever lies in the window: encode now, at every publish (see the module doc).
        raw = copy.raw
        blob = self.blob_of(copy)
        self._publishing = True
        if self._win is None:  # first publish of the cell: every rank gets here in the same order
            self._allocate(blob.numel(), None)
        self._write_live_step()  # publish may have raised it to the stamp
        self._write_own(blob, raw)

    def set_step(self, step: int) -> None:
        super().set_step(step)
        if self._win is not None:
            self._write_live_step()

    def _write_live_step(self) -> None:
        import numpy as np

        MPI = self._MPI
        self._win.Lock(self.rank, MPI.LOCK_EXCLUSIVE)
        self._buf[self._LIVE : self._COUNTERS] = np.frombuffer(np.int64(self.live_step).tobytes(), dtype=np.uint8)
        self._win.Unlock(self.rank)

    def _write_own(self, blob: torch.Tensor, raw: torch.Tensor | None) -> None:
        """Put `blob` (stamp + message of `raw`) in our window under a new version number; keep it for deposits."""
        import numpy as np

        MPI = self._MPI
        self._version += 1
        self._win.Lock(self.rank, MPI.LOCK_EXCLUSIVE)
        self._buf[self._VERSION : self._LIVE] = np.frombuffer(np.int64(self._version).tobytes(), dtype=np.uint8)
        self._buf[self._COUNTERS :] = blob.numpy()
        self._win.Unlock(self.rank)
        if self._slots and raw is not None:
            self._kept[self._version] = _Kept(blob[STAMP_BYTES:], raw)

    def expose(self, live: torch.Tensor) -> None:
        super().expose(live)
        nbytes = STAMP_BYTES + self.codec.wire_bytes(live.numel())
        self._allocate(nbytes, live.numel())
        self._republish()

    def _republish(self) -> None:
        with self._serving():  # the window copy exists only for peers' averages
            stamp = stamp_bytes(0)
            # Quantized: a copy, the reference that decodes the message when a deposit names it.
            snap = self._live.detach().to("cpu", copy=True) if self._slots else self._live
            self._write_own(torch.cat([stamp, self._encode(snap)]), snap)

    @contextlib.contextmanager
    def exclusive(self):
        with self._model_lock:
            if self._inbox is not None and self._live is not None:
                self._drain_inbox()
            yield
            if self._inbox is not None and self._live is not None and not self._publishing:
                self._republish()

    def _values_of(self, version: int) -> torch.Tensor:
        kept = self._kept.get(version)
        if kept is None:
            raise RuntimeError(
                f"rank {self.rank}: a peer's average names message version {version}, which is no longer kept "
                f"(kept: {sorted(self._kept)})"
            )
        if kept.values is None:
            assert kept.raw is not None
            kept.values, kept.raw = self._own_values(kept.msg, kept.raw), None
        return kept.values

    def _drain_inbox(self) -> None:
        """Fold in the averages peers deposited since the last drain (the caller holds the model lock)."""
        import numpy as np

        MPI = self._MPI
        buf, width = self._inbox_buf, self._slot_bytes
        with self._serving():  # folding in what peers' averages gave us: the owner's side of their averages
            self._inbox.Lock(self.rank, MPI.LOCK_EXCLUSIVE)
            count = int(buf[:8].view(np.int64)[0])
            slotted = min(count, self._slots)
            deposits = [buf[8 + i * width : 8 + (i + 1) * width].copy() for i in range(slotted)]
            delta = None
            if count > slotted:
                area = buf[self._delta_at :].view(np.float32)
                delta = torch.from_numpy(area.copy())
                area[:] = 0
            buf[:8] = 0
            self._inbox.Unlock(self.rank)
            n = self._live.numel()
            m, f = self.codec.wire_bytes(n), self.codec.bitmap_bytes(n)
            for dep in deposits:
                skip = self.codec.unpack_failures(torch.from_numpy(dep[8 : 8 + f]), n)
                msg = torch.from_numpy(dep[8 + f : 8 + f + m].copy())  # aligned for the codec's header view
                move = self._follow(msg, self._values_of(int(dep[:8].view(np.int64)[0])), skip)
                self._live.add_(move.to(self._live.device))
            if delta is not None:
                self._live.add_(delta.to(self._live.device))
            if count:
                self._averages_served += count
                # The deposit counter's old value out, its increment in; a pull-push reader also Got our version.
                self.stats.add("control", sent=(16 if self._publishing else 8) * count, recv=8 * count, msgs_recv=count)
                recv = (8 + f + m) * slotted + 4 * n * (count - slotted)
                # average_with Gets our message outside the reads counter: its bytes are counted here. A pull-push
                # read increments the counter, so `finish_cell` counts it with the other reads.
                sent, msgs = (0, 0) if self._publishing else ((8 + m) * count, count)
                self.stats.add("model", sent=sent, recv=recv, msgs_sent=msgs, msgs_recv=count)
        # Deposits still to come name the current version or a later one (see the class docstring).
        self._kept = {v: kept for v, kept in self._kept.items() if v >= self._version}

    def served(self) -> tuple[int, int]:
        """(reads served, averages received) so far: reads from our window's counter, averages as drained."""
        import numpy as np

        MPI = self._MPI
        self._win.Lock(self.rank, MPI.LOCK_SHARED)
        reads = int(np.frombuffer(self._buf[:8].tobytes(), dtype=np.int64)[0])
        self._win.Unlock(self.rank)
        return reads, self._averages_served

    # ---- initiator side ----------------------------------------------------------------------------
    def _read(self, peer: int, nbytes: int) -> torch.Tensor:
        import numpy as np

        MPI = self._MPI
        out = np.empty(8 + nbytes, dtype=np.uint8)  # the owner's live step, then stamp + message
        one = np.ones(1, dtype=np.int64)
        self._win.Lock(peer, MPI.LOCK_SHARED)
        self._win.Get(out, peer, target=(self._LIVE, 8 + nbytes, MPI.BYTE))
        self._win.Accumulate([one, 1, MPI.INT64_T], peer, target=(0, 1, MPI.INT64_T), op=MPI.SUM)
        self._win.Unlock(peer)
        live, stamp = np.frombuffer(out[:16].tobytes(), dtype=np.int64)
        self.stats.add_staleness(int(live) - int(stamp))  # both read in one lock epoch: a consistent pair
        self.stats.add("control", recv=8)
        return torch.from_numpy(out[8:])

    def average_with(self, peer: int, kind: str) -> None:
        import numpy as np

        if self._live is None:
            raise RuntimeError("average_with() before expose(): expose this node's live model first")
        MPI = self._MPI
        with self._timed(kind):
            with self._model_lock:
                self._drain_inbox()  # fold in what others already gave us, so our snapshot is current
                snap = self._live.detach().to("cpu", copy=True)
            msg = self._encode(snap)
            mine = self._own_values(msg, snap)
            m = msg.numel()
            version = np.empty(8, dtype=np.uint8)  # the int64 version number of the partner's message
            theirs = np.empty(m, dtype=np.uint8)
            self._win.Lock(peer, MPI.LOCK_EXCLUSIVE)
            self._win.Get(version, peer, target=(self._VERSION, 8, MPI.BYTE))
            self._win.Get(theirs, peer, target=(self._COUNTERS + STAMP_BYTES, m, MPI.BYTE))
            self._win.Flush(peer)  # a Get's buffer is undefined until the operation completes
            move, skip = self._lead(torch.from_numpy(theirs), msg, mine)
            deposit = np.concatenate([version, self.codec.pack_failures(skip).numpy(), msg.numpy()])
            sent = self._deposit(peer, deposit, move)
            self._win.Unlock(peer)  # only now may the partner write a newer version
            with self._model_lock:
                self._live.add_(move.to(self._live.device))
            self.stats.add(kind, sent=sent, recv=8 + m, msgs_sent=1, msgs_recv=1)

    def _deposit(self, peer: int, deposit, move: torch.Tensor) -> int:
        """Put `deposit` (version, bitmap, message) in a free slot of `peer`'s inbox, or, when none is free (or
        bits=32), accumulate the exact float32 `move`, negated, into its delta area; the caller holds `peer`'s
        model window lock. Counts the deposit counter's Fetch_and_op; returns the model bytes sent."""
        import numpy as np

        MPI = self._MPI
        one, slot = np.ones(1, dtype=np.int64), np.empty(1, dtype=np.int64)
        self._inbox.Lock(peer, MPI.LOCK_EXCLUSIVE)
        self._inbox.Fetch_and_op([one, 1, MPI.INT64_T], [slot, 1, MPI.INT64_T], peer, 0, op=MPI.SUM)
        self._inbox.Flush(peer)
        if int(slot[0]) < self._slots:
            at = 8 + int(slot[0]) * self._slot_bytes
            self._inbox.Put(deposit, peer, target=(at, deposit.size, MPI.BYTE))
        else:  # no free slot (or bits=32): the exact float32 move, negated, summed into the delta area
            deposit = (-move).numpy()
            self._inbox.Accumulate(
                [deposit, deposit.size, MPI.FLOAT],
                peer,
                target=(self._delta_at, deposit.size, MPI.FLOAT),
                op=MPI.SUM,
            )
            self.inbox_full += int(self._slots > 0)
        self._inbox.Unlock(peer)
        self.stats.add("control", sent=8, recv=8, msgs_sent=1)
        return deposit.nbytes

    def _pull_push(self, peer: int, nbytes: int, respond) -> torch.Tensor:
        """Pull-push on RMA: under a shared lock of `peer`'s model window (readers do not exclude each other, the
        partner's next write waits for it), Get its version, live step and copy, then deposit in its inbox as
        `average_with` does. The deposit names the version, which the partner keeps until its next drain: it
        cannot write a newer one before we unlock."""
        import numpy as np

        MPI = self._MPI
        out = np.empty(16 + nbytes, dtype=np.uint8)  # version, the owner's live step, then stamp + message
        one = np.ones(1, dtype=np.int64)
        self._win.Lock(peer, MPI.LOCK_SHARED)
        self._win.Get(out, peer, target=(self._VERSION, 16 + nbytes, MPI.BYTE))
        self._win.Accumulate([one, 1, MPI.INT64_T], peer, target=(0, 1, MPI.INT64_T), op=MPI.SUM)
        self._win.Flush(peer)
        live, stamp = np.frombuffer(out[8:24].tobytes(), dtype=np.int64)
        self.stats.add_staleness(int(live) - int(stamp))
        self.stats.add("control", recv=16)  # the version and the live step
        blob = torch.from_numpy(out[16:])
        deposit, move = respond(blob)
        deposit = deposit.numpy()
        deposit[:8] = out[:8]  # the version read names the copy (not its stamp)
        sent = self._deposit(peer, deposit, move)
        self._win.Unlock(peer)
        self.stats.add("model", sent=sent, msgs_sent=1)
        return blob

    def finish_cell(self) -> None:
        """Count the reads peers took from our window and drain the last deposits (collective: after a fence)."""
        self._flush_sends()
        if self._win is None:
            return
        reads, _ = self.served()
        if reads:
            blob_bytes = self._buf.size - self._COUNTERS
            # The readers' increments of the counter in, our live step counter out.
            self.stats.add("control", recv=8 * reads, sent=8 * reads, msgs_recv=reads)
            self.stats.add("model", sent=blob_bytes * reads, msgs_sent=reads)
        if self._inbox is not None and self._live is not None:
            with self._model_lock:
                self._drain_inbox()

    def close(self) -> None:
        self._mpi.Barrier()
        self._free_windows()


def resolve_transport(requested: str, *, under_mpi: bool, single_host: bool) -> str:
    """`auto` picks RMA under MPI on one host (true passive progress there), p2p otherwise."""

    if requested == "rma":
        if not under_mpi:
            raise UserError(
                "--transport rma needs the workers started by MPI: use --launcher mpirun (or mpirun -np N "
                "swarmbench run ...) with mpi4py installed, or --transport p2p"
            )
        return "rma"
    if requested == "p2p":
        return "p2p"
    return "rma" if under_mpi and single_host and _mpi4py_available() else "p2p"


def _mpi4py_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("mpi4py") is not None


def make_comm(
    transport: str,
    rank: int,
    size: int,
    topology: Topology,
    timeout_s: float,
    allreduce_impl: str = "torch",
    on_responder_error: ResponderErrorHandler = exit_on_responder_error,
    now: Callable[[], float] = time.perf_counter,
    dead_dir: str | None = None,
) -> TorchComm:
    """The communicator of a real worker for a resolved transport ("p2p" or "rma") and allreduce engine; `now` is
    the clock its timers read (a synchronizing one on CUDA); `dead_dir`: where the launch marks dead ranks
    (`--on-failure continue`, p2p only)."""
    if transport == "rma":
        comm: TorchComm = RmaComm(rank, size, topology, timeout_s, now=now)
    else:
        comm = TorchComm(
            rank, size, topology, timeout_s, on_responder_error=on_responder_error, now=now, dead_dir=dead_dir
        )
    if allreduce_impl == "horovod":
        comm.use_horovod_allreduce()
    return comm
