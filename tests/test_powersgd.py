"""PowerSGD run by torch's own DDP hook over the comm layer (`Comm.process_group`): the identity with AllReduce SGD
at full rank (tests/test_related_algorithms.py, IDENTITIES), the rank-r mean and the closed-form bytes on the
simulator, the same models and bytes on real gloo processes, and the cost-only refusal."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from bench.base.errors import UserError
from bench.core.comm import ring_allreduce_bytes
from bench.core.protocol import Node, flatten_model
from bench.engine.processes.localworld import run_world
from bench.engine.sim.costonly import check
from bench.training.config import RunConfig
from bench.training.registry import ALGORITHMS
from tests.test_related_algorithms import _cluster

STEPS, START, RANK = 5, 2, 2
# Two layers: weights 12 x 16 and 10 x 12 are worth compressing at rank 2 ((n + m) r 2 < n m); biases are not.
P_SIZE, Q_SIZE, WHOLE = 12 * RANK + 10 * RANK, 16 * RANK + 12 * RANK, 12 + 10


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 12), nn.Linear(12, 10))


def _run(rank: int, world: int, comm, clock, means: list | None = None, **options) -> torch.Tensor:
    """PowerSGD's hooks for STEPS steps on node `rank`; each node's gradient is that of its own quadratic
    (params - center_rank), so the nodes' gradients differ and are full rank."""
    model = _model()
    params, grads = flatten_model(model)
    center = torch.randn(params.numel(), generator=torch.Generator().manual_seed(rank + 1))
    node = Node(
        rank, world, comm, clock, random.Random(rank), model, params, grads, torch.optim.SGD(model.parameters(), lr=0.1)
    )
    algo = ALGORITHMS["powersgd"](node, ALGORITHMS["powersgd"].Config(rank=RANK, start_iter=START, **options))
    comm.start_cell(None, 0)
    algo.start()
    for step in range(STEPS):
        grads.copy_(params - center)
        if means is not None:  # one bucket: its error is the whole buffer's
            error = algo.state.error_dict.get(0)
            before = node.views(grads + error if error is not None else grads.clone())  # what the hook compresses
        algo.after_backward(step)
        if means is not None:
            means.append((before, [g.clone() for g in node.views(grads)]))
        node.optimizer.step()
    comm.fence()
    comm.finish_cell()
    return params.clone()


def test_powersgd_sends_rank_r_factors_of_the_mean_and_the_closed_form_bytes():
    """Every node applies the same gradient; from step START on each weight matrix of it is a rank-r matrix that
    is the projection of the nodes' mean (error feedback included) onto its own column space (P orthonormal, Q the
    mean of the nodes' M^T P), and the biases are the exact mean. Bytes per node and step: one ring allreduce of the
    bucket before START, then three (the biases whole, the P factors, the Q factors)."""
    world = 3
    cluster = _cluster(world)
    seen: dict[int, list] = {r: [] for r in range(world)}
    finals = {}

    def body(rank: int) -> None:
        finals[rank] = _run(rank, world, cluster.comms[rank], cluster.clocks[rank], seen[rank])

    cluster.run(body)
    for step in range(STEPS):
        outs = [seen[r][step][1] for r in range(world)]
        for r in range(1, world):
            assert all(torch.equal(a, b) for a, b in zip(outs[0], outs[r], strict=True))
        mean = [sum(seen[r][step][0][k] for r in range(world)) / world for k in range(4)]
        whole = (0, 1, 2, 3) if step < START else (1, 3)  # the biases are never compressed
        assert all(torch.allclose(outs[0][k], mean[k], atol=1e-6) for k in whole)
        for k in () if step < START else (0, 2):  # the weight matrices: P P^T mean, P orthonormal of rank r
            out = outs[0][k]
            assert torch.linalg.matrix_rank(out) == RANK
            u, _, _ = torch.linalg.svd(out, full_matrices=False)
            u = u[:, :RANK]
            assert torch.allclose(u @ (u.t() @ mean[k]), out, atol=1e-5)
            assert not torch.allclose(out, mean[k], atol=1e-2)  # and it is a compression
    for comm in cluster.comms:
        grad = comm.stats.snapshot()["grad"]
        per_step = [ring_allreduce_bytes(4 * (WHOLE + 12 * 16 + 10 * 12), world)] * START + [
            sum(ring_allreduce_bytes(4 * n, world) for n in (WHOLE, P_SIZE, Q_SIZE))
        ] * (STEPS - START)
        assert grad["bytes_sent"] == grad["bytes_recv"] == sum(per_step)
        assert grad["msgs_sent"] == START + 3 * (STEPS - START)


TINY = {"first_bucket_mb": 1e-5, "bucket_cap_mb": 1e-5}  # buckets of a few bytes: one parameter each


def test_powersgd_with_a_bucket_per_parameter_runs_torchs_hook_per_bucket():
    """DDP's buckets as AllReduce SGD cuts them, here one per parameter (buckets of a few bytes): the hook runs
    once per bucket (its step counter moves once per step, on the last bucket), and the bytes are per bucket: one
    allreduce of it before START, then three (its whole tensors, its P, its Q: some of them empty)."""
    world = 3
    cluster = _cluster(world)
    cluster.run(lambda rank: _run(rank, world, cluster.comms[rank], cluster.clocks[rank], **TINY))
    numels, factors = (10, 120, 12, 192), {120: (10 * RANK, 12 * RANK), 192: (12 * RANK, 16 * RANK)}  # launch order
    early = sum(ring_allreduce_bytes(4 * n, world) for n in numels)
    late = sum(
        sum(ring_allreduce_bytes(4 * k, world) for k in ((0, *factors[n]) if n in factors else (n, 0, 0)))
        for n in numels
    )
    for comm in cluster.comms:
        grad = comm.stats.snapshot()["grad"]
        assert grad["bytes_sent"] == START * early + (STEPS - START) * late
        assert grad["msgs_sent"] == len(numels) * (START + 3 * (STEPS - START))


def _real(rank, world, comm):
    from bench.engine.processes.worker import WallClock

    return _run(rank, world, comm, WallClock(torch.device("cpu"))), comm.stats.snapshot()["grad"]


def test_powersgd_on_real_processes_matches_the_simulator(tmp_path):
    """3 gloo processes: torch's hook over the real comm layer moves the models exactly as on the simulator."""
    world = 3
    real = run_world(_real, world, tmp_path)
    cluster = _cluster(world)
    simulated = {}
    cluster.run(lambda rank: simulated.__setitem__(rank, _run(rank, world, cluster.comms[rank], cluster.clocks[rank])))
    for rank, (params, grad) in enumerate(real):
        assert torch.allclose(params, simulated[rank], atol=1e-6)
        assert grad == cluster.comms[rank].stats.snapshot()["grad"] | {"seconds": grad["seconds"]}


def test_cost_only_refuses_an_algorithm_that_needs_the_models_tensors():
    cfg = RunConfig.from_dict(
        {**RunConfig().to_dict(), "engine": "sim", "compute": "cost-only", "steps": 3, "algorithms": ("powersgd",)}
    )
    with pytest.raises(UserError, match="powersgd .*own tensors"):
        check(cfg)
