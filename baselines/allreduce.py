"""AllReduce SGD: synchronous data-parallel SGD, gradients averaged over all nodes every step."""

from __future__ import annotations

from bench.core.protocol import Algorithm


class AllReduceSGD(Algorithm):
    """Mini-batch SGD with the gradient averaged over all nodes by an allreduce each step.

    The standard baseline (e.g. Goyal et al. 2017, "Accurate, Large Minibatch SGD"): every node applies the
    same averaged gradient, so with identical initial weights all models stay identical.
    """

    name = "allreduce"
    summary = "AllReduce SGD: gradients averaged over all nodes every step (synchronous)"

    def after_backward(self, step: int) -> None:
        self.node.comm.allreduce_mean(self.node.grads, "grad")
        self.count("allreduces")
