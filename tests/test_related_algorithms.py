"""The related algorithms (Choco-SGD, SGP, ...) and the protocol they need: directed messages (send/recv) and
algorithm-encoded exchanges. Identities from the papers and textbook iterations on the simulator; real-process runs
of SGP (the mailbox) and of D², gradient tracking, LEAD and QG-DSGDm (LEAD: the encoded exchange)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from click.testing import CliRunner

from bench.core.codec import Codec, CodecConfig
from bench.core.comm import MAIL_HEADER_BYTES, ring_allreduce_bytes
from bench.core.data import load_dataset
from bench.core.protocol import Node, flatten_model
from bench.core.topology import OnePeerExponential, build_topology
from bench.engine.processes.localworld import run_world
from bench.engine.sim import cluster as sim
from bench.training.config import RunConfig, algo_config
from bench.training.loop import make_shards, run_cell
from bench.training.registry import ALGORITHMS
from cli import cli
from tests.simcost import GBPS, LATENCY_US, sim_cluster


def _cluster(n: int, topology: str = "ring") -> sim.Cluster:
    return sim_cluster(n, topology)


def _totals(comms, kind: str) -> tuple[int, int]:
    snaps = [c.stats.snapshot().get(kind, {}) for c in comms]
    return sum(s.get("bytes_sent", 0) for s in snaps), sum(s.get("bytes_recv", 0) for s in snaps)


# ---- the mailbox in the simulator --------------------------------------------------------------------------------


def test_sim_mailbox_is_fifo_exactly_once_blocks_until_sent_and_counts_bytes():
    """Rank 0 receives before anything is sent (it blocks until rank 1 sends); messages of one pair arrive in the
    order sent, each once; a message arrives after the link model's time; bytes: payload + header, both sides."""
    cluster = _cluster(3)
    got: dict[int, list] = {0: [], 2: []}
    arrived: dict[int, float] = {}

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        comm.start_cell(None, 0)
        if rank == 0:
            got[0].append(comm.recv(1, "model").tolist())
            arrived[0] = clock.now()
            got[0].append(comm.recv(1, "model").tolist())
        elif rank == 1:
            with clock.compute():  # 1 ms of compute before the first send
                pass
            comm.send(0, torch.tensor([1.0, 2.0]), "model")
            comm.send(0, torch.tensor([3.0, 4.0]), "model")
            comm.send(2, torch.arange(5, dtype=torch.uint8), "grad")
        else:
            got[2].append(comm.recv(1, "grad").tolist())
        comm.fence()

    cluster.run(body)
    assert got == {0: [[1.0, 2.0], [3.0, 4.0]], 2: [[0, 1, 2, 3, 4]]}
    wire = (MAIL_HEADER_BYTES + 8) * 8 / (GBPS * 1e9)
    assert arrived[0] == pytest.approx(1e-3 + wire + LATENCY_US * 1e-6, rel=1e-9)
    s1 = cluster.comms[1].stats.snapshot()
    assert s1["model"]["bytes_sent"] == 16 and s1["model"]["msgs_sent"] == 2 and s1["grad"]["bytes_sent"] == 5
    assert s1["control"]["bytes_sent"] == 3 * MAIL_HEADER_BYTES
    for kind in ("model", "grad", "control"):
        sent, recv = _totals(cluster.comms, kind)
        assert sent == recv > 0


# ---- hand-driven nodes: an algorithm's hooks on given models, learning rate 0 --------------------------------------


def _hand_node(name: str, rank: int, n: int, comm, clock, start: torch.Tensor, lr=0.0, momentum=0.0, **options):
    """A node whose model starts at `start` and its algorithm (learning rate 0 unless given)."""
    algo_cls = ALGORITHMS[name]
    model = torch.nn.Linear(start.numel() - 1, 1)
    params, grads = flatten_model(model)
    params.copy_(start)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    node = Node(rank, n, comm, clock, random.Random(rank), model, params, grads, opt)
    return node, algo_cls(node, algo_cls.Config(**options))


