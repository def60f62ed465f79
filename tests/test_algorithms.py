"""Every algorithm on real processes: identities against each other and against a naive reference."""

from __future__ import annotations

import pytest
import torch

from bench.engine.processes.localworld import run_world
from bench.training.config import RunConfig


def _train(rank, world, comm, cfg_dict, algorithms):
    from bench.core.data import load_dataset
    from bench.engine.processes.worker import WallClock
    from bench.training.loop import make_shards, run_cell

    cfg = RunConfig.from_dict(cfg_dict)
    data = load_dataset(cfg.dataset, cfg.seed)
    shards = make_shards(cfg, data)
    rows: list[dict] = []
    out = {}
    for name in algorithms:
        node = run_cell(
            cfg, name, data, shards, rank, comm, WallClock(torch.device("cpu")), torch.device("cpu"), rows.append
        )
        out[name] = node.params.clone()
    return out, rows


def _cfg(world: int, **kw) -> dict:
    base = dict(nodes=world, dataset="digits", model="mlp", epochs=1, batch_size=16, lr=0.05, momentum=0.0)
    base.update(kw)
    return RunConfig(**base).to_dict()


@pytest.mark.parametrize("world", [3])
def test_local_sgd_h1_equals_allreduce(tmp_path, world):
    """Identity: with H = 1 and plain SGD, averaging models after each step == averaging gradients."""
    results = run_world(_train, world, tmp_path, _cfg(world, local_steps=1), ["allreduce", "local_sgd"])
    for params, _ in results:
        assert torch.allclose(params["allreduce"], params["local_sgd"], atol=1e-5)
    # AllReduce SGD keeps all replicas identical.
    assert all(torch.equal(results[0][0]["allreduce"], r[0]["allreduce"]) for r in results)


# The MLP's gradient (26,122 parameters on 8x8 digits) in 3 buckets: [last layer], [middle layer], [first layer].
SMALL_BUCKETS = {"first_bucket_mb": 0.002, "bucket_cap_mb": 0.02}


def _allreduce_variants(rank, world, comm, cfg_dicts):
    """AllReduce SGD once per config on the same world; final parameters (as lists) and the records."""
    out = []
    for cfg_dict in cfg_dicts:
        (params, rows) = _train(rank, world, comm, cfg_dict, ["allreduce"])
        out.append((params["allreduce"].tolist(), rows))
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_bucketed_overlapped_allreduce_follows_the_flat_allreduce(tmp_path, world):
    """DDP-style buckets, allreduced from autograd hooks during the backward pass, give the flat allreduce's
    trajectory and its closed-form bytes (summed per bucket). Two summands add up the same in any order, so at 2
    nodes the models are bitwise equal; at 3, gloo's ring starts each coordinate's sum at a rank that depends on
    where the coordinate lies in the message, so slices may round the last bit differently."""
    from baselines.allreduce import bucket_slices
    from bench.core.comm import ring_allreduce_bytes
    from bench.core.models import build_model

    variants = [
        {**_cfg(world, momentum=0.9), "algo_options": {"allreduce": {"overlap": False}}},
        {**_cfg(world, momentum=0.9), "algo_options": {"allreduce": SMALL_BUCKETS}},
    ]
    results = run_world(_allreduce_variants, world, tmp_path, variants)
    sizes = [p.numel() for p in build_model("mlp", (1, 8, 8), 10, 0).parameters()]
    slices = bucket_slices(sizes, 4, int(0.002 * 2**20), int(0.02 * 2**20))
    assert [b - a for a, b in slices] == [1290, 16512, 8320]
    for (flat, flat_rows), (bucketed, rows) in results:
        if world == 2:
            assert bucketed == flat
        else:
            assert torch.allclose(torch.tensor(bucketed), torch.tensor(flat), rtol=0, atol=1e-5)
        assert bucketed == results[0][1][0]  # all replicas identical

        def value(records, metric, kind=None):
            return next(r["value"] for r in records if r.get("metric") == metric and r.get("kind") == kind)

        steps = value(rows, "steps")
        assert value(rows, "algo_allreduces") == steps and value(rows, "algo_buckets") == 3 * steps
        per_step = sum(ring_allreduce_bytes(4 * (b - a), world) for a, b in slices)
        assert value(rows, "comm_bytes_sent", "grad") == steps * per_step
        assert value(rows, "comm_msgs_sent", "grad") == 3 * steps
        assert value(flat_rows, "comm_bytes_sent", "grad") == steps * ring_allreduce_bytes(4 * sum(sizes), world)


