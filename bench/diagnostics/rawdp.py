"""Raw data-parallel training written directly on PyTorch's DistributedDataParallel and on Horovod's
DistributedOptimizer: the yardsticks that `make bench` (benchmark `ddp`) holds swarmbench's AllReduce SGD against.

Every rank trains the model swarmbench builds, on the shard and mini-batches swarmbench's sampler gives that rank
(same seeds), with the same SGD settings, and times its training as swarmbench's loop does: from a barrier, epoch by
epoch, nothing but training steps inside the timed span. Nothing of swarmbench's comm layer, training loop or
launcher is used. Started as

    python -m bench.diagnostics.rawdp SPEC.json RANK     DDP: one process per rank, FileStore rendezvous (`run_ddp`)
    horovodrun ... python -m bench.diagnostics.rawdp SPEC.json    Horovod: ranks from horovodrun (`run_horovod`)

SPEC (JSON): impl (ddp | horovod), model, dataset, batch_size, lr, momentum, epochs, seed, nodes, threads, device,
backend, store. Rank r writes SPEC.json.rank{r}.json: {"rank", "steps", "train_seconds", "step_median"}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import torch

from bench.core.data import load_dataset
from bench.core.devices import synchronized_clock
from bench.core.models import build_model, loss_of
from bench.engine.processes.launchers import LAUNCHERS, horovodrun_argv, require_binary
from bench.engine.processes.spawn import worker_env
from bench.training.config import RunConfig
from bench.training.loop import WARMUP_STEPS, Sampler, make_shards, node_seed

Wrap = Callable[[torch.nn.Module, torch.optim.Optimizer], tuple[torch.nn.Module, torch.optim.Optimizer]]


def train(spec: dict[str, Any], rank: int, device: torch.device, wrap: Wrap, barrier: Callable[[], None]) -> dict:
    """Train one rank; returns its step count and training seconds (as swarmbench's `train_seconds`)."""
    torch.set_num_threads(int(spec["threads"]))
    cfg = RunConfig(
        nodes=spec["nodes"],
        dataset=spec["dataset"],
        model=spec["model"],
        batch_size=spec["batch_size"],
        lr=spec["lr"],
        momentum=spec["momentum"],
        seed=spec["seed"],
        epochs=spec["epochs"],
    )
    data = load_dataset(cfg.dataset, cfg.seed, cfg.data_dir, bptt=cfg.bptt)
    shards = make_shards(cfg, data)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    model, opt = wrap(model, opt)
    x, y = data.x_train.to(device), data.y_train.to(device)
    sampler = Sampler(x, y, shards.indices[rank].to(device), cfg.batch_size, node_seed(cfg.seed, rank, 2))
    aug_gen = torch.Generator().manual_seed(node_seed(cfg.seed, rank, 3))
    now = synchronized_clock(device)
    barrier()  # every rank starts the clock together, as swarmbench's loop does
    train_seconds, step_times = 0.0, []
    for _ in range(cfg.epochs):
        t_epoch = now()
        for _ in range(shards.steps_per_epoch):
            t_step = now()  # each step timed as swarmbench's loop times it (on CUDA: after a synchronize)
            xb, yb = sampler.next()
            if data.augment is not None:
                xb = data.augment(xb, aug_gen)
            opt.zero_grad()
            loss_of(model(xb), yb).backward()
            opt.step()
            step_times.append(now() - t_step)
        train_seconds += now() - t_epoch
    timed = step_times[WARMUP_STEPS:] or step_times
    return {"rank": rank, "steps": len(step_times), "train_seconds": train_seconds, "step_median": median(timed)}


def run_ddp(spec: dict[str, Any], rank: int) -> dict:
    """DistributedDataParallel with its defaults (25 MiB buckets, 1 MiB first bucket after the first iteration),
    except broadcast_buffers=False: swarmbench keeps BatchNorm statistics local too, so both do the same work."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(spec["device"])
    if device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    store = dist.FileStore(spec["store"], spec["nodes"])
    dist.init_process_group(spec["backend"], store=store, rank=rank, world_size=spec["nodes"])

    def wrap(model, opt):
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False), opt

    try:
        return train(spec, rank, device, wrap, dist.barrier)
    finally:
        dist.destroy_process_group()


def run_horovod(spec: dict[str, Any]) -> dict:
    """Horovod's DistributedOptimizer (gradients averaged by allreduces started from autograd hooks, fused in
    Horovod's background thread) with the parameters broadcast from rank 0, as Horovod's examples do."""
    import horovod.torch as hvd

    hvd.init()
    device = torch.device(spec["device"])
    if device.type == "cuda":
        device = torch.device("cuda", hvd.local_rank() % torch.cuda.device_count())
        torch.cuda.set_device(device)

    def wrap(model, opt):
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        return model, opt

    return train(spec, hvd.rank(), device, wrap, hvd.barrier)


def measure(spec: dict[str, Any], timeout_s: float = 600) -> tuple[float, float]:
    """Run the raw script for `spec` (impl ddp or horovod) on `spec["nodes"]` local processes: (samples per second
    over the slowest rank's training time, the median over ranks of each rank's median step after the warm-up
    steps), as swarmbench's summary computes `samples_per_s` and `step_seconds_median`."""
    nodes = int(spec["nodes"])
    env, threads = worker_env(nodes)
    with tempfile.TemporaryDirectory(prefix="rawdp-") as tmp:
        spec = {**spec, "threads": spec.get("threads") or threads, "store": f"{tmp}/store"}
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        script = [sys.executable, "-m", "bench.diagnostics.rawdp", str(path)]
        if spec["impl"] == "horovod":
            binary = require_binary(LAUNCHERS["horovodrun"])
            procs = [subprocess.Popen(horovodrun_argv(binary, nodes, script), env=env, **_QUIET)]
        else:
            procs = [subprocess.Popen([*script, str(r)], env=env, **_QUIET) for r in range(nodes)]
        try:
            outputs = [p.communicate(timeout=timeout_s)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        failed = [p.returncode for p in procs if p.returncode != 0]
        if failed:
            raise RuntimeError(f"raw {spec['impl']} run failed (exit {failed[0]}):\n{outputs[0][-2000:]}")
        ranks = [json.loads(Path(f"{path}.rank{r}.json").read_text()) for r in range(nodes)]
    samples = sum(r["steps"] for r in ranks) * int(spec["batch_size"])
    return samples / max(r["train_seconds"] for r in ranks), median(r["step_median"] for r in ranks)


_QUIET: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    result = run_horovod(spec) if spec["impl"] == "horovod" else run_ddp(spec, int(args[1]))
    out = Path(f"{args[0]}.rank{result['rank']}.json")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
