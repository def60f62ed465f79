"""Communication: the one module that talks to torch.distributed, and counts every byte it moves.

`Comm` is the engine-neutral interface every algorithm sees (see docs in README, "Architecture"):
collectives (`allreduce_mean`, `neighbor_exchange`), the one-sided pair (`publish` / `read`) and the
atomic pairwise average (`average_with`). `TorchComm` implements it on real processes; the simulated
cluster implements the same interface with virtual time. Both count in the same way (`CommStats`).

Byte accounting (per node, by kind; closed forms tested in tests/test_comm_volume.py):
- allreduce of b bytes over n nodes: the ring algorithm's volume, 2(n-1)/n * b sent and received per node
  (gloo picks its own algorithm internally; the ring volume is the bandwidth-optimal reference).
- neighbor_exchange: b sent to and received from each neighbour.
- read: a 32-byte request header (kind "control") to the peer, b bytes of model back.
- average_with: header + b bytes of model to the peer, b bytes back; the peer counts the mirror image.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from bench.topology import Topology

HEADER_BYTES = 32  # request header: 4 x int64 (op, requester, numel, reserved)
KINDS = ("grad", "model", "control", "eval")  # eval traffic is reported apart from training traffic


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


class CommStats:
    """Per-node counters by kind; thread-safe because a responder thread counts what it serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.kinds: dict[str, KindStats] = defaultdict(KindStats)

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

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {kind: dict(vars(s)) for kind, s in sorted(self.kinds.items())}

    def reset(self) -> None:
        with self._lock:
            self.kinds.clear()


