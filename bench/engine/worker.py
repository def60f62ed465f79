"""One worker process: join the process group, run every algorithm of the invocation, stage the records.

Started by a launcher as `python -m bench.engine.worker SPEC RANK`. Progress and errors go to the parent
over the file descriptor named by SWARMBENCH_EVENT_FD (one JSON object per line, each under PIPE_BUF so
lines from different workers never interleave); records go to this rank's staging file.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

_event_lock = threading.Lock()
_EVENT_LINE_MAX = 3500  # below PIPE_BUF (4096): atomic pipe writes


def send_event(event: dict[str, Any]) -> None:
    """Send one event line to the launcher (or print it when there is none)."""
    line = json.dumps(event)
    if len(line) > _EVENT_LINE_MAX:
        event = {**event, "error": str(event.get("error", ""))[:1000]}
        line = json.dumps(event)[:_EVENT_LINE_MAX]
    fd = os.environ.get("SWARMBENCH_EVENT_FD")
    with _event_lock:
        if fd is not None:
            os.write(int(fd), (line + "\n").encode())
        elif event.get("type") == "error":
            print(f"error: rank {event.get('rank')}: {event.get('error')}", file=sys.stderr, flush=True)


def last_line(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def abort_from_thread(exc: BaseException, rank: int) -> None:
    """A helper thread failed: report it and end the whole process now, so peers are not left waiting."""
    traceback.print_exception(type(exc), exc, exc.__traceback__)
    send_event({"type": "error", "rank": rank, "error": last_line(exc)})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def run_worker(spec: dict[str, Any], rank: int) -> None:
    import torch
    import torch.distributed as dist

    from bench.comm import TorchComm
    from bench.config import RunConfig
    from bench.data import load_dataset
    from bench.protocol import Clock
    from bench.records import StagingWriter
    from bench.topology import build_topology
    from bench.train import make_shards, run_cell

    cfg = RunConfig.from_dict(spec["config"])
    world = cfg.nodes
    torch.set_num_threads(int(spec.get("threads", 1)))
    device = torch.device("cpu")
    store = dist.FileStore(spec["store"], world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=cfg.timeout_s))
    topology = build_topology(cfg.topology, world, degree=cfg.degree, seed=cfg.seed)
    comm = TorchComm(rank, world, topology, cfg.timeout_s)
    clock: Clock = WallClock()
    dataset = load_dataset(cfg.dataset, cfg.seed, cfg.data_dir)
    shards = make_shards(cfg, dataset)
    writer = StagingWriter(Path(spec["out_dir"]), rank, spec["run_id"], world)

    def emit(event: dict[str, Any]) -> None:
        if event["type"] == "record":
            writer.write(event)
        elif rank == 0:
            send_event(event)

    try:
        for name in cfg.algorithms:
            emit({"type": "cell_start", "algorithm": name})
            run_cell(cfg, name, dataset, shards, rank, comm, clock, device, emit)
            emit({"type": "cell_done", "algorithm": name})
        comm.close()
    finally:
        writer.close()
    dist.destroy_process_group()


class WallClock:
    """The real engine's clock: wall time; compute is simply run (and timed by the loop)."""

    def now(self) -> float:
        import time

        return time.perf_counter()

    def compute(self):
        import contextlib

        return contextlib.nullcontext()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    rank = int(args[1])
    try:
        run_worker(spec, rank)
    except BaseException as exc:
        traceback.print_exc()
        send_event({"type": "error", "rank": rank, "error": last_line(exc)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
