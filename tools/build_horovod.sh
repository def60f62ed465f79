#!/usr/bin/env bash
# Build Horovod for this venv's torch and install it, caching the wheel so that a fresh venv reinstalls in seconds.
#
#   tools/build_horovod.sh [VENV]          VENV defaults to .venv at the project root
#
# Environment:
#   HOROVOD_VERSION            release to build (default 0.28.1, the last one)
#   SWARMBENCH_WHEEL_CACHE     wheel cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/swarmbench/wheels); outside the
#                              project so that `make clean` and fresh clones keep it
#   SWARMBENCH_HOROVOD_VARIANT auto (default), cpu or cuda
#   MAKEFLAGS                  parallel compile jobs (default -j<cores>; Horovod's own default of -j8 can exhaust
#                              the memory of a small machine, torch's headers being heavy)
#
# Why not `pip install horovod`: 0.28.1 does not build against torch 2.14 as published. pip's build isolation hides
# torch from CMake; the sources pin C++14 while torch's headers need C++20; and with a CUDA build of torch it turns
# on CUDA ops whenever it finds a toolkit, even on a machine without GPUs, where it then looks in the wrong prefix.
# So: download the sdist, patch those three things, build a wheel without isolation, cache it, install it.
#
# Exit status 0 when `import horovod.torch` works afterwards, 1 otherwise. Either way the outcome is written to
# VENV/horovod-status.txt (shown by `swarmbench doctor`); a failure prints a report whose first line starts with
# "WARNING: Horovod could not be built", and the build log stays in VENV/horovod-build.log.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(cd "${1:-$ROOT/.venv}" 2>/dev/null && pwd) || {
  echo "WARNING: Horovod could not be built: no virtual environment at ${1:-$ROOT/.venv} (run 'make setup')." >&2
  exit 1
}
PY=$VENV/bin/python
LOG=$VENV/horovod-build.log
STATUS=$VENV/horovod-status.txt
HVD_VERSION=${HOROVOD_VERSION:-0.28.1}
CACHE=${SWARMBENCH_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/swarmbench/wheels}
REQUESTED_VARIANT=${SWARMBENCH_HOROVOD_VARIANT:-auto}
# Known before the first step that can fail, so that every status file names them.
TORCH_VERSION=unknown PY_TAG=unknown VARIANT=unknown VARIANT_WHY="" WHEEL="" HOW="" WORK="" UNSET=() CHECKED=""
START=$(date +%s)

write_status() { # write_status ok|failed REASON: the file `swarmbench doctor` reads, key=value per line
  local tmp=$STATUS.tmp.$$
  {
    echo "status=$1"
    echo "reason=$2"
    echo "horovod=$HVD_VERSION"
    echo "torch=$TORCH_VERSION"
    echo "python=$PY_TAG"
    echo "variant=$VARIANT"
    echo "variant_reason=$VARIANT_WHY"
    echo "wheel=$WHEEL"
    echo "check=$CHECKED"
    echo "log=$LOG"
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"$tmp" && mv -f "$tmp" "$STATUS"
}

fail() { # fail REASON: record and report the failure ("downloading the sources failed"), then stop
  write_status failed "$1 (see $LOG)"
  {
    echo "WARNING: Horovod could not be built: $1."
    echo "  Build log: $LOG (last lines below)"
    tail -n 15 "$LOG" | sed 's/^/    | /'
    echo "  Everything that does not need Horovod still works: every algorithm on the local launcher (gloo),"
    echo "  the MPI tools, and the test suite. Retry with 'make horovod'; 'swarmbench doctor' shows this status."
  } >&2
  exit 1
}

step() { # step WHAT CMD...: run CMD with its output in the log; fail with WHAT named if it fails
  local what=$1
  shift
  echo "== $what: $*" >>"$LOG"
  "$@" >>"$LOG" 2>&1 || fail "$what failed"
}

cleanup() { [ -z "$WORK" ] || rm -rf "$WORK"; }
trap cleanup EXIT
# An interrupted build must not leave the status of an earlier run behind.
trap 'fail "the build was interrupted by a signal"' INT TERM

: >"$LOG"
echo "== Horovod $HVD_VERSION for $PY ($(date -u +%Y-%m-%dT%H:%M:%SZ))" >>"$LOG"
[ -x "$PY" ] || fail "there is no Python at $PY"

# What the wheel depends on: torch and Python (ABI), CPU or CUDA ops, and whether MPI was compiled in.
FACTS=$("$PY" -c 'import sys, torch
print(torch.__version__, f"cp{sys.version_info[0]}{sys.version_info[1]}", torch.version.cuda or "none",
      torch.cuda.device_count())' 2>>"$LOG") || fail "importing torch failed"
read -r TORCH_VERSION PY_TAG TORCH_CUDA GPUS <<<"$FACTS"

find_cuda_home() { # print a CUDA toolkit root with a working nvcc and the runtime headers, or nothing
  local nvcc candidate
  nvcc=$(command -v nvcc || true)
  # A wrapper script on PATH (not a symlink) says nothing about the prefix, so the usual roots are tried too.
  for candidate in "${HOROVOD_CUDA_HOME:-}" "${CUDA_HOME:-}" "${CUDA_PATH:-}" \
    "${nvcc:+$(dirname "$(dirname "$(readlink -f "$nvcc")")")}" /usr/local/cuda; do
    [ -n "$candidate" ] || continue
    if [ -x "$candidate/bin/nvcc" ] && [ -f "$candidate/include/cuda_runtime.h" ] &&
      "$candidate/bin/nvcc" --version >/dev/null 2>&1; then
      echo "$candidate"
      return
    fi
  done
}

CUDA_ROOT=$(find_cuda_home)
case $REQUESTED_VARIANT in
  cpu) VARIANT=cpu VARIANT_WHY="requested" ;;
  cuda) VARIANT=cuda VARIANT_WHY="requested" ;;
  auto)
    if [ "$TORCH_CUDA" = none ]; then
      VARIANT=cpu VARIANT_WHY="torch is a CPU build"
    elif [ "${GPUS:-0}" -eq 0 ]; then
      VARIANT=cpu VARIANT_WHY="no GPU visible to torch"
    elif [ -z "$CUDA_ROOT" ]; then
      VARIANT=cpu VARIANT_WHY="no CUDA toolkit (nvcc and cuda_runtime.h) found"
    else
      VARIANT=cuda VARIANT_WHY="$GPUS GPU(s), toolkit at $CUDA_ROOT"
    fi
    ;;
  *)
    echo "error: SWARMBENCH_HOROVOD_VARIANT must be auto, cpu or cuda, not '$REQUESTED_VARIANT'" >&2
    exit 2
    ;;
