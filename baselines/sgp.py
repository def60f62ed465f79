"""SGP: Stochastic Gradient Push, push-sum gossip on a directed, time-varying graph."""

from __future__ import annotations

from typing import Any

import torch

from bench.core.protocol import Algorithm
from bench.core.topology import OnePeerExponential


class SGP(Algorithm):
    """Stochastic Gradient Push (Assran, Loizou, Ballas, Rabbat, ICML 2019, "Stochastic Gradient Push for
    Distributed Deep Learning").

    Each node keeps a push-sum numerator x_i and weight w_i (1 at the start); its model is the de-biased
    z_i = x_i / w_i, where the gradient is computed. The optimizer steps z_i and the same displacement is applied to
    x_i; then the node sends half of (x_i, w_i) to its one out-peer of this step on the one-peer exponential graph
    (i + 2^(k mod L) mod n), keeps the other half, adds what its in-peer sent (a directed, exactly-once `send` /
    `recv`: push-sum needs every half received exactly once) and sets z_i = x_i / w_i. The graph's own schedule
    replaces --topology. Weights stay 1 on this regular graph; the sums of x and w are conserved by every mixing.
    """

    name = "sgp"
    summary = "SGP: push-sum with one directed peer per step on the one-peer exponential graph (de-biased model)"
    paper = "Assran et al., ICML 2019"
    model_copies = 7  # peak memory per node in the simulator, in models (measured, default MLP)

    def start(self) -> None:
        node = self.node
        self.graph = OnePeerExponential(node.size)
        self.numerator = node.params.detach().to("cpu", torch.float32, copy=True)
        self.weight = torch.ones(1)
        self.before = torch.empty_like(node.params)

    def state_dict(self) -> dict[str, Any]:
        return {"numerator": self.numerator.clone(), "weight": self.weight.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.numerator, self.weight = state["numerator"].clone(), state["weight"].clone()

    def after_backward(self, step: int) -> None:
        self.before.copy_(self.node.params)  # z_i before the optimizer moves it

    def after_step(self, step: int) -> None:
        node = self.node
        self.numerator.add_((node.params - self.before).cpu())
        if node.size == 1:
            return
        half = torch.cat([self.numerator, self.weight]).mul_(0.5)
        node.comm.send(self.graph.out_peer(node.rank, step), half, "model")
        half.add_(node.comm.recv(self.graph.in_peer(node.rank, step), "model"))
        self.numerator, self.weight = half[:-1], half[-1:].clone()
        node.params.copy_((self.numerator / self.weight).to(node.params.device))
        self.count("pushes")
