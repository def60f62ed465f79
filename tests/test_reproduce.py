"""`swarmbench reproduce`: shipped suites, their paper-style tables, and bad suite input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.base.tomlfile import tomllib
from bench.experiments.reproduce import load_suite, select_parts, shipped, sim_available, suite_spec
from bench.experiments.sweep import expand, normalize
from cli import cli

SIM = pytest.mark.skipif(
    importlib.util.find_spec("bench.engine.sim.cluster") is None or not sim_available(),
    reason="needs the simulator engine (bench.engine.sim.cluster, --engine sim): ci-smoke is deterministic only there",
)


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_list_shows_the_shipped_suites():
    result = invoke("reproduce", "--list")
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == ["ci-smoke", "related-work", "resilience", "swarmsgd-neurips21", "woodworth-icml20"]
    assert "[sim]" in result.output


def test_suites_ship_as_package_data():
    assert set(shipped()) == {"ci-smoke", "related-work", "resilience", "swarmsgd-neurips21", "woodworth-icml20"}
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert "bench.experiments.suites" in setuptools["packages"]
    assert setuptools["package-data"]["bench.experiments.suites"] == ["*.toml", "README.md"]


def test_neurips_suite_layout():
    suite = load_suite("swarmsgd-neurips21")
    laptop = ["scaling", "quantization", "local_steps"]
    paper = ["resnet50", "resnet50_10gbe", "resnet50_large", "transformer", "transformer_h200"]
    assert [p.name for p in suite.parts] == [*laptop, *paper, "converge"]
    cells = expand(normalize(suite_spec(select_parts(suite, tuple(laptop)), "sim", (), (), ())))
    # 4 node counts + 3 more bit widths + 3 more H values, x 3 seeds: shared cells run once
    assert len(cells) == (4 + 3 + 3) * 3
    # the paper's scale: cost-only on the simulator whatever --engine says, the paper's workloads, 8 -> 4,096 nodes
    spec = normalize(suite_spec(suite, "processes", (), (), ()))
    for grid in (g for g in spec.grids if g.name in paper):
        assert grid.fixed["engine"] == "sim" and grid.fixed["compute"] == "cost-only"
        assert grid.fixed["model"] in ("torchvision:resnet50", "transformer-big")
    assert max(n for g in spec.grids for n in g.axes.get("nodes", [])) == 4096
    shared = next(c for c in cells if c.params == {"nodes": 8, "seed": 0, "bits": 32, "local_steps": 4})
    assert shared.algorithms == ["swarm", "allreduce", "local_sgd", "dpsgd", "adpsgd"]
    assert {t.columns for t in suite.tables} == {"nodes", "bits", "local_steps"}
    assert any(t.metric == "sync_share" for t in suite.tables)
    # every method tuned on one grid (validation accuracy) before the parts run
    assert suite.tune is not None and suite.tune.grid == {"lr": [0.01, 0.05, 0.2]}


def test_woodworth_suite_layout():
    """Local SGD vs minibatch SGD at equal M, K, R: the convex track (rounds, K at a fixed budget) and the MLP, each
    method's lr tuned once per model."""
    from bench.experiments.reproduce import plan_suite_tunings

    suite = load_suite("woodworth-icml20")
    assert [p.name for p in suite.parts] == ["convex_rounds", "convex_k", "mlp_rounds"]
    spec = normalize(suite_spec(suite, "sim", (), (), ()))
    cells = expand(spec)
    assert len(cells) == (4 + 4 + 4) * 3 and all(c.algorithms == ["local_sgd", "minibatch_sgd"] for c in cells)
    assert suite.tune is not None and suite.tune.by == "model"
    tunings = plan_suite_tunings(suite, spec)
    assert [(value, [g.name for g in grids]) for value, grids, _ in tunings] == [
        ("logreg", ["convex_rounds", "convex_k"]),
        ("mlp", ["mlp_rounds"]),
    ]
    for value, _, tuning in tunings:
        assert tuning.algorithms == ["local_sgd", "minibatch_sgd"] and tuning.base.model == value


