#!/usr/bin/env bash
# The CUDA path end to end, for a machine with NVIDIA GPUs (CI has none; run it by hand when one is at hand):
#   1. what doctor sees; 2. every algorithm with one process per GPU on NCCL; 3. two ranks sharing GPU 0 on gloo
#   (CUDA tensors, host-staged exchange); 4. a GPU timing table (ResNet-20, CPU vs CUDA, same run settings);
#   5. synchronized timers: with more than one GPU, AllReduce SGD's comm_fraction on NCCL must be above zero (an
#   unsynchronized timer reads ~0 because an NCCL allreduce returns when enqueued); 6. with more than one GPU,
#   AllReduce SGD's samples/s over a raw DDP script's (and raw Horovod's, if built with NCCL) on NCCL, MLP and
#   ResNet-20, 2 processes: fails below 0.97 (`make bench`'s `ddp` benchmark on CUDA).
# Usage: tools/gpu_check.sh [OUT_DIR]   (python3 must have torch with CUDA, click, pandas, rich, scikit-learn)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/gpu-check}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
sb() { python3 -c "import cli; cli.main()" "$@"; }
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
echo "== GPUs: $gpus"
[ "$gpus" -ge 1 ] || { echo "no CUDA device: nothing to check" >&2; exit 2; }
sb doctor --no-probe | tee "$out/doctor.txt"
common=(--dataset digits --epochs 3 --batch-size 32 --algo all)
echo "== all algorithms, $gpus process(es), one per GPU, nccl"
sb run --device cuda --backend auto --nodes "$gpus" "${common[@]}" --out "$out/nccl"
echo "== all algorithms, 2 processes sharing the GPUs, gloo with CUDA tensors"
sb run --device cuda --backend gloo --nodes 2 "${common[@]}" --out "$out/gloo-cuda"
echo "== timing: ResNet-20 on 8x8 digits, batch 128, 2 processes, cpu vs cuda"
for dev in cpu cuda; do
  sb run --device "$dev" --backend gloo --nodes 2 --model resnet20 --dataset digits --batch-size 128 --epochs 2 \
     --algo allreduce --algo swarm --out "$out/timing-$dev"
done
python3 - "$out" <<'PY'
import sys, pandas as pd
out = sys.argv[1]
rows = []
for dev in ("cpu", "cuda"):
    s = pd.read_csv(f"{out}/timing-{dev}/summary.csv")
    for _, r in s.iterrows():
        rows.append((r.algorithm, dev, r.samples_per_s, 1000 * r.step_seconds_median, r.comm_fraction, r.test_acc))
t = pd.DataFrame(rows, columns=["algorithm", "device", "samples_per_s", "step_ms_median", "comm_fraction", "test_acc"])
base = t[t.device == "cpu"].set_index("algorithm").samples_per_s
t["speedup_vs_cpu"] = [r.samples_per_s / base[r.algorithm] for r in t.itertuples()]
print(t.to_string(index=False))
t.to_csv(f"{out}/gpu_timing.csv", index=False)
PY
if [ "$gpus" -ge 2 ]; then
  echo "== synchronized timers: comm_fraction of the NCCL run"
  python3 - "$out" <<'PY'
import sys, pandas as pd
s = pd.read_csv(f"{sys.argv[1]}/nccl/summary.csv").set_index("algorithm")
print(s[["comm_fraction", "step_seconds_median"]].to_string())
frac = s.loc["allreduce", "comm_fraction"]
if not frac > 0.001:
    sys.exit(f"allreduce comm_fraction {frac} on NCCL: the comm timer does not wait for the GPU")
PY
fi
if [ "$gpus" -ge 2 ]; then
  echo "== AllReduce SGD vs raw DDP (and Horovod) on NCCL, 2 processes, one GPU each"
  python3 - "$out" <<'PY'
import sys
from bench.diagnostics.benchmarks import DP_TARGET, compare_dp, render_table
rows = compare_dp("cuda", pairs=3)
text = render_table(rows)
print(text)
open(f"{sys.argv[1]}/ddp.txt", "w").write(text + "\n")
low = [f"{r['model']} vs {r['reference']}: {r['ratio']:.3f}" for r in rows if r["ratio"] < DP_TARGET]
if low:
    sys.exit(f"AllReduce SGD below {DP_TARGET} of the raw reference's samples/s: {'; '.join(low)}")
PY
fi
