"""The simulated cluster's cost model: how long a node's compute takes and how long its messages take.

Compute. One SGD step of a node is two sections of the shared training loop (`bench.training.loop.run_cell`): the
forward/backward pass, then the optimizer update. A node charges

    forward/backward = fb(batch)      * speed_r * straggle * share
    update           = update_seconds * speed_r * straggle * share

where the base times come from a named profile (`COMPUTE_PROFILES`: per model and input shape, fb measured at
batches 8, 32 and 128 and interpolated piecewise-linearly in the batch, extrapolated along the nearest segment), from
`--step-time T` (T on forward/backward, 0 on the update) or from `--calibrate` (the real training loop timed on
this machine for one node with the node's torch threads: one, or with `--shared-cores C` what the local launcher
gives each of N processes, max(1, C // N); `--calibrate host`: see `bench.engine.sim.hostcal`). `speed_r ~
lognormal(0, speed_sigma)` is node r's fixed speed factor (median 1; heterogeneity), `straggle` is `straggler_k`
with probability `straggler_p` per step and 1 otherwise, and `share = max(1, k / shared_cores)` when the nodes
share `shared_cores` cores of one host (what N local worker processes do; 1 when every node has its own
hardware, the default): k is the number of nodes inside a compute section or a one-sided read at the instant
this one starts, itself included — processor sharing, so a node computes faster while others sleep in a
collective waiting for a late peer or in an average waiting for the partner's model lock.

Network. Every node has one full-duplex link of bandwidth B (bytes/s) and latency a (s) per message:

    point-to-point of b bytes        a + b / B, serialized on the sender's out-link and the receiver's in-link
    allreduce of b bytes             as MPI and NCCL implement it (`bench.engine.sim.collectives`): ring,
                                     recursive doubling, Rabenseifner, binomial tree or NCCL's double binary
                                     tree; `auto` (the default) the cheapest for b and N, as their tuners pick;
                                     two-level (intra-host link, then network) with --gpus-per-host G > 1
    neighbour exchange (degree d)    a + d * m / B                  (its d messages share its link)
    barrier                          ceil(log2 N) a                 (dissemination)

A one-sided read is a 32-byte request then the (8 + m)-byte reply; an atomic pairwise average is a
(32 + m)-byte request then an m-byte reply.

Work of the comm layer. Copying a model, the averaging arithmetic, an allreduce's additions (the gamma term of Thakur,
Rabenseifner and Gropp 2005: `collectives.reduced_coordinates`) and encoding/decoding each wire format cost
`fixed + per_coordinate * numel` seconds (`WORK`, per profile, measured by `sim-profile`), times speed_r, charged
by `SimComm` wherever `bench.core.comm.Comm` does that work: on the node's own clock when it works for itself
(publish, read, exchange, average), as the partner's service time when it serves a peer (the reader or initiator
waits for it, and it counts in the partner's serve_seconds).

Overlap (AllReduce SGD's gradient buckets, as PyTorch's DDP). The first `forward_share` (1/3) of a forward/backward
section is the forward pass and the rest the backward pass, which produces the gradients in reverse parameter
order at a cost proportional to their number: a bucket holding the parameters from index i to the model's last is
ready at start + fb * (1/3 + 2/3 * (parameters from i on) / parameters). Its allreduce (the formula above for its
size) starts when every node has it ready and the previous bucket is done, so it overlaps the rest of the backward
pass; the backward pass ends at max(compute end, last bucket done).

Nothing here reads a wall clock except `calibrate` and `measure_step` (the profile benchmark), which exist to time
real steps. The module imports no torch at import time: the CLI lists its profiles.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from bench.base.console import closest
from bench.base.errors import UserError
from bench.engine.sim import collectives

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StepCost:
    """One (model, input shape) entry of a compute profile, for one node at speed 1."""

    fb_points: tuple[tuple[int, float], ...]  # (batch, seconds of one forward/backward pass), batches increasing
    update: float  # seconds of the optimizer update (SGD with momentum over all parameters)

    def seconds(self, batch: int) -> tuple[float, float]:
        pts = self.fb_points
        i = next((k for k in range(1, len(pts) - 1) if batch <= pts[k][0]), len(pts) - 1)
        (b0, t0), (b1, t1) = pts[i - 1], pts[i]
        fb = t0 + (t1 - t0) * (batch - b0) / (b1 - b0)
        return max(fb, MIN_STEP_SECONDS), self.update


MIN_STEP_SECONDS = 1e-5  # floor for extrapolation below the smallest measured batch


@dataclass(frozen=True)
class ComputeProfile:
    name: str
    description: str  # one line for --help and the README
    source: str  # where the numbers come from
    steps: dict[tuple[str, str], StepCost]  # (model, input shape "1x28x28") -> cost
    work: tuple[tuple[str, float, float], ...] = ()  # comm-layer work: (op, fixed s, s per coordinate), `_work`


@dataclass(frozen=True)
class NetworkProfile:
    name: str
    description: str
    bandwidth_gbps: float  # per-node link, Gb/s (1e9 bits per second)
    latency_us: float  # per message, microseconds
    source: str


def shape_key(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _steps(rows: str) -> dict[tuple[str, str], StepCost]:
    """'model shape fb@8 fb@32 fb@128 update' per line, in milliseconds (as `sim-profile` prints them)."""
    out = {}
    for line in rows.strip().splitlines():
        model, shape, b8, b32, b128, update = line.split()
        points = tuple((b, float(ms) / 1e3) for b, ms in zip((8, 32, 128), (b8, b32, b128), strict=True))
        out[(model, shape)] = StepCost(points, float(update) / 1e3)
    return out


def work_op(op: str, quantizer: str | None, bits: int) -> str:
    """The `WORK` key of a codec operation: raw float32 (bits 32, or an algorithm's own `none` compressor) is a
    copy each way."""
    if op in ("encode", "decode") and bits != 32 and quantizer:
        return f"{op} {quantizer} {bits}"
    return "copy" if op in ("encode", "decode", "encode none", "decode none") else op


def _work(rows: str) -> tuple[tuple[str, float, float], ...]:
    """'op [quantizer bits] fixed_us ns_per_coordinate' per line (as `sim-profile` prints them) ->
    (op key, fixed seconds, seconds per coordinate)."""
    out = []
    for line in rows.strip().splitlines():
        *op, fixed_us, ns = line.split()
        out.append((" ".join(op), float(fixed_us) * 1e-6, float(ns) * 1e-9))
    return tuple(out)


def _published(rows: str) -> dict[tuple[str, str], StepCost]:
    """'model shape batch samples_per_s' per line: a published single-GPU training throughput (whole SGD steps) at
    the batch it was measured at. The step takes batch / throughput; it is all charged to the forward/backward
    section (the update is inside the published step time), proportional to the batch through that one point (a
    GPU is less efficient at smaller batches, so below the published batch this is optimistic)."""
    out = {}
    for line in rows.strip().splitlines():
        model, shape, batch, rate = line.split()
        b, r = int(batch), float(rate)
        out[(model, shape)] = StepCost(((1, 1 / r), (b, b / r)), 0.0)
    return out


# Published single-GPU training throughputs (`_published`). "torchvision:resnet50 3x224x224": ResNet-50 v1.5 on
# ImageNet (224x224 crops, 1,000 classes), images/s of one GPU from NVIDIA DeepLearningExamples,
# PyTorch/Classification/ConvNets/resnet50v1.5/README.md ("Training performance results", pytorch-21.03 NGC
# container), at the batch of that recipe's configs.yml (DGX1V: FP32 112, AMP 256; DGXA100: TF32 256, AMP 256).
# "transformer-big 128": Transformer big on WMT14 en-de, NVIDIA
# DeepLearningExamples PyTorch/Translation/Transformer/README.md ("NVIDIA DGX-1 (8x V100 16G)", 1 GPU, 2,560 tokens
# per GPU): tokens/s over 128-token windows = windows/s (a batch of 2,560 tokens = 20 windows); on the A100, the same
# README at commit d666f14 ("Training performance: NVIDIA DGX A100 (8x A100 40GB)", pytorch-22.06-py3 container,
# 1 GPU, 10,240 tokens = 80 windows per GPU): TF32 51,057 and mixed precision 82,059 tokens/s. P100: TensorFlow's
# published benchmarks (tensorflow.org/performance/benchmarks, 2017: tf_cnn_benchmarks, DGX-1, one P100, synthetic
# ImageNet data, batch 64), ResNet-50 v1. H100: Lambda's PyTorch GPU benchmarks (github.com/lambdal/deeplearning-
# benchmark, pytorch/pytorch-train-throughput-fp32.csv and -fp16.csv, row "H100 80GB SXM5", column resnet50), which
# run the same DeepLearningExamples ResNet-50 v1.5 code on one GPU with synthetic data, NCHW, FP32 (TF32 convolutions)
# at batch 640 and AMP (static loss scale 256) at batch 1,280, per their logs (pytorch/results/H100_80GB_SXM5_v1,
# 2023-02-14). Every figure is the source's own; none was adjusted.
_V100_FP32 = _published(
    """
    torchvision:resnet50 3x224x224 112 367
    transformer-big      128       20  59.65
    """
)
_V100_AMP = _published(
    """
    torchvision:resnet50 3x224x224 256 1200
    transformer-big      128       20  186.1
    """
)
_A100_TF32 = _published(
    """
    torchvision:resnet50 3x224x224 256 938
    transformer-big      128       80  398.9
    """
)
_A100_AMP = _published(
    """
    torchvision:resnet50 3x224x224 256 2470
    transformer-big      128       80  641.1
    """
)
_H100_TF32 = _published(
    """
    torchvision:resnet50 3x224x224 640 1753
    """
)
_H100_AMP = _published(
    """
    torchvision:resnet50 3x224x224 1280 2616
    """
)
_P100_FP32 = _published(
    """
    torchvision:resnet50 3x224x224 64 219
    """
)

# `python -m bench.diagnostics.benchmarks sim-profile --repeats 20`: per point the smallest of the medians of two
# runs (each the smallest of 3 medians of 20 steps after 5 warm-up steps), one torch thread, torch 2.14.1, 2026-11-26.
_VM_CORE = _steps(
    """
    mlp      1x28x28  0.319  0.447  0.984  0.126
    mlp      1x8x8    0.244  0.289  0.474  0.0965
    mlp      32       0.237  0.279  0.445  0.0951
    mlp      3x32x32  0.625  1.02   2.87   0.208
    lenet5   1x28x28  1.43   3.44   16.7   0.160
    lenet5   3x32x32  1.95   5.84   21.0   0.180
    resnet20 1x28x28  25.2   84.1   407    0.880
    resnet20 3x32x32  33.1   121    576    0.929
    """
) | _steps(
    # logreg: the same benchmark, 2026-12-04, per point the smaller of two runs, on the dev VM with other jobs
    # running (load average 8: an upper bound of the quiet machine's times)
    """
    logreg   1x28x28  0.266  0.320  0.477  0.115
    logreg   1x8x8    0.261  0.259  0.303  0.111
    logreg   32       0.254  0.268  0.321  0.107
    """
)

# `python -m bench.diagnostics.benchmarks sim-profile --device cuda --repeats 20` on the project's lent NVIDIA H200,
# torch 2.11.0+cu130, 2026-11-26, one run. At these batch sizes the models are kernel-launch bound: the time hardly
# grows with the batch (and wobbles by ~20 % between batch sizes).
_H200 = _steps(
    """
    mlp      1x28x28  0.664  0.882  0.605  0.125
    mlp      1x8x8    0.706  0.668  0.645  0.137
    mlp      32       0.594  0.690  0.649  0.127
    mlp      3x32x32  0.695  0.702  0.902  0.134
    lenet5   1x28x28  1.47   1.57   1.59   0.176
    lenet5   3x32x32  1.48   1.42   1.18   0.170
    resnet20 1x28x28  5.14   4.96   6.31   0.314
    resnet20 3x32x32  5.11   5.31   7.26   0.319
    """
) | _steps(
    # The SwarmSGD paper's workloads: `tools/gpu_profile.sh` (`sim-profile --device cuda --cases paper --repeats 10`,
    # cuDNN autotuning on; PyTorch's fp32 defaults: TF32 convolutions, fp32 matmuls) on the lent H200, torch
    # 2.11.0+cu130, cuDNN 9.19, 2026-12-04; per point the smaller of two runs' figures (each the smallest of 3 medians
    # of 10 steps). The two runs agreed within 1 % at batch 128 on the ImageNet and WMT shapes; below batch 128
    # these eager models are launch bound and the two runs differ by up to 30 %.
    """
    torchvision:resnet18 3x224x224  7.22  9.91  25.5  0.401
    torchvision:resnet50 3x224x224  15.3  22.2  62.1  0.942
    resnet18             3x32x32    6.89  8.08  9.66  0.45
    resnet50             3x32x32    13.0  20.5  22.8  0.81
    transformer-base     128        34.8  47.8  163   1.49
    transformer-big      128        39.6  125   475   2.84
    """
)
# The same workloads in mixed precision (`--precision amp`: fp16 autocast, dynamic loss scaling, channels-last image
# batches, fp32 weights), measured the same way in the same two runs. Launch bound up to batch 32 or more.
_H200_AMP = _steps(
    """
    torchvision:resnet18 3x224x224  8.96  9.59  9.71  0.785
    torchvision:resnet50 3x224x224  15.6  15.4  24.5  1.35
    resnet18             3x32x32    7.71  7.39  8.14  0.744
    resnet50             3x32x32    16.8  19.8  17.3  1.49
    transformer-base     128        30.7  31.2  40.3  1.96
    transformer-big      128        31.8  35.3  73.6  3.58
    """
)
# The comm layer's work as an H200 node runs it (`tools/gpu_profile.sh`: `sim-profile --device cuda --cases work
# --repeats 10`, 2026-12-04, two runs on two lent machines; per op the smaller of the two, fixed and per-coordinate
# part each; the runs differed by up to 50 % per coordinate on the host-side ops): the copy is device to host, the
# averaging arithmetic on the host with the move added on the GPU, the codecs and compressors on the host CPU
# (torch's default 16 threads of that 16-core host; the fused codec kernels are single-threaded), PowerSGD's products
# on the GPU, an allreduce's additions on the GPU (second run only: the first added a host tensor, a transfer that
# NCCL does not make; on the GPU they are launch bound, ~19 us whatever the size up to 1M coordinates).
_H200_WORK = _work(
    """
    copy               18      0.283
    average            43.3    0.409
    reduce             18.5    0
    lowrank 1          77.5    0.00455
    lowrank 2          146     0.0332
    lowrank 4          165     0.0138
    lowrank 8          161     0.0202
    encode sign        39.3    0.232
    decode sign        27.4    0.161
    encode topk        0       11.1
    decode topk        19.3    0.0971
    encode qsgd        146     3.87
    decode qsgd        118     0.261
    encode lattice 2   24.1    0.532
    decode lattice 2   30      0.54
    encode lattice 4   15.9    0.539
    decode lattice 4   32.9    0.499
    encode lattice 8   20      0.539
    decode lattice 8   34      0.492
    encode lattice 16  16      0.576
    decode lattice 16  42.3    0.501
    encode uniform 2   162     0.661
    decode uniform 2   35.2    0.375
    encode uniform 4   123     0.727
    decode uniform 4   25.4    0.333
    encode uniform 8   158     0.698
    decode uniform 8   35.8    0.306
    encode uniform 16  160     0.658
    decode uniform 16  34.5    0.326
    """
)

# `python -m bench.diagnostics.benchmarks sim-profile --repeats 20` (its "work" rows): op, fixed microseconds,
# nanoseconds per coordinate; one torch thread, torch 2.14.1, numba 0.68.1 (the fused CPU codec kernels),
# 2026-12-03, on the dev VM with other jobs running (load average 2: an upper bound of the quiet machine's costs;
# three runs agreed within 10 % on every per-coordinate figure but the 2-bit uniform encode's).
_VM_CORE_WORK = _work(
    """
    copy               2.32    0.157
    average            6.68    0.558
    reduce             0.50    0.138
    encode lattice 2   27.60   0.674
    decode lattice 2   50.53   0.454
    encode lattice 4   28.02   0.570
    decode lattice 4   51.69   0.411
    encode lattice 8   27.88   0.547
    decode lattice 8   51.60   0.296
    encode lattice 16  27.96   0.540
    decode lattice 16  53.17   0.313
    encode uniform 2   198.58  0.707
    decode uniform 2   42.12   0.315
    encode uniform 4   198.85  0.624
    decode uniform 4   40.16   0.292
    encode uniform 8   195.68  0.603
    decode uniform 8   42.57   0.179
    encode uniform 16  205.96  0.563
    decode uniform 16  42.47   0.184
    lowrank 1          39.08   0.333
    lowrank 2          46.00   4.868
    lowrank 4          36.13   5.229
    lowrank 8          24.63   5.077
    encode sign        39.79   0.971
    decode sign        35.06   0.384
    encode topk        0.00    11.949
    decode topk        22.58   0.149
    encode qsgd        113.43  7.718
    decode qsgd        76.85   1.823
    """
)
# `lowrank R` (PowerSGD's work per coordinate of a matrix at rank R, torch's own calls: P = M Q, P orthogonalized,
# Q = M^T P, the reconstruction P Q^T) and the algorithm-owned compressors (`bench.core.compress`: sign, top-1 %, QSGD
# with 7 levels) were measured the same way on 2026-12-04 at load average 1.3-3.1; of three runs each, the run with
# the median per-coordinate figure is kept (lowrank 1: 0.59, 0.333, 0.310; ranks 2-8: one run at 12 under the
# heaviest load, the two others within 7 % of each other; the compressors' runs agreed within 10 %, QSGD's decode
# within 35 %). The published GPU profiles (p100, v100, a100, h100) reuse these host-CPU figures, PowerSGD's included,
# although its products run on the GPU there: an overcharge for PowerSGD on those profiles (the h200 profiles'
# `lowrank` rows, measured on the GPU, are 30-50x cheaper per coordinate).


def _gpu_node(
    work: tuple[tuple[str, float, float], ...], hbm_gb_s: float, pcie_gb_s: float | None = None
) -> tuple[tuple[str, float, float], ...]:
    """`work` of host-side figures as a GPU node incurs it. An allreduce's additions on the GPU, as NCCL makes them:
    12 bytes of device memory traffic per coordinate (two float32 operands read, one written) at the GPU's nominal
    memory bandwidth, plus the H200's measured launch-bound fixed cost. With `pcie_gb_s` (host figures measured
    without a GPU): a copy of the model to the host at no more than the host link's nominal rate, and the averaging
    arithmetic's result moved back to the GPU over it (4 bytes per coordinate each way)."""
    fixed = next(f for op, f, _ in _H200_WORK if op == "reduce")
    link = 4 / (pcie_gb_s * 1e9) if pcie_gb_s else 0.0
    out = []
    for op, f, per in work:
        if op == "reduce":
            f, per = fixed, 12 / (hbm_gb_s * 1e9)
        elif op == "copy" and link:
            per = max(per, link)
        elif op == "average" and link:
            per += link
        out.append((op, f, per))
    return tuple(out)


