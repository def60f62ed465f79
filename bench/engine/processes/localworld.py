"""Spawn N gloo processes on loopback that meet through a FileStore in a given folder, with a hard timeout.

`run_world(fn, world, folder, *args)` runs `fn(rank, world, comm, *args)` in every process (fn must be a
module-level function) and returns the per-rank results; a deadlock or a crash raises instead of hanging.
Used by the tests and by `make stress`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.core.comm import TorchComm
from bench.core.topology import build_topology

DEFAULT_TIMEOUT_S = 90


def _child(fn, rank: int, world: int, store: str, topology: tuple, threads: int, queue, args: tuple) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch starts its thread pool, as the launcher does
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(threads)
        dist.init_process_group(
            "gloo", store=dist.FileStore(store, world), rank=rank, world_size=world, timeout=timedelta(seconds=60)
        )
        name, degree, seed = topology
        topo = build_topology(name, world, degree=degree, seed=seed)

        def report_and_exit(exc: BaseException, rank: int) -> None:
            """A failed responder thread: its traceback to the parent (as the training thread's would go), then
            the process ends, so that no peer waits on it."""
            queue.put((rank, "error", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
            queue.close()
            queue.join_thread()
            os._exit(1)

        comm = TorchComm(rank, world, topo, timeout_s=60, on_responder_error=report_and_exit)
        result = fn(rank, world, comm, *args)
        comm.close()
        dist.destroy_process_group()
        # Pickled by value: through the queue itself a tensor travels as a file descriptor that this process
        # serves, and it may have exited before the parent asks for it (seen on a loaded machine).
        queue.put((rank, "ok", pickle.dumps(result)))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))


class WorldFailed(AssertionError):
    """A rank raised, or the world did not finish before the timeout (a deadlock fails, never hangs). `exits`: every
    rank's exit status once the world was stopped (negative: the signal that ended it, the parent's SIGKILL for the
    ranks still running); `errors`: the tracebacks ranks reported, by rank."""

    def __init__(self, message: str, exits: dict[int, int | None] | None = None, errors: dict[int, str] | None = None):
        super().__init__(message)
        self.exits = exits or {}
        self.errors = errors or {}


def run_world(
    fn,
    world: int,
    tmp_path: Path,
    *args: Any,
    topology: str = "ring",
    degree: int | None = None,
    seed: int = 0,
    threads: int = 1,
    timeout: float = DEFAULT_TIMEOUT_S,
):
    tmp_path.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    store = str(tmp_path / f"store-{world}-{os.getpid()}-{id(args)}")
    procs = [
        ctx.Process(target=_child, args=(fn, r, world, store, (topology, degree, seed), threads, queue, args))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    reported: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < world and not errors:
            try:
                rank, status, value = queue.get(timeout=0.5)
            except queue_mod.Empty:
                # A rank that died without reporting (killed, or failed before it could) fails the world now.
                dead = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in results]
                if dead and queue.empty():
                    codes = ", ".join(f"rank {r} exit {procs[r].exitcode}" for r in dead)
                    errors.append(f"ranks ended without a result ({codes})")
                elif time.monotonic() > deadline:
                    errors.append(f"timed out after {timeout}s waiting for ranks (a deadlock or a hang)")
                continue
            if status == "ok":
                results[rank] = pickle.loads(value)
            else:
                errors.append(f"rank {rank}:\n{value}")
                reported[rank] = value
    finally:
        for p in procs:
            p.join(timeout=5 if not errors else 0.1)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        exits = {r: p.exitcode for r, p in enumerate(procs)}
        raise WorldFailed("distributed run failed: " + "\n".join(errors), exits, reported)
    return [results[r] for r in range(world)]
