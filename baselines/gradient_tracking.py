"""DSGT: decentralized SGD with gradient tracking (each node steps along an estimate of the average gradient)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bench.core.protocol import Algorithm

FORMS = ("atc", "cta")


@dataclass(frozen=True)
class GradientTrackingConfig:
    # atc: adapt then combine, x <- W (x - lr y); cta: combine then adapt, x <- W x - lr y
    form: str = "atc"

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got '{self.form}'")


class GradientTracking(Algorithm):
    """Decentralized stochastic gradient tracking, DSGT (Pu, Nedić, "Distributed Stochastic Gradient Tracking
    Methods", Math. Programming 2021; the tracking idea of Nedić, Olshevsky, Shi, SIAM J. Optim. 2017).

    Every node steps along a tracker y_i of the average gradient instead of its own gradient:
    y^{t+1} = W y^t + g^{t+1} - g^t with y^0 = g^0, and x^{t+1} = W (x^t - lr y^t) (`atc`, the default) or
    W x^t - lr y^t (`cta`). Written for any optimizer, it tracks the update instead of the gradient: with
    u = (model after the optimizer step) - (model before it) and a correction c (0 at the start), the node moves
    along u + c = -lr y: atc x <- W (x + u + c), cta x <- W x + u + c, then c <- W (c + u) - u. Both vectors travel
    in one message per neighbour (2 model sizes). The node average of c stays 0, so the node average moves by the
    average update; with plain SGD this is the textbook iteration.
    """

    name = "gradient_tracking"
    summary = "Gradient tracking (DSGT): step along a gossiped tracker of the average gradient (2 vectors/step)"
    paper = "Pu and Nedić, Math. Programming 2021"
    model_copies = 12.1  # peak memory per node in the simulator, in models (measured, default MLP, 4 epochs)
    Config = GradientTrackingConfig

    def start(self) -> None:
        self.weights = self.node.comm.topology.mixing_weights(self.node.rank)
        self.correction = torch.zeros_like(self.node.params)
        self.before = torch.empty_like(self.node.params)

    def state_dict(self) -> dict[str, Any]:
        return {"correction": self.correction.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.correction.copy_(state["correction"])

    def after_backward(self, step: int) -> None:
        self.before.copy_(self.node.params)  # x: the model before the optimizer's update u

    def after_step(self, step: int) -> None:
        node = self.node
        x, c, n = node.params, self.correction, node.params.numel()
        u = x - self.before
        first = self.before if self.config.form == "cta" else x + c  # cta mixes x, atc mixes x + u + c
        both = torch.cat([first, c + u])
        theirs = node.comm.neighbor_exchange(both, "model")
        mixed = both * self.weights[node.rank]
        for peer, m in theirs.items():
            mixed.add_(m, alpha=self.weights[peer])
        if self.config.form == "cta":
            x.copy_(mixed[:n]).add_(u + c)
        else:
            x.copy_(mixed[:n])
        c.copy_(mixed[n:]).sub_(u)
        self.count("exchanges", int(bool(theirs)))
