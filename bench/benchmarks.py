"""Micro-benchmarks of swarmbench's building blocks, printed as one table.

Run ``python -m bench.benchmarks [names...] [--device cpu|cuda] [--repeats N]``; with no names every
benchmark runs. Each benchmark is a function from a ``BenchContext`` to a list of rows (dicts of
column -> value); ``BENCHMARKS`` lists them, so adding a section means writing one function and
appending one ``Benchmark``. ``main`` joins all rows into a single table (columns in first-seen
order, blank where a benchmark has no such column).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bench.errors import UserError
from bench.quantize import BITS, Codec, CodecConfig, suggest_eps

Row = dict[str, Any]


@dataclass(frozen=True)
class BenchContext:
    """What every benchmark may use: where to run and how many timed repetitions to take."""

    device: torch.device
    repeats: int = 25
    warmup: int = 3


@dataclass(frozen=True)
class Benchmark:
    """One named section of the table."""

    name: str
    help: str
    run: Callable[[BenchContext], list[Row]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], ctx: BenchContext) -> float:
    """Median wall time of ``fn`` over ``ctx.repeats`` runs after ``ctx.warmup`` untimed ones.

    The median rather than the mean, because a shared machine adds occasional long outliers.
    """
    for _ in range(ctx.warmup):
        fn()
    times = []
    for _ in range(ctx.repeats):
        _sync(ctx.device)
        start = time.perf_counter()
        fn()
        _sync(ctx.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------------
# codec
# --------------------------------------------------------------------------------------------------

CODEC_NUMEL = 1 << 20  # 4 MiB of float32, a small CNN's worth of parameters
CODEC_RADIUS = 0.05  # eps per width is chosen so that this max-norm distance still decodes


def bench_codec(ctx: BenchContext) -> list[Row]:
    """Encode+decode throughput of every wire format (bench.quantize) on one CPU thread.

    GB/s counts float32 input bytes per second of (median encode + median decode). ``vs 32b`` is
    the time of that round trip divided by the raw 32-bit round trip (two copies) measured in the
    same run. The lattice reference sits at up to 80% of the decodable radius from the model, like a
    neighbour's model in SwarmSGD (Nadiradze et al. 2021), so nothing fails; ``fails`` checks that.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-core throughput, independent of how many cores the machine has
    try:
        return _codec_rows(ctx)
    finally:
        torch.set_num_threads(threads)


def _codec_rows(ctx: BenchContext) -> list[Row]:
    n = CODEC_NUMEL
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(n, generator=gen) * 0.05).to(ctx.device)
    noise = (torch.rand(n, generator=gen) * 2 - 1).to(ctx.device)
    ref = x + noise * (0.8 * CODEC_RADIUS)  # the receiver's own model
    configs: list[tuple[str, CodecConfig, bool]] = [("raw", CodecConfig(bits=32), False)]
    for bits in BITS[:-1]:
        eps = suggest_eps(bits, CODEC_RADIUS)
        configs += [
            ("lattice", CodecConfig(bits=bits, quantizer="lattice", eps=eps), False),
            ("lattice+rr", CodecConfig(bits=bits, quantizer="lattice", eps=eps), True),
            ("uniform", CodecConfig(bits=bits, quantizer="uniform"), True),
        ]
    rows: list[Row] = []
    base = None
    for label, cfg, randomized in configs:
        codec = Codec(cfg)
        # Stochastic rounding draws fresh keys every call, as a real exchange would.
        rng = torch.Generator(device=ctx.device).manual_seed(1) if randomized else None
        msg = codec.encode(x, generator=rng)
        out, fails = codec.decode(msg, n, ref)
        t_enc = median_seconds(lambda c=codec, g=rng: c.encode(x, generator=g), ctx)
        t_dec = median_seconds(lambda c=codec, m=msg, r=ref: c.decode(m, n, r), ctx)
        total = t_enc + t_dec
        if base is None:
            base = total
        rows.append(
            {
                "bench": "codec",
                "quantizer": label,
                "bits": cfg.bits,
                "bytes": msg.numel(),
                "compress": 4 * n / msg.numel(),
                "enc ms": t_enc * 1e3,
                "dec ms": t_dec * 1e3,
                "GB/s": 4 * n / total / 1e9,
                "vs 32b": total / base,
                "fails": fails,
                "max err": float((out - x).abs().max()),
            }
        )
    return rows


BENCHMARKS: list[Benchmark] = [
    Benchmark("codec", "encode+decode GB/s per wire format, one CPU thread, 1M float32", bench_codec),
]


# --------------------------------------------------------------------------------------------------
# table and CLI
# --------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _columns(rows: Sequence[Row]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    return cols


def render_table(rows: Sequence[Row]) -> str:
    """Plain aligned text: text columns left-aligned, numbers right-aligned."""
    cols = _columns(rows)
    cells = [[_fmt(row.get(c)) for c in cols] for row in rows]
    numeric = [all(isinstance(row.get(c), (int, float)) or c not in row for row in rows) for c in cols]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _print_rich(rows: Sequence[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    cols = _columns(rows)
    for c in cols:
        numeric = all(isinstance(row.get(c), (int, float)) or c not in row for row in rows)
        table.add_column(c, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*[_fmt(row.get(c)) for c in cols])
    Console().print(table)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    names = ", ".join(b.name for b in BENCHMARKS)
    p = argparse.ArgumentParser(prog="python -m bench.benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {names}")
    p.add_argument("--device", default="cpu", help="torch device to run on (default: cpu)")
    p.add_argument("--repeats", type=int, default=25, help="timed repetitions per measurement (median)")
    return p.parse_args(argv)


def _select(names: Sequence[str]) -> list[Benchmark]:
    if not names:
        return list(BENCHMARKS)
    known = {b.name: b for b in BENCHMARKS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(known)}")
    return [known[n] for n in names]


def _context(args: argparse.Namespace) -> BenchContext:
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise UserError(f"--device {args.device!r} is not a torch device ({err}); use cpu or cuda") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats} must be >= 1")
    return BenchContext(device=device, repeats=args.repeats)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks and print one table; exit status 2 on a user error."""
    args = _parse(argv)
    try:
        selected = _select(args.names)
        ctx = _context(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows: list[Row] = []
    for bench in selected:
        rows += bench.run(ctx)
    if sys.stdout.isatty():
        _print_rich(rows)
    else:
        print(render_table(rows))
    print(
        f"device: {ctx.device}, torch {torch.__version__}, median of {ctx.repeats} runs after {ctx.warmup} warm-up"
        " (codec: 1 CPU thread; 'vs 32b' = round-trip time / raw 32-bit round-trip time)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
