"""OSGP: Overlap SGP, push-sum whose messages are consumed one step after they are sent (1-stale)."""

from __future__ import annotations

from typing import Any

import torch

from baselines.sgp import SGP


class OSGP(SGP):
    """Overlap Stochastic Gradient Push (Assran, Loizou, Ballas, Rabbat, ICML 2019), with staleness tau = 1 as in
    the official code (overlap on, `synch_freq` 0).

    At the start of iteration k a node adds the half (x, w) its in-peer sent at the start of iteration k - 1,
    halves its own (x, w) and sends that half to its out-peer of iteration k without waiting, then computes its
    gradient at z = x / w (halving does not move z) and steps the numerator. So the message is in flight during a
    whole forward/backward pass: the wait for it overlaps the next step's compute. Here the start of iteration
    k + 1 is the end of `after_step(k)`, and the first step sends its half after its backward pass (no message
    from an earlier step to overlap there); `finish` adds the half sent at the
    last step, so no mass stays in flight and the sums of x and w are conserved. With a learning rate of 0 the
    models mix exactly as SGP's (the same halvings, one step later). One vector and one weight per step to one
    peer, plus that last message: steps + 1 messages per node.
    """

    name = "osgp"
    summary = "OSGP: SGP whose push-sum messages are consumed one step later, overlapping the next step's compute"
    paper = "Assran et al., ICML 2019"

    def start(self) -> None:
        super().start()
        self.last_push = -1  # the iteration whose half is in flight (-1: none)

    def after_backward(self, step: int) -> None:
        super().after_backward(step)
        if self.last_push < step and self.node.size > 1:  # the first step: its half goes out now (z does not move)
            self._push(step)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_push": self.last_push}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Between two steps the kept half equals the half in flight, which the receiver had not added when the
        checkpoint was taken: send it again, so it arrives exactly once in the resumed run."""
        super().load_state_dict(state)
        self.last_push = state["last_push"]
        if self.last_push >= 0:
            peer = self.graph.out_peer(self.node.rank, self.last_push)
            self.node.comm.send(peer, torch.cat([self.numerator, self.weight]), "model")

    def after_step(self, step: int) -> None:
        node = self.node
        self.numerator.add_((node.params - self.before).cpu())
        if node.size == 1:
            return
        self._receive(step)
        self._push(step + 1)
        self.count("pushes")

    def finish(self) -> None:
        if self.last_push >= 0:  # the half sent at the start of the iteration that did not run
            self._receive(self.last_push)
            self.last_push = -1

    def _push(self, iteration: int) -> None:
        """Halve (x, w) and send one half to this iteration's out-peer (z = x / w does not move)."""
        node = self.node
        self.weight = self.weight * 0.5
        self.numerator.mul_(0.5)
        node.comm.send(self.graph.out_peer(node.rank, iteration), torch.cat([self.numerator, self.weight]), "model")
        self.last_push = iteration

    def _receive(self, iteration: int) -> None:
        """Add the half the in-peer sent at the start of `iteration`, and de-bias."""
        node = self.node
        half = node.comm.recv(self.graph.in_peer(node.rank, iteration), "model")
        self.numerator.add_(half[:-1])
        self.weight = self.weight + half[-1:]
        node.params.copy_((self.numerator / self.weight).to(node.params.device))
