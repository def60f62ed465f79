"""AllReduce SGD: synchronous data-parallel SGD, gradients averaged over all nodes every step, in buckets that are
allreduced while the backward pass goes on (as PyTorch's DistributedDataParallel does)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.core.protocol import Algorithm, Node

if TYPE_CHECKING:
    import torch

MIB = 1024 * 1024  # DDP's "MB" (bucket_cap_mb) is a mebibyte


@dataclass(frozen=True)
class AllReduceConfig:
    bucket_cap_mb: float = 25.0  # gradient bucket size in MiB (DDP's bucket_cap_mb)
    first_bucket_mb: float = 1.0  # the first bucket (the last layers, whose gradients are ready first), in MiB
    overlap: bool = True  # allreduce buckets during backward as they fill; False: one allreduce after backward

    def __post_init__(self) -> None:
        if not self.bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be positive, got {self.bucket_cap_mb}")
        if not self.first_bucket_mb > 0:
            raise ValueError(f"first_bucket_mb must be positive, got {self.first_bucket_mb}")


def bucket_ranges(sizes: list[int], element_size: int, first_bytes: int, cap_bytes: int) -> list[tuple[int, int]]:
    """DDP's bucket assignment over parameters of `sizes` (numel, in parameter order): parameters in reverse order
    (the order backward produces their gradients), each bucket closed as soon as it holds at least its limit
    (`first_bytes` for the first bucket, `cap_bytes` after), a parameter never split. Returns each bucket's
    parameter indices as a range (first, end), in launch order (so firsts decrease)."""
    buckets: list[tuple[int, int]] = []
    end, held, limit = len(sizes), 0, first_bytes
    for i in range(len(sizes) - 1, -1, -1):
        held += sizes[i] * element_size
        if held >= limit or i == 0:
            buckets.append((i, end))
            end, held, limit = i, 0, cap_bytes
    return buckets


def bucket_slices(sizes: list[int], element_size: int, first_bytes: int, cap_bytes: int) -> list[tuple[int, int]]:
    """`bucket_ranges` as each bucket's (start, end) in the flat buffer of those parameters, in launch order
    (so starts decrease); a bucket of empty parameters only is left out."""
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    slices = [(bounds[i], bounds[j]) for i, j in bucket_ranges(sizes, element_size, first_bytes, cap_bytes)]
    return [(a, b) for a, b in slices if b > a]


def ddp_buckets(node: Node, first_bucket_mb: float, bucket_cap_mb: float) -> list[tuple[range, torch.Tensor]]:
    """`node`'s gradient buckets as DDP cuts them (`bucket_ranges`), by the parameters' sizes as the engine charges
    them (a cost-only stand-in's are the workload's), in launch order, none empty: per bucket the indices of its
    parameters and its slice of `node.grads`."""
    numels = node.numels()
    offsets = list(itertools.accumulate((p.numel() for p in node.model.parameters()), initial=0))
    ranges = bucket_ranges(numels, node.grads.element_size(), int(first_bucket_mb * MIB), int(bucket_cap_mb * MIB))
    return [(range(i, j), node.grads[offsets[i] : offsets[j]]) for i, j in ranges if sum(numels[i:j]) > 0]


class AllReduceSGD(Algorithm):
    """Mini-batch SGD with the gradient averaged over all nodes by allreduces each step.

    The standard baseline (e.g. Goyal et al. 2017, "Accurate, Large Minibatch SGD"): every node applies the same
    averaged gradient, so with identical initial weights all models stay identical. Run as PyTorch's
    DistributedDataParallel runs it (Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel
    Training"): the flat gradient buffer is cut into buckets of whole parameters in reverse order (the first of
    `first_bucket_mb`, the others of `bucket_cap_mb`: DDP's 1 and 25 MiB by default), and an autograd hook starts a
    bucket's asynchronous allreduce as soon as every gradient in it has been accumulated, so the allreduces run
    while the backward pass computes the earlier layers; buckets start in order, so every node issues the same
    sequence. After the backward pass the node waits for all of them. A bucket is a slice of the buffer, so each
    coordinate is summed exactly as one flat allreduce sums it: the trajectory does not depend on the buckets.
    With `overlap` off: one allreduce of the whole buffer after the backward pass.
    """

    name = "allreduce"
    summary = "AllReduce SGD: gradients averaged over all nodes every step (synchronous, bucketed as DDP)"
    paper = "Goyal et al., 2017 (large-minibatch SGD)"
    Config = AllReduceConfig

    def __init__(self, node: Node, config: Any) -> None:
        super().__init__(node, config)
        self._buckets: list[torch.Tensor] = []  # views of node.grads, in launch order
        self._missing: list[int] = []  # per bucket: gradients not yet accumulated in this backward pass
        self._sizes: list[int] = []  # per bucket: parameters in it
        self._next = 0  # the next bucket to start
        self._pending: list[Any] = []  # started allreduces of this step

    def start(self) -> None:
        if not self.config.overlap:
            return
        node = self.node
        params = list(node.model.parameters())
        for k, (members, grads) in enumerate(ddp_buckets(node, self.config.first_bucket_mb, self.config.bucket_cap_mb)):
            self._buckets.append(grads)
            self._sizes.append(len(members))
            for i in members:
                node.on_gradient(params[i], lambda _p, k=k: self._ready(k))
        self._missing = list(self._sizes)

    def _ready(self, k: int) -> None:
        """Autograd accumulated one more gradient of bucket k: start every complete bucket that is next in line."""
        self._missing[k] -= 1
        while self._next < len(self._buckets) and self._missing[self._next] == 0:
            self._launch()

    def _launch(self) -> None:
        self._pending.append(self.node.comm.allreduce_mean_async(self._buckets[self._next], "grad"))
        self._next += 1

    def after_backward(self, step: int) -> None:
        if not self._buckets:
            self.node.comm.allreduce_mean(self.node.grads, "grad")
            self.count("allreduces")
            return
        while self._next < len(self._buckets):  # a parameter without a gradient this step: start the rest now
            self._launch()
        for pending in self._pending:
            pending.wait()
        self.count("allreduces")
        self.count("buckets", len(self._pending))
        self._pending.clear()
        self._missing = list(self._sizes)
        self._next = 0
