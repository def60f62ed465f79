"""PowerSGD: AllReduce SGD whose gradients travel as rank-r approximations (torch's own DDP communication hook)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as torch_powersgd

from baselines.allreduce import ddp_buckets
from bench.core.protocol import Algorithm

LOWRANK_RANKS = (1, 2, 4, 8)  # the ranks whose "lowrank R" work the compute profiles measure


@dataclass(frozen=True)
class PowerSGDConfig:
    rank: int = 2  # r: rank of the approximation (Vogels et al.'s ResNet-18 / CIFAR-10 setting; torch's default is 1)
    start_iter: int = 2  # plain allreduce for the first steps (torch's start_powerSGD_iter; at least 2, see below)
    min_compression_rate: float = 2.0  # a matrix n x m is compressed only if (n + m) r * this < n m (torch's default)
    error_feedback: bool = True  # add back what the last compression lost (the paper's error feedback)
    warm_start: bool = True  # start each power iteration from the last step's Q (the paper's reuse)
    bucket_cap_mb: float = 25.0  # gradient bucket size in MiB (DDP's bucket_cap_mb), as AllReduce SGD cuts them
    first_bucket_mb: float = 1.0  # the first bucket, in MiB (DDP's)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")
        if (self.error_feedback or self.warm_start) and self.start_iter < 2:
            raise ValueError(
                f"start_iter must be at least 2 with error_feedback or warm_start (torch's rule), got {self.start_iter}"
            )
        if not self.min_compression_rate >= 0:
            raise ValueError(f"min_compression_rate must be >= 0, got {self.min_compression_rate}")
        if not (self.bucket_cap_mb > 0 and self.first_bucket_mb > 0):
            raise ValueError("bucket_cap_mb and first_bucket_mb must be positive")


class _Bucket:
    """What torch's hook reads of DDP's `GradBucket`: the flat gradient slice and its per-parameter views."""

    def __init__(self, index: int, last: bool, buffer: torch.Tensor, views: list[torch.Tensor]) -> None:
        self._index, self._last, self._buffer, self._views = index, last, buffer, views

    def index(self) -> int:
        return self._index

    def is_last(self) -> bool:
        return self._last

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def gradients(self) -> list[torch.Tensor]:
        return self._views


class PowerSGD(Algorithm):
    """PowerSGD (Vogels, Karimireddy, Jaggi, NeurIPS 2019, "PowerSGD: Practical Low-Rank Gradient Compression for
    Distributed Optimization"), run by torch's own implementation, `torch.distributed.algorithms.ddp_comm_hooks.
    powerSGD_hook`, as DistributedDataParallel runs it: the gradient buffer is cut into DDP's buckets (as AllReduce
    SGD cuts them) and each bucket goes through the hook, whose allreduces are this node's comm layer
    (`Comm.process_group`), so they are counted and simulated like every other algorithm's. Per bucket, every
    parameter matrix n x m (a tensor's first dimension by the rest) worth compressing is sent as P (n x r) and Q
    (m x r): one power iteration with error feedback and warm start; vectors and small matrices are allreduced
    whole. The hooks run after the backward pass, bucket by bucket (torch chains three allreduces per bucket). The
    optimizer's momentum acts on the decompressed mean gradient, as in the paper. At full rank nothing is worth
    compressing (min_compression_rate >= 1), so PowerSGD is then AllReduce SGD exactly. The simulator charges the
    compression work as "lowrank R" per coordinate (torch's own products and orthogonalization, measured at ranks
    1, 2, 4, 8) and error feedback as three copies per coordinate, before the bucket's collectives.
    """

    name = "powersgd"
    summary = "PowerSGD: AllReduce SGD with rank-r gradient compression and error feedback (torch's DDP hook)"
    paper = "Vogels et al., NeurIPS 2019"
    Config = PowerSGDConfig
    model_copies = 5.2  # peak memory per node in the simulator, in models (measured, default MLP, 4 epochs)
    needs_tensors = True

    def start(self) -> None:
        node, cfg = self.node, self.config
        self.state = torch_powersgd.PowerSGDState(
            node.comm.process_group("grad"),
            matrix_approximation_rank=cfg.rank,
            start_powerSGD_iter=cfg.start_iter,
            min_compression_rate=cfg.min_compression_rate,
            use_error_feedback=cfg.error_feedback,
            warm_start=cfg.warm_start,
            random_seed=0,  # the same projections on every node
        )
        views = node.views(node.grads)
        buckets = ddp_buckets(node, cfg.first_bucket_mb, cfg.bucket_cap_mb)
        self.buckets, self.work = [], []
        for k, (indices, grads) in enumerate(buckets):
            members = [views[i] for i in indices]
            self.buckets.append(_Bucket(k, k == len(buckets) - 1, grads, members))
            self.work.append([w for w in map(self._work, members) if w])  # per bucket: (op, coordinates)

    def _work(self, grad: torch.Tensor) -> tuple[str, int] | None:
        """The simulator's charge for the hook's work on this tensor (None when it is allreduced whole): "lowrank R"
        per coordinate, R the smallest measured rank >= its rank r (above 8: rank 8's cost times r / 8)."""
        n, m = grad.shape[0] if grad.dim() else 1, grad[0].numel() if grad.dim() else 1
        r = min(n, m, self.config.rank)
        worth, _, _ = torch_powersgd._should_compress(n, m, r, self.config.min_compression_rate)
        if not worth:
            return None
        measured = next((k for k in LOWRANK_RANKS if k >= r), None)
        return (f"lowrank {measured}", n * m) if measured else (f"lowrank {LOWRANK_RANKS[-1]}", n * m * r // 8)

    def after_backward(self, step: int) -> None:
        comm = self.node.comm
        for bucket, work in zip(self.buckets, self.work, strict=True):
            if self.state.iter >= self.state.start_powerSGD_iter:
                # Charged before the bucket's collectives (its products M Q and M^T P precede them in the hook).
                for op, numel in work:
                    comm.charge(op, numel)
                if self.config.error_feedback:
                    comm.charge("copy", 3 * bucket.buffer().numel())
            with _cuda_sync_only_on_cuda(bucket.buffer()):
                out = torch_powersgd.powerSGD_hook(self.state, bucket).wait()
            if out.data_ptr() != bucket.buffer().data_ptr():
                bucket.buffer().copy_(out)
        self.count("allreduces")

    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "iter": s.iter,
            "rng": s.rng.get_state(),
            "error": {k: v.clone() for k, v in s.error_dict.items()},
            "p": {k: v.clone() for k, v in s.p_memory_dict.items()},
            "q": {k: v.clone() for k, v in s.q_memory_dict.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s = self.state
        s.iter = state["iter"]
        s.rng.set_state(state["rng"])
        device = self.node.grads.device  # a checkpoint is loaded onto the CPU
        s.error_dict = {k: v.to(device, copy=True) for k, v in state["error"].items()}
        s.p_memory_dict = {k: v.to(device, copy=True) for k, v in state["p"].items()}
        s.q_memory_dict = {k: v.to(device, copy=True) for k, v in state["q"].items()}


@contextlib.contextmanager
def _cuda_sync_only_on_cuda(buffer: torch.Tensor):
    """torch's hook ends with `torch.cuda.synchronize(device)` whenever CUDA is available, which raises for a CPU
    bucket (a CPU run on a GPU host): while it runs, a CPU bucket skips that call."""
    if buffer.is_cuda or not torch.cuda.is_available():
        yield
        return
    synchronize = torch.cuda.synchronize
    torch.cuda.synchronize = lambda device=None: None
    try:
        yield
    finally:
        torch.cuda.synchronize = synchronize