# Nominal memory bandwidth (NVIDIA data sheets): Tesla P100 732 GB/s, V100 SXM2 900 GB/s, A100 80 GB SXM 2,039 GB/s,
# H100 SXM 3,350 GB/s, H200 4,800 GB/s; host links (PCI-SIG): PCIe 3.0 x16 16 GB/s per direction (Piz Daint's P100
# nodes, DGX-1's V100s), PCIe 4.0 x16 32 GB/s (DGX A100), PCIe 5.0 x16 64 GB/s (H100 SXM). The H200's own copies and
# averages were measured through its host link.
_P100_WORK = _gpu_node(_VM_CORE_WORK, 732, 16)
_V100_WORK = _gpu_node(_VM_CORE_WORK, 900, 16)
_A100_WORK = _gpu_node(_VM_CORE_WORK, 2039, 32)
_H100_WORK = _gpu_node(_VM_CORE_WORK, 3350, 64)
_H200_NODE_WORK = _gpu_node(_H200_WORK, 4800)

COMPUTE_PROFILES: dict[str, ComputeProfile] = {
    "vm-core": ComputeProfile(
        name="vm-core",
        description="one core of a 2-core AMD EPYC (Zen 4) KVM guest, the dev machine; PyTorch CPU, one thread",
        source="measured with `python -m bench.diagnostics.benchmarks sim-profile` on that machine, torch 2.14.1",
        steps=_VM_CORE,
        work=_VM_CORE_WORK,
    ),
    "h200": ComputeProfile(
        name="h200",
        description="one NVIDIA H200 per node, PyTorch eager (CUDA 13), fp32 (TF32 convolutions, PyTorch's default)",
        source=(
            "measured with `python -m bench.diagnostics.benchmarks sim-profile --device cuda` on an H200, "
            "torch 2.11.0+cu130"
        ),
        steps=_H200,
        work=_H200_NODE_WORK,
    ),
    "h200-amp": ComputeProfile(
        name="h200-amp",
        description="one NVIDIA H200 per node, PyTorch eager (CUDA 13), mixed precision (fp16 autocast, loss scaling)",
        source=(
            "measured with `python -m bench.diagnostics.benchmarks sim-profile --device cuda --precision amp` on an "
            "H200, torch 2.11.0+cu130"
        ),
        steps=_H200_AMP,
        work=_H200_NODE_WORK,
    ),
    "p100": ComputeProfile(
        name="p100",
        description="one NVIDIA Tesla P100 per node (Piz Daint's GPU), fp32; published ResNet-50 throughput",
        source="TensorFlow benchmarks (tf_cnn_benchmarks, DGX-1, 1 GPU, synthetic data, batch 64): 219 images/s",
        steps=_P100_FP32,
        work=_P100_WORK,
    ),
    "v100": ComputeProfile(
        name="v100",
        description="one NVIDIA V100 16 GB per node, fp32; published ResNet-50 and Transformer-big throughputs",
        source="NVIDIA DeepLearningExamples READMEs, DGX-1 (V100 16G), 1 GPU, FP32: 367 images/s, 7,635 tokens/s",
        steps=_V100_FP32,
        work=_V100_WORK,
    ),
    "v100-amp": ComputeProfile(
        name="v100-amp",
        description="one NVIDIA V100 16 GB per node, mixed precision (AMP)",
        source="NVIDIA DeepLearningExamples READMEs, DGX-1 (V100 16G), 1 GPU, AMP: 1,200 images/s, 23,821 tokens/s",
        steps=_V100_AMP,
        work=_V100_WORK,
    ),
    "a100": ComputeProfile(
        name="a100",
        description="one NVIDIA A100 80 GB per node, TF32 (PyTorch's fp32 default on Ampere convolutions)",
        source=(
            "NVIDIA DeepLearningExamples READMEs, 1 GPU, TF32: ResNet50 v1.5 on DGX A100 (A100 80GB) 938 images/s, "
            "Transformer on DGX A100 (A100 40GB) 51,057 tokens/s"
        ),
        steps=_A100_TF32,
        work=_A100_WORK,
    ),
    "a100-amp": ComputeProfile(
        name="a100-amp",
        description="one NVIDIA A100 80 GB per node, mixed precision (AMP)",
        source=(
            "NVIDIA DeepLearningExamples READMEs, 1 GPU, AMP: ResNet50 v1.5 on DGX A100 (A100 80GB) 2,470 images/s, "
            "Transformer on DGX A100 (A100 40GB) 82,059 tokens/s"
        ),
        steps=_A100_AMP,
        work=_A100_WORK,
    ),
    "h100": ComputeProfile(
        name="h100",
        description="one NVIDIA H100 80 GB SXM per node, TF32 (PyTorch's fp32 default on Hopper convolutions)",
        source="Lambda's PyTorch benchmarks (DeepLearningExamples ResNet50 v1.5), H100 80GB SXM5, FP32: 1,753 images/s",
        steps=_H100_TF32,
        work=_H100_WORK,
    ),
    "h100-amp": ComputeProfile(
        name="h100-amp",
        description="one NVIDIA H100 80 GB SXM per node, mixed precision (AMP)",
        source="Lambda's PyTorch benchmarks (DeepLearningExamples ResNet50 v1.5), H100 80GB SXM5, AMP: 2,616 images/s",
        steps=_H100_AMP,
        work=_H100_WORK,
    ),
}