def test_related_work_suite_runs_every_algorithm():
    """Every registered algorithm, under one identical launch, each tuned on one lr grid: a new algorithm must join."""
    from bench.training.registry import ALGORITHMS, runs_on

    suite = load_suite("related-work")
    part, convex = suite.parts
    assert sorted(part.grid["algorithm"]) == sorted(a for a in ALGORITHMS if runs_on(a, "mlp"))
    # the algorithms that run only on logistic regression (ADSAGA), in a convex part of their own, with comparators
    assert convex.settings["model"] == "logreg"
    assert sorted(set(part.grid["algorithm"] + convex.grid["algorithm"])) == sorted(ALGORITHMS)
    assert {"adsaga", "allreduce"} <= set(convex.grid["algorithm"])
    assert part.grid["nodes"] == convex.grid["nodes"] == [4, 8, 16, 32]
    assert suite.tune is not None and suite.tune.grid == {"lr": [0.01, 0.05, 0.2]} and suite.tune.by == "model"
    cells = expand(normalize(suite_spec(suite, "sim", (), (), ())))
    assert len(cells) == 8
    assert [c.algorithms for c in cells] == [part.grid["algorithm"]] * 4 + [convex.grid["algorithm"]] * 4
    from bench.experiments.reproduce import plan_suite_tunings

    tunings = plan_suite_tunings(suite, normalize(suite_spec(suite, "sim", (), (), ())))
    assert [(value, tuning.algorithms) for value, _, tuning in tunings] == [
        ("mlp", part.grid["algorithm"]),
        ("logreg", convex.grid["algorithm"]),
    ]


def test_resilience_suite_layout():
    """Per algorithm, none, one, 5 % and 25 % of 40 nodes fail, the gossip algorithms going on among survivors."""
    suite = load_suite("resilience")
    (part,) = suite.parts
    assert part.grid["fail_nodes"] == [0, 1, 2, 10] and suite.settings["nodes"] == 40
    assert suite.settings["on_failure"] == "continue"
    cells = expand(normalize(suite_spec(suite, "sim", (), (), ())))
    assert len(cells) == 4
    assert all(c.algorithms == ["swarm", "adpsgd", "allreduce", "local_sgd", "dpsgd"] for c in cells)
    assert {t.metric for t in suite.tables} == {"nodes_alive", "samples_per_s", "test_acc"}


@SIM
def test_scaled_down_resilience_suite(tmp_path):
    out = tmp_path / "resilience"
    args = ["--nodes", "12", "--set", "epochs=1", "--set", "dataset=digits", "--set", "batch_size=16"]
    result = invoke("reproduce", "resilience", *args, "--out", str(out))
    assert result.exit_code == 0, result.output
    alive = (out / "report" / "tables" / "paper_alive.md").read_text()
    assert "| algorithm | failed=0 | failed=1 | failed=2 | failed=10 |" in alive
    assert "| swarm | 12 | 11 | 10 | 2 |" in alive and "| allreduce | 12 | - | - | - |" in alive