def _hooks(node: Node, algo, steps: int, codec=None, center: torch.Tensor | None = None) -> None:
    """The training loop's calls around `steps` steps, without data; with a `center`, the gradient is that of the
    node's own quadratic, x - center (a deterministic, heterogeneous problem)."""
    node.comm.start_cell(codec, 0)
    algo.start()
    node.comm.fence()
    for step in range(steps):
        if center is not None:
            node.grads.copy_(node.params - center)
        algo.after_backward(step)
        if algo.takes_step(step):
            node.optimizer.step()
        algo.after_step(step)
    algo.finish()
    node.comm.fence()
    node.comm.finish_cell()


def _drive(cluster: sim.Cluster, name: str, start: list[torch.Tensor], steps: int, codec=None, **options):
    """Run `name`'s hooks for `steps` steps on every node of `cluster`, models starting at `start`."""
    n = cluster.n
    pairs = [_hand_node(name, r, n, cluster.comms[r], cluster.clocks[r], start[r], **options) for r in range(n)]
    cluster.run(lambda rank: _hooks(*pairs[rank], steps, codec))
    return [node.params for node, _ in pairs], [algo for _, algo in pairs]


def test_decentlam_keeps_dpsgds_fixed_point_whatever_the_momentum():
    """Heterogeneous quadratics f_i = |x - c_i|^2 / 2 on a 6-ring: DecentLaM with beta = 0.9 ends where D-PSGD (atc,
    no momentum) does, which is not the consensus point: momentum does not amplify the inconsistency bias."""
    n, d, lr, steps = 6, 5, 0.1, 300
    gen = torch.Generator().manual_seed(5)
    centers = [torch.randn(d, generator=gen) * 3 for _ in range(n)]
    start = torch.zeros(d)
    ends = {}
    for name, momentum, options in (("decentlam", 0.9, {}), ("dpsgd", 0.0, {"form": "atc"})):
        cluster = _cluster(n)
        pairs = [
            _hand_node(name, r, n, cluster.comms[r], cluster.clocks[r], start, lr=lr, momentum=momentum, **options)
            for r in range(n)
        ]
        cluster.run(lambda rank, pairs=pairs: _hooks(*pairs[rank], steps, center=centers[rank]))
        ends[name] = torch.stack([node.params for node, _ in pairs])
    assert torch.allclose(ends["decentlam"], ends["dpsgd"], atol=1e-4)
    assert (ends["dpsgd"] - torch.stack(centers).mean(0)).abs().max() > 0.05  # a real bias to keep


@pytest.mark.parametrize("n", [4, 8])
def test_sgp_on_2_to_the_L_nodes_reaches_the_exact_average_after_L_steps(n):
    """Integer-valued models: every partial sum and halving is exact, so after L = log2 n steps of push-sum on the
    one-peer exponential graph every model is the average bit for bit, and every weight is exactly 1."""
    gen = torch.Generator().manual_seed(n)
    start = [torch.randint(-50, 50, (9,), generator=gen).float() * 8 for _ in range(n)]
    period = OnePeerExponential(n).period
    assert 2**period == n
    cluster = _cluster(n)
    models, algos = _drive(cluster, "sgp", start, period)
    mean = torch.stack(start).mean(0)
    for x, algo in zip(models, algos, strict=True):
        assert torch.equal(x, mean)
        assert float(algo.weight) == 1.0
    # One directed message per node per step: (d + 1) float32 values and a header, each counted on both sides.
    for comm in cluster.comms:
        s = comm.stats.snapshot()
        assert s["model"]["bytes_sent"] == s["model"]["bytes_recv"] == period * 4 * (9 + 1)
        assert s["model"]["msgs_sent"] == s["model"]["msgs_recv"] == period
        assert s["control"]["bytes_sent"] == period * MAIL_HEADER_BYTES


@pytest.mark.parametrize("n", [4, 8])
def test_osgp_mixes_as_sgp_one_step_later(n):
    """Learning rate 0: OSGP's halvings are SGP's, each consumed one step later, so after L steps (every message of
    iterations 0..L-1 received) every model is the exact average too; the half in flight at the end is added by
    `finish`, so the weights end at 1 and each node sent L + 1 messages of d + 1 float32 values."""
    gen = torch.Generator().manual_seed(n)
    start = [torch.randint(-50, 50, (9,), generator=gen).float() * 8 for _ in range(n)]
    period = OnePeerExponential(n).period
    cluster = _cluster(n)
    models, algos = _drive(cluster, "osgp", start, period)
    mean = torch.stack(start).mean(0)
    for x, algo in zip(models, algos, strict=True):
        assert torch.equal(x, mean) and float(algo.weight) == 1.0
    for comm in cluster.comms:
        s = comm.stats.snapshot()
        assert s["model"]["bytes_sent"] == s["model"]["bytes_recv"] == (period + 1) * 4 * (9 + 1)
        assert s["model"]["msgs_sent"] == s["model"]["msgs_recv"] == period + 1


