"""ADSAGA (Glasgow & Wootters 2022): the mailbox's `recv_any`, one node against a textbook SAGA, the closed-form bytes
on the simulator and on real gloo processes, the model check and `--algo all`."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from bench.core.comm import MAIL_HEADER_BYTES
from bench.core.data import load_dataset
from bench.engine.processes.localworld import run_world
from bench.engine.sim import cluster as sim
from bench.training.config import RunConfig, resolve
from bench.training.loop import Sampler, make_shards, node_seed, run_cell
from bench.training.registry import ALGORITHMS
from cli import cli
from tests.simcost import sim_cluster


def _cluster(n: int, spread: float = 0.3) -> sim.Cluster:
    return sim_cluster(n, speed_sigma=spread)  # unequal nodes: reports reach the server in an order of their own


def _cfg(nodes: int, **kw) -> RunConfig:
    base = dict(nodes=nodes, dataset="digits", model="logreg", epochs=1, batch_size=32, lr=0.1, algorithms=("adsaga",))
    return RunConfig.from_dict({**RunConfig(**base).to_dict(), **kw})


def test_sim_recv_any_takes_reports_in_arrival_order_and_counts_them_as_recv():
    """Rank 2 computes least, so its message arrives first, then rank 1's, then rank 3's, whatever the ranks;
    rank 1's second message (sent after rank 3's first) comes after it. Bytes as `recv`: payload + header."""
    cluster = _cluster(4, spread=0.0)
    got: list[tuple[int, list[float]]] = []

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        comm.start_cell(None, 0)
        if rank == 0:
            got.extend((p, m.tolist()) for p, m in (comm.recv_any((1, 2, 3), "grad") for _ in range(4)))
        else:
            for _ in range({1: 2, 2: 0, 3: 4}[rank]):  # 1.1 ms per two compute sections
                with clock.compute():
                    pass
            comm.send(0, torch.tensor([float(rank)]), "grad")
            if rank == 1:
                for _ in range(4):
                    with clock.compute():
                        pass
                comm.send(0, torch.tensor([10.0]), "grad")
        comm.fence()

    cluster.run(body)
    assert [p for p, _ in got] == [2, 1, 3, 1] and got[-1][1] == [10.0]
    s0 = cluster.comms[0].stats.snapshot()
    assert s0["grad"]["bytes_recv"] == 4 * 4 and s0["grad"]["msgs_recv"] == 4
    assert s0["control"]["bytes_recv"] == 4 * MAIL_HEADER_BYTES


def _sim_run(cfg: RunConfig, dataset, shards):
    """Every node's (final parameters, comm counters) after `run_cell` on the simulator."""
    cluster = _cluster(cfg.nodes)
    out: dict[int, tuple] = {}

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        node = run_cell(cfg, "adsaga", dataset, shards, rank, comm, clock, torch.device("cpu"), lambda row: None)
        out[rank] = (node.params.clone(), comm.stats.snapshot())

    cluster.run(body)
    return [out[r] for r in range(cfg.nodes)]


def _textbook_saga(cfg: RunConfig, dataset, shards) -> torch.Tensor:
    """Minibatch SAGA in float64 with a full table of per-sample gradients (autograd, one sample at a time), on the
    samples node 0's sampler draws: v = mean over the batch's distinct samples j of (grad f_j - a_j) * |U| / |B|
    + mean(a); x <- x - lr v; a_j <- grad f_j."""
    index = shards.indices[0]
    sampler = Sampler(dataset.x_train, dataset.y_train, index, cfg.batch_size, node_seed(cfg.seed, 0, 2))
    x_all = dataset.x_train.reshape(len(dataset.y_train), -1).double()
    d, c = x_all.shape[1], dataset.num_classes
    w = torch.zeros(c, d, dtype=torch.float64)
    b = torch.zeros(c, dtype=torch.float64)
    table = torch.zeros(len(index), c * d + c, dtype=torch.float64)
    for _ in range(cfg.epochs * shards.steps_per_epoch):
        sampler.next()
        positions = torch.searchsorted(index, sampler.last).tolist()
        correction = torch.zeros(c * d + c, dtype=torch.float64)
        seen: set[int] = set()
        for pos in positions:
            if pos in seen:
                continue
            seen.add(pos)
            wj, bj = w.clone().requires_grad_(), b.clone().requires_grad_()
            loss = F.cross_entropy((x_all[index[pos]] @ wj.T + bj)[None], dataset.y_train[index[pos]][None])
            gw, gb = torch.autograd.grad(loss, (wj, bj))
            g = torch.cat([gw.reshape(-1), gb])
            correction += g - table[pos]
            table[pos] = g
        v = correction / len(positions) + (table.sum(0) - correction) / len(index)
        step = cfg.lr * v
        w, b = w - step[: c * d].view(c, d), b - step[c * d :]
    return torch.cat([w.reshape(-1), b]).float()


