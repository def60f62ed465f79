"""`swarmbench sweep`: a grid of real runs into one folder, resume, failed cells, seeds aggregated with t-intervals."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import t as student_t

from bench.experiments.sweep import Grid, SweepSpec, cell_id, expand, normalize
from cli import cli

REAL = ["--set", "dataset=digits", "--set", "epochs=1", "--set", "batch_size=32"]


def sweep(*args):
    return CliRunner().invoke(cli, ["sweep", *args])


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    """Two algorithms x two seeds on 2 real processes; the torus cells cannot run on 2 nodes and fail."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    args = ["--algo", "allreduce,swarm", "--nodes", "2", "--seed", "0,1", "--topology", "ring,torus", *REAL]
    result = sweep(*args, "--out", str(out))
    return out, args, result


def test_cells_run_and_failed_cell_is_recorded(real_sweep):
    out, _, result = real_sweep
    assert result.exit_code == 1, result.output  # a failed cell: the sweep went on and says so
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "sweep" and meta["schema_version"] == 1 and meta["status"] == "failed"
    assert meta["grid_keys"] == ["nodes", "topology", "seed"]
    cells = meta["cells"]
    assert len(cells) == 4
    ok = {c for c, v in cells.items() if v["status"] == "ok"}
    failed = {c: v for c, v in cells.items() if v["status"] == "failed"}
    assert ok == {"nodes=2,topology=ring,seed=0", "nodes=2,topology=ring,seed=1"}
    assert set(failed) == {"nodes=2,topology=torus,seed=0", "nodes=2,topology=torus,seed=1"}
    assert all("torus" in v["reason"] for v in failed.values())
    for cell in ok:  # every ok cell is a complete run folder of both algorithms
        run_meta = json.loads((out / "cells" / cell / "meta.json").read_text())
        assert run_meta["status"] == "ok" and list(run_meta["algorithms"]) == ["allreduce", "swarm"]
        assert (out / "logs" / f"{cell}.log").is_file()
    assert "failed: nodes=2,topology=torus,seed=0" in result.output
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary files left behind


def test_summary_has_grid_keys_and_every_row(real_sweep):
    out, _, _ = real_sweep
    s = pd.read_csv(out / "summary.csv")
    assert list(s.columns[:5]) == ["cell", "nodes", "topology", "seed", "algorithm"]
    assert len(s) == 8  # 4 cells x 2 algorithms, failed cells included
    failed = s[s["status"] != "ok"]
    assert len(failed) == 4 and set(failed["topology"]) == {"torus"} and failed["reason"].str.contains("torus").all()
    good = s[s["status"] == "ok"]
    assert (good["samples"] > 0).all() and (good["bytes_sent_total"] > 0).all()
    text = (out / "summary.csv").read_text()
    assert ",32," in text and "32.0" not in text  # failed rows do not turn integer columns into floats


def test_seeds_aggregated_with_t_interval(real_sweep):
    out, _, _ = real_sweep
    s = pd.read_csv(out / "summary.csv")
    agg = pd.read_csv(out / "aggregate.csv")
    for col in ("samples_per_s_mean", "samples_per_s_std", "samples_per_s_ci_lo", "samples_per_s_ci_hi", "n"):
        assert col in agg.columns
    row = agg[agg["algorithm"] == "swarm"].iloc[0]
    assert row["n"] == 2
    values = s[(s["algorithm"] == "swarm") & (s["status"] == "ok")]["test_acc"].to_numpy()
    mean, std = values.mean(), values.std(ddof=1)
    half = student_t.ppf(0.975, 1) * std / math.sqrt(2)
    assert row["test_acc_mean"] == pytest.approx(mean)
    assert row["test_acc_std"] == pytest.approx(std)
    assert row["test_acc_ci_lo"] == pytest.approx(mean - half)
    assert row["test_acc_ci_hi"] == pytest.approx(mean + half)
    md = (out / "accuracy.md").read_text()
    assert "±" in md and "Student's t-distribution" in md and "| seeds |" in md


def test_resume_skips_finished_cells(real_sweep):
    out, args, _ = real_sweep
    cell = out / "cells" / "nodes=2,topology=ring,seed=0"
    before = (cell / "meta.json").read_text()
    result = sweep(*args, "--out", str(out), "--resume")
    assert result.exit_code == 1, result.output  # the torus cells fail again
    assert "2 of 4 cells already finished" in result.output
    assert (cell / "meta.json").read_text() == before  # not rerun
    meta = json.loads((out / "meta.json").read_text())
    assert meta["cells"]["nodes=2,topology=ring,seed=0"].get("skipped_on_resume") is True
    # Without a grid, --resume reuses the sweep's own; with another grid it refuses.
    assert "already finished" in sweep("--resume", "--out", str(out)).output
    other = sweep("--resume", "--out", str(out), "--nodes", "3", *REAL)
    assert other.exit_code == 2 and "different sweep" in other.output