esac
[ "$VARIANT" = cpu ] || [ -n "$CUDA_ROOT" ] || fail "no CUDA toolkit was found for the requested cuda variant"
MPI=nompi
command -v mpicc >/dev/null 2>&1 && MPI=mpi
echo "== variant: $VARIANT ($VARIANT_WHY), $MPI" >>"$LOG"

KEY="horovod-${HVD_VERSION}_torch-${TORCH_VERSION//+/-}_${PY_TAG}_${VARIANT}-${MPI}"
mkdir -p "$CACHE/$KEY" || fail "creating the wheel cache $CACHE/$KEY failed"
WHEEL=$(ls "$CACHE/$KEY"/horovod-*.whl 2>/dev/null | head -n 1)

# Horovod's runtime dependencies (its wheel is installed with --no-deps: see below).
step "installing Horovod's dependencies" "$PY" -m pip install -q cloudpickle psutil pyyaml packaging

if [ -n "$WHEEL" ]; then
  HOW="installed from the cached wheel"
  echo "== Installing Horovod $HVD_VERSION ($VARIANT, $MPI) from the cached wheel $WHEEL"
else
  echo "== Building Horovod $HVD_VERSION ($VARIANT, $MPI) for torch $TORCH_VERSION: takes a few minutes;" \
    "the wheel is cached in $CACHE/$KEY. Log: $LOG"
  step "installing build tools" "$PY" -m pip install -q wheel setuptools
  # Horovod needs CMake >= 3.13; CMake 4 refuses the old minimum versions of Horovod's vendored projects.
  if ! cmake --version 2>/dev/null | awk 'NR == 1 { split($3, v, "."); exit !(v[1] == 3 && v[2] >= 13) }'; then
    step "installing cmake" "$PY" -m pip install -q "cmake>=3.13,<4"
  fi
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX") || fail "creating a build folder failed"
  step "downloading the Horovod $HVD_VERSION sources" \
    "$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$HVD_VERSION" -d "$WORK"
  step "unpacking the sources" tar xzf "$WORK/horovod-$HVD_VERSION.tar.gz" -C "$WORK"
  SRC=$WORK/horovod-$HVD_VERSION

  # Each patch is checked: if a future sdist changes these lines, the build must say so, not fail obscurely.
  for f in "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"; do
    step "patching C++14 -> C++20 in ${f#"$SRC"/}" \
      sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 20)/' "$f"
    grep -q 'set(CMAKE_CXX_STANDARD 20)' "$f" || fail "patching C++14 -> C++20 in ${f#"$SRC"/} failed (line not found)"
  done

  BUILD_ENV=(HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1
    "MAKEFLAGS=${MAKEFLAGS:--j$(nproc)}" "PATH=$VENV/bin:$PATH")
  if [ "$MPI" = mpi ]; then BUILD_ENV+=(HOROVOD_WITH_MPI=1); else BUILD_ENV+=(HOROVOD_WITHOUT_MPI=1); fi
  if [ "$VARIANT" = cpu ]; then
    # torch is a CUDA build, so Horovod's FindPytorch turns CUDA ops on as soon as torch sees a toolkit: say no.
    FIND_PYTORCH=$SRC/cmake/Modules/FindPytorch.cmake
    step "patching FindPytorch.cmake for a CPU-only build" sed -i \
      's/print(True if ((torch.version.cuda is not None) and (CUDA_HOME is not None)) else False)/print(False)/' \
      "$FIND_PYTORCH"
    grep -q 'CUDA_HOME is not None' "$FIND_PYTORCH" && fail "patching FindPytorch.cmake failed (line not replaced)"
    # A CPU build must not inherit GPU settings from the caller's shell.
    UNSET=(-u HOROVOD_GPU_OPERATIONS -u HOROVOD_GPU_ALLREDUCE -u HOROVOD_CUDA_HOME)
  else
    # CUDA_HOME too: torch's cpp_extension, which Horovod's CMake asks, would otherwise derive the toolkit from the
    # first nvcc on PATH, and a wrapper script there (not a symlink into the toolkit) gives it the wrong prefix.
    BUILD_ENV+=(HOROVOD_CUDA_HOME="$CUDA_ROOT" CUDA_HOME="$CUDA_ROOT" HOROVOD_GPU_OPERATIONS=NCCL)
    # No system NCCL: use the one torch ships (nvidia-nccl wheel). CMake's find_library wants the unversioned
    # libnccl.so, which that wheel lacks, so a link to libnccl.so.2 is made in the build folder.
    NCCL_DIR=$("$PY" -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>>"$LOG" || true)
    if [ -z "${HOROVOD_NCCL_HOME:-}${HOROVOD_NCCL_LIB:-}" ] && [ -f "$NCCL_DIR/lib/libnccl.so.2" ]; then
      mkdir -p "$WORK/nccl-lib" && ln -s "$NCCL_DIR/lib/libnccl.so.2" "$WORK/nccl-lib/libnccl.so"
      BUILD_ENV+=(HOROVOD_NCCL_INCLUDE="$NCCL_DIR/include" HOROVOD_NCCL_LIB="$WORK/nccl-lib" HOROVOD_NCCL_LINK=SHARED)
    fi
  fi

  # --no-build-isolation: CMake must see the venv's torch. A wheel, not an install, so the result can be cached.
  step "compiling Horovod (pip wheel)" env "${UNSET[@]}" "${BUILD_ENV[@]}" \
    "$PY" -m pip wheel -v --no-cache-dir --no-build-isolation --no-deps -w "$WORK/dist" "$SRC"
  BUILT=$(ls "$WORK"/dist/horovod-*.whl 2>/dev/null | head -n 1)
  [ -n "$BUILT" ] || fail "pip wheel left no wheel"
  # Copy then rename, so that an interrupted copy never leaves a broken wheel in the cache.
  WHEEL=$CACHE/$KEY/$(basename "$BUILT")
  step "copying the wheel to the cache" cp "$BUILT" "$WHEEL.partial"
  step "renaming the cached wheel" mv -f "$WHEEL.partial" "$WHEEL"
  HOW="built in $(($(date +%s) - START)) s"
fi

# --no-deps: its dependencies are installed above; --force-reinstall: a Horovod built for another torch may be there.
step "installing $(basename "$WHEEL")" "$PY" -m pip install -q --no-deps --force-reinstall "$WHEEL"
# From the project root, never from the source tree, whose horovod/ folder would shadow the installed package.
# The timeout guards against an MPI that hangs at start-up instead of failing.
CHECK='import horovod, horovod.torch as hvd
hvd.init()
built = {name: bool(getattr(hvd, name + "_built")()) for name in ("mpi", "gloo", "nccl")}
print(f"horovod {horovod.__version__}: " + " ".join(f"{name}={value}" for name, value in built.items()))
hvd.shutdown()'
echo "== checking: import horovod.torch; hvd.init()" >>"$LOG"
CHECKED=$(cd "$ROOT" && timeout 120 "$PY" -c "$CHECK" 2>>"$LOG") ||
  fail "the check 'import horovod.torch; hvd.init()' failed"
echo "$CHECKED" >>"$LOG"
write_status ok "$HOW"
echo "Horovod $HVD_VERSION ready ($VARIANT, $HOW): $CHECKED"
