"""Choco-SGD: decentralized SGD with compressed model differences and a consensus step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.core.compress import QSGD, CompressorOptions
from bench.core.protocol import Algorithm


@dataclass(frozen=True)
class ChocoConfig(CompressorOptions):
    gamma: float = 0.9  # consensus step size (the official code's default; its sign-compression runs use 0.45-0.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")


class Choco(Algorithm):
    """Choco-SGD (Koloskova, Stich, Jaggi, ICML 2019; Koloskova, Lin, Stich, Jaggi, ICLR 2020, "Decentralized Deep
    Learning with Arbitrary Communication Compression").

    After its SGD step (x_i <- x_i - lr g_i) every node compresses the difference between its model and its public
    copy x-hat_i, q_i = Q(x_i - x-hat_i), sends q_i to its neighbours, and every holder of x-hat_i adds the same
    q_i; s_i = sum_j W_ij x-hat_j is kept as one running sum (the official code's memory), so neighbours' copies
    are not stored. Then the consensus step x_i <- x_i + gamma (s_i - x-hat_i). The compressor Q is the cell's codec
    (`--bits`, `--quantizer`; 32 bits = none) or `--set choco.compressor=none|sign|topk|qsgd` (`bench.core.compress`;
    QSGD divided by its tau = 1 + min(d/s^2, sqrt(d)/s), the contractive rescaling of the paper's experiments): the
    algorithm encodes itself and the sender decodes its own message exactly as its receivers do
    (`Comm.gossip_encoded`), so all copies of x-hat_i stay identical. With no compression and gamma = 1 this is
    D-PSGD in its adapt-then-combine form.
    """

    name = "choco"
    summary = "Choco-SGD: SGD step, then exchange compressed model differences and a consensus step gamma"
    paper = "Koloskova et al., ICML 2019; ICLR 2020"
    Config = ChocoConfig
    model_copies = 7  # peak memory per node in the simulator, in models (measured, default MLP)
    quantizable = True

    def start(self) -> None:
        self.weights = self.node.comm.topology.mixing_weights(self.node.rank)
        self.copy = torch.zeros_like(self.node.params)  # x-hat_i, as every neighbour holds it
        self.mix = torch.zeros_like(self.node.params)  # s_i = sum_j W_ij x-hat_j
        self.compressor = self.config.build()
        n = self.node.params.numel()
        self.shrink = 1 / self.compressor.variance_bound(n) if isinstance(self.compressor, QSGD) else 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"copy": self.copy.clone(), "mix": self.mix.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.copy.copy_(state["copy"])
        self.mix.copy_(state["mix"])

    def after_step(self, step: int) -> None:
        x, w = self.node.params, self.weights
        q, theirs = self.node.comm.gossip_encoded(x - self.copy, "model", self.compressor)
        if self.shrink != 1:
            q.mul_(self.shrink)
            for qj in theirs.values():
                qj.mul_(self.shrink)
        self.copy.add_(q)
        self.mix.add_(q, alpha=w[self.node.rank])
        for peer, qj in theirs.items():
            self.mix.add_(qj, alpha=w[peer])
        x.add_(self.mix - self.copy, alpha=self.config.gamma)
        self.count("exchanges", int(bool(theirs)))