def test_osgp_takes_sgps_step_at_a_one_step_stale_mix():
    """Heterogeneous quadratics on 5 nodes: OSGP conserves the sum of the models (no mass left in flight) and,
    like SGP, drives the average to the minimizer of the sum; its trajectory differs from SGP's (stale mixing)."""
    n, d, lr, steps = 5, 4, 0.1, 200
    gen = torch.Generator().manual_seed(3)
    centers = [torch.randn(d, generator=gen) * 2 for _ in range(n)]
    ends = {}
    for name in ("sgp", "osgp"):
        cluster = _cluster(n)
        pairs = [_hand_node(name, r, n, cluster.comms[r], cluster.clocks[r], torch.zeros(d), lr=lr) for r in range(n)]
        cluster.run(lambda rank, pairs=pairs: _hooks(*pairs[rank], steps, center=centers[rank]))
        ends[name] = torch.stack([node.params for node, _ in pairs])
    optimum = torch.stack(centers).mean(0)
    for name, models in ends.items():
        assert (models.mean(0) - optimum).abs().max() < 1e-4, name  # the average follows gradient descent on the sum
    assert not torch.allclose(ends["sgp"], ends["osgp"], atol=1e-6)


def test_sgp_conserves_the_sum_at_any_node_count():
    n = 5
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(7, generator=gen) for _ in range(n)]
    models, _ = _drive(_cluster(n), "sgp", start, 9)
    assert torch.allclose(torch.stack(models).sum(0), torch.stack(start).sum(0), atol=1e-5)
    assert torch.stack(models).std(0).max() < torch.stack(start).std(0).max() / 4  # and it mixes


def test_one_peer_exponential_graph():
    g = OnePeerExponential(6)
    assert g.period == 3  # hops 1, 2, 4 < 6
    assert [g.out_peer(5, k) for k in range(4)] == [0, 1, 3, 0]
    assert all(g.in_peer(g.out_peer(i, k), k) == i for i in range(6) for k in range(6))