def test_unknown_suite_exits_2():
    result = invoke("reproduce", "ci-smok")
    assert result.exit_code == 2
    assert result.output == (
        "error: unknown suite 'ci-smok' (did you mean 'ci-smoke'?): choose from ci-smoke, related-work, resilience, "
        "swarmsgd-neurips21, woodworth-icml20 (swarmbench reproduce --list) or pass a suite .toml file\n"
    )
    assert invoke("reproduce").exit_code == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ('[suite]\nname = "x"\n[[parts]]\nname = "p"\n[parts.grid]\nnodes = [2,\n', "line 6 (key 'nodes')"),
        ('[suite]\nname = "x"\ncolour = "red"\n', "line 3 (key 'colour')"),
        ('[suite]\nname = "x"\n', "has no [[parts]]"),
        (
            '[suite]\nname = "x"\n[[parts]]\nname = "p"\n[parts.grid]\nnodes = [2]\n'
            '[[tables]]\nname = "t"\npart = "q"\nmetric = "test_acc"\ncolumns = "nodes"\n',
            "line 9 (key 'part')",
        ),
        ('[suite]\nname = "x"\nengine = "gpu"\n[[parts]]\nname = "p"\n[parts.grid]\nnodes = [2]\n', "'sim' or"),
    ],
)
def test_bad_suite_files(tmp_path, text, message):
    path = tmp_path / "suite.toml"
    path.write_text(text)
    out = tmp_path / "out"
    result = invoke("reproduce", str(path), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1
    assert not out.exists()


def test_sim_suite_without_simulator_is_refused(monkeypatch, tmp_path):
    import bench.experiments.reproduce

    monkeypatch.setattr(bench.experiments.reproduce, "sim_available", lambda: False)
    result = invoke("reproduce", "ci-smoke", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "--engine processes" in result.output
    assert not (tmp_path / "out").exists()


@SIM
def test_ci_smoke(tmp_path):
    """The CI suite: every algorithm at 2, 4, 8 simulated nodes, paper-style tables and plots (seconds)."""
    out = tmp_path / "ci-smoke"
    result = invoke("reproduce", "ci-smoke", "--out", str(out))
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["suite"] == "ci-smoke" and meta["status"] == "ok" and len(meta["cells"]) == 6  # MLP, logreg
    tables = out / "report" / "tables"
    md = (tables / "paper_throughput.md").read_text()
    assert "| algorithm | 2 nodes | 4 nodes | 8 nodes |" in md

    def rows(md: str) -> list[str]:
        return [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "---" not in line]

    from bench.training.registry import ALGORITHMS, runs_on

    # rows = methods, suite order: every algorithm that runs on the MLP, in the registry's order; the others
    # (ADSAGA: logistic regression only) in the convex table
    assert rows(md)[1:] == [a for a in ALGORITHMS if runs_on(a, "mlp")]
    assert rows((tables / "paper_convex.md").read_text())[1:] == [a for a in ALGORITHMS if not runs_on(a, "mlp")]
    tex = (tables / "paper_bytes_per_sample.tex").read_text()
    assert "\\toprule" in tex and "2 nodes & 4 nodes & 8 nodes" in tex
    assert (out / "report" / "plots" / "throughput_scaling.png").stat().st_size > 10_000
    # Deterministic: it compares equal, metric by metric, to the committed reference (`make reference` after a
    # change meant to move these curves; CI runs the same comparison).
    result = invoke("compare", str(Path(__file__).parent.parent / "results" / "reference" / "ci-smoke"), str(out))
    assert result.exit_code == 0, result.output


@SIM
def test_scaled_down_neurips_suite(tmp_path):
    out = tmp_path / "neurips"
    args = ["--nodes", "4", "--seed", "0", "--set", "epochs=1", "--set", "dataset=digits", "--out", str(out)]
    result = invoke("reproduce", "swarmsgd-neurips21", "--part", "scaling,quantization,local_steps", *args)
    assert result.exit_code == 0, result.output
    report = (out / "report" / "report.md").read_text()
    assert "| algorithm | bits=32 | bits=16 | bits=8 | bits=4 |" in report
    assert "| algorithm | H=1 | H=2 | H=4 | H=8 |" in report
    assert "Synchronization cost as a share of batch compute" in report and "%" in report
    assert "(H=4, nodes=4)" in report  # the settings the part actually ran at, after --nodes
    assert "Each method tuned on lr ∈ {0.01, 0.05, 0.2}" in report and (out / "tune" / "tuned.toml").is_file()


@SIM
def test_neurips_paper_scale_part_runs_cost_only_without_tuning(tmp_path):
    """`--part` runs only the parts named (and their tables); a cost-only part trains nothing, so nothing is tuned,
    and its tables say what the paper claims beside the simulated sync cost."""
    out = tmp_path / "paper"
    result = invoke("reproduce", "swarmsgd-neurips21", "--part", "resnet50", "--nodes", "4", "--out", str(out))
    assert result.exit_code == 0, result.output
    report = (out / "report" / "report.md").read_text()
    assert "ResNet-50 / ImageNet / P100 / Aries: sync cost as a share of batch compute" in report
    assert "hours per ImageNet epoch" in report and "Transformer" not in report and "bits=4" not in report
    assert not (out / "tune").exists()
    summary = (out / "summary.csv").read_text()
    assert "torchvision:resnet50" in summary and "imagenet" in summary


def test_unknown_part_is_refused_in_one_line():
    result = invoke("reproduce", "swarmsgd-neurips21", "--part", "scaling,nope")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: suite 'swarmsgd-neurips21' has no part nope;")
