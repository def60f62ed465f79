"""`swarmbench report`: every table format and every plot, skipped and refused plots, unusable folders."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.analysis.plots import PLOTS
from cli import cli

pytest.importorskip("bench.engine.sim.cluster", reason="the report fixtures are simulator sweeps (--engine sim)")

PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Three algorithms at 2 and 4 simulated nodes, 32 and 8 bits, two seeds, two epochs (a few seconds)."""
    out = tmp_path_factory.mktemp("plots") / "sweep"
    result = invoke(
        "sweep",
        "--algo",
        "allreduce,dpsgd,swarm",
        "--nodes",
        "2,4",
        "--bits",
        "32,8",
        "--seed",
        "0,1",
        "--set",
        "engine=sim",
        "--set",
        "dataset=digits",
        "--set",
        "epochs=2",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One `swarmbench run` folder (one node count)."""
    out = tmp_path_factory.mktemp("plots") / "run"
    result = invoke(
        "run",
        "--engine",
        "sim",
        "--algo",
        "allreduce",
        "--algo",
        "swarm",
        "--nodes",
        "2",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    return out


def test_every_format_and_plot(sweep_dir, tmp_path):
    rep = tmp_path / "rep"
    result = invoke("report", str(sweep_dir), "--out", str(rep), "--target-acc", "0.5")
    assert result.exit_code == 0, result.output
    for name in ("throughput", "accuracy", "comm", "scaling"):
        for ext in ("md", "csv", "tex", "parquet"):
            assert (rep / "tables" / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    tex = (rep / "tables" / "comm.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "$\\pm$" in tex
    parquet = pd.read_parquet(rep / "tables" / "throughput.parquet")
    assert {"samples_per_s_mean", "samples_per_s_std", "samples_per_s_ci_lo", "samples_per_s_ci_hi", "n"} <= set(
        parquet.columns
    )
    assert set(parquet["n"]) == {2}
    for name in PLOTS:  # every plot: the data has them all
        png = (rep / "plots" / f"{name}.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 10_000, name
        svg = (rep / "plots" / f"{name}.svg").read_text()
        assert "<svg" in svg, name
    md = (rep / "report.md").read_text()
    assert md.count("![") == len(PLOTS) and "| algorithm |" in md and "Student's t-distribution" in md
    assert "skipped" not in md


def test_format_selection_and_default_location(sweep_dir):
    result = invoke("report", str(sweep_dir), "--format", "csv", "--format", "latex", "--plot", "bytes_per_sample")
    assert result.exit_code == 0, result.output
    rep = sweep_dir / "report"
    exts = {p.suffix for p in (rep / "tables").iterdir()}
    assert exts == {".csv", ".tex"}
    assert sorted(p.name for p in (rep / "plots").iterdir()) == ["bytes_per_sample.png", "bytes_per_sample.svg"]


def test_absent_plot_skipped_with_note(run_dir, tmp_path):
    result = invoke("report", str(run_dir), "--out", str(tmp_path / "rep"))
    assert result.exit_code == 0, result.output
    assert "skipped plot throughput_scaling: needs at least two node counts" in result.output
    assert "skipped plot time_to_target: needs a target" in result.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "skipped **throughput_scaling**" in md
    assert (tmp_path / "rep" / "plots" / "accuracy_vs_time.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--plot", "throughput_scaling"], "--plot throughput_scaling: needs at least two node counts"),
        (["--plot", "time_to_target"], "needs --target-acc"),
        (["--plot", "time_to_target", "--target-acc", "0.999"], "no algorithm reached test accuracy 0.999"),
        (["--plot", "scaling_plot"], "unknown plot 'scaling_plot'"),
        (["--target-acc", "93"], "--target-acc must be a test accuracy in (0, 1]"),
        (["--format", "xlsx"], "'xlsx' is not one of"),
    ],
)
def test_refused_requests_write_nothing(run_dir, tmp_path, args, message):
    rep = tmp_path / "rep"
    result = invoke("report", str(run_dir), "--out", str(rep), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1
    assert not rep.exists()


def test_unusable_folders(sweep_dir, tmp_path):
    r = invoke("report", str(tmp_path / "missing"))
    assert r.exit_code == 2 and "is not a folder" in r.output
    (tmp_path / "plain").mkdir()
    r = invoke("report", str(tmp_path / "plain"))
    assert r.exit_code == 2 and "not a results folder (no meta.json)" in r.output
    mixed = tmp_path / "mixed"
    shutil.copytree(sweep_dir, mixed, ignore=shutil.ignore_patterns("report"))
    cell_meta = next((mixed / "cells").iterdir()) / "meta.json"
    meta = json.loads(cell_meta.read_text())
    meta["schema_version"] = 2
    cell_meta.write_text(json.dumps(meta))
    r = invoke("report", str(mixed))
    assert r.exit_code == 2 and "mixes results schema versions" in r.output
    assert not (mixed / "report").exists()