def test_one_node_is_minibatch_saga():
    """ADSAGA with one worker and no delay (one node: the server computes its own gradients at the current x) is
    SAGA: the same iterates as a textbook minibatch SAGA on the same samples, to float32 rounding. Momentum 0.9 is
    set and unused (SAGA's step)."""
    cfg = _cfg(1, epochs=2, momentum=0.9)
    dataset = load_dataset(cfg.dataset, cfg.seed)
    shards = make_shards(cfg, dataset)
    ((params, stats),) = _sim_run(cfg, dataset, shards)
    expected = _textbook_saga(cfg, dataset, shards)
    assert torch.allclose(params, expected, atol=2e-5), (params - expected).abs().max()
    assert {"grad", "model"}.isdisjoint(stats)  # nothing sent


def test_a_table_filled_at_x_makes_the_step_exact_gradient_descent():
    """The paper's sanity check: with every a_j = grad f_j(x), whatever the batch (duplicates included), the
    correction is 0 and the step is x - lr grad f(x); the table and its mean stay. So a minimizer x* (grad f(x*) = 0)
    with its gradients in the table is a fixed point."""
    import random

    from bench.core.models import build_model
    from bench.core.protocol import Batch, Node, flatten_model

    dataset = load_dataset("digits", 0)
    n, lr = 100, 0.3
    a, y = dataset.x_train[:n], dataset.y_train[:n]
    model = build_model("logreg", dataset.input_shape, dataset.num_classes, 0)
    params, grads = flatten_model(model)
    params.copy_(torch.randn(params.numel(), generator=torch.Generator().manual_seed(1)) * 0.1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    node = Node(0, 1, None, None, random.Random(0), model, params, grads, opt, shard_sizes=(n,))
    algo = ALGORITHMS["adsaga"](node, ALGORITHMS["adsaga"].Config())
    algo.start()
    x0 = params.clone()
    logits = model(a)
    with torch.no_grad():
        algo.table.copy_(torch.softmax(logits, 1) - F.one_hot(y, dataset.num_classes))
    F.cross_entropy(logits, y).backward()  # the mean over the n samples: grad f(x0)
    algo.mean.copy_(grads)
    full, table = grads.clone(), algo.table.clone()
    index = torch.tensor([3, 7, 7, 50, 99, 0, 3, 12])
    node.batch = Batch(index, a[index], y[index])
    algo.after_backward(0)
    assert torch.allclose(params, x0 - lr * full, atol=1e-6)
    assert torch.allclose(algo.table, table, atol=1e-6) and torch.allclose(algo.mean, full, atol=1e-7)


def _closed_form(rank: int, world: int, steps: int, numel: int) -> dict[str, dict[str, int]]:
    """Per update: one gradient (4 numel bytes) up and one model down, each with a mailbox header; a worker reports
    once per step, the server serves world - 1 reports per step."""
    updates = steps * (world - 1 if rank == 0 else 1)
    grad = {"bytes_recv" if rank == 0 else "bytes_sent": 4 * numel * updates}
    model = {"bytes_sent" if rank == 0 else "bytes_recv": 4 * numel * updates}
    control = {"bytes_sent": MAIL_HEADER_BYTES * updates, "bytes_recv": MAIL_HEADER_BYTES * updates}
    return {"grad": grad, "model": model, "control": control}


def _check_bytes(stats: dict, rank: int, world: int, steps: int, numel: int) -> None:
    for kind, values in _closed_form(rank, world, steps, numel).items():
        for key, value in values.items():
            assert stats[kind][key] == value, (rank, kind, key)
        other = {"bytes_sent", "bytes_recv"} - set(values)
        assert all(stats[kind][key] == 0 for key in other), (rank, kind)


def test_sim_bytes_are_the_closed_form_and_the_run_learns():
    cfg = _cfg(3, epochs=2)
    dataset = load_dataset(cfg.dataset, cfg.seed)
    shards = make_shards(cfg, dataset)
    steps = cfg.epochs * shards.steps_per_epoch
    runs = _sim_run(cfg, dataset, shards)
    numel = runs[0][0].numel()
    for rank, (_, stats) in enumerate(runs):
        _check_bytes(stats, rank, 3, steps, numel)
    x = dataset.x_test.reshape(len(dataset.y_test), -1)
    c = dataset.num_classes
    w, b = runs[0][0][:-c].view(c, -1), runs[0][0][-c:]
    assert float(((x @ w.T + b).argmax(1) == dataset.y_test).float().mean()) > 0.85


def _real_adsaga(rank, world, comm, tmp):
    from bench.engine.processes.worker import WallClock

    cfg = _cfg(world)
    dataset = load_dataset(cfg.dataset, cfg.seed)
    shards = make_shards(cfg, dataset)
    rows: list[dict] = []
    node = run_cell(
        cfg, "adsaga", dataset, shards, rank, comm, WallClock(torch.device("cpu")), torch.device("cpu"), rows.append
    )
    updates = [r["value"] for r in rows if r.get("metric") == "algo_updates"]
    return node.params.clone(), comm.stats.snapshot(), shards.steps_per_epoch * cfg.epochs, updates


def test_real_processes_bytes_are_the_closed_form(tmp_path):
    """3 gloo processes (a server and two workers; the reports reach the server in whatever order the processes
    make): the bytes of every node equal the closed form, the server applied 3 updates per step (its own and the
    two workers'), and every worker ends at a model the server sent."""
    world = 3
    real = run_world(_real_adsaga, world, tmp_path, str(tmp_path), timeout=300)
    steps = real[0][2]
    numel = real[0][0].numel()
    for rank, (_, stats, _, _) in enumerate(real):
        _check_bytes(stats, rank, world, steps, numel)
    assert real[0][3] == [float(world * steps)]
    for rank in (1, 2):
        assert torch.isfinite(real[rank][0]).all() and not torch.equal(real[rank][0], torch.zeros(numel))


def test_list_model_check_and_algo_all():
    out = CliRunner().invoke(cli, ["list"]).output
    assert "adsaga" in out and "Glasgow & Wootters, AISTATS 2022" in out
    assert "Glasgow" in ALGORITHMS["adsaga"].__doc__
    result = CliRunner().invoke(cli, ["run", "--algo", "adsaga", "--model", "mlp", "--out", "unused"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "adsaga runs only on --model logreg" in result.output
    assert "adsaga" not in resolve({"algorithms": ["all"]}).algorithms  # the default model, the MLP
    assert resolve({"algorithms": ["all"], "model": "logreg"}).algorithms == tuple(ALGORITHMS)


MPIRUN = shutil.which("mpirun")
HAS_MPI4PY = importlib.util.find_spec("mpi4py") is not None
RUN = ["--algo", "adsaga", "--model", "logreg", "--dataset", "digits", "--epochs", "1", "--batch-size", "32"]
NUMEL = 64 * 10 + 10  # logistic regression on the 8x8 digits


def _summary_matches_the_closed_form(out, nodes: int) -> None:
    """Bytes sent by all nodes: a gradient and a header up per worker report, a model and a header down."""
    row = pd.read_csv(out / "summary.csv").set_index("algorithm").loc["adsaga"]
    assert row["status"] == "ok" and row["test_acc"] > 0.8
    reports = (nodes - 1) * row["samples"] // (32 * nodes)
    assert row["bytes_grad"] == row["bytes_model"] == 4 * NUMEL * reports
    assert row["bytes_control"] == 2 * MAIL_HEADER_BYTES * reports


@pytest.mark.skipif(not (MPIRUN and HAS_MPI4PY), reason="needs Open MPI's mpirun and mpi4py")
def test_under_mpirun_bytes_are_the_closed_form(tmp_path):
    """2 ranks under mpirun (the transport resolves to MPI RMA windows; the mailbox stays on gloo)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "import cli; cli.main()", "run", "--launcher", "mpirun", "--nodes", "2", *RUN]
    r = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "meta.json").read_text())["transport"] == "rma"
    _summary_matches_the_closed_form(out, 2)


def test_cost_only_charges_what_training_sends(tmp_path):
    """The simulator with data and `--compute cost-only` (no data: zero corrections of the same size) agree on bytes."""
    sim_args = ["run", "--engine", "sim", "--nodes", "4", *RUN]
    real = CliRunner().invoke(cli, [*sim_args, "--out", str(tmp_path / "real")])
    assert real.exit_code == 0, real.output
    _summary_matches_the_closed_form(tmp_path / "real", 4)
    steps = int(pd.read_csv(tmp_path / "real" / "summary.csv")["samples"][0]) // (32 * 4)
    cheap = CliRunner().invoke(
        cli, [*sim_args, "--compute", "cost-only", "--steps", str(steps), "--out", str(tmp_path / "cheap")]
    )
    assert cheap.exit_code == 0, cheap.output
    a, b = (pd.read_csv(tmp_path / name / "summary.csv").iloc[0] for name in ("real", "cheap"))
    for col in ("bytes_grad", "bytes_model", "bytes_control", "bytes_sent_total"):
        assert a[col] == b[col], col


def test_a_sweep_of_all_algorithms_runs_adsaga_on_logistic_regression_only():
    from bench.experiments.sweep import Grid, SweepSpec, expand, normalize

    spec = SweepSpec(fixed={"epochs": 1, "algorithms": ["all"]}, grids=[Grid(axes={"model": ["mlp", "logreg"]})])
    mlp, logreg = expand(normalize(spec))
    assert "adsaga" not in mlp.algorithms and logreg.algorithms == list(ALGORITHMS)


def test_tuning_all_algorithms_tunes_adsaga_on_logistic_regression_only():
    from bench.experiments.tune import plan

    grid = {"lr": [0.05, 0.2]}
    assert "adsaga" not in plan({"algorithms": ["all"], "engine": "sim"}, grid).algorithms
    assert "adsaga" in plan({"algorithms": ["all"], "engine": "sim", "model": "logreg"}, grid).algorithms
