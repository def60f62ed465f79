"""D-PSGD: synchronous decentralized SGD with gossip over the topology."""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.protocol import Algorithm

FORMS = ("cta", "atc")


@dataclass(frozen=True)
class DPSGDConfig:
    # cta: combine then adapt, x <- W x - lr g (Lian et al.); atc: adapt then combine, x <- W (x - lr g)
    form: str = "cta"

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got '{self.form}'")


class DPSGD(Algorithm):
    """D-PSGD (Lian et al., NeurIPS 2017, "Can Decentralized Algorithms Outperform Centralized Algorithms?").

    Each step every node sends its model to its neighbours and replaces it by the Metropolis-Hastings weighted
    mix of its own and its neighbours' models. `cta` (default, the paper's form) mixes the models before the
    optimizer step and applies the gradient computed at the pre-mix model: x_i <- sum_j W_ij x_j - lr * g_i(x_i).
    `atc` steps first and mixes the stepped models: x_i <- sum_j W_ij (x_j - lr * g_j), the form Choco-SGD and
    DecentLaM reduce to. W is symmetric and doubly stochastic, so the mean is preserved.
    """

    name = "dpsgd"
    summary = "D-PSGD: each step, mix models with topology neighbours (Metropolis-Hastings), then apply gradient"
    paper = "Lian et al., NeurIPS 2017"
    model_copies = 5.2  # peak memory per node in the simulator, in models (measured, default MLP, 4 epochs)
    Config = DPSGDConfig
    quantizable = True

    def start(self) -> None:
        self.weights = self.node.comm.topology.mixing_weights(self.node.rank)

    def after_backward(self, step: int) -> None:
        if self.config.form == "cta":
            self._mix()

    def after_step(self, step: int) -> None:
        if self.config.form == "atc":
            self._mix()

    def _mix(self) -> None:
        node = self.node
        theirs = node.comm.neighbor_exchange(node.params, "model")
        if not theirs:
            return
        mixed = node.params * self.weights[node.rank]
        for peer, x in theirs.items():
            mixed.add_(x, alpha=self.weights[peer])
        node.params.copy_(mixed)
        self.count("exchanges")
