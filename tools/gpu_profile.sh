#!/usr/bin/env bash
# Compute profile of one NVIDIA GPU for the simulator (`--profile`), for a machine with one (CI has none): the
# SwarmSGD paper's workloads (ResNet-18/50 on ImageNet and CIFAR shapes, Transformer base/big on 128-token WMT
# windows) in fp32 and in mixed precision, then the comm layer's work as a GPU node runs it (copies to the host, the
# codec on the host CPU, PowerSGD's products on the GPU). Rows go to COMPUTE_PROFILES (bench/engine/sim/costmodel.py).
# Usage: tools/gpu_profile.sh [OUT_DIR] [REPEATS]   (python3 must have torch with CUDA, numba, pandas, rich, click)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/gpu-profile}
repeats=${2:-10}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' | tee "$out/env.txt"
import os, torch
p = torch.cuda.get_device_properties(0)
print(f"gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; host CPUs: {os.cpu_count()}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"torch threads {torch.get_num_threads()}")
print(f"TF32: cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
      f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
      f"float32_matmul_precision={torch.get_float32_matmul_precision()}")
PY
profile() { python3 -m bench.diagnostics.benchmarks sim-profile --device cuda --repeats "$repeats" "$@"; }
for precision in fp32 amp; do
  echo "== paper workloads, $precision"
  profile --cases paper --precision "$precision" | tee "$out/paper-$precision.txt"
done
echo "== comm-layer work"
profile --cases work | tee "$out/work.txt"