NETWORK_PROFILES: dict[str, NetworkProfile] = {
    "loopback": NetworkProfile(
        "loopback",
        "gloo over TCP loopback between processes of one 2-core VM",
        25.0,
        95.0,
        "measured with `python -m bench.diagnostics.benchmarks sim-network` (2-process gloo ping-pong) on the dev VM",
    ),
    "1gbe": NetworkProfile(
        "1gbe",
        "1 Gb/s Ethernet, TCP",
        1.0,
        50.0,
        "nominal line rate; typical kernel-TCP small-message latency on commodity switches",
    ),
    "10gbe": NetworkProfile(
        "10gbe",
        "10 Gb/s Ethernet, TCP",
        10.0,
        25.0,
        "nominal line rate; typical kernel-TCP small-message latency in one rack",
    ),
    "25gbe": NetworkProfile(
        "25gbe",
        "25 Gb/s Ethernet, RoCE",
        25.0,
        5.0,
        "nominal line rate; RDMA over Converged Ethernet latencies of a few microseconds",
    ),
    "ib-edr": NetworkProfile(
        "ib-edr",
        "100 Gb/s InfiniBand EDR",
        100.0,
        1.5,
        "nominal EDR 4x data rate; MPI small-message latency of ~1-2 us",
    ),
    "100gbe": NetworkProfile(
        "100gbe",
        "100 Gb/s Ethernet, RoCE",
        100.0,
        5.0,
        "nominal line rate; RDMA over Converged Ethernet latencies of a few microseconds (as 25gbe)",
    ),
    "ib-ndr": NetworkProfile(
        "ib-ndr",
        "400 Gb/s InfiniBand NDR",
        400.0,
        1.5,
        "nominal NDR 4x data rate; MPI small-message latency of ~1-2 us (as EDR and HDR)",
    ),
    "nvlink4": NetworkProfile(
        "nvlink4",
        "NVLink 4 inside one host (H100/H200 SXM), for --gpus-per-host",
        3600.0,
        2.0,
        "nominal 450 GB/s per direction per GPU (NVIDIA H100/H200 data sheets); a few microseconds per transfer",
    ),
    "pcie4": NetworkProfile(
        "pcie4",
        "PCIe 4.0 x16 inside one host, for --gpus-per-host",
        256.0,
        5.0,
        "nominal 32 GB/s per direction (PCI-SIG 4.0 x16); a few microseconds per DMA transfer",
    ),
    "pcie5": NetworkProfile(
        "pcie5",
        "PCIe 5.0 x16 inside one host, for --gpus-per-host",
        512.0,
        5.0,
        "nominal 64 GB/s per direction (PCI-SIG 5.0 x16); a few microseconds per DMA transfer",
    ),
    "ib-hdr": NetworkProfile(
        "ib-hdr",
        "200 Gb/s InfiniBand HDR",
        200.0,
        1.5,
        "nominal HDR 4x data rate; MPI small-message latency of ~1-2 us",
    ),
    "aries": NetworkProfile(
        "aries",
        "Cray Aries (Cray XC), Piz Daint's interconnect, MPI between two nodes",
        76.856,
        1.30,
        "CSCS's ReFrame checks for Piz Daint's GPU nodes (cscs-checks/microbenchmarks/osu/osu_tests.py), host to "
        "host on one switch: osu_bw 9,607 MB/s at 4 MiB (x 8 bits), osu_latency 1.30 us at 8 bytes",
    ),
}

