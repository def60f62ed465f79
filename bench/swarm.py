"""SwarmSGD: local steps, then a non-blocking average with one random neighbour."""

from __future__ import annotations

from dataclasses import dataclass

from bench.protocol import Algorithm


@dataclass(frozen=True)
class SwarmConfig:
    local_steps: int = 4  # H: local SGD steps between two interactions

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be at least 1, got {self.local_steps}")


class SwarmSGD(Algorithm):
    """SwarmSGD (Nadiradze, Sabour, Davies, Li, Alistarh, NeurIPS 2021, "Asynchronous Decentralized SGD with
    Quantized and Local Updates", arXiv 1910.12308).

    Each node takes H local SGD steps, then picks a neighbour uniformly at random, reads the neighbour's most
    recently published model without interrupting it (the neighbour keeps computing, so the copy may be one
    step stale) and replaces its own model by the average of the two. Every node publishes its model after
    each step. Optimizer state stays local.
    """

    name = "swarm"
    summary = "SwarmSGD: H local steps, then non-blocking average with one random neighbour's published model"
    Config = SwarmConfig

    def start(self) -> None:
        self.since = 0
        self.node.comm.publish(self.node.params)

    def after_step(self, step: int) -> None:
        node = self.node
        self.since += 1
        if self.since >= self.config.local_steps:
            self.since = 0
            peer = node.random_neighbor()
            if peer is not None:
                theirs = node.comm.read(peer, "model")
                node.params.add_(theirs).mul_(0.5)
                self.count("interactions")
        node.comm.publish(node.params)
