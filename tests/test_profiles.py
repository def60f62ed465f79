"""The GPU compute profiles (measured with `tools/gpu_profile.sh`, or published), the network profiles with a
published source, and the measuring tool's own checks."""

from __future__ import annotations

import pytest

from bench.base.errors import UserError
from bench.core.models import build_model
from bench.diagnostics import benchmarks
from bench.engine.sim import costmodel
from bench.engine.sim.costmodel import COMPUTE_PROFILES, NETWORK_PROFILES, measure_step, shape_key
from bench.engine.sim.costonly import SHAPES
from bench.training.config import RunConfig


@pytest.mark.parametrize("profile", ["h200", "h200-amp"])
def test_h200_profiles_hold_every_paper_workload_a_cost_only_run_looks_up(profile):
    """Every (model, dataset) `sim-profile --cases paper` measures is an entry of the measured profiles, under the
    key a cost-only run of that dataset looks up, measured with that dataset's classes (vocabulary), and the model
    builds at that shape."""
    by_shape = {(shape, classes) for shape, classes, _ in SHAPES.values()}
    steps = COMPUTE_PROFILES[profile].steps
    for model, shape, classes in benchmarks.PAPER_PROFILE_CASES:
        assert (shape, classes) in by_shape
        assert (model, shape_key(shape)) in steps
        fb8, _ = steps[(model, shape_key(shape))].seconds(8)
        fb128, update = steps[(model, shape_key(shape))].seconds(128)
        assert 0 < fb8 and 0 < fb128 < 1 and 0 < update < fb128
    assert COMPUTE_PROFILES[profile].work, "the H200 profiles charge the comm layer's work as measured there"


def test_mixed_precision_profile_is_faster_at_large_batches():
    """Tensor cores in fp16: at batch 128 every ImageNet and WMT workload steps faster under AMP than in fp32."""
    fp32, amp = COMPUTE_PROFILES["h200"].steps, COMPUTE_PROFILES["h200-amp"].steps
    for model, shape, _ in benchmarks.PAPER_PROFILE_CASES:
        if shape == (3, 32, 32):
            continue  # CIFAR shapes are launch bound at 128 on an H200: no clear order
        key = (model, shape_key(shape))
        assert sum(amp[key].seconds(128)) < sum(fp32[key].seconds(128))


def test_paper_cases_build_with_their_classes():
    for model, shape, classes in benchmarks.PAPER_PROFILE_CASES:
        if model == "transformer-big":
            continue  # 211 M parameters: built by the cost-only tests already
        m = build_model(model, shape, classes, 0)
        assert sum(p.numel() for p in m.parameters()) > 10**7


def test_mixed_precision_is_measured_on_cuda_only(capsys):
    with pytest.raises(ValueError, match="CUDA"):
        measure_step("mlp", (32,), 10, 8, repeats=1, warmup=0, amp=True)
    assert benchmarks.main(["sim-profile", "--precision", "amp"]) == 2
    assert benchmarks.main(["sim-profile", "--cases", "small,bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --precision amp is measured on CUDA only; use --device cuda or --precision fp32",
        "error: --cases 'small,bogus': choose among small, paper, work, comma-separated",
    ]


@pytest.mark.parametrize(
    "profile, hbm_gb_s, pcie_gb_s",
    [
        ("p100", 732, 16),
        ("v100", 900, 16),
        ("v100-amp", 900, 16),
        ("a100", 2039, 32),
        ("h100", 3350, 64),
        ("h100-amp", 3350, 64),
        ("h200", 4800, None),
    ],
)
def test_gpu_profiles_charge_a_gpu_nodes_work(profile, hbm_gb_s, pcie_gb_s):
    """NCCL reduces on the GPU: a GPU profile charges an allreduce's additions at the GPU's memory bandwidth (12 bytes
    per coordinate), never at a host core's rate. The published profiles' host figures (the dev VM core's) add the
    host link: a copy to the host no faster than PCIe, an average's move back over it; the rest is the host's."""
    rows = {op: (fixed, per) for op, fixed, per in COMPUTE_PROFILES[profile].work}
    host_profile = "vm-core" if pcie_gb_s else None
    assert rows["reduce"][1] == pytest.approx(12 / (hbm_gb_s * 1e9))
    assert rows["reduce"][1] < COMPUTE_PROFILES["vm-core"].work[2][2] / 5
    if host_profile is None:
        return
    host = {op: (fixed, per) for op, fixed, per in COMPUTE_PROFILES[host_profile].work}
    link = 4 / (pcie_gb_s * 1e9)
    assert rows["copy"][1] == pytest.approx(max(host["copy"][1], link))
    assert rows["average"][1] == pytest.approx(host["average"][1] + link)
    same = {op for op in host if op not in ("reduce", "copy", "average")}
    assert {op: rows[op] for op in same} == {op: host[op] for op in same}


@pytest.mark.parametrize(("profile", "batch", "images_per_s"), [("h100", 640, 1753), ("h100-amp", 1280, 2616)])
def test_h100_profiles_are_the_published_throughput(profile, batch, images_per_s):
    """Lambda's benchmark table (H100 80GB SXM5, one GPU, DeepLearningExamples ResNet-50 v1.5): a step of the
    published batch takes batch / throughput, all of it forward/backward; ResNet-50 on ImageNet is the one workload,
    as for the A100 profiles, and a run of another is refused in one line."""
    steps = COMPUTE_PROFILES[profile].steps
    assert set(steps) == {("torchvision:resnet50", "3x224x224")}
    r50 = steps[("torchvision:resnet50", "3x224x224")]
    assert r50.seconds(batch) == pytest.approx((batch / images_per_s, 0.0))
    assert r50.seconds(64) == pytest.approx((64 / images_per_s, 0.0))
    assert f"{images_per_s:,} images/s" in COMPUTE_PROFILES[profile].source


def test_aries_is_the_published_osu_figures_and_resolves():
    """CSCS's osu_bw reference for Piz Daint's GPU nodes, 9,607 MB/s (10^6 bytes), in Gb/s; osu_latency 1.30 us.
    `--network aries` passes the option check and the message for a misspelt network lists it."""
    aries = NETWORK_PROFILES["aries"]
    assert aries.bandwidth_gbps == pytest.approx(9607e6 * 8 / 1e9)
    assert aries.latency_us == 1.30
    assert "9,607 MB/s" in aries.source and "1.30 us" in aries.source
    costmodel.check(RunConfig(engine="sim", network="aries", compute_profile="h100"))
    with pytest.raises(UserError, match="did you mean 'aries'") as err:
        costmodel.check(RunConfig(engine="sim", network="aris"))
    assert "aries" in str(err.value).split("choose from ")[1]
