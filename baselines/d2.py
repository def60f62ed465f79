"""D² / Exact Diffusion: decentralized SGD that removes the bias heterogeneous data puts into D-PSGD."""

from __future__ import annotations

from typing import Any

import torch

from bench.core.protocol import Algorithm


class D2(Algorithm):
    """D² (Tang, Lian, Yan, Zhang, Liu, ICML 2018, "D²: Decentralized Training over Decentralized Data"), the same
    iteration as Exact Diffusion (Yuan et al., 2019) and NIDS (Li, Shi, Yan, 2019).

    x^{t+1} = W~ (2 x^t - x^{t-1} - lr (g^t - g^{t-1})), first step x^1 = W~ (x^0 - lr g^0), with
    W~ = (I + W) / 2: the iteration needs the mixing matrix's smallest eigenvalue above -1/3, and Metropolis-Hastings
    weights on an even ring sit exactly at -1/3. Written in its correction form so that any optimizer (momentum
    included) makes the local update u = (model after the optimizer step) - (model before it): every node sends
    v = x + u + c to its neighbours, x <- W~ v, and keeps the correction c <- x_new - x - u (c = 0 at the start).
    With plain SGD this is the textbook iteration; the node average follows the optimizer on the average gradient,
    and on deterministic heterogeneous problems the models converge to the exact optimum, not a biased point.
    """

    name = "d2"
    summary = "D² / Exact Diffusion: D-PSGD with a correction term that removes the data-heterogeneity bias"
    paper = "Tang et al., ICML 2018"
    model_copies = 6.2  # peak memory per node in the simulator, in models (measured, default MLP, 4 epochs)

    def start(self) -> None:
        w = self.node.comm.topology.mixing_weights(self.node.rank)
        self.weights = {j: wj / 2 for j, wj in w.items() if j != self.node.rank}  # W~ = (I + W) / 2, off-diagonal
        self.correction = torch.zeros_like(self.node.params)

    def state_dict(self) -> dict[str, Any]:
        return {"correction": self.correction.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.correction.copy_(state["correction"])

    def after_step(self, step: int) -> None:
        node = self.node
        x, c = node.params, self.correction
        v = x + c  # x_before + u + c: the optimizer already added u
        theirs = node.comm.neighbor_exchange(v, "model")
        # W~ v - v = sum_j W~_ij (v_j - v_i): differences of nearby models round far less than the models, and
        # the pair (i, j) adds opposite terms, so the sum of the corrections does not drift in float32.
        delta = torch.zeros_like(v)
        for peer, vj in theirs.items():
            delta.add_(vj - v, alpha=self.weights[peer])
        c.add_(delta)  # c = W~ v - (x_before + u)
        x.copy_(v).add_(delta)  # x = W~ v
        self.count("exchanges", int(bool(theirs)))
