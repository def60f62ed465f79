"""The one protocol every algorithm implements, and the per-node handle it is given.

An algorithm is written once against `Node` (its rank, its communicator, its clock, its own model and
optimizer) and a few hooks that the shared training loop (`bench.training.loop`) calls around each SGD step.
It never imports MPI, Horovod or `time`, nor calls torch.distributed itself: engines provide `Node.comm` and
`Node.clock` (library code written against a process group, such as torch's PowerSGD hook, gets
`Comm.process_group`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from bench.core.comm import Comm


class Clock(Protocol):
    """Where time goes. Real engine: wall clock. Simulated engine: the node's virtual clock."""

    def now(self) -> float: ...

    def compute(self) -> contextlib.AbstractContextManager:
        """Wraps one local computation (forward/backward or optimizer step); the simulator charges its cost."""
        ...


@dataclass
class Batch:
    """This step's mini-batch, for algorithms that keep per-sample state (`Algorithm.wants_batch`)."""

    index: torch.Tensor  # each sample's position in this node's shard (0 .. shard size - 1)
    x: torch.Tensor  # the inputs the model saw (augmented, where the dataset augments)
    y: torch.Tensor


@dataclass
class Node:
    """Everything one node owns. `params` and `grads` are flat buffers; the model's tensors are views of them."""

    rank: int
    size: int
    comm: Comm
    clock: Clock
    rng: random.Random  # this node's own stream (peer choices); seeded from (seed, rank)
    model: nn.Module
    params: torch.Tensor
    grads: torch.Tensor
    optimizer: torch.optim.Optimizer
    shard_sizes: tuple[int, ...] = ()  # samples in each node's shard, by rank (empty where there is no data)
    batch: Batch | None = None  # from the forward/backward to `after_backward`, when the algorithm `wants_batch`
    # Each parameter's number of coordinates as the engine charges it, in parameter order (empty: the model's own).
    # A cost-only simulation's stand-in model has the workload's parameter list with a few coordinates in each, and
    # charges each as the workload's: what an algorithm sizes by bytes (AllReduce SGD's buckets) reads `numels()`.
    charged_numels: tuple[int, ...] = ()
    # The gradient hooks registered through `on_gradient`, in registration order: (parameter, hook).
    gradient_hooks: list[tuple[torch.Tensor, Callable[[torch.Tensor], None]]] = field(default_factory=list)
    # False where the engine runs no backward pass and calls the recorded gradient hooks itself (cost-only).
    backward: bool = True

    def random_neighbor(self) -> int | None:
        peers = self.comm.neighbors()
        return peers[self.rng.randrange(len(peers))] if peers else None

    def numels(self) -> list[int]:
        """Each parameter's number of coordinates as the engine charges it, in parameter order."""
        return list(self.charged_numels) or [p.numel() for p in self.model.parameters()]

    def on_gradient(self, p: torch.Tensor, hook: Callable[[torch.Tensor], None]) -> None:
        """Call `hook(p)` each time the backward pass has accumulated parameter `p`'s gradient into `p.grad` (a
        post-accumulate-grad hook), in the middle of the forward/backward compute section. An engine that runs no
        backward pass (`backward` False: a cost-only simulation, whose stand-in parameters require no gradient)
        calls the hooks recorded in `gradient_hooks` as one would."""
        if self.backward:  # torch refuses a parameter that requires no gradient, as it should
            p.register_post_accumulate_grad_hook(hook)
        self.gradient_hooks.append((p, hook))

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-tensor views of a flat, model-sized buffer (`params`, `grads`, or one of the algorithm's own): one
        per parameter, in parameter order, shaped as it (matrices for PowerSGD, per-tensor norms). Writing a view
        writes the buffer."""
        out, offset = [], 0
        for p in self.model.parameters():
            out.append(flat[offset : offset + p.numel()].view(p.shape))
            offset += p.numel()
        if offset != flat.numel():
            raise ValueError(f"a buffer of {flat.numel()} values is not model-sized ({offset} parameters)")
        return out


@dataclass(frozen=True)
class NoConfig:
    """For algorithms without options of their own."""


class Algorithm:
    """Base class: hooks are no-ops; an algorithm overrides the ones it needs.

    Order per step: forward/backward -> `after_backward` -> optimizer step (when `takes_step`) -> `after_step`.
    The optimizer's lr is already this step's in `after_backward`.
    `counters` are what the algorithm itself did (interactions, averagings); the comm layer counts bytes.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `swarmbench list`
    paper: ClassVar[str] = ""  # the paper it implements, short form (authors, venue year), shown by `swarmbench list`
    Config: ClassVar[type] = NoConfig
    quantizable: ClassVar[bool] = False  # exchanges models through the codec (--bits applies)
    # Model-sized float32 buffers a node holds at once, at most: parameters, gradients, momentum, and what the
    # algorithm keeps or has in flight (messages, copies of its own). The simulator's memory estimate
    # (`bench.engine.sim.cluster.estimate_bytes`) is built on it; `tests/test_sim_memory.py` measures it.
    model_copies: ClassVar[float] = 4
    # Works on the model's tensors one by one (`Node.views`), not only on the flat buffers: a cost-only
    # simulation, whose stand-in model has none of the workload's tensors, cannot run it.
    needs_tensors: ClassVar[bool] = False
    wants_batch: ClassVar[bool] = False  # the loop hands it each step's mini-batch (`Node.batch`)
    models: ClassVar[tuple[str, ...]] = ()  # the only `--model`s it runs on (empty: any); `--algo all` skips the others
    # Whether it can go on when a node fails (`--on-failure continue`): its nodes need no particular peer, so the
    # engines drop the failed node from `comm.neighbors()` and the survivors finish. A synchronous algorithm (a
    # collective, or an exchange with fixed neighbours, every step) cannot: its cell ends as failed.
    survives_failures: ClassVar[bool] = False

    def __init__(self, node: Node, config: Any) -> None:
        self.node = node
        self.config = config
        self.counters: dict[str, float] = {}

    def count(self, key: str, n: float = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def start(self) -> None:
        """Before the first step (all nodes hold identical initial weights here)."""

    def after_backward(self, step: int) -> None:
        """Gradients of this step are in `node.grads`; the optimizer has not stepped yet."""

    def takes_step(self, step: int) -> bool:
        """Whether the optimizer steps after this backward pass (False: the algorithm accumulates gradients)."""
        return True

    def after_step(self, step: int) -> None:
        """The optimizer has applied this step's update to `node.params` (if `takes_step`)."""

    def finish(self) -> None:
        """After the last step, before the final evaluation."""

    def state_dict(self) -> dict[str, Any]:
        """What the algorithm carries from one step to the next beyond the node's model, optimizer and random
        stream (SGP's push-sum weight, Choco's public copy, ...): a checkpoint saves it between two steps. The
        default is for algorithms that carry nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what `state_dict` returned, on a node that has just run `start` and got its model back."""

    def local_steps(self) -> int:
        """H as reported in result tables (1 for algorithms that communicate every step)."""
        return int(getattr(self.config, "local_steps", 1))


def flatten_model(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Move all parameters (and their gradients) into two flat buffers and make the model use views of them.

    One buffer means one message per exchange and one allreduce per step, and lets the comm layer treat
    every model as a plain vector. Autograd accumulates into existing `.grad` views in place.
    """
    ps = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in ps]) if ps else torch.zeros(0)
    grads = torch.zeros_like(flat)
    offset = 0
    for p in ps:
        n = p.numel()
        p.data = flat[offset : offset + n].view_as(p)
        p.grad = grads[offset : offset + n].view_as(p)
        offset += n
    return flat, grads