class Comm:
    """What an algorithm may do on the network. Subclasses implement the `_` methods for one engine.

    All tensors are flat 1-D float32 tensors (a node's whole model or gradient in one buffer).
    """

    def __init__(self, rank: int, size: int, topology: Topology, now) -> None:
        self.rank = rank
        self.size = size
        self.topology = topology
        self.stats = CommStats()
        self._now = now  # the engine's clock: wall time for processes, virtual time in the simulator

    # ---- the interface algorithms use -------------------------------------------------------------
    def neighbors(self) -> tuple[int, ...]:
        return self.topology.neighbors(self.rank)

    def allreduce_mean(self, t: torch.Tensor, kind: str) -> None:
        """In place: t <- mean over all nodes."""
        with self._timed(kind):
            if self.size > 1:
                self._allreduce_sum(t)
                t.div_(self.size)
            vol = ring_allreduce_bytes(_nbytes(t), self.size)
            self.stats.add(kind, sent=vol, recv=vol, msgs_sent=int(self.size > 1), msgs_recv=int(self.size > 1))

    def allreduce_sum(self, t: torch.Tensor, kind: str) -> None:
        """In place: t <- sum over all nodes (counters, evaluation results)."""
        with self._timed(kind):
            if self.size > 1:
                self._allreduce_sum(t)
            vol = ring_allreduce_bytes(_nbytes(t), self.size)
            self.stats.add(kind, sent=vol, recv=vol, msgs_sent=int(self.size > 1), msgs_recv=int(self.size > 1))

    def neighbor_exchange(self, t: torch.Tensor, kind: str) -> dict[int, torch.Tensor]:
        """Synchronous: send `t` to every neighbour and receive each neighbour's tensor."""
        peers = self.neighbors()
        with self._timed(kind):
            out = self._neighbor_exchange(t, peers) if peers else {}
            n = len(peers)
            self.stats.add(kind, sent=n * _nbytes(t), recv=n * _nbytes(t), msgs_sent=n, msgs_recv=n)
        return out

    def publish(self, t: torch.Tensor) -> None:
        """Make a copy of `t` readable by peers' `read` from now on (until the next publish)."""
        self._publish(t)

    def read(self, peer: int, kind: str) -> torch.Tensor:
        """One-sided: the peer's last published tensor; the peer is not interrupted (may be one step stale)."""
        with self._timed(kind):
            out = self._read(peer)
            self.stats.add("control", sent=HEADER_BYTES, msgs_sent=1)
            self.stats.add(kind, recv=_nbytes(out), msgs_recv=1)
        return out

    def expose(self, live: torch.Tensor) -> None:
        """Register the node's live model: peers' `average_with` will update it in place (under `exclusive`)."""
        self._expose(live)

    def average_with(self, peer: int, kind: str) -> None:
        """Atomic pairwise average of this node's exposed model with `peer`'s; the sum of models is conserved."""
        with self._timed(kind):
            nbytes = self._average_with(peer)
            self.stats.add("control", sent=HEADER_BYTES, msgs_sent=1)
            self.stats.add(kind, sent=nbytes, recv=nbytes, msgs_sent=1, msgs_recv=1)

    def barrier(self) -> None:
        with self._timed("control"):
            if self.size > 1:
                self._barrier()
            self.stats.add("control", msgs_sent=int(self.size > 1))

    def fence(self) -> None:
        """The training loop's own synchronization (start and end of a cell): not counted as traffic."""
        if self.size > 1:
            self._barrier()

    def exclusive(self) -> contextlib.AbstractContextManager:
        """Held by the training loop while it computes on or updates the model (passive averages wait)."""
        return contextlib.nullcontext()

    def start_cell(self) -> None:
        """Fresh counters and no exposed/published model: called between algorithms on the same processes."""
        self.stats.reset()

    def close(self) -> None:
        """Release engine resources once all nodes stop issuing requests."""

    # ---- engine hooks -------------------------------------------------------------------------------
    def _allreduce_sum(self, t: torch.Tensor) -> None:
        raise NotImplementedError

    def _neighbor_exchange(self, t: torch.Tensor, peers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        raise NotImplementedError

    def _publish(self, t: torch.Tensor) -> None:
        raise NotImplementedError

    def _read(self, peer: int) -> torch.Tensor:
        raise NotImplementedError

    def _expose(self, live: torch.Tensor) -> None:
        raise NotImplementedError

    def _average_with(self, peer: int) -> int:
        raise NotImplementedError

    def _barrier(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def _timed(self, kind: str):
        start = self._now()
        try:
            yield
        finally:
            self.stats.add_time(kind, self._now() - start)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# Request opcodes served by the responder thread.
_READ, _AVERAGE, _STOP = 1, 2, 3


class TorchComm(Comm):
    """`Comm` over torch.distributed on real processes.

    Collectives run on the default process group. One-sided operations are served by a responder thread
    per process on two extra gloo groups (requests in, replies out), so a peer's `read` is answered while
    this node's training thread keeps computing. Gloo runs on CPU, so the served buffers live on the CPU.
    """

    def __init__(self, rank: int, size: int, topology: Topology, timeout_s: float) -> None:
        super().__init__(rank, size, topology, time.perf_counter)
        import torch.distributed as dist

        self._dist = dist
        self._model_lock = threading.Lock()
        self._pub_lock = threading.Lock()
        self._published: torch.Tensor | None = None
        self._live: torch.Tensor | None = None
        self._responder: threading.Thread | None = None
        self.responder_error: BaseException | None = None
        if size > 1:
            timeout = timedelta(seconds=timeout_s)
            # Every rank creates both groups in the same order (a torch.distributed requirement).
            self._req = dist.new_group(backend="gloo", timeout=timeout)
            self._rep = dist.new_group(backend="gloo", timeout=timeout)
            self._responder = threading.Thread(target=self._serve, name=f"responder-{rank}", daemon=True)
            self._responder.start()

    def exclusive(self) -> contextlib.AbstractContextManager:
        return self._model_lock

    def start_cell(self) -> None:
        super().start_cell()
        with self._pub_lock:
            self._published = None
        with self._model_lock:
            self._live = None

    # ---- collectives -------------------------------------------------------------------------------
    def _allreduce_sum(self, t: torch.Tensor) -> None:
        self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM)

    def _neighbor_exchange(self, t: torch.Tensor, peers: tuple[int, ...]) -> dict[int, torch.Tensor]:
        out = {p: torch.empty_like(t) for p in peers}
        works = [self._dist.isend(t, dst=p) for p in peers]
        works += [self._dist.irecv(out[p], src=p) for p in peers]
        for w in works:
            w.wait()
        return out

    def _barrier(self) -> None:
        self._dist.barrier()

    # ---- one-sided, initiator side ---------------------------------------------------------------
    def _publish(self, t: torch.Tensor) -> None:
        with self._pub_lock:
            if self._published is None or self._published.shape != t.shape:
                self._published = torch.empty_like(t, device="cpu")
            self._published.copy_(t)

    def _expose(self, live: torch.Tensor) -> None:
        with self._model_lock:
            self._live = live

    def _request(self, op: int, peer: int, numel: int) -> None:
        header = torch.tensor([op, self.rank, numel, 0], dtype=torch.int64)
        self._dist.send(header, dst=peer, group=self._req)

    def _read(self, peer: int) -> torch.Tensor:
        if self._published is None:
            raise RuntimeError("read() before publish(): publish this node's model first (sizes are shared)")
        out = torch.empty_like(self._published)
        self._request(_READ, peer, out.numel())
        self._dist.recv(out, src=peer, group=self._rep)
        return out

    def _average_with(self, peer: int) -> int:
        # Lock-free across nodes (so deadlock-free by construction): send a snapshot, the peer moves to the
        # average under its own lock and returns its pre-average model, and we apply the mirror delta.
        # Sum of the two models is conserved exactly even if a third node averaged with us meanwhile.
        if self._live is None:
            raise RuntimeError("average_with() before expose(): expose this node's live model first")
        with self._model_lock:
            snap = self._live.detach().to("cpu", copy=True)
        self._request(_AVERAGE, peer, snap.numel())
        self._dist.send(snap, dst=peer, group=self._req)
        theirs = torch.empty_like(snap)
        self._dist.recv(theirs, src=peer, group=self._rep)
        delta = theirs.sub_(snap).mul_(0.5)
        with self._model_lock:
            self._live.add_(delta.to(self._live.device))
        return _nbytes(snap)

    # ---- one-sided, responder side ---------------------------------------------------------------
    def _serve(self) -> None:
        dist = self._dist
        header = torch.empty(4, dtype=torch.int64)
        try:
            while True:
                src = dist.recv(header, src=None, group=self._req)
                op, requester, numel, _ = header.tolist()
                self.stats.add("control", recv=HEADER_BYTES, msgs_recv=1)
                if op == _STOP:
                    return
                if op == _READ:
                    with self._pub_lock:
                        if self._published is None:
                            raise RuntimeError(f"rank {requester} read rank {self.rank} before it published")
                        payload = self._published.clone()
                    dist.send(payload, dst=src, group=self._rep)
                    self.stats.add("model", sent=_nbytes(payload), msgs_sent=1)
                elif op == _AVERAGE:
                    incoming = torch.empty(numel, dtype=torch.float32)
                    dist.recv(incoming, src=src, group=self._req)
                    with self._model_lock:
                        if self._live is None:
                            raise RuntimeError(f"rank {requester} averaged with rank {self.rank} before it exposed")
                        old = self._live.detach().to("cpu", copy=True)
                        self._live.add_(incoming.to(self._live.device)).mul_(0.5)
                    dist.send(old, dst=src, group=self._rep)
                    self.stats.add("model", sent=_nbytes(old), recv=_nbytes(incoming), msgs_sent=1, msgs_recv=1)
                else:
                    raise RuntimeError(f"unknown request opcode {op} from rank {requester}")
        except BaseException as exc:  # reported by the worker, which then exits so no peer waits forever
            self.responder_error = exc
            from bench.engine.worker import abort_from_thread

            abort_from_thread(exc, self.rank)

    def close(self) -> None:
        """After a barrier (no request is in flight any more) stop our successor's responder, join ours."""
        if self._responder is None:
            return
        self._barrier()
        self._request(_STOP, (self.rank + 1) % self.size, 0)
        self._responder.join()
        self._responder = None