def test_report_of_a_real_sweep(real_sweep, tmp_path):
    out, _, _ = real_sweep
    result = CliRunner().invoke(cli, ["report", str(out), "--out", str(tmp_path / "rep"), "--target-acc", "0.5"])
    assert result.exit_code == 0, result.output
    assert "throughput_scaling" in result.output  # one node count: skipped with a note
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Cells that did not finish" in text and "![" in text


def test_failed_cell_at_runtime_goes_on(tmp_path, monkeypatch):
    """A cell whose run raises is recorded with its reason and the other cells still run (simulator: fast)."""
    pytest.importorskip("bench.engine.sim.cluster")
    import bench.run.orchestrate

    real = bench.run.orchestrate.execute

    def flaky(cfg, out, argv, interactive=None, **kwargs):
        if cfg.seed == 1:
            raise RuntimeError("boom in this cell")
        return real(cfg, out, argv, interactive, **kwargs)

    monkeypatch.setattr(bench.run.orchestrate, "execute", flaky)
    out = tmp_path / "out"
    result = sweep(
        "--algo", "allreduce", "--nodes", "2", "--seed", "0,1,2", "--set", "engine=sim", *REAL, "--out", str(out)
    )
    assert result.exit_code == 1, result.output
    cells = json.loads((out / "meta.json").read_text())["cells"]
    assert [v["status"] for v in cells.values()] == ["ok", "failed", "ok"]
    assert cells["nodes=2,seed=1"]["reason"] == "RuntimeError: boom in this cell"
    assert "boom in this cell" in (out / "logs" / "nodes=2,seed=1.log").read_text()


def test_grid_from_toml_file(tmp_path):
    pytest.importorskip("bench.engine.sim.cluster")
    spec = tmp_path / "grid.toml"
    spec.write_text(
        'engine = "sim"\ndataset = "digits"\nepochs = 1\n[swarm]\nlocal_steps_dist = "fixed"\n'
        '[grid]\nalgorithm = ["allreduce", "swarm"]\nnodes = [2, 4]\nseed = [0]\n'
    )
    out = tmp_path / "out"
    result = sweep(str(spec), "--out", str(out))
    assert result.exit_code == 0, result.output
    s = pd.read_csv(out / "summary.csv")
    assert sorted(set(s["nodes"])) == [2, 4] and set(s["algorithm"]) == {"allreduce", "swarm"}
    assert (s["status"] == "ok").all()
    # Options replace the file's axis of the same name.
    out2 = tmp_path / "out2"
    assert sweep(str(spec), "--nodes", "2", "--out", str(out2)).exit_code == 0
    assert len(json.loads((out2 / "meta.json").read_text())["cells"]) == 1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("epochs = 1\n[grid]\nnodes = [2, 4\n", "line 3 (key 'nodes')"),  # unclosed array: the last line
        ("epochs = 1\n[grid]\nnodes = [2, 4] x\nseed = [0]\n", "line 3 (key 'nodes')"),
        ("epochs = 1\n[grid]\nnodes = [2, 4]\nbogus = [1]\n", "line 4 (key 'bogus')"),
        ('epochs = "many"\n[grid]\nnodes = [2]\n', "line 1 (key 'epochs')"),
        ("epochs = 1\n[grid]\nnodes = []\n", "zero cells"),
        ('epochs = 1\n[grid]\nalgorithm = ["swarn"]\n', "did you mean 'swarm'"),
        ("epochs = 1\n", "no [grid] table"),
    ],
)
def test_bad_grid_files(tmp_path, text, expected):
    spec = tmp_path / "grid.toml"
    spec.write_text(text)
    out = tmp_path / "out"
    result = sweep(str(spec), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert expected in result.output and result.output.count("\n") == 1
    assert not out.exists()  # nothing written


def test_bad_sweep_options(tmp_path):
    out = tmp_path / "out"
    assert "nothing to sweep" in sweep("--out", str(out)).output
    r = sweep("--nodes", "two", "--out", str(out))
    assert r.exit_code == 2 and "'nodes' must be int" in r.output
    r = sweep("--grid", "lr", "--out", str(out))
    assert r.exit_code == 2 and "KEY=V1,V2" in r.output
    assert not out.exists()
    out.mkdir()
    (out / "x").write_text("")
    r = sweep("--nodes", "2", "--out", str(out))
    assert r.exit_code == 2 and "--resume" in r.output
    r = sweep("--resume", "--nodes", "2", "--out", str(out))
    assert r.exit_code == 2 and "not a results folder" in r.output


def test_expand_dedups_and_names_cells():
    spec = SweepSpec(
        fixed={"epochs": 1},
        grids=[
            Grid(axes={"algorithm": ["allreduce", "swarm"], "nodes": [2, 4]}, fixed={"bits": 32}),
            Grid(axes={"algorithm": ["swarm"], "bits": [32, 8]}, fixed={"nodes": 4}),
        ],
    )
    cells = expand(normalize(spec))
    ids = [c.id for c in cells]
    assert ids == ["nodes=2,bits=32", "nodes=4,bits=32", "nodes=4,bits=8"]
    shared = cells[1]
    assert shared.algorithms == ["allreduce", "swarm"]  # the two grids' identical cell runs once
    assert cell_id({"topology": "file:/x/y.txt"}) == "topology=file--x-y.txt"
