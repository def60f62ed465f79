"""Cost-only simulation (`--engine sim --compute cost-only`): deterministic, the same time and bytes as a real
simulation of the same workload, no accuracy, and bad input refused in one line."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench.core.codec import Codec, CodecConfig
from bench.engine.sim.costonly import STAND_IN, ChargedSizes
from bench.training.registry import ALGORITHMS, runs_on
from cli import cli

ALGOS = tuple(  # all but those cost-only refuses (powersgd) and those that do not run on the MLP (adsaga)
    n for n, a in ALGORITHMS.items() if not a.needs_tensors and runs_on(n, "mlp")
)
# The shipped MNIST subset: 3,600 training samples after the validation split, so one epoch at 8 nodes of batch 32
# is 14 steps per node.
NODES, STEPS = 8, 14
COMMON = ["--engine", "sim", "--nodes", NODES, "--model", "mlp", "--dataset", "mnist", "--speed-sigma", 0.3]
COMMON += ["--set", "lead.compressor=topk"]  # an algorithm-owned compressor's messages are charged too
ALGO_ARGS = [a for name in ALGOS for a in ("--algo", name)]
EQUAL = ["samples", "steps_per_node", "bytes_sent_total", "bytes_grad", "bytes_model", "bytes_control"]
CLOSE = ["train_seconds", "samples_per_s", "comm_fraction", "step_seconds_median", "staleness_mean"]


def _invoke(*args):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


@pytest.fixture(scope="module")
def cost_only(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "out"
    r = _invoke(*COMMON, *ALGO_ARGS, "--compute", "cost-only", "--steps", STEPS, "--out", out)
    assert r.exit_code == 0, r.output
    return out, r.output


def test_cost_only_is_deterministic(cost_only, tmp_path):
    out = tmp_path / "out"  # the folder name is the run id, in every record
    r = _invoke(*COMMON, *ALGO_ARGS, "--compute", "cost-only", "--steps", STEPS, "--out", out)
    assert r.exit_code == 0, r.output
    for name in ("summary.csv", "records.jsonl", "throughput.md", "comm.md"):
        assert (out / name).read_bytes() == (cost_only[0] / name).read_bytes(), name


def test_cost_only_agrees_with_real_training_on_time_and_bytes(cost_only, tmp_path):
    """The same workload (MLP on 28x28 MNIST, vm-core profile, 10 GbE) trained for real and charged cost-only: every
    byte count is equal and the simulated times agree (the stand-in's comm-layer work is charged for the MLP's
    coordinates, so only float rounding may differ)."""
    out = tmp_path / "out"
    r = _invoke(*COMMON, *ALGO_ARGS, "--epochs", 1, "--out", out)
    assert r.exit_code == 0, r.output
    real = pd.read_csv(out / "summary.csv").set_index("algorithm")
    cheap = pd.read_csv(cost_only[0] / "summary.csv").set_index("algorithm")
    assert (real["steps_per_node"] == STEPS).all()
    for name in ALGOS:
        for col in EQUAL:
            assert cheap.loc[name, col] == real.loc[name, col], (name, col)
        for col in CLOSE:
            if pd.isna(real.loc[name, col]):
                assert pd.isna(cheap.loc[name, col]), (name, col)
            else:
                assert cheap.loc[name, col] == pytest.approx(real.loc[name, col], rel=1e-9), (name, col)
    real_meta = json.loads((out / "meta.json").read_text())
    cheap_meta = json.loads((cost_only[0] / "meta.json").read_text())
    assert cheap_meta["sim"]["model_parameters"] == real_meta["sim"]["model_parameters"]
    real_used = real_meta["cost_model"].pop("allreduce_by_bytes")  # with the evaluation's small allreduces
    assert cheap_meta["cost_model"].pop("allreduce_by_bytes").items() <= real_used.items()
    assert cheap_meta["cost_model"] == real_meta["cost_model"]


def test_cost_only_measures_no_accuracy_and_says_why(cost_only):
    out, output = cost_only
    summary = pd.read_csv(out / "summary.csv")
    assert summary["test_acc"].isna().all() and (summary["samples_per_s"] > 0).all()
    assert "accuracy: none measured: --compute cost-only" in output
    assert "test acc" not in output
    assert json.loads((out / "meta.json").read_text())["sim"]["compute"].startswith("cost-only")


@pytest.mark.parametrize(("bits", "quantizer"), [(32, "lattice"), (8, "lattice"), (4, "uniform"), (2, "lattice")])
def test_charged_sizes_are_the_codecs_sizes_for_the_workload(bits, quantizer):
    codec = Codec(CodecConfig(bits=bits, quantizer=quantizer, eps=1e-3))
    n = 25_557_032  # ResNet-50's parameters
    sizes = ChargedSizes(codec, STAND_IN, n)
    assert sizes.bytes(8 + codec.wire_bytes(STAND_IN)) == 8 + codec.wire_bytes(n)
    assert sizes.bytes(codec.wire_bytes(STAND_IN) + codec.bitmap_bytes(STAND_IN)) == (
        codec.wire_bytes(n) + codec.bitmap_bytes(n)
    )
    assert sizes.coords(STAND_IN) == n
    with pytest.raises(RuntimeError, match="cost-only"):
        sizes.bytes(3)


# ---- the paper's workloads ------------------------------------------------------------------------------------


def test_published_throughputs_become_step_times():
    """A published single-GPU throughput T at batch B charges B / T seconds per step (all of it forward/backward)."""
    from bench.engine.sim.costmodel import COMPUTE_PROFILES

    r50 = ("torchvision:resnet50", "3x224x224")
    assert COMPUTE_PROFILES["v100"].steps[r50].seconds(112) == pytest.approx((112 / 367, 0.0))
    assert COMPUTE_PROFILES["a100-amp"].steps[r50].seconds(256) == pytest.approx((256 / 2470, 0.0))
    assert COMPUTE_PROFILES["p100"].steps[r50].seconds(32) == pytest.approx((32 / 219, 0.0))
    big = ("transformer-big", "128")
    assert COMPUTE_PROFILES["v100-amp"].steps[big].seconds(20) == pytest.approx((2560 / 23821, 0.0), rel=1e-3)
    assert COMPUTE_PROFILES["a100"].steps[big].seconds(80) == pytest.approx((10240 / 51057, 0.0), rel=1e-3)
    assert COMPUTE_PROFILES["a100-amp"].steps[big].seconds(80) == pytest.approx((10240 / 82059, 0.0), rel=1e-3)


def test_paper_models_have_the_papers_parameter_counts():
    """Counted on the real models: Vaswani et al. 2017, Table 3 (base 65M, big 213M, with a 37k vocabulary) and
    torchvision's ImageNet ResNet-50 (25.6M)."""
    from bench.core.models import build_model

    def count(name, shape, classes):
        return sum(p.numel() for p in build_model(name, shape, classes, 0).parameters())

    assert count("transformer-base", (16,), 37_000) == pytest.approx(65e6, rel=0.04)
    assert count("transformer-big", (16,), 37_000) == pytest.approx(213e6, rel=0.04)
    assert count("torchvision:resnet50", (3, 224, 224), 1000) == 25_557_032


