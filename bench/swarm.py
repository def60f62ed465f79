"""SwarmSGD: local steps, then an average with one random neighbour, non-blocking by default."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.core.protocol import Algorithm

LOCAL_STEPS_DISTS = ("fixed", "geometric")
SWARM_MODES = ("nonblocking", "blocking", "pushpull")


@dataclass(frozen=True)
class SwarmConfig:
    local_steps: int = 4  # H: (mean) local SGD steps between two interactions
    local_steps_dist: str = "fixed"  # fixed: exactly H; geometric: random with mean H (the paper's analysis)
    # nonblocking: only the initiator moves (the authors' code); blocking: both move atomically; pushpull: both
    # move, the partner when it next steps (the paper's analysis), neither waits for the other
    swarm_mode: str = "nonblocking"

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise ValueError(f"local_steps must be at least 1, got {self.local_steps}")
        if self.local_steps_dist not in LOCAL_STEPS_DISTS:
            raise ValueError(f"local_steps_dist must be one of {', '.join(LOCAL_STEPS_DISTS)}")
        if self.swarm_mode not in SWARM_MODES:
            raise ValueError(f"swarm_mode must be one of {', '.join(SWARM_MODES)}")


class SwarmSGD(Algorithm):
    """SwarmSGD (Nadiradze, Sabour, Davies, Li, Alistarh, NeurIPS 2021, "Asynchronous Decentralized SGD with
    Quantized and Local Updates", arXiv 1910.12308).

    Each node takes H local SGD steps (H fixed, or geometric with mean H), then picks a neighbour uniformly
    at random and averages with it. Non-blocking (default): it reads the neighbour's most recently published
    (possibly quantized) model without interrupting it — the neighbour keeps computing, so the copy may be
    stale — and only the initiator moves to the average. Blocking: both move to the average atomically.
    Pull-push: the initiator reads the neighbour's published copy as in non-blocking mode, moves to the average
    and leaves the opposite move in the neighbour's inbox, which the neighbour folds in before its next step, so
    both endpoints move and the sum of models is conserved, as in the paper's analysis, without either waiting
    for the other (`Comm.pull_push`). Every node publishes its model after each step (non-blocking, pull-push).
    Optimizer state stays local.
    """

    name = "swarm"
    summary = "SwarmSGD: H local steps, then average with one random neighbour's published model (non-blocking)"
    paper = "Nadiradze et al., NeurIPS 2021"
    Config = SwarmConfig
    quantizable = True
    survives_failures = True  # a node picks its partner among the live neighbours each time

    def start(self) -> None:
        self.steps_done = 0
        self.until = self._draw()
        mode = self.config.swarm_mode
        if mode != "nonblocking":
            self.node.comm.expose(self.node.params)
        if mode != "blocking":
            self.node.comm.publish(self.node.params, stamp=0)

    def state_dict(self) -> dict[str, Any]:
        return {"steps_done": self.steps_done, "until": self.until}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done, self.until = state["steps_done"], state["until"]
        if self.config.swarm_mode != "blocking":  # what peers read is the model it had after its last step
            self.node.comm.publish(self.node.params, stamp=self.steps_done)

    def _draw(self) -> int:
        """Local steps before the next interaction."""
        h = self.config.local_steps
        if self.config.local_steps_dist == "fixed" or h == 1:
            return h
        # Geometric on {1, 2, ...} with mean h (success probability 1/h), from this node's own stream.
        u = 1.0 - self.node.rng.random()
        return 1 + int(math.log(u) / math.log(1.0 - 1.0 / h))

    def after_step(self, step: int) -> None:
        node = self.node
        self.steps_done += 1
        self.until -= 1
        if self.until <= 0:
            self.until = self._draw()
            peer = node.random_neighbor()
            if peer is not None:
                mode = self.config.swarm_mode
                if mode == "blocking":
                    node.comm.average_with(peer, "model")
                else:
                    if mode == "pushpull":
                        stamp = node.comm.pull_push(peer, "model")
                    else:
                        stamp = self._average_read(peer)
                    # Relative progress (may be negative); the copy's age is measured by the comm layer.
                    self.count("step_lag_sum", self.steps_done - stamp)
                    self.count("reads")
                self.count("interactions")
        if self.config.swarm_mode != "blocking":
            node.comm.publish(node.params, stamp=self.steps_done)

    def _average_read(self, peer: int) -> int:
        """Move to the average with the peer's published model (read without interrupting it); returns the copy's
        stamp. The read copy is dropped on return, before the next publish."""
        theirs, stamp = self.node.comm.read(peer, "model", self.node.params)
        self.node.params.add_(theirs).mul_(0.5)
        return stamp