ALLREDUCE_ALGOS = collectives.CHOICES
# Links inside one host, for --gpus-per-host G > 1 (nominal data sheet rates per direction, not measured here).
INTRA_HOST_PROFILES = ("nvlink4", "pcie4", "pcie5")
JITTER_QUANTILES = 100


def jitter_table(durations: list[float]) -> tuple[float, ...]:
    """JITTER_QUANTILES quantiles of the durations (at (i + 0.5) / Q), scaled to mean exactly 1."""
    ordered = sorted(durations)
    n = len(ordered)
    q = [ordered[min(n - 1, int((i + 0.5) / JITTER_QUANTILES * n))] for i in range(JITTER_QUANTILES)]
    mean = sum(q) / len(q)
    return tuple(round(x / mean, 6) for x in q)


# The forward pass's share of a forward/backward section: a backward pass costs about twice the forward (it
# computes the gradients with respect to both the inputs and the weights of every layer).
FORWARD_SHARE = 1 / 3
CALIBRATIONS = ("none", "node", "host")
MAX_HOST_NODES = 16  # --calibrate host starts N real processes: beyond this the probe costs more than it tells


@dataclass(frozen=True)
class CostModel:
    """Everything the simulator charges; recorded whole in meta.json (`to_dict`)."""

    compute: str  # profile name, "step-time" or "calibrated"
    fb_seconds: float  # forward/backward of one step, one node at speed 1 (batch included)
    update_seconds: float  # optimizer update of one step, one node at speed 1
    network: str  # profile name, "+custom" when --bandwidth/--latency override it
    bandwidth_gbps: float
    latency_us: float
    allreduce: str  # auto | an algorithm of collectives.ALGORITHMS (tree = binomial_tree) | measured
    speed_sigma: float = 0.0
    straggler_p: float = 0.0
    straggler_k: float = 1.0
    shared_cores: int = 0
    calibration_threads: int | None = None  # torch threads the calibrated steps were timed with
    calibration: str = "none"  # none | node (one node timed alone) | host (N local processes, `hostcal`)
    # Host calibration: (operation, alpha seconds, beta seconds per byte) measured in the training loop;
    # "allreduce" replaces the ring/tree formula (and gives the barrier, alpha), "exchange" the neighbour exchange,
    # "read" and "average" the one-sided round trips (half of each on the request, half on the reply).
    measured: tuple[tuple[str, float, float], ...] = ()
    # Host calibration: the measured step durations as JITTER_QUANTILES quantiles divided by their mean; every
    # step of a node is multiplied by one of them, drawn uniformly from the node's own stream (mean 1).
    jitter: tuple[float, ...] = ()
    # --gpus-per-host G > 1: nodes are grouped G to a host, joined by an intra-host link (two-level allreduce).
    gpus_per_host: int = 1
    intra_host: str = ""  # profile name of the intra-host link
    intra_bandwidth_gbps: float = 0.0
    intra_latency_us: float = 0.0
    # The comm layer's own CPU work (copies, averaging arithmetic, codec): (op, fixed seconds, seconds per
    # coordinate): "copy", "average", "reduce" (an allreduce's additions), "encode Q B", "decode Q B" (`work_op`);
    # an op missing here costs nothing (--calibrate host measures operations whole, their work included).
    work: tuple[tuple[str, float, float], ...] = ()

    def work_seconds(self, op: str, numel: int) -> float:
        """Seconds of one comm-layer operation on `numel` coordinates, one node at speed 1."""
        for name, fixed, per in self.work:
            if name == op:
                return fixed + per * numel
        return 0.0

    # Share of a forward/backward section that is the forward pass; gradient buckets become ready during the rest.
    forward_share: float = FORWARD_SHARE

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gbps * 1e9 / 8

    @property
    def latency(self) -> float:
        """Seconds per message."""
        return self.latency_us * 1e-6

    def share(self, computing: int) -> float:
        """Slowdown of a compute section that starts while `computing` nodes (itself included) are inside one:
        processor sharing of the host's `shared_cores` cores, fixed for the section when it starts."""
        return max(1.0, computing / self.shared_cores) if self.shared_cores else 1.0

    def fit(self, op: str) -> tuple[float, float] | None:
        """(alpha seconds, beta seconds per byte) of a measured operation, or None."""
        return next(((a, b) for name, a, b in self.measured if name == op), None)

    def allreduce_choice(self, nbytes: int, nodes: int) -> tuple[str, float]:
        """(the algorithm an allreduce of `nbytes` per node over `nodes` uses, its seconds)."""
        if nodes <= 1:
            return "none", 0.0
        fit = self.fit("allreduce")
        if fit is not None:
            return "measured", fit[0] + fit[1] * nbytes
        network = collectives.Link(self.latency, self.bandwidth)
        intra = None
        if self.gpus_per_host > 1:
            intra = collectives.Link(self.intra_latency_us * 1e-6, self.intra_bandwidth_gbps * 1e9 / 8)
        return collectives.allreduce(nbytes, nodes, network, self.allreduce, self.gpus_per_host, intra)

    def allreduce_seconds(self, nbytes: int, nodes: int) -> float:
        return self.allreduce_choice(nbytes, nodes)[1]

    def barrier_seconds(self, nodes: int) -> float:
        if nodes <= 1:
            return 0.0
        fit = self.fit("allreduce")
        return fit[0] if fit is not None else math.ceil(math.log2(nodes)) * self.latency

    def one_sided_legs(self, op: str, message: int) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """Measured `read`/`average` of an m-byte message: ((wire, latency) of the request, of the reply). The whole
        measured time is latency, occupying no link: it was measured with every node doing the same at once, so
        it already holds what concurrent transfers cost each other (serializing them again would count it twice)."""
        fit = self.fit(op)
        if fit is None:
            return None
        alpha, beta = fit
        if op == "read":  # the request carries no message
            return (0.0, alpha / 2), (0.0, alpha / 2 + beta * message)
        return (0.0, alpha / 2 + beta * message / 2), (0.0, alpha / 2 + beta * message / 2)

    def exchange_seconds(self, nbytes: int) -> tuple[float, float]:
        """(link occupancy, latency) of a node's neighbour exchange that sends `nbytes` in all."""
        fit = self.fit("exchange")
        if fit is not None:
            return fit[1] * nbytes, fit[0]
        return self.wire_seconds(nbytes), self.latency

    def wire_seconds(self, nbytes: int) -> float:
        """Time `nbytes` occupy a link (the latency comes on top, once per message)."""
        return nbytes / self.bandwidth

    def speed_factors(self, seed: int, nodes: int) -> list[float]:
        """Node r's fixed speed factor (multiplies its compute time); drawn from (seed, r) so that rank r has
        the same factor at every node count of a series and for every algorithm."""
        if self.speed_sigma == 0:
            return [1.0] * nodes
        return [random.Random(_seed(seed, r, 12)).lognormvariate(0.0, self.speed_sigma) for r in range(nodes)]

    def straggler_stream(self, seed: int, rank: int) -> random.Random:
        """Per-node stream of straggler draws, restarted for every algorithm (identical launches)."""
        return random.Random(_seed(seed, rank, 11))

    def one_node_samples_per_s(self, batch: int) -> float:
        """Throughput of one nominal node alone (speed 1, expected straggler slowdown, no sharing)."""
        step = (self.fb_seconds + self.update_seconds) * (1 + self.straggler_p * (self.straggler_k - 1))
        return batch / step if step > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["work"] = {op: {"fixed_s": a, "s_per_coordinate": b} for op, a, b in self.work}
        out["measured"] = {op: {"alpha_s": a, "beta_s_per_byte": b} for op, a, b in self.measured}
        ar, ex = self.fit("allreduce"), self.fit("exchange")
        out["formulas"] = {
            "forward_backward": f"fb_seconds * speed_r * straggle{self._share_formula()}",
            "update": f"update_seconds * speed_r * straggle{self._share_formula()}",
            "speed_r": "lognormal(0, speed_sigma), fixed per rank",
            "straggle": "straggler_k with probability straggler_p per step, else 1"
            + (" (times a measured jitter factor, mean 1)" if self.jitter else ""),
            "point_to_point": "latency + bytes / bandwidth, serialized per link direction",
            "allreduce": (
                f"{ar[0]:.6g} + {ar[1]:.6g} * bytes (measured)"
                if ar
                else f"{self.allreduce} (bench/engine/sim/collectives.py"
                + (
                    f"; two-level, {self.gpus_per_host} per host on {self.intra_host})"
                    if self.gpus_per_host > 1
                    else ")"
                )
            ),
            "neighbor_exchange": (
                f"{ex[0]:.6g} + {ex[1]:.6g} * degree * message bytes (measured)"
                if ex
                else "latency + degree * message bytes / bandwidth"
            ),
            "barrier": f"{ar[0]:.6g} (measured allreduce alpha)" if ar else "ceil(log2 N) latency",
            "comm_work": "fixed + per_coordinate * numel per copy, averaging, encode, decode (times speed_r)",
            "gradient_buckets": (
                f"bucket ready at section start + fb * ({self.forward_share:.6g} + {1 - self.forward_share:.6g} * "
                "parameters from the bucket's first to the model's last / all parameters); its allreduce starts "
                "when every node has it ready and the previous bucket is done"
            ),
        }
        for op in ("read", "average"):
            fit = self.fit(op)
            if fit:
                out["formulas"][op] = f"{fit[0]:.6g} + {fit[1]:.6g} * message bytes round trip (measured)"
        return out

    def _share_formula(self) -> str:
        if not self.shared_cores:
            return ""
        return " * max(1, k / shared_cores), k = nodes computing or in a one-sided read when it starts"