def _naive_dpsgd(rank, world, comm, cfg_dict):
    """D-PSGD written directly on torch.distributed (reference for the registry's implementation)."""
    import torch.distributed as dist
    import torch.nn.functional as F

    from bench.core.data import load_dataset
    from bench.core.models import build_model
    from bench.core.protocol import flatten_model
    from bench.core.topology import build_topology
    from bench.training.loop import Sampler, make_shards, node_seed

    cfg = RunConfig.from_dict(cfg_dict)
    data = load_dataset(cfg.dataset, cfg.seed)
    shards = make_shards(cfg, data)
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
    params, grads = flatten_model(model)
    sampler = Sampler(data.x_train, data.y_train, shards.indices[rank], cfg.batch_size, node_seed(cfg.seed, rank, 2))
    topo = build_topology(cfg.topology, world)
    w = topo.mixing_matrix()
    for _ in range(cfg.epochs * shards.steps_per_epoch):
        x, y = sampler.next()
        grads.zero_()
        F.cross_entropy(model(x), y).backward()
        gathered = [torch.empty_like(params) for _ in range(world)]
        dist.all_gather(gathered, params)
        mixed = sum(float(w[rank, j]) * gathered[j] for j in range(world))
        params.copy_(mixed - cfg.lr * grads)
    return params.clone()


@pytest.mark.parametrize("world", [3])
def test_dpsgd_matches_naive_reference(tmp_path, world):
    cfg = _cfg(world, topology="ring")
    ours = run_world(_train, world, tmp_path / "a", cfg, ["dpsgd"])
    ref = run_world(_naive_dpsgd, world, tmp_path / "b", cfg)
    for (params, _), expected in zip(ours, ref, strict=True):
        assert torch.allclose(params["dpsgd"], expected, atol=1e-5)


def test_swarm_and_adpsgd_interactions_follow_schedule(tmp_path):
    """SwarmSGD interacts once per H local steps; AD-PSGD once per step (every node has neighbours)."""
    world = 3
    results = run_world(_train, world, tmp_path, _cfg(world, local_steps=3), ["swarm", "adpsgd"])
    for _, events in results:
        rows = [e for e in events if e["type"] == "record"]
        counters = {(r["algorithm"], r["metric"]): r["value"] for r in rows if r["metric"].startswith("algo_")}
        steps = next(r["value"] for r in rows if r["metric"] == "steps" and r["algorithm"] == "swarm")
        assert counters[("swarm", "algo_interactions")] == steps // 3
        assert counters[("adpsgd", "algo_interactions")] == steps


def test_serve_seconds_and_publish_time_on_real_processes(tmp_path):
    """The passive side's work is timed: AD-PSGD's partners and SwarmSGD's readers' owners serve (> 0), AllReduce
    SGD never does (exactly 0); SwarmSGD's publishes are timed under kind "publish", which comm_fraction sums."""
    import pandas as pd

    from bench.records.write import _derive

    world = 2
    results = run_world(_train, world, tmp_path, _cfg(world, local_steps=2), ["allreduce", "adpsgd", "swarm"])
    rows = [dict(e, nodes=world) for _, events in results for e in events if e["type"] == "record"]
    serve = {(r["algorithm"], r["rank"]): r["value"] for r in rows if r["metric"] == "serve_seconds"}
    for rank in range(world):
        assert serve[("allreduce", rank)] == 0.0
        assert serve[("adpsgd", rank)] > 0.0  # each of the two nodes is the other's partner
        assert serve[("swarm", rank)] > 0.0  # each answers the other's reads
    publish = [r for r in rows if r["metric"] == "comm_seconds" and r.get("kind") == "publish"]
    assert {r["algorithm"] for r in publish if r["value"] > 0} == {"swarm"}
    records = pd.DataFrame(rows)
    swarm = records[records["algorithm"] == "swarm"]
    derived = _derive(swarm, world)
    without = _derive(swarm[~((swarm["metric"] == "comm_seconds") & (swarm["kind"] == "publish"))], world)
    assert derived["comm_fraction"] > without["comm_fraction"]
    assert derived["serve_seconds"] == pytest.approx(sum(serve[("swarm", r)] for r in range(world)) / world)
