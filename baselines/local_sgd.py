"""Local SGD: H local steps, then the models are averaged over all nodes."""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.protocol import Algorithm


@dataclass(frozen=True)
class LocalSGDConfig:
    local_steps: int = 4  # H: local SGD steps between two global model averagings

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be at least 1, got {self.local_steps}")


class LocalSGD(Algorithm):
    """Local SGD (Stich 2019, "Local SGD Converges Fast and Communicates Little"; Lin et al. 2020).

    Each node takes H plain SGD steps on its own shard, then all models are replaced by their average with
    an allreduce. Optimizer state (momentum) stays local. With H = 1 and plain SGD this equals AllReduce SGD.
    """

    name = "local_sgd"
    summary = "Local SGD: H local steps, then models averaged over all nodes (synchronous)"
    paper = "Stich, ICLR 2019"
    Config = LocalSGDConfig

    def after_step(self, step: int) -> None:
        if (step + 1) % self.config.local_steps == 0:
            self.node.comm.allreduce_mean(self.node.params, "model")
            self.count("averagings")
