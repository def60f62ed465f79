"""Minibatch SGD: K gradients at one point per node, averaged over all nodes, then one step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.core.protocol import Algorithm


@dataclass(frozen=True)
class MinibatchSGDConfig:
    local_steps: int = 4  # the run's H (--local-steps): K unless `accumulate` is set (local SGD's equal budget)
    accumulate: int = 0  # K: gradients each node computes at the same point per round (one step); 0 = local_steps

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be at least 1, got {self.local_steps}")
        if self.accumulate < 0:
            raise ValueError(f"accumulate must be at least 1 (or 0 for --local-steps), got {self.accumulate}")


class MinibatchSGD(Algorithm):
    """Minibatch SGD as the baseline of Woodworth, Patel, Stich, Dai, Bullins, McMahan, Shamir, Srebro (ICML 2020,
    "Is Local SGD Better than Minibatch SGD?").

    With the same budget as local SGD with H = K (K gradients per node and one communication per round), each
    node computes K stochastic gradients at the round's common point without stepping, the M K gradients are
    averaged with one allreduce, and every node takes one optimizer step (the gradients of an unfinished round at
    the end of the run are dropped). The models stay identical. With K = 1 this equals local SGD with H = 1 (and
    AllReduce SGD).
    """

    name = "minibatch_sgd"
    summary = "Minibatch SGD: K gradients at one point per node, one allreduce, one step (local SGD's budget)"
    paper = "Woodworth et al., ICML 2020"
    model_copies = 4.2  # peak memory per node in the simulator, in models (measured, default MLP, 4 epochs)
    Config = MinibatchSGDConfig

    def start(self) -> None:
        self.sum = torch.zeros_like(self.node.grads)

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.sum.clone()}  # the gradients of this round so far

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sum.copy_(state["sum"])

    def local_steps(self) -> int:
        return self.config.accumulate or self.config.local_steps

    def after_backward(self, step: int) -> None:
        node, k = self.node, self.local_steps()
        self.sum.add_(node.grads)
        if self.takes_step(step):
            node.grads.copy_(self.sum).div_(k)
            node.comm.allreduce_mean(node.grads, "grad")
            self.sum.zero_()
            self.count("allreduces")

    def takes_step(self, step: int) -> bool:
        return (step + 1) % self.local_steps() == 0