def test_cost_only_charges_the_named_workloads_bytes(tmp_path):
    """ResNet-50 on ImageNet, 4 nodes on a V100 profile: a SwarmSGD read moves the 8-byte stamp and 25,557,032 float32
    coordinates, though each node holds 16."""
    out = tmp_path / "out"
    args = ["--engine", "sim", "--compute", "cost-only", "--steps", 8, "--nodes", 4, "--algo", "swarm"]
    r = _invoke(*args, "--model", "torchvision:resnet50", "--dataset", "imagenet", "--profile", "v100", "--out", out)
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sim"]["model_parameters"] == 25_557_032
    assert meta["cost_model"]["compute"] == "v100"
    rows = pd.read_json(out / "records.jsonl", lines=True)
    recv = rows[(rows["metric"] == "comm_bytes_recv") & (rows["kind"] == "model")]
    msgs = rows[(rows["metric"] == "comm_msgs_recv") & (rows["kind"] == "model")]
    assert recv["value"].sum() == msgs["value"].sum() * (8 + 4 * 25_557_032)


def test_paper_transformers_train_as_causal_language_models():
    """Every attention is causal: changing token 5 of a window changes no prediction before position 5."""
    import torch

    from bench.core.models import build_model, loss_of

    model = build_model("transformer-base", (8,), 50, 0)
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    out = model(x)
    changed = x.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 50
    with torch.no_grad():
        again = model(changed)
    assert torch.allclose(again[:, :5], out[:, :5], atol=1e-5) and not torch.allclose(again[:, 5:], out[:, 5:])
    loss_of(out[:, :-1], x[:, 1:]).backward()
    assert all(p.grad is not None for p in model.parameters())