def _seed(seed: int, rank: int, stream: int) -> int:
    from bench.training.loop import node_seed

    return node_seed(seed, rank, stream)


def node_threads(cfg, nodes: int) -> int:
    """Torch threads of one node: with --shared-cores C, what the local launcher gives each of N processes
    (max(1, C // N)); otherwise one (a node is one core)."""
    return max(1, cfg.shared_cores // nodes) if cfg.shared_cores else 1


def measure_step(
    model_name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    batch: int,
    *,
    seed: int = 0,
    warmup: int = 5,
    repeats: int = 20,
    device: str = "cpu",
    amp: bool = False,
) -> tuple[float, float]:
    """Median seconds of (forward/backward, optimizer update) of real SGD steps, as the training loop runs them.

    Runs on the caller's torch thread setting; random inputs of the right shape (cost does not depend on values).
    `amp` (CUDA only): mixed precision as NVIDIA's training recipes run it — the forward pass under fp16 autocast,
    dynamic loss scaling (`torch.amp.GradScaler`: the scaled backward in the first section, unscaling, the inf check
    and the step in the update), image batches in channels-last memory format; the weights stay fp32 views of the
    flat buffer, as the training loop keeps them.
    """
    import time

    import torch

    from bench.core.data import LANGUAGE_MODEL
    from bench.core.models import build_model, loss_of, model_spec
    from bench.core.protocol import flatten_model

    dev = torch.device(device)
    if amp and dev.type != "cuda":
        raise ValueError("mixed precision is measured on CUDA only")
    model = build_model(model_name, input_shape, num_classes, seed).to(dev)
    flatten_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    gen = torch.Generator().manual_seed(seed)
    if model_spec(model_name).task == LANGUAGE_MODEL:  # token windows in, a next token per position out
        x = torch.randint(0, num_classes, (batch, *input_shape), generator=gen).to(dev)
        y = torch.randint(0, num_classes, (batch, *input_shape), generator=gen).to(dev)
    else:
        x = torch.randn((batch, *input_shape), generator=gen).to(dev)
        y = torch.randint(0, num_classes, (batch,), generator=gen).to(dev)
        if amp and x.dim() == 4:  # channels-last inputs; the weights stay views of the flat buffer, as in training
            x = x.contiguous(memory_format=torch.channels_last)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    fb_times, up_times = [], []
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            loss = loss_of(model(x), y)
        scaler.scale(loss).backward()
        sync()
        t1 = time.perf_counter()
        scaler.step(opt)
        scaler.update()
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            fb_times.append(t1 - t0)
            up_times.append(t2 - t1)
    return statistics.median(fb_times), statistics.median(up_times)


WORK_SIZES = (16_384, 1 << 20)  # coordinates: the fixed and per-coordinate costs are fitted through these two
WORK_BITS = (2, 4, 8, 16)


def measure_work(*, repeats: int = 20, device: str = "cpu", sizes: tuple[int, ...] = WORK_SIZES) -> list[tuple]:
    """(op, fixed seconds, seconds per coordinate) of every comm-layer operation, timed as `bench.core.comm.Comm`
    runs them (the codec on the CPU, whatever the model's device): a copy of the model to the host, the averaging
    arithmetic of a pairwise average, encode and decode of each quantizer and width. Each size is the smallest of 3
    medians of `repeats` calls; the line through the two sizes gives the fixed and per-coordinate parts."""
    import time

    import torch

    from bench.core.codec import QUANTIZERS, Codec, CodecConfig, suggest_eps
    from bench.core.compress import CompressorOptions

    on_cuda = torch.device(device).type == "cuda"

    def timed(fn) -> float:
        best = math.inf
        for _ in range(3):
            times = []
            for i in range(repeats + 2):
                if on_cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if on_cuda:
                    torch.cuda.synchronize()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            best = min(best, statistics.median(times))
        return best

    per_size: dict[str, list[float]] = {}
    for n in sizes:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, generator=gen) * 0.05
        ref = x + (torch.rand(n, generator=gen) * 2 - 1) * 0.02  # a neighbour's model, well inside the radius
        live, theirs, mine = x.to(device), ref.clone(), x.clone()
        on_device = ref.to(device)
        cols = min(256, n // 16)  # PowerSGD's view of a parameter: rows x 256 columns (at least 16 x 64)
        matrix = live[: n - n % cols].view(1, -1, cols)
        ops = {
            "copy": lambda live=live: live.detach().to("cpu", copy=True),
            # the move is computed on the host and added to the live model on its device, as `Comm` does
            "average": lambda live=live, t=theirs, m=mine: live.add_(t.clone().sub_(m).mul_(0.5).to(live.device)),
            # an allreduce's additions happen where the tensors are (NCCL on the GPU, gloo on the host)
            "reduce": lambda live=live, t=on_device: live.add_(t),
        }
        for rank in (1, 2, 4, 8):  # PowerSGD's ranks (`baselines.powersgd.LOWRANK_RANKS`), on the model's device
            start = torch.randn(1, cols, rank, generator=gen).to(device)
            ops[f"lowrank {rank}"] = lambda m=matrix, q=start: _lowrank_round(m, q.clone())
        for c in (CompressorOptions(compressor=name).build() for name in ("sign", "topk", "qsgd")):
            msg = c.encode(x, gen)
            ops[f"encode {c.name}"] = lambda c=c, x=x, g=gen: c.encode(x, g)
            ops[f"decode {c.name}"] = lambda c=c, m=msg, n=n: c.decode(m, n)
        for q in QUANTIZERS:
            for bits in WORK_BITS:
                eps = suggest_eps(bits, 0.05) if q == "lattice" else 1e-3
                codec = Codec(CodecConfig(bits=bits, quantizer=q, eps=eps))
                msg = codec.encode(x)
                ops[f"encode {q} {bits}"] = lambda c=codec, x=x: c.encode(x)
                ops[f"decode {q} {bits}"] = lambda c=codec, m=msg, r=ref, n=n: c.decode(m, n, r)
        for op, fn in ops.items():
            per_size.setdefault(op, []).append(timed(fn))
    (n0, n1), out = sizes[:2], []
    for op, (t0, t1) in per_size.items():
        per = max(0.0, (t1 - t0) / (n1 - n0))
        out.append((op, max(0.0, t0 - per * n0), per))
    return out


def _lowrank_round(m: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """PowerSGD's work on one matrix, with torch's own calls as its hook makes them (`powerSGD_hook`): P = M Q,
    P orthogonalized, Q = M^T P, and the rank-r reconstruction P Q^T over M's size (charged per coordinate,
    "lowrank R")."""
    import torch
    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _orthogonalize

    p = torch.bmm(m, q)
    _orthogonalize(p)
    q = torch.bmm(m.transpose(1, 2), p)
    return torch.bmm(p, q.transpose(1, 2))


class SectionTimer:
    """A wall clock for the training loop that also records how long each of its two compute sections took."""

    def __init__(self) -> None:
        import time

        self.now = time.perf_counter
        self.sections: tuple[list[float], list[float]] = ([], [])
        self.starts: list[float] = []  # when each step's first section began
        self._phase = 0
        self._t0 = 0.0

    def compute(self) -> SectionTimer:
        return self

    def __enter__(self) -> SectionTimer:
        self._t0 = self.now()
        if self._phase == 0:
            self.starts.append(self._t0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sections[self._phase].append(self.now() - self._t0)
        self._phase ^= 1


def check(cfg) -> None:
    """Validation of the cost-model options (no data, no torch): each failure is one actionable line."""
    if cfg.compute_profile not in COMPUTE_PROFILES:
        raise UserError(
            f"unknown compute profile '{cfg.compute_profile}'{closest(cfg.compute_profile, COMPUTE_PROFILES)}: "
            f"choose from {', '.join(COMPUTE_PROFILES)}, or pass --step-time SECONDS or --calibrate"
        )
    if cfg.network not in NETWORK_PROFILES:
        raise UserError(
            f"unknown network profile '{cfg.network}'{closest(cfg.network, NETWORK_PROFILES)}: "
            f"choose from {', '.join(NETWORK_PROFILES)} (or set --bandwidth and --latency)"
        )
    if cfg.allreduce_algo not in ALLREDUCE_ALGOS:
        raise UserError(f"--allreduce must be one of {', '.join(ALLREDUCE_ALGOS)}, got '{cfg.allreduce_algo}'")
    if cfg.step_time is not None and not (cfg.step_time > 0 and math.isfinite(cfg.step_time)):
        raise UserError(f"--step-time must be a positive number of seconds, got {cfg.step_time}")
    if cfg.calibrate not in CALIBRATIONS:
        raise UserError(f"--calibrate must be one of {', '.join(CALIBRATIONS)}, got '{cfg.calibrate}'")
    if cfg.step_time is not None and cfg.calibrate != "none":
        raise UserError("--step-time and --calibrate both set the compute time: pass only one of them")
    if cfg.calibrate == "host":
        _check_host(cfg)
    if cfg.gpus_per_host < 1:
        raise UserError(f"--gpus-per-host must be at least 1, got {cfg.gpus_per_host}")
    if cfg.intra_host not in INTRA_HOST_PROFILES:
        raise UserError(
            f"unknown intra-host link '{cfg.intra_host}'{closest(cfg.intra_host, INTRA_HOST_PROFILES)}: "
            f"choose from {', '.join(INTRA_HOST_PROFILES)}"
        )
    if cfg.bandwidth_gbps is not None and not (cfg.bandwidth_gbps > 0 and math.isfinite(cfg.bandwidth_gbps)):
        raise UserError(f"--bandwidth must be a positive number of Gb/s, got {cfg.bandwidth_gbps}")
    if cfg.latency_us is not None and not (cfg.latency_us > 0 and math.isfinite(cfg.latency_us)):
        raise UserError(f"--latency must be a positive number of microseconds, got {cfg.latency_us}")
    if not (cfg.speed_sigma >= 0 and math.isfinite(cfg.speed_sigma)):
        raise UserError(f"--speed-sigma must be >= 0, got {cfg.speed_sigma}")
    if not 0 <= cfg.straggler_p <= 1:
        raise UserError(f"--straggler-p must be a probability in [0, 1], got {cfg.straggler_p}")
    if not (cfg.straggler_k >= 1 and math.isfinite(cfg.straggler_k)):
        raise UserError(f"--straggler-k must be a slowdown factor >= 1, got {cfg.straggler_k}")
    if cfg.shared_cores < 0:
        raise UserError(f"--shared-cores must be >= 0 (0 = every node has its own hardware), got {cfg.shared_cores}")


def _check_host(cfg) -> None:
    """`--calibrate host` measures N local processes of this machine: compute and links both come from it."""
    for flag, given in (
        ("--gpus-per-host", cfg.gpus_per_host > 1),
        ("--shared-cores", cfg.shared_cores),
        ("--bandwidth", cfg.bandwidth_gbps is not None),
        ("--latency", cfg.latency_us is not None),
    ):
        if given:
            raise UserError(f"--calibrate host measures this machine's cores and links itself: drop {flag}")
    largest = max(cfg.node_series or (cfg.nodes,))
    if largest > MAX_HOST_NODES:
        raise UserError(
            f"--calibrate host starts one real process per node, at most {MAX_HOST_NODES} (got {largest}): "
            "use fewer nodes, or --calibrate node to time one node and model the rest"
        )
