"""AD-PSGD: asynchronous decentralized SGD with atomic pairwise averaging."""

from __future__ import annotations

from bench.core.protocol import Algorithm


class ADPSGD(Algorithm):
    """AD-PSGD (Lian et al., ICML 2018, "Asynchronous Decentralized Parallel Stochastic Gradient Descent").

    Each step a node computes its gradient, averages its model atomically with one uniformly random
    neighbour (both end at the average), then applies the gradient to the averaged model. The passive
    neighbour is updated by the communicator while it keeps training; the exchange holds no lock across
    nodes, so it cannot deadlock at any node count, and it conserves the sum of all models exactly.
    """

    name = "adpsgd"
    summary = "AD-PSGD: each step, atomic pairwise average with one random neighbour (asynchronous)"
    paper = "Lian et al., ICML 2018"
    model_copies = 5.5  # peak memory per node in the simulator, in models (measured, default MLP)
    quantizable = True
    survives_failures = True  # a node picks its partner among the live neighbours each time

    def start(self) -> None:
        self.node.comm.expose(self.node.params)

    def after_backward(self, step: int) -> None:
        peer = self.node.random_neighbor()
        if peer is not None:
            self.node.comm.average_with(peer, "model")
            self.count("interactions")
