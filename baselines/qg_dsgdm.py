"""QG-DSGDm: decentralized momentum SGD whose momentum buffer tracks the global model's movement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.core.protocol import Algorithm


@dataclass(frozen=True)
class QGDSGDmConfig:
    mu: float = 0.9  # averaging factor of the quasi-global buffer: m <- mu m + (1 - mu) d (the official code's 0.9)

    def __post_init__(self) -> None:
        if not 0 <= self.mu <= 1:
            raise ValueError(f"mu must be in [0, 1], got {self.mu}")


class QGDSGDm(Algorithm):
    """Quasi-global momentum, QG-DSGDm (Lin, Karimireddy, Stich, Jaggi, ICML 2021, "Quasi-global Momentum:
    Accelerating Decentralized Deep Learning on Heterogeneous Data").

    The local momentum buffer is replaced by a quasi-global one, m, built from the node's model change across a
    whole step, gossip included, instead of from its own gradients. Each step the optimizer (momentum beta =
    --momentum) starts from the buffer m: x+1/2 = x - lr (beta m + g); the node mixes
    x+ = sum_j W_ij x_j+1/2 with its neighbours (adapt then combine), then sets d = (x - x+) / lr and
    m <- mu m + (1 - mu) d, which the optimizer uses at the next step: its momentum buffers view one flat tensor
    that is reset to m after every step, so torch's momentum, Nesterov and weight decay apply unchanged. With
    beta = 0 it is D-PSGD in its adapt-then-combine form.
    """

    name = "qg_dsgdm"
    summary = "QG-DSGDm: D-PSGD whose momentum buffer averages the model's movement, gossip included"
    paper = "Lin et al., ICML 2021"
    model_copies = 6.2  # peak memory per node in the simulator, in models (measured, default MLP, 4 epochs)
    Config = QGDSGDmConfig

    def start(self) -> None:
        node = self.node
        self.weights = node.comm.topology.mixing_weights(node.rank)
        self.m_hat = torch.zeros_like(node.params)  # m
        self.buffer = torch.zeros_like(node.params)  # m before each step; the optimizer's step makes it beta m + g
        self.before = torch.empty_like(node.params)
        self._link_buffers()

    def _link_buffers(self) -> None:
        """The optimizer's momentum buffers become views of `buffer` (in flatten_model's order)."""
        node, offset = self.node, 0
        for p in node.model.parameters():
            n = p.numel()
            node.optimizer.state[p]["momentum_buffer"] = self.buffer[offset : offset + n].view_as(p)
            offset += n

    def state_dict(self) -> dict[str, Any]:
        return {"m_hat": self.m_hat.clone(), "buffer": self.buffer.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The optimizer's own load gave it fresh momentum tensors: point them back at `buffer`."""
        self.m_hat.copy_(state["m_hat"])
        self.buffer.copy_(state["buffer"])
        self._link_buffers()

    def after_backward(self, step: int) -> None:
        self.before.copy_(self.node.params)

    def after_step(self, step: int) -> None:
        node = self.node
        x = node.params
        theirs = node.comm.neighbor_exchange(x, "model")
        mixed = x * self.weights[node.rank]
        for peer, xj in theirs.items():
            mixed.add_(xj, alpha=self.weights[peer])
        x.copy_(mixed)
        self.count("exchanges", int(bool(theirs)))
        lr = node.optimizer.param_groups[0]["lr"]
        if lr:  # d = (x - x+) / lr is undefined at a zero learning rate, which moves nothing anyway
            self.m_hat.mul_(self.config.mu).add_(self.before.sub_(x).div_(lr), alpha=1 - self.config.mu)
        self.buffer.copy_(self.m_hat)
