"""Overlap-Local-SGD: local SGD pulled towards an anchor model that is averaged in the background."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.core.protocol import Algorithm

if TYPE_CHECKING:
    from bench.core.comm import Pending


@dataclass(frozen=True)
class OverlapLocalSGDConfig:
    local_steps: int = 4  # the run's H (--local-steps): tau unless `tau` is set
    tau: int = 0  # local steps between two pulls (the paper's ICASSP runs: 2); 0 = local_steps
    alpha: float = 0.6  # pull towards the anchor: x <- (1 - alpha) x + alpha z (the paper's ICASSP runs: 0.6)

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be at least 1, got {self.local_steps}")
        if self.tau < 0:
            raise ValueError(f"tau must be at least 1 (or 0 for --local-steps), got {self.tau}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


class OverlapLocalSGD(Algorithm):
    """Overlap-Local-SGD (Wang, Liang, Joshi, ICASSP 2020, "Overlap Local-SGD: An Algorithmic Approach to Hide
    Communication Delays in Distributed SGD"), the basic variant (no anchor momentum).

    Every node runs local SGD. Every tau steps it waits for the allreduce it started tau steps earlier, whose
    mean is the new anchor z (initially the common starting model), pulls its model towards it,
    x <- (1 - alpha) x + alpha z, and starts averaging the pulled model in the background: the allreduce overlaps
    the next tau local steps. Anchors are identical on all nodes.
    """

    name = "overlap_local_sgd"
    summary = "Overlap-Local-SGD: local SGD pulled towards an anchor averaged in the background every tau steps"
    paper = "Wang, Liang, Joshi, ICASSP 2020"
    Config = OverlapLocalSGDConfig
    model_copies = 5  # peak memory per node in the simulator, in models (measured, default MLP)

    def start(self) -> None:
        self.anchor = self.node.params.detach().clone()
        self.sending = self.anchor.clone()
        self.pending: Pending | None = None

    def local_steps(self) -> int:
        return self.config.tau or self.config.local_steps

    def after_step(self, step: int) -> None:
        if (step + 1) % self.local_steps():
            return
        self._land()
        x, alpha = self.node.params, self.config.alpha
        x.mul_(1 - alpha).add_(self.anchor, alpha=alpha)
        self.sending.copy_(x)
        self.pending = self.node.comm.allreduce_mean_async(self.sending, "model")
        self.count("pulls")

    def state_dict(self) -> dict[str, Any]:
        self._land()  # the background average completes first (what the next pull would wait for anyway)
        return {"anchor": self.anchor.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchor.copy_(state["anchor"])

    def finish(self) -> None:
        self._land()  # no allreduce may stay in flight past the cell

    def _land(self) -> None:
        if self.pending is not None:
            self.pending.wait()
            self.anchor.copy_(self.sending)
            self.pending = None
