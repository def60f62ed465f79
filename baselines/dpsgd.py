"""D-PSGD: synchronous decentralized SGD with gossip over the topology."""

from __future__ import annotations

from bench.core.protocol import Algorithm


class DPSGD(Algorithm):
    """D-PSGD (Lian et al., NeurIPS 2017, "Can Decentralized Algorithms Outperform Centralized Algorithms?").

    Each step every node sends its model to its neighbours, replaces it by the Metropolis-Hastings weighted
    mix of its own and its neighbours' models, and applies its own gradient (computed at its pre-mix model):
    x_i <- sum_j W_ij x_j - lr * g_i(x_i). W is symmetric and doubly stochastic, so the mean is preserved.
    """

    name = "dpsgd"
    summary = "D-PSGD: each step, mix models with topology neighbours (Metropolis-Hastings), then apply gradient"
    quantizable = True

    def start(self) -> None:
        self.weights = self.node.comm.topology.mixing_weights(self.node.rank)

    def after_backward(self, step: int) -> None:
        node = self.node
        theirs = node.comm.neighbor_exchange(node.params, "model")
        if not theirs:
            return
        mixed = node.params * self.weights[node.rank]
        for peer, x in theirs.items():
            mixed.add_(x, alpha=self.weights[peer])
        node.params.copy_(mixed)
        self.count("exchanges")