# ---- AllReduce SGD's gradient buckets ----------------------------------------------------------------------------

SMALL_BUCKETS = ["--set", "allreduce.first_bucket_mb=0.002", "--set", "allreduce.bucket_cap_mb=0.02"]


def _counter(out, metric):
    rows = pd.read_json(out / "records.jsonl", lines=True)
    return rows[rows["metric"] == metric]["value"].sum()


def test_cost_only_charges_allreduce_buckets_as_a_real_simulation(tmp_path):
    """AllReduce SGD with the MLP's gradient in 3 buckets ([last layer], [middle layer], [first layer]), started
    during the backward pass: cost-only charges the same buckets at the same instants as the real simulation, so
    the step times, bytes and comm fraction agree."""
    args = [*COMMON, "--algo", "allreduce", *SMALL_BUCKETS]
    cheap_out, real_out = tmp_path / "cheap", tmp_path / "real"
    r = _invoke(*args, "--compute", "cost-only", "--steps", STEPS, "--out", cheap_out)
    assert r.exit_code == 0, r.output
    r = _invoke(*args, "--epochs", 1, "--out", real_out)
    assert r.exit_code == 0, r.output
    real = pd.read_csv(real_out / "summary.csv").iloc[0]
    cheap = pd.read_csv(cheap_out / "summary.csv").iloc[0]
    assert real["steps_per_node"] == STEPS
    for col in EQUAL:
        assert cheap[col] == real[col], col
    for col in CLOSE:
        if pd.isna(real[col]):
            assert pd.isna(cheap[col]), col
        else:
            assert cheap[col] == pytest.approx(real[col], rel=1e-9), col
    assert _counter(cheap_out, "algo_buckets") == _counter(real_out, "algo_buckets") == 3 * NODES * STEPS
    real_used = json.loads((real_out / "meta.json").read_text())["cost_model"]["allreduce_by_bytes"]
    cheap_used = json.loads((cheap_out / "meta.json").read_text())["cost_model"]["allreduce_by_bytes"]
    assert {4 * 1290, 4 * 16512, 4 * 100480} <= {int(b) for b in cheap_used}  # each bucket at its workload size
    assert cheap_used.items() <= real_used.items()


