"""Which device and torch.distributed backend a worker uses (`--device`, `--backend`)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from bench.base.errors import UserError


def resolve_device(requested: str, local_rank: int) -> torch.device:
    """cpu | cuda | auto -> this worker's device: one GPU per local rank (wrapping if ranks outnumber GPUs)."""
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise UserError("--device cuda asked for, but torch sees no CUDA device here: use --device cpu or auto")
        return torch.device("cpu")
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def resolve_backend(requested: str, device: torch.device, *, ranks_per_gpu: int = 1) -> str:
    """auto -> nccl on CUDA with one rank per GPU (NCCL refuses two ranks on one GPU), gloo otherwise."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" and ranks_per_gpu == 1 else "gloo"
    if requested == "nccl":
        if device.type != "cuda":
            raise UserError("--backend nccl needs --device cuda (NCCL only moves GPU tensors): use gloo on CPU")
        if ranks_per_gpu > 1:
            raise UserError(
                f"--backend nccl with {ranks_per_gpu} ranks per GPU: NCCL needs one rank per GPU; use fewer "
                "--nodes or --backend gloo"
            )
    return requested


def check_device_request(device: str, backend: str) -> None:
    """Validation before anything runs (the parent may have no GPU view differences with workers on one host)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device here: use --device cpu or auto")
    if backend == "nccl" and device == "cpu":
        raise UserError("--backend nccl needs --device cuda (NCCL only moves GPU tensors): use gloo on CPU")


def synchronized_clock(device: torch.device) -> Callable[[], float]:
    """Wall time that waits for the device first. CUDA kernels and NCCL collectives return when enqueued: a clock
    read without a synchronize would time kernel launches, and a collective would look free. On the CPU, plain
    perf_counter (nothing is asynchronous there)."""
    if device.type != "cuda":
        return time.perf_counter

    def now() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return now