@pytest.mark.parametrize("compression", ["uniform", "lattice", "sign", "topk", "qsgd"])
def test_choco_keeps_the_mean_and_identical_copies_under_compression(compression):
    """The gossip step preserves the node average for any compressor (the cell's codec, or the algorithm's own:
    `choco.compressor`), and consensus improves; the copies x-hat_i that neighbours would rebuild from the messages
    equal the sender's (messages are decoded alike everywhere). Bytes: one encoded message per neighbour per step,
    the compressor's closed-form size."""
    n, d, steps = 4, 300, 30
    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(d, generator=gen) * 0.05 for _ in range(n)]
    cluster = _cluster(n)
    if compression in ("uniform", "lattice"):
        codec = Codec(CodecConfig(bits=8, quantizer=compression, eps=0.25 / 127, bucket=64))
        models, algos = _drive(cluster, "choco", start, steps, codec=codec, gamma=0.5)
        wire = codec.wire_bytes(d)
    else:
        options = {"compressor": compression, "topk_ratio": 0.2, "qsgd_levels": 127}
        models, algos = _drive(cluster, "choco", start, steps, gamma=0.5, **options)
        wire = algos[0].compressor.wire_bytes(d)
        assert wire == {"sign": 4 + 300 // 8 + 1, "topk": 8 * 60, "qsgd": 4 + 300}[compression]
    mean0 = torch.stack(start).mean(0)
    assert torch.allclose(torch.stack(models).mean(0), mean0, atol=1e-5)
    spread0 = (torch.stack(start) - mean0).norm()
    assert (torch.stack(models) - mean0).norm() < spread0 / 4
    for r, algo in enumerate(algos):  # s_i = sum_j W_ij x-hat_j, from each node's own copy
        w = cluster.comms[r].topology.mixing_weights(r)
        expected = sum(w[j] * algos[j].copy for j in w)
        assert torch.allclose(algo.mix, expected, atol=1e-5)
        s = cluster.comms[r].stats.snapshot()["model"]
        assert s["bytes_sent"] == s["bytes_recv"] == steps * 2 * wire


# ---- D², gradient tracking, LEAD, QG-DSGDm on heterogeneous quadratics --------------------------------------------
#
# Node i minimizes |x - c_i|^2 / 2 (gradient x - c_i): the global optimum is mean(c), D-PSGD stops at a biased
# point, and every iteration below is checked against its textbook matrix form written directly from the paper.

N_Q, D_Q, LR_Q = 6, 5, 0.1  # an even ring: Metropolis-Hastings weights 1/3, lambda_min(W) = -1/3 exactly


def _quadratic(n: int = N_Q) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    centers = [torch.randn(D_Q, generator=gen) * 3 for _ in range(n)]
    starts = [torch.randn(D_Q, generator=gen) for _ in range(n)]
    return centers, starts


def _run_quadratic(name: str, steps: int, codec=None, momentum=0.0, n=N_Q, **options):
    """Every node's model after `steps` steps of `name` on the quadratics, and the algorithms and cluster."""
    centers, starts = _quadratic(n)
    cluster = _cluster(n)
    pairs = [
        _hand_node(name, r, n, cluster.comms[r], cluster.clocks[r], starts[r], lr=LR_Q, momentum=momentum, **options)
        for r in range(n)
    ]
    cluster.run(lambda rank: _hooks(*pairs[rank], steps, codec, center=centers[rank]))
    return torch.stack([node.params for node, _ in pairs]), [algo for _, algo in pairs], cluster


def _textbook(name: str, steps: int, form: str = "atc") -> torch.Tensor:
    """The papers' matrix forms, in float64: X holds one model per row, G = X - C."""
    centers, starts = _quadratic()
    c, x = torch.stack(centers).double(), torch.stack(starts).double()
    w = torch.tensor(build_topology("ring", N_Q).mixing_matrix())
    if name == "d2":  # x1 = W~ (x0 - lr g0); x+ = W~ (2x - x- - lr (g - g-))
        wt = (torch.eye(N_Q, dtype=w.dtype) + w) / 2
        g_prev, x_prev = x - c, x
        x = wt @ (x - LR_Q * g_prev)
        for _ in range(steps - 1):
            g = x - c
            x, x_prev, g_prev = wt @ (2 * x - x_prev - LR_Q * (g - g_prev)), x, g
    elif name == "dpsgd":  # adapt then combine: x+ = W (x - lr g)
        for _ in range(steps):
            x = w @ (x - LR_Q * (x - c))
    elif name == "gradient_tracking":  # y0 = g0; x+ = W (x - lr y) or W x - lr y; y+ = W y + g+ - g
        g = x - c
        y = g
        for _ in range(steps):
            x = w @ (x - LR_Q * y) if form == "atc" else w @ x - LR_Q * y
            g_new = x - c
            y, g = w @ y + g_new - g, g_new
    return x.float()


def test_d2_is_the_textbook_iteration_reaches_the_exact_optimum_and_sends_one_model_per_neighbour():
    steps = 150
    models, algos, cluster = _run_quadratic("d2", steps)
    assert torch.allclose(models, _textbook("d2", steps), atol=1e-5)
    optimum = torch.stack(_quadratic()[0]).mean(0)
    assert (models - optimum).abs().max() < 1e-4
    assert (_textbook("dpsgd", steps) - optimum).abs().max() > 0.05  # where D-PSGD keeps a bias
    assert torch.allclose(torch.stack([a.correction for a in algos]).sum(0), torch.zeros(D_Q), atol=1e-5)
    for comm in cluster.comms:  # two ring neighbours, one float32 model each, per step
        s = comm.stats.snapshot()["model"]
        assert s["bytes_sent"] == s["bytes_recv"] == steps * 2 * 4 * D_Q


@pytest.mark.parametrize("form", ["atc", "cta"])
def test_gradient_tracking_is_the_textbook_iteration_with_a_zero_mean_correction(form):
    """Tracking the update with plain SGD is tracking the gradient: the iterates equal the textbook DSGT; the
    correction's node average stays 0 (the trackers average the gradients); the optimum is exact. Bytes: two
    vectors per neighbour per step, in one message."""
    steps = 150
    models, algos, cluster = _run_quadratic("gradient_tracking", steps, form=form)
    assert torch.allclose(models, _textbook("gradient_tracking", steps, form), atol=1e-5)
    assert torch.stack([a.correction for a in algos]).mean(0).abs().max() < 1e-6
    assert (models - torch.stack(_quadratic()[0]).mean(0)).abs().max() < 1e-4
    for comm in cluster.comms:
        s = comm.stats.snapshot()["model"]
        assert s["bytes_sent"] == s["bytes_recv"] == steps * 2 * 2 * 4 * D_Q
        assert s["msgs_sent"] == steps * 2


def test_gradient_tracking_with_momentum_keeps_the_average_on_the_optimizers_path():
    """With a momentum optimizer the correction still averages to 0, so the node average moves exactly by the
    average update (heavy ball on the average gradient, for these quadratics), and the models reach the optimum."""
    models, algos, _ = _run_quadratic("gradient_tracking", 200, momentum=0.5)
    assert torch.stack([a.correction for a in algos]).mean(0).abs().max() < 1e-6
    assert (models - torch.stack(_quadratic()[0]).mean(0)).abs().max() < 1e-4


@pytest.mark.parametrize("quantizer", ["uniform", "lattice", "qsgd"])
def test_lead_under_compression_keeps_sgd_on_the_average_and_reaches_the_exact_optimum(quantizer):
    """4-bit compression: the duals sum to 0 (to float32 rounding), so the node average follows SGD on the average
    gradient (here mean(x) - mean(c) shrinks by exactly 1 - lr per step); the running sums h_i - sum_j W_ij h_j equal
    those rebuilt from every node's own memory; with the unbiased quantizer the models reach the exact optimum
    anyway. Bytes: one encoded message per neighbour per step, the codec's closed-form size."""
    steps = 250
    if quantizer == "qsgd":  # the algorithm's own compressor (`lead.compressor`): QSGD, 7 levels, 4-bit codes
        codec, wire = None, 4 + 3
        models, algos, cluster = _run_quadratic("lead", steps, alpha=0.5, gamma=1.0, compressor="qsgd")
    else:
        codec = Codec(CodecConfig(bits=4, quantizer=quantizer, eps=8.0 / 7, bucket=8))
        wire = codec.wire_bytes(D_Q)
        models, algos, cluster = _run_quadratic("lead", steps, codec=codec, alpha=0.5, gamma=1.0)
    centers, starts = _quadratic()
    optimum = torch.stack(centers).mean(0)
    duals = torch.stack([a.dual for a in algos])
    assert duals.sum(0).abs().max() < 1e-4 * duals.abs().max()  # float32 rounding of d itself
    expected_mean = optimum + (1 - LR_Q) ** steps * (torch.stack(starts).mean(0) - optimum)
    assert torch.allclose(models.mean(0), expected_mean, atol=1e-4)
    for r, algo in enumerate(algos):
        w = cluster.comms[r].topology.mixing_weights(r)
        assert torch.allclose(algo.gap, algo.memory - sum(w[j] * algos[j].memory for j in w), atol=1e-5)
        s = cluster.comms[r].stats.snapshot()["model"]
        assert s["bytes_sent"] == s["bytes_recv"] == steps * 2 * wire
    assert sum(comm.decode_failures for comm in cluster.comms) == 0
    if quantizer != "lattice":  # unbiased; the lattice's fixed spacing rounds differences below eps / 2 to 0
        assert (models - optimum).abs().max() < 1e-4


def test_qg_dsgdm_buffer_is_the_averaged_model_movement():
    """A differential check against the paper's update written out: x+1/2 = x - lr (beta m + g),
    x+ = W x+1/2, m <- mu m + (1 - mu) (x - x+) / lr. Bytes: one model per neighbour per step."""
    steps, beta, mu = 40, 0.9, 0.7
    models, algos, cluster = _run_quadratic("qg_dsgdm", steps, momentum=beta, mu=mu)
    centers, starts = _quadratic()
    c, x = torch.stack(centers).double(), torch.stack(starts).double()
    w = torch.tensor(build_topology("ring", N_Q).mixing_matrix())
    m = torch.zeros_like(x)
    for _ in range(steps):
        x_new = w @ (x - LR_Q * (beta * m + x - c))
        m, x = mu * m + (1 - mu) * (x - x_new) / LR_Q, x_new
    assert torch.allclose(models, x.float(), atol=1e-4)
    assert torch.allclose(torch.stack([a.m_hat for a in algos]), m.float(), atol=1e-4)
    for comm in cluster.comms:
        s = comm.stats.snapshot()["model"]
        assert s["bytes_sent"] == s["bytes_recv"] == steps * 2 * 4 * D_Q


# ---- identities on the full training loop (simulator) --------------------------------------------------------------


def _cfg(world: int, **kw) -> RunConfig:
    base = dict(nodes=world, dataset="digits", model="mlp", epochs=1, batch_size=32, lr=0.05, momentum=0.0)
    return RunConfig.from_dict({**RunConfig(**base).to_dict(), **kw})


def _sim_params(cfg: RunConfig, names: list[str]) -> dict[str, list[torch.Tensor]]:
    """Final parameters of every node, per algorithm, trained on the simulated cluster."""
    data = load_dataset(cfg.dataset, cfg.seed)
    shards = make_shards(cfg, data)
    out = {}
    for name in names:
        cluster = _cluster(cfg.nodes, cfg.topology)
        params: dict[int, torch.Tensor] = {}

        def body(rank: int, cluster=cluster, name=name, params=params) -> None:
            comm, clock = cluster.comms[rank], cluster.clocks[rank]
            node = run_cell(cfg, name, data, shards, rank, comm, clock, torch.device("cpu"), lambda row: None)
            params[rank] = node.params.clone()

        cluster.run(body)
        out[name] = [params[r] for r in range(cfg.nodes)]
    return out


IDENTITIES = {
    # Choco-SGD with no compression (32 bits) and gamma = 1 is D-PSGD, adapt-then-combine (momentum included).
    "choco": ("dpsgd", {"momentum": 0.9, "algo_options": {"choco": {"gamma": 1.0}, "dpsgd": {"form": "atc"}}}),
    # DecentLaM with beta = 0 is D-PSGD, adapt-then-combine.
    "decentlam": ("dpsgd", {"momentum": 0.0, "algo_options": {"dpsgd": {"form": "atc"}}}),
    # LEAD with no compression and gamma = 1 is D² (NIDS), whatever alpha is, momentum included: both correct the
    # optimizer's update.
    "lead": ("d2", {"momentum": 0.9, "algo_options": {"lead": {"gamma": 1.0, "alpha": 0.3}}}),
    # QG-DSGDm with beta = 0 is D-PSGD, adapt-then-combine (the quasi-global buffer goes unused).
    "qg_dsgdm": ("dpsgd", {"momentum": 0.0, "algo_options": {"dpsgd": {"form": "atc"}}}),
    # Minibatch SGD with K = 1 is local SGD with H = 1, even with (local) momentum: every update is linear (K set by
    # its own key, over the run's H).
    "minibatch_sgd": (
        "local_sgd",
        {
            "momentum": 0.9,
            "local_steps": 4,
            "algo_options": {"minibatch_sgd": {"accumulate": 1}, "local_sgd": {"local_steps": 1}},
        },
    ),
    # PowerSGD at full rank is AllReduce SGD: no matrix is worth compressing, torch's hook allreduces every gradient.
    "powersgd": ("allreduce", {"momentum": 0.9, "algo_options": {"powersgd": {"rank": 4096}}}),
}


@pytest.mark.parametrize("name", list(IDENTITIES))
def test_identity_with_a_simpler_algorithm(name):
    other, settings = IDENTITIES[name]
    cfg = _cfg(3, batch_size=64, **settings)
    got = _sim_params(cfg, [name, other])
    for a, b in zip(got[name], got[other], strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    if other == "dpsgd":
        assert algo_config(cfg, "dpsgd").form == "atc"
        assert not torch.equal(got[other][0], got[other][1])  # decentralized: the models differ


def test_overlap_local_sgd_without_pull_is_independent_local_training():
    """alpha = 0: the pull moves nothing, so every node is plain SGD on its own quadratic, x_T = c + (1 - lr)^T
    (x_0 - c), while the anchor is still averaged in the background (one allreduce of the model per tau steps)."""
    steps = 12
    models, _, cluster = _run_quadratic("overlap_local_sgd", steps, alpha=0.0, local_steps=4)
    centers, starts = (torch.stack(v) for v in _quadratic())
    assert torch.allclose(models, centers + (1 - LR_Q) ** steps * (starts - centers), atol=1e-5)
    for comm in cluster.comms:
        assert comm.stats.snapshot()["model"]["msgs_sent"] == steps // 4


def test_overlap_local_sgd_with_full_pull_stays_at_the_start_and_averages_in_the_background():
    """alpha = 1: every pull lands on the anchor, which never leaves the common starting model (a wiring check:
    the anchor is the mean of the models pulled one round earlier). One allreduce of the model per tau steps."""
    n = 2
    cfg = _cfg(n, batch_size=32, algo_options={"overlap_local_sgd": {"alpha": 1.0}})
    data = load_dataset(cfg.dataset, cfg.seed)
    shards = make_shards(cfg, data)
    steps = shards.steps_per_epoch
    tau = next(t for t in (5, 4, 3, 2) if steps % t == 0)  # the last step pulls: the models end on the anchor
    cfg = dataclasses.replace(cfg, local_steps=1, algo_options={"overlap_local_sgd": {"alpha": 1.0, "tau": tau}})
    cluster = _cluster(n)
    rows: list[dict] = []
    nodes = {}

    def body(rank: int) -> None:
        comm, clock = cluster.comms[rank], cluster.clocks[rank]
        nodes[rank] = run_cell(
            cfg, "overlap_local_sgd", data, shards, rank, comm, clock, torch.device("cpu"), rows.append
        )

    cluster.run(body)
    from bench.core.models import build_model

    start = torch.cat(
        [p.detach().reshape(-1) for p in build_model(cfg.model, data.input_shape, 10, cfg.seed).parameters()]
    )
    for node in nodes.values():
        assert torch.allclose(node.params, start, atol=1e-6)
    sent = [r["value"] for r in rows if r.get("metric") == "comm_bytes_sent" and r.get("kind") == "model"]
    assert sent == [steps // tau * ring_allreduce_bytes(4 * start.numel(), n)] * n


# ---- real processes: the mailbox and the encoded exchange on gloo ---------------------------------------------------


def _start_models(n: int, d: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(d, generator=gen) for _ in range(n)]


def _real_sgp(rank, world, comm, steps, name):
    from bench.engine.processes.worker import WallClock

    node, algo = _hand_node(name, rank, world, comm, WallClock(torch.device("cpu")), _start_models(world, 11)[rank])
    _hooks(node, algo, steps)
    return node.params.clone(), float(algo.weight), comm.stats.snapshot()


@pytest.mark.parametrize("name", ["sgp", "osgp"])
def test_sgp_on_real_processes_matches_the_simulator_and_the_closed_form_bytes(tmp_path, name):
    """The mailbox on gloo: SGP (and OSGP, its messages consumed a step later) on 3 processes moves the models
    exactly as on the simulator; each node sends and receives one message of d + 1 float32 values and a header per
    step (OSGP: one more, the half in flight at the end); summed over nodes, sent == received."""
    world, steps, d = 3, 6, 11
    msgs = steps + (name == "osgp")
    real = run_world(_real_sgp, world, tmp_path, steps, name)
    simulated, _ = _drive(_cluster(world), name, _start_models(world, d), steps)
    for rank, (params, weight, stats) in enumerate(real):
        assert torch.equal(params, simulated[rank]) and weight == 1.0
        assert stats["model"]["bytes_sent"] == stats["model"]["bytes_recv"] == msgs * 4 * (d + 1)
        assert stats["model"]["msgs_sent"] == stats["model"]["msgs_recv"] == msgs
    for direction in ("sent", "recv"):  # headers only: the fences are not traffic
        assert sum(stats["control"][f"bytes_{direction}"] for _, _, stats in real) == world * msgs * MAIL_HEADER_BYTES
    total = torch.stack([params for params, _, _ in real]).sum(0)
    assert torch.allclose(total, torch.stack(_start_models(world, d)).sum(0), atol=1e-5)


# D², gradient tracking (both forms), LEAD (4-bit unbiased compression) and QG-DSGDm: name, momentum, options.
REAL_CASES = (
    ("d2", 0.9, {}),
    ("gradient_tracking", 0.9, {"form": "atc"}),
    ("gradient_tracking", 0.0, {"form": "cta"}),
    ("lead", 0.9, {}),
    ("lead", 0.9, {"compressor": "qsgd"}),  # its own compressor: QSGD drawn on the sender, 4-bit codes
    ("qg_dsgdm", 0.9, {}),
    ("choco", 0.9, {"gamma": 0.5}),
    ("decentlam", 0.9, {}),
    ("minibatch_sgd", 0.9, {}),  # K = 4: an allreduce of gradients every 4 steps
    ("overlap_local_sgd", 0.9, {}),  # tau = 4: a background allreduce of the model every 4 steps
)
REAL_STEPS = 8


def _lead_codec() -> Codec:
    return Codec(CodecConfig(bits=4, quantizer="uniform", eps=8.0 / 7, bucket=8))


def _real_quadratics(rank, world, comm):
    from bench.engine.processes.worker import WallClock

    centers, starts = _quadratic(world)
    out = []
    for name, momentum, options in REAL_CASES:
        clock = WallClock(torch.device("cpu"))
        node, algo = _hand_node(name, rank, world, comm, clock, starts[rank], lr=LR_Q, momentum=momentum, **options)
        codec = _lead_codec() if name == "lead" and not options else None
        _hooks(node, algo, REAL_STEPS, codec, center=centers[rank])
        out.append((node.params.clone(), comm.stats.snapshot()))
    return out


def test_new_algorithms_on_real_processes_match_the_simulator_and_the_closed_form_bytes(tmp_path):
    """D², gradient tracking, LEAD, QG-DSGDm, Choco-SGD, DecentLaM, minibatch SGD and Overlap-Local-SGD on 4 gloo
    processes (a ring, where not every pair talks, and whose Metropolis-Hastings W has the eigenvalue -1/3 that
    makes D² mix with (I + W) / 2; the SGP test above runs 3 processes): every model equals the simulator's, LEAD's
    compressed messages included (the dither is drawn on the sender alike), and each node sends and receives the
    closed form: per step one message per neighbour of d float32 values (2 d for gradient tracking; the codec's or
    its own compressor's packed size for LEAD), or one ring allreduce of d values per 4 steps (minibatch SGD's
    gradients, Overlap-Local-SGD's model)."""
    world = 4
    real = run_world(_real_quadratics, world, tmp_path)
    per_step = {"d2": 4 * D_Q, "gradient_tracking": 8 * D_Q, "lead": _lead_codec().wire_bytes(D_Q), "qg_dsgdm": 4 * D_Q}
    per_step["lead qsgd"] = 4 + 3  # the norm, then 5 codes of 4 bits
    per_step.update({"choco": 4 * D_Q, "decentlam": 4 * D_Q})
    rounds = REAL_STEPS // 4
    allreduced = {"minibatch_sgd": "grad", "overlap_local_sgd": "model"}
    for k, (name, momentum, options) in enumerate(REAL_CASES):
        codec = _lead_codec() if name == "lead" and not options else None
        simulated, _, _ = _run_quadratic(name, REAL_STEPS, codec=codec, momentum=momentum, n=world, **options)
        key = f"{name} {options['compressor']}" if "compressor" in options else name
        for rank in range(world):
            params, snapshot = real[rank][k]
            assert torch.allclose(params, simulated[rank], atol=1e-6), (name, rank)
            if name in allreduced:
                stats = snapshot[allreduced[name]]
                assert stats["bytes_sent"] == stats["bytes_recv"] == rounds * ring_allreduce_bytes(4 * D_Q, world)
                assert stats["msgs_sent"] == stats["msgs_recv"] == rounds
                continue
            stats = snapshot["model"]
            assert stats["bytes_sent"] == stats["bytes_recv"] == REAL_STEPS * 2 * per_step[key]
            assert stats["msgs_sent"] == stats["msgs_recv"] == REAL_STEPS * 2


def test_list_shows_the_new_algorithms_and_the_directed_graph():
    out = CliRunner().invoke(cli, ["list", "--nodes", "8"]).output
    for name in ("choco", "sgp", "osgp", "one-peer-exponential", "d2", "gradient_tracking", "lead", "qg_dsgdm"):
        assert name in out
    assert "Koloskova" in ALGORITHMS["choco"].__doc__ and "Assran" in ALGORITHMS["sgp"].__doc__
    assert "Liu et al., ICLR 2021" in out and "Lin et al., ICML 2021" in out
