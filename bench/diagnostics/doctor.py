"""`swarmbench doctor`: what works on this machine, each item checked for real, with a reason when it does not.

Every item has a stable key (for `--json`), a status and one line of detail:

- ``ok``: present and working; the detail says what was found (version, device names, latency);
- ``missing``: not installed or not present here; the detail says what is absent and, where known, why;
- ``failed``: present but broken; the detail is the error's last line;
- ``skipped``: not checked on request (only the MPI probe, with ``--no-probe``).

Imports of MPI and Horovod run in child processes: ``from mpi4py import MPI`` initializes MPI and ``hvd.init()``
starts threads, neither of which the calling process (a CLI, a test session) should inherit, and a broken MPI
library can crash the process that loads it.

The passive-target probe (``python -m bench.diagnostics.doctor --rma-probe`` under ``mpirun -np 2``) asks whether a
one-sided ``Get`` from a rank that is busy computing, and not calling MPI, completes at once (the MPI library
progresses passive-target RMA by itself) or only when the target next enters MPI. SwarmSGD's ``read`` over the RMA
transport relies on the former to not interrupt the peer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.base.console import print_table
from bench.base.host import usable_cores
from bench.engine.processes.launchers import LAUNCHERS

STATUSES = ("ok", "missing", "failed", "skipped")
PROBE_TIMEOUT_S = 30.0  # hard limit for the whole mpirun probe, start-up included
PROBE_BUSY_S = 1.0  # how long the target computes without calling MPI
PROBE_BYTES = 1 << 20  # size of the window read by the probe
PROBE_MARKER = "SWARMBENCH_RMA_PROBE"  # prefixes rank 0's result line among mpirun's output
STATUS_FILE = "horovod-status.txt"  # written into the venv by tools/build_horovod.sh
# The launchers that are programs to find on PATH (all but `local`).
LAUNCHER_NAMES = tuple(name for name, launcher in LAUNCHERS.items() if launcher.binary)

# Every item's key and label, in display order (a launcher added to LAUNCHERS but not here is listed last).
LABELS = {
    "python": "Python",
    "torch": "torch",
    "torchvision": "torchvision",
    "cuda": "CUDA devices",
    "dist.gloo": "torch.distributed gloo",
    "dist.nccl": "torch.distributed nccl",
    "launcher.mpirun": "launcher mpirun",
    "launcher.torchrun": "launcher torchrun",
    "launcher.srun": "launcher srun",
    "launcher.horovodrun": "launcher horovodrun",
    "mpi4py": "mpi4py",
    "transport.p2p": "transport p2p",
    "transport.rma": "transport rma",
    "horovod": "Horovod (horovod.torch)",
    "horovod.build": "Horovod build",
    "mpi.passive_progress": "MPI passive-target progress",
    "cores": "CPU cores",
    "memory": "memory",
}


@dataclass(frozen=True)
class Item:
    """One line of the report: a capability of this machine and whether it works."""

    key: str  # stable name used by --json and the tests, e.g. "dist.gloo"
    label: str  # what a person reads in the table
    status: str  # one of STATUSES
    detail: str  # what was found when ok; otherwise the one-line reason
    data: dict[str, Any] = field(default_factory=dict)  # structured facts for --json (versions, counts, ms)


def _item(key: str, status: str, detail: str, data: dict[str, Any] | None = None) -> Item:
    return Item(key, LABELS.get(key, key.replace(".", " ")), status, detail, data or {})


# --------------------------------------------------------------------------------------------------- helpers


def _one_line(text: str, limit: int = 200) -> str:
    """The last line of an error text with words in it, shortened: the line that usually names the cause.

    Lines of only punctuation are skipped: Open MPI frames its messages with rows of dashes.
    """
    lines = [line.strip() for line in text.splitlines() if any(ch.isalnum() for ch in line)]
    line = lines[-1] if lines else "no output"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _which(name: str) -> tuple[str | None, str]:
    """Find a program on PATH or, failing that, next to this Python (a venv that is not activated)."""
    found = shutil.which(name)
    if found:
        return found, ""
    beside = shutil.which(name, path=str(Path(sys.executable).parent))
    return (beside, " (next to this Python, not on PATH)") if beside else (None, "")


def _run_python(code: str, timeout: float = 60.0) -> tuple[bool, str]:
    """Run `code` in a child Python (this interpreter); return (succeeded, stdout or the error's last line)."""
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        return False, _one_line(proc.stderr or proc.stdout or f"exit status {proc.returncode}")
    return True, proc.stdout


# ---------------------------------------------------------------------------------------------------- checks


def check_python() -> list[Item]:
    import platform

    return [_item("python", "ok", f"{platform.python_version()} ({sys.executable})")]


def check_torch() -> list[Item]:
    """torch, torchvision, CUDA devices and the torch.distributed backends, from one import of torch."""
    import warnings

    try:
        import torch
    except ImportError as exc:
        reason = f"cannot import torch: {_one_line(str(exc))}"
        return [
            _item("torch", "missing", reason),
            _item("torchvision", "missing", "needs torch"),
            _item("cuda", "missing", "needs torch"),
            _item("dist.gloo", "missing", "needs torch"),
            _item("dist.nccl", "missing", "needs torch"),
        ]
    items = [_item("torch", "ok", torch.__version__, {"version": torch.__version__, "cuda": torch.version.cuda})]

    try:
        import torchvision
    except ImportError as exc:
        items.append(_item("torchvision", "missing", _one_line(str(exc))))
    else:
        items.append(_item("torchvision", "ok", torchvision.__version__))

    # torch reports why it sees no GPU only as a warning (e.g. an old driver): keep it as the reason.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cuda_ok = torch.cuda.is_available()
        count = torch.cuda.device_count() if cuda_ok else 0
    if cuda_ok:
        names = [torch.cuda.get_device_name(i) for i in range(count)]
        items.append(_item("cuda", "ok", f"{count}: {', '.join(names)}", {"count": count, "names": names}))
    else:
        items.append(_item("cuda", "missing", _why_no_cuda(torch, caught), {"count": 0, "names": []}))

    if not torch.distributed.is_available():
        reason = "this torch build has no torch.distributed"
        items += [_item("dist.gloo", "missing", reason)]
        items += [_item("dist.nccl", "missing", reason)]
        return items
    import torch.distributed as dist

    gloo = dist.is_gloo_available()
    items.append(_item("dist.gloo", "ok" if gloo else "missing", "CPU tensors" if gloo else "not built"))
    nccl = dist.is_nccl_available()
    if nccl and cuda_ok:
        version = torch.cuda.nccl.version()  # a tuple in torch 2.x, an int in older releases
        version = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        items.append(_item("dist.nccl", "ok", f"NCCL {version}"))
    else:
        reason = "built into torch, but there is no CUDA device" if nccl else "this torch build has no NCCL"
        items.append(_item("dist.nccl", "missing", reason, {"built": nccl}))
    return items


def _why_no_cuda(torch: Any, caught: list) -> str:
    """The most specific reason torch sees no GPU, from what can be read without a driver."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    if caught:
        return _one_line(str(caught[0].message))
    if not Path("/proc/driver/nvidia/version").exists():
        return f"no NVIDIA driver loaded (torch is built for CUDA {torch.version.cuda})"
    return f"the NVIDIA driver is loaded but torch (CUDA {torch.version.cuda}) sees no device"


def check_launchers() -> list[Item]:
    items = []
    for name in LAUNCHER_NAMES:
        path, note = _which(LAUNCHERS[name].binary)
        key = f"launcher.{name}"
        if path is None:
            items.append(_item(key, "missing", "not on PATH"))
            continue
        if name != "mpirun":
            items.append(_item(key, "ok", path + note, {"path": path}))
            continue
        try:
            proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            items.append(_item(key, "failed", f"{path} --version timed out after 20 s"))
            continue
        if proc.returncode != 0:
            items.append(_item(key, "failed", f"{path} --version: {_one_line(proc.stderr or proc.stdout)}"))
            continue
        version = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "version unknown"
        items.append(_item(key, "ok", f"{version} ({path}{note})", {"path": path, "version": version}))
    return items


_MPI4PY_CODE = """
import json, mpi4py
mpi4py.rc.initialize = False  # the library version can be read before MPI_Init: no MPI start-up needed
from mpi4py import MPI
print(json.dumps({"mpi4py": mpi4py.__version__, "library": MPI.Get_library_version().strip(),
                  "standard": "%d.%d" % MPI.Get_version()}))
"""


def check_mpi4py() -> list[Item]:
    ok, out = _run_python(_MPI4PY_CODE)
    if not ok:
        status = "missing" if "No module named 'mpi4py'" in out else "failed"
        return [_item("mpi4py", status, out)]
    info = json.loads(out)
    # "Open MPI v4.1.4, package: Debian OpenMPI, ...": the part before the first comma names it.
    library = info["library"].splitlines()[0].split(",")[0]
    return [_item("mpi4py", "ok", f"{info['mpi4py']}, {library} (MPI {info['standard']})", info)]


def check_transports(items: dict[str, Item]) -> list[Item]:
    """The two transports behind SwarmSGD's one-sided `read`, derived from the checks they need."""
    gloo = items["dist.gloo"]
    p2p = (
        _item("transport.p2p", "ok", "gloo point-to-point with a responder thread")
        if gloo.status == "ok"
        else _item("transport.p2p", "missing", f"needs torch.distributed gloo ({gloo.detail})")
    )
    lacking = [f"{key} ({items[key].detail})" for key in ("mpi4py", "launcher.mpirun") if items[key].status != "ok"]
    rma = (
        _item("transport.rma", "ok", "MPI one-sided windows (mpi4py + mpirun)")
        if not lacking
        else _item("transport.rma", "missing", "needs " + "; ".join(lacking))
    )
    return [p2p, rma]


_HOROVOD_CODE = """
import json, horovod, horovod.torch as hvd
print(json.dumps({"version": horovod.__version__, "mpi": bool(hvd.mpi_built()), "gloo": bool(hvd.gloo_built()),
                  "nccl": bool(hvd.nccl_built())}))
"""


def read_build_status(path: Path | None = None) -> dict[str, str] | None:
    """The key=value lines tools/build_horovod.sh leaves in the venv, or None when no build was attempted."""
    path = path or Path(sys.prefix) / STATUS_FILE
    if not path.is_file():
        return None
    status = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            status[key.strip()] = value.strip()
    return status


def build_item(build: dict[str, str] | None) -> Item:
    """The outcome of the last `make horovod`, as recorded by tools/build_horovod.sh."""
    key = "horovod.build"
    if build is None:
        return _item(key, "missing", "no build attempted (run `make horovod`)")
    when = f" at {build['date']}" if build.get("date") else ""
    if build.get("status") == "ok":
        what = f"{build.get('variant', '?')} build for torch {build.get('torch', '?')}"
        return _item(key, "ok", f"{what}: {build.get('reason', '')}{when}", build)
    return _item(key, "failed", build.get("reason", "no reason recorded") + when, build)


def check_horovod(status_file: Path | None = None) -> list[Item]:
    build = build_item(read_build_status(status_file))
    ok, out = _run_python(_HOROVOD_CODE)
    if ok:
        info = json.loads(out)
        controllers = [name for name in ("mpi", "gloo") if info[name]] or ["none"]
        detail = f"{info['version']}: controllers {', '.join(controllers)}; nccl {'yes' if info['nccl'] else 'no'}"
        horovod = _item("horovod", "ok", detail, info)
    elif "No module named 'horovod'" in out:
        hint = "its build failed (see Horovod build)" if build.status == "failed" else "run `make horovod`"
        horovod = _item("horovod", "missing", f"not installed; {hint}")
    else:
        horovod = _item("horovod", "failed", out)
    return [horovod, build]


def check_passive_progress(items: dict[str, Item], run_probe: bool = True) -> list[Item]:
    key = "mpi.passive_progress"
    if not run_probe:
        return [_item(key, "skipped", "not probed (--no-probe)")]
    for need in ("mpi4py", "launcher.mpirun"):
        if items[need].status != "ok":
            return [_item(key, "missing", f"needs {need} ({items[need].detail})")]
    mpirun = items["launcher.mpirun"].data
    return [probe_item(rma_probe(mpirun["path"], open_mpi="Open MPI" in mpirun["version"]))]


def probe_item(result: dict[str, Any]) -> Item:
    """Turn the probe's result (see rma_probe) into the report's line."""
    key = "mpi.passive_progress"
    if "error" in result:
        return _item(key, "failed", result["error"], result)
    busy_ms = result["busy_s"] * 1000
    if result["passive"]:
        detail = f"yes (Get took {result['get_ms']:.1f} ms while the target computed for {busy_ms:.0f} ms)"
        return _item(key, "ok", detail, result)
    detail = f"no (Get took {result['get_ms']:.0f} ms: it waited until the target entered MPI)"
    return _item(key, "missing", detail, result)


# ------------------------------------------------------------------------------------------- the RMA probe


def rma_probe(mpirun: str, open_mpi: bool = True, timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Run the 2-rank passive-target probe under mpirun; return rank 0's result or {"error": reason}.

    `open_mpi` adds the Open MPI flags that let it run anywhere (other mpiruns, e.g. MPICH's, reject them).
    """
    import signal

    cmd = [mpirun, "-np", "2"]
    if open_mpi:
        cmd.append("--oversubscribe")  # 2 ranks on a 1-core machine must still run
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")  # Open MPI refuses root without it
    cmd += [sys.executable, "-m", "bench.diagnostics.doctor", "--rma-probe"]
    # Own session: on timeout the whole group (mpirun and both ranks) is stopped, not only mpirun.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        return {"error": f"probe timed out after {timeout:g} s (mpirun and its ranks stopped)"}
    for line in out.splitlines():
        if line.startswith(PROBE_MARKER):
            return json.loads(line[len(PROBE_MARKER) :])
    return {"error": f"mpirun exited {proc.returncode}: {_one_line(err or out)}"}


def rma_probe_rank(busy_s: float = PROBE_BUSY_S, nbytes: int = PROBE_BYTES) -> None:
    """One rank of the probe (run by `python -m bench.diagnostics.doctor --rma-probe` under `mpirun -np 2`).

    Rank 1 exposes a window and computes for `busy_s` without calling MPI. Rank 0 waits a little (so the target is
    surely inside its loop), then does Lock/Get/Unlock on rank 1's window and times it. Passive progress means the
    Get completed before the target left its loop; otherwise it completed only when the target called MPI again.
    Both ranks run on one host, so their wall clocks (time.time) are comparable.
    """
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() != 2:
        raise SystemExit(f"the RMA probe needs exactly 2 ranks, not {comm.Get_size()}")
    rank = comm.Get_rank()
    memory = bytearray([rank + 1]) * nbytes
    try:
        win = MPI.Win.Create(memory, disp_unit=1, comm=comm)
    except MPI.Exception as exc:
        # Expected where the one-sided component refuses this setup (e.g. osc pt2pt with MPI_THREAD_MULTIPLE):
        # that is the answer to report, so rank 0 hands it back instead of a traceback.
        if rank == 0:
            print(PROBE_MARKER + json.dumps({"error": f"MPI.Win.Create failed: {exc.Get_error_string()}"}), flush=True)
        raise SystemExit(1) from exc
    comm.Barrier()
    get_s = get_done = compute_end = 0.0
    if rank == 1:
        end = time.perf_counter() + busy_s
        spins = 0
        while time.perf_counter() < end:  # pure computation: no MPI call can drive progress here
            spins += 1
        compute_end = time.time()
    else:
        time.sleep(min(0.2, busy_s / 4))
        target = bytearray(nbytes)
        start = time.perf_counter()
        win.Lock(1, MPI.LOCK_SHARED)
        win.Get(target, 1)
        win.Unlock(1)
        get_s = time.perf_counter() - start
        get_done = time.time()
        if target != bytearray([2]) * nbytes:
            raise SystemExit("the RMA probe read wrong data from rank 1's window")
    ends = comm.gather(compute_end, root=0)
    win.Free()
    if rank == 0:
        result = {
            "passive": get_done < ends[1],
            "get_ms": round(get_s * 1000, 3),
            "busy_s": busy_s,
            "bytes": nbytes,
            "library": MPI.Get_library_version().splitlines()[0].split(",")[0],
        }
        print(PROBE_MARKER + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- the report


def _guarded(keys: list[str], check: Callable[[], list[Item]]) -> list[Item]:
    """Run one check; an unexpected error in it becomes the `failed` reason of each item it reports.

    The doctor's job is to report what is broken, so a broken library must show as lines, not as a traceback, and
    every key stays in the report (--json readers can rely on all of them).
    """
    try:
        return check()
    except Exception as exc:  # recorded as the items' reason: see the docstring
        reason = f"{type(exc).__name__}: {_one_line(str(exc))}"
        return [_item(key, "failed", reason) for key in keys]


def _meminfo() -> Item:
    path = Path("/proc/meminfo")
    if not path.is_file():
        return _item("memory", "missing", "/proc/meminfo not found (not Linux)")
    kib = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            kib[name] = int(rest.split()[0])
    total, available = kib["MemTotal"] / 2**20, kib["MemAvailable"] / 2**20
    detail = f"{available:.1f} GiB available of {total:.1f} GiB"
    data = {"total_gib": round(total, 2), "available_gib": round(available, 2)}
    # A container's memory limit can be far below the host's total, and it is what kills workers.
    limit_file = Path("/sys/fs/cgroup/memory.max")
    if limit_file.is_file():
        limit = limit_file.read_text().strip()
        if limit.isdigit() and int(limit) < kib["MemTotal"] * 1024:
            data["cgroup_limit_gib"] = round(int(limit) / 2**30, 2)
            detail += f" (cgroup limit {data['cgroup_limit_gib']:.1f} GiB)"
    return _item("memory", "ok", detail, data)


def _cores() -> Item:
    usable = usable_cores()
    total = os.cpu_count() or usable
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    detail = f"{usable} usable of {total}" + (f", load {load:.2f} (1 min)" if load is not None else "")
    return _item("cores", "ok", detail, {"usable": usable, "total": total, "load_1min": load})


def collect(run_probe: bool = True, status_file: Path | None = None) -> list[Item]:
    """Every item of the report, in display order."""
    found: dict[str, Item] = {}
    # Later checks read earlier items (the transports need gloo, mpi4py and mpirun), so the order matters.
    checks: list[tuple[list[str], Callable[[], list[Item]]]] = [
        (["python"], check_python),
        (["torch", "torchvision", "cuda", "dist.gloo", "dist.nccl"], check_torch),
        ([f"launcher.{name}" for name in LAUNCHER_NAMES], check_launchers),
        (["mpi4py"], check_mpi4py),
        (["transport.p2p", "transport.rma"], lambda: check_transports(found)),
        (["horovod", "horovod.build"], lambda: check_horovod(status_file)),
        (["mpi.passive_progress"], lambda: check_passive_progress(found, run_probe)),
        (["cores"], lambda: [_cores()]),
        (["memory"], lambda: [_meminfo()]),
    ]
    for keys, check in checks:
        found.update((item.key, item) for item in _guarded(keys, check))
    return [found[key] for key in [*LABELS, *(key for key in found if key not in LABELS)]]


def to_json(items: list[Item]) -> str:
    return json.dumps({"schema_version": 1, "items": {item.key: asdict(item) for item in items}}, indent=2)


def render(items: list[Item], interactive: bool | None = None) -> None:
    """A rich table on a terminal; aligned plain lines otherwise (logs, pipes)."""
    interactive = sys.stdout.isatty() if interactive is None else interactive
    if not interactive:
        width = max(len(item.label) for item in items)
        for item in items:
            print(f"{item.status:<8} {item.label:<{width}}  {item.detail}")
        return
    from rich.console import Console

    colour = {"ok": "green", "missing": "yellow", "failed": "red", "skipped": "dim"}
    rows = [(item.label, f"[{colour[item.status]}]{item.status}[/]", item.detail) for item in items]
    print_table(
        ("item", "status", "detail"),
        rows,
        title="swarmbench doctor",
        justify=("left",) * 3,
        console=Console(highlight=False),
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.diagnostics.doctor --rma-probe`: one rank of the probe (under mpirun).

    Plain runs show the report."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.diagnostics.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--rma-probe", action="store_true", help="run one rank of the RMA probe (under mpirun)")
    args = parser.parse_args(argv)
    if args.rma_probe:
        rma_probe_rank()
    else:
        render(collect())


if __name__ == "__main__":
    main()
