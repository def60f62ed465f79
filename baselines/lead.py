"""LEAD: a primal-dual decentralized method (NIDS / D²) that communicates compressed differences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.core.compress import CompressorOptions
from bench.core.protocol import Algorithm


@dataclass(frozen=True)
class LEADConfig(CompressorOptions):
    alpha: float = 0.5  # memory step: h <- h + alpha q (theory: about 1 / (1 + compression variance))
    gamma: float = 1.0  # dual step: d <- d + gamma / (2 lr) (y-hat - W y-hat); 1 recovers NIDS / D²

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")


class LEAD(Algorithm):
    """LEAD (Liu, Li, Wang, Tang, Yan, ICLR 2021, "Linear Convergent Decentralized Optimization with Compression").

    NIDS / D² written as a primal-dual method, with the exchanged vector replaced by a compressed difference
    against a memory h_i that the node and its neighbours update alike. Each step, with d_i the dual variable (0 at
    the start) and u_i the optimizer's update (-lr g_i for plain SGD, the paper's optimizer): y_i = x_i + u_i -
    lr d_i; q_i = C(y_i - h_i) is sent to the neighbours; with y-hat_i = h_i + q_i,
    d_i <- d_i + gamma / (2 lr) (y-hat_i - (W y-hat)_i), where h_i - (W h)_i is kept as one running sum
    (neighbours' memories are not stored); h_i <- h_i + alpha q_i, the sum likewise; and x_i <- x_i + u_i - lr d_i.
    The compressor is the cell's codec (`--bits`, `--quantizer`; 32 bits = none) or `--set lead.compressor=...`
    (`bench.core.compress`; the paper's are unbiased: `qsgd`), used exactly as Choco-SGD uses it
    (`Comm.gossip_encoded`), so every copy of h_i stays identical. The sum of the d_i stays 0, so the node average
    moves by the average update, and the models reach the exact optimum despite (unbiased) compression. Correcting
    the optimizer's update rather than the gradient (as `d2` does) lets momentum apply to the gradient alone, an
    extension the paper does not analyse. Unlike the paper, the first step communicates too (its
    x^1 = x^0 - lr g^0 is this step with the exchange left out): with no compression and gamma = 1 LEAD is then
    D² (`d2`) from the first step on, for any alpha and any optimizer (at a constant learning rate: d is in
    gradient units, c = -lr d in D²'s).
    """

    name = "lead"
    summary = "LEAD: primal-dual NIDS/D² with compressed differences against a shared memory (exact under compression)"
    paper = "Liu et al., ICLR 2021"
    model_copies = 9.2  # peak memory per node in the simulator, in models (measured, default MLP, 4 epochs)
    Config = LEADConfig
    quantizable = True

    def start(self) -> None:
        node = self.node
        self.weights = node.comm.topology.mixing_weights(node.rank)
        self.dual = torch.zeros_like(node.params)  # d_i
        self.memory = torch.zeros_like(node.params)  # h_i, as every neighbour holds it
        self.gap = torch.zeros_like(node.params)  # h_i - sum_j W_ij h_j
        self.compressor = self.config.build()

    def state_dict(self) -> dict[str, Any]:
        return {"dual": self.dual.clone(), "memory": self.memory.clone(), "gap": self.gap.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("dual", "memory", "gap"):
            getattr(self, key).copy_(state[key])

    def after_step(self, step: int) -> None:
        node = self.node
        x, d = node.params, self.dual  # x: x_i + u_i, the optimizer has stepped
        lr = node.optimizer.param_groups[0]["lr"]
        if lr == 0:  # the dual step gamma / (2 lr) is undefined, and a zero learning rate moves nothing anyway
            return
        cfg = self.config
        x.sub_(d, alpha=lr)  # y_i
        q, theirs = node.comm.gossip_encoded(x - self.memory, "model", self.compressor)  # q_i = C(y_i - h_i)
        # (I - W) q as sum_j W_ij (q_i - q_j): the pair (i, j) adds opposite terms, so sum_i d_i stays 0 in float32.
        spread = torch.zeros_like(q)
        for peer, qj in theirs.items():
            spread.add_(q - qj, alpha=self.weights[peer])
        step_d = (self.gap + spread).mul_(cfg.gamma / (2 * lr))  # y-hat - W y-hat = (h - W h) + (I - W) q
        d.add_(step_d)
        x.sub_(step_d, alpha=lr)  # x_i + u_i - lr d_i with the new d_i
        self.gap.add_(spread, alpha=cfg.alpha)
        self.memory.add_(q, alpha=cfg.alpha)
        self.count("exchanges", int(bool(theirs)))