def test_cost_only_allreduce_overlaps_a_large_models_backward_pass(tmp_path):
    """ResNet-50 on ImageNet (V100 profile): AllReduce SGD's gradient goes in DDP's buckets (1 MiB, then 25 MiB, cut
    from the real model's parameter sizes), which overlap the backward pass, so a step is shorter than with one
    allreduce after the backward pass; every bucket is charged its bytes."""
    from baselines.allreduce import MIB, bucket_slices
    from bench.core.comm import ring_allreduce_bytes
    from bench.core.models import build_model

    nodes, steps = 8, 3
    args = ["--engine", "sim", "--compute", "cost-only", "--steps", steps, "--nodes", nodes, "--algo", "allreduce"]
    args += ["--model", "torchvision:resnet50", "--dataset", "imagenet", "--profile", "v100"]
    r = _invoke(*args, "--out", tmp_path / "overlap")
    assert r.exit_code == 0, r.output
    r = _invoke(*args, "--set", "allreduce.overlap=false", "--out", tmp_path / "flat")
    assert r.exit_code == 0, r.output
    overlap = pd.read_csv(tmp_path / "overlap" / "summary.csv").iloc[0]
    flat = pd.read_csv(tmp_path / "flat" / "summary.csv").iloc[0]
    assert overlap["step_seconds_median"] < flat["step_seconds_median"]
    assert overlap["comm_fraction"] < flat["comm_fraction"]
    sizes = [p.numel() for p in build_model("torchvision:resnet50", (3, 224, 224), 1000, 0).parameters()]
    slices = bucket_slices(sizes, 4, MIB, 25 * MIB)
    assert len(slices) > 2
    assert _counter(tmp_path / "overlap", "algo_buckets") == len(slices) * nodes * steps
    per_step = sum(ring_allreduce_bytes(4 * (b - a), nodes) for a, b in slices)
    assert overlap["bytes_grad"] == nodes * steps * per_step
    assert flat["bytes_grad"] == nodes * steps * ring_allreduce_bytes(4 * sum(sizes), nodes)


def test_charged_sizes_place_a_slice_where_it_lies_in_the_workload():
    """A slice of the stand-in's buffer is charged as the workload's parameters it holds, and is ready after the
    share of the backward pass that computes them; anything else keeps the proportional charge."""
    import torch

    stand_in, workload = (3, 3, 2), (1000, 10, 90)
    sizes = ChargedSizes(Codec(CodecConfig()), 8, 1100, layout=(stand_in, workload))
    grads = torch.zeros(8)
    assert sizes.span(grads) == (1100, 1.0)
    assert sizes.span(grads[6:8]) == (90, 90 / 1100)
    assert sizes.span(grads[3:8]) == (100, 100 / 1100)
    assert sizes.span(grads[0:3]) == (1000, 1.0)
    assert sizes.span(torch.zeros(9))[0] == 1101  # the model and a push-sum weight


def test_scheduler_floor_is_a_measured_cost_per_switch():
    """`make bench`'s scheduler floor times the simulator's switch pattern alone: every node's rounds run (the
    loop ends), at a positive cost per round trip that one greenlet switch pair cannot beat by orders of magnitude."""
    from bench.diagnostics.benchmarks import scheduler_seconds

    seconds = scheduler_seconds(64, rounds=50)
    assert 1e-8 < seconds < 1e-3


def test_cost_only_benchmark_runs_the_chosen_nodes_steps_and_algorithm_and_rejects_bad_input():
    """`sim-cost-only` at a small size, in a fresh process as `make bench` runs it: one row per algorithm with the
    node-steps asked for, their simulated time and switches; bad options are one line and exit status 2."""
    from bench.diagnostics import benchmarks

    ctx = benchmarks.BenchContext(
        torch.device("cpu"), cost_only_nodes=16, cost_only_steps=3, cost_only_algos=("swarm",)
    )
    (row,) = benchmarks.bench_sim_cost_only(ctx)
    assert (row["algorithm"], row["nodes"], row["node-steps"]) == ("swarm", 16, 48)
    assert row["simulated s"] > 0 and row["switches"] >= 48 and row["us/node-step"] > 0
    assert row["node-steps/s"] == pytest.approx(1e6 / row["us/node-step"])
    assert benchmarks.main(["sim-cost-only", "--cost-only-algo", "bogus"]) == 2
    assert benchmarks.main(["sim-cost-only", "--cost-only-nodes", "1"]) == 2
