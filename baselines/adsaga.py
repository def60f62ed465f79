"""ADSAGA: asynchronous SAGA on a parameter server, with a per-sample table of scalars (logistic regression)."""

from __future__ import annotations

from typing import Any

import torch

from bench.core.protocol import Algorithm

SERVER = 0  # the rank that holds x and the table's mean


class ADSAGA(Algorithm):
    """ADSAGA (Glasgow, Wootters, AISTATS 2022, "Asynchronous Distributed Optimization with Stochastic Delays",
    arXiv 2009.10717): SAGA on f = (1/n) sum_j f_j, the n samples split over the nodes' shards.

    Rank 0 is the server: it holds x and a-bar = (1/n) sum_j a_j, where a_j is the last gradient computed for sample
    j. Every node is a worker: it takes a mini-batch B of its shard at the last x it received (the server's own, at
    the current x: no delay) and corrects the batch's gradients by its table: c = sum_{j in B} (grad f_j - a_j),
    then a_j <- grad f_j. The server applies each worker's c as it arrives (`recv_any`: the delays are the real
    ones, or the simulator's clocks): x <- x - lr (c / |B| + a-bar (+ weight_decay x)), a-bar <- a-bar + c / n,
    and sends x back to that worker, which waits for it. Per update: one gradient up, one model down. The
    minibatch form is the natural one (Gazagnadou et al. 2019): a sample drawn twice in one batch counts once.
    One node is plain minibatch SAGA. Logistic regression only (`--model logreg`, the convex track): grad f_j(x) =
    s_j (x) [a_j, 1], s_j = softmax(x a_j) - e_(y_j), so the table keeps one C-vector s_j per sample instead of a
    gradient; it starts at zero. Momentum and Nesterov are not used (SAGA's step; no optimizer step is taken).
    The server serves size - 1 reports at each of its steps, which is every worker's step: all nodes take the
    same number of steps. Workers' models are the last x they received (evaluated as such).
    """

    name = "adsaga"
    summary = "ADSAGA: asynchronous SAGA, a server (rank 0) applies each node's corrected gradient on arrival (logreg)"
    paper = "Glasgow & Wootters, AISTATS 2022"
    model_copies = 9.2  # peak memory per node in the simulator, in models (measured: logreg, 4 epochs, 64-512 nodes)
    wants_batch = True
    models = ("logreg",)

    def start(self) -> None:
        node = self.node
        params = list(node.model.parameters())  # logistic regression: one linear layer, (C x d) and (C)
        classes = params[-1].numel() if len(params) == 2 else 0  # 0: a cost-only stand-in, which has no data
        self.weight, self.bias = params if classes else (None, None)
        shard = node.shard_sizes[node.rank] if node.shard_sizes else 0
        self.table = torch.zeros(shard, classes, device=node.params.device)
        self.n = max(1, sum(node.shard_sizes))
        self.mean = torch.zeros_like(node.params) if node.rank == SERVER else None
        self.workers = tuple(r for r in range(node.size) if r != SERVER)

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table.clone(), "mean": None if self.mean is None else self.mean.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.table.copy_(state["table"])
        if self.mean is not None:
            self.mean.copy_(state["mean"])

    def takes_step(self, step: int) -> bool:
        return False  # the server moves x itself; a worker takes the server's

    def correction(self) -> tuple[torch.Tensor, int]:
        """(sum over the batch of grad f_j - a_j, in the parameters' layout; batch size) at this node's x, and the
        table updated. No batch (a cost-only simulation): zeros, the same bytes."""
        node, batch = self.node, self.node.batch
        if batch is None or self.weight is None:
            return torch.zeros_like(node.params), 1
        with torch.no_grad():
            a = batch.x.reshape(len(batch.y), -1).to(node.params.dtype)
            s = torch.softmax(a @ self.weight.T + self.bias, dim=1)
            s[torch.arange(len(batch.y)), batch.y] -= 1.0
            first = _first_occurrences(batch.index)
            diff = (s - self.table[batch.index]) * first.unsqueeze(1)
            self.table[batch.index[first]] = s[first]
            return torch.cat([(diff.T @ a).reshape(-1), diff.sum(0)]), len(batch.y)

    def apply(self, c: torch.Tensor, batch: int) -> None:
        """The server's update for one report `c` of a batch of `batch` samples."""
        node = self.node
        group = node.optimizer.param_groups[0]
        c = c.to(node.params.device)
        step = c / batch + self.mean
        if group["weight_decay"]:
            step.add_(node.params, alpha=group["weight_decay"])
        node.params.sub_(step, alpha=group["lr"])
        self.mean.add_(c, alpha=1.0 / self.n)
        self.count("updates")

    def after_backward(self, step: int) -> None:
        node, comm = self.node, self.node.comm
        c, batch = self.correction()
        if node.rank != SERVER:
            comm.send(SERVER, c, "grad")
            node.params.copy_(comm.recv(SERVER, "model").to(node.params.device))
            return
        self.apply(c, batch)
        for _ in self.workers:
            peer, theirs = comm.recv_any(self.workers, "grad")
            self.apply(theirs, batch)
            comm.send(peer, node.params, "model")


def _first_occurrences(index: torch.Tensor) -> torch.Tensor:
    """True where a position of `index` holds its value for the first time."""
    _, inverse = torch.unique(index, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(index), dtype=torch.long, device=index.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(index), device=index.device), "amin")
    mask = torch.zeros(len(index), dtype=torch.bool, device=index.device)
    mask[first] = True
    return mask
