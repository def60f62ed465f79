"""`swarmbench tune`: a grid search per algorithm on validation accuracy (simulator: deterministic and fast), its
tuned.toml read back by run, sweep and reproduce, the choice rule, and bad input."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.base.tomlfile import tomllib
from bench.experiments.reproduce import load_suite, suite_spec
from bench.experiments.sweep import expand, normalize, resolve_cell
from bench.experiments.tune import choose, plan
from bench.training.config import config_settings, hyper
from cli import cli

pytest.importorskip("bench.engine.sim.cluster")

SMALL = ["--engine", "sim", "--nodes", "2", "--dataset", "digits", "--epochs", "1"]
GRID = ["--grid", "lr=0.1,0.3,100"]  # lr = 100 diverges (non-finite loss) for both algorithms


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "out"
    args = ["tune", *SMALL, "--algo", "allreduce", "--algo", "swarm", *GRID, "--out", out]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return out, args, result


def expected_choice(out, algorithm: str, lrs: list[float]) -> float:
    """The rule, applied to each trial's own run folder: the highest val_acc among ok rows, then the lower
    val_loss, then the first grid point."""
    best = None
    for i, lr in enumerate(lrs):
        row = pd.read_csv(out / "cells" / f"lr={lr}" / "summary.csv").set_index("algorithm").loc[algorithm]
        if row["status"] != "ok":
            continue
        key = (-row["val_acc"], row["val_loss"], i)
        if best is None or key < best[0]:
            best = (key, lr)
    assert best is not None
    return best[1]


def test_tune_picks_the_best_validation_accuracy(tuned):
    out, _, result = tuned
    tuned_toml = (out / "tuned.toml").read_text()
    chosen = tomllib.loads(tuned_toml)
    assert set(chosen) == {"allreduce", "swarm"}
    for algo in ("allreduce", "swarm"):
        assert chosen[algo] == {"lr": expected_choice(out, algo, [0.1, 0.3, 100.0])}
    # The header says the grid, the metric and the budget.
    assert "# grid: lr ∈ {0.1, 0.3, 100.0} (3 grid points)" in tuned_toml
    assert "# metric: val_acc" in tuned_toml and "ties: lower val_loss, then the first grid point" in tuned_toml
    assert (
        "# budget: 3 trials per algorithm, each 1 epoch(s) of digits (mlp) on 2 nodes" in tuned_toml
        and "engine sim" in tuned_toml
    )
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials.columns) == ["algorithm", "cell", "lr", "val_acc", "val_loss", "status", "reason", "chosen"]
    assert len(trials) == 6 and trials.groupby("algorithm")["chosen"].sum().to_dict() == {"allreduce": 1, "swarm": 1}
    huge = trials[trials["lr"] == 100.0]
    assert (huge["status"] == "diverged").all() and not huge["chosen"].any()
    assert "tune: every trial" in result.output and "◀ chosen" in result.output and "diverged" in result.output
    # A tuning folder is a sweep folder: --resume runs nothing again and chooses the same.
    again = invoke(*tuned[1], "--resume")
    assert again.exit_code == 0 and "3 of 3 cells already finished" in again.output
    assert (out / "tuned.toml").read_text() == tuned_toml


def test_tuned_toml_round_trips_into_run(tuned, tmp_path):
    """`run --config tuned.toml` trains each algorithm at its chosen lr: meta.json says so, and on the simulator
    the run repeats the chosen trial exactly (same validation accuracy)."""
    out, _, _ = tuned
    chosen = tomllib.loads((out / "tuned.toml").read_text())
    run = tmp_path / "run"
    algos = ["--algo", "allreduce", "--algo", "swarm"]
    result = invoke("run", *SMALL, *algos, "--config", out / "tuned.toml", "--out", run)
    assert result.exit_code == 0, result.output
    meta_hyper = json.loads((run / "meta.json").read_text())["hyperparameters"]
    summary = pd.read_csv(run / "summary.csv").set_index("algorithm")
    trials = pd.read_csv(out / "trials.csv")
    for algo in ("allreduce", "swarm"):
        assert meta_hyper[algo]["lr"] == chosen[algo]["lr"]
        trial = trials[(trials["algorithm"] == algo) & trials["chosen"]].iloc[0]
        assert summary.loc[algo, "val_acc"] == pytest.approx(trial["val_acc"], abs=1e-12)
    # sweep and reproduce read it too.
    sweep = tmp_path / "sweep"
    result = invoke("sweep", "--algo", "swarm", "--nodes", "2", "--set", "engine=sim", "--set", "dataset=digits",
                    "--set", "epochs=1", "--config", out / "tuned.toml", "--out", sweep)  # fmt: skip
    assert result.exit_code == 0, result.output
    cell_hyper = json.loads((sweep / "cells" / "nodes=2" / "meta.json").read_text())["hyperparameters"]
    assert cell_hyper["swarm"]["lr"] == chosen["swarm"]["lr"]
    suite = suite_spec(load_suite("ci-smoke"), "sim", (), (), (), config_settings(str(out / "tuned.toml")))
    for cell in expand(normalize(suite)):
        cfg = resolve_cell(cell)
        assert {a: hyper(cfg, a).lr for a in ("allreduce", "swarm")} == {a: chosen[a]["lr"] for a in chosen}
        assert hyper(cfg, "dpsgd").lr == cfg.lr == 0.05  # the suite's own lr for the methods not tuned
    bad = tmp_path / "bad.toml"
    bad.write_text("[swarm]\nlrr = 0.1\n")
    result = invoke("reproduce", "ci-smoke", "--config", bad, "--out", tmp_path / "rep")
    assert result.exit_code == 2 and "config file" in result.output and "did you mean 'lr'" in result.output
    assert not (tmp_path / "rep").exists()


def trial(algorithm, order, lr, val_acc, val_loss, status="ok"):
    return {"algorithm": algorithm, "order": order, "cell": f"lr={lr}", "lr": lr, "val_acc": val_acc,
            "val_loss": val_loss, "status": status, "reason": ""}  # fmt: skip


def test_choice_rule_never_picks_a_diverged_or_failed_trial():
    trials = pd.DataFrame(
        [
            trial("swarm", 0, 0.01, 0.80, 0.50),
            trial("swarm", 1, 0.1, 0.99, 0.01, status="diverged"),  # the best accuracy, but diverged
            trial("swarm", 2, 1.0, 0.95, float("nan"), status="failed"),
            trial("swarm", 3, 0.05, 0.80, 0.40),  # ties on val_acc: the lower val_loss wins
            trial("allreduce", 0, 0.01, 0.70, 0.30),
            trial("allreduce", 1, 0.1, 0.70, 0.30),  # a full tie: the first grid point wins
            trial("dpsgd", 0, 0.01, 0.90, 0.10, status="diverged"),
            trial("dpsgd", 1, 0.1, float("nan"), float("nan"), status="failed"),
        ]
    )
    swarm, allreduce, dpsgd = choose(trials, ["swarm", "allreduce", "dpsgd"])
    assert (swarm.values, swarm.cell, swarm.val_acc, swarm.val_loss) == ({"lr": 0.05}, "lr=0.05", 0.80, 0.40)
    assert allreduce.values == {"lr": 0.01}
    assert dpsgd.cell == "" and dpsgd.values == {} and "none of its 2 trials finished ok" in dpsgd.why_none
    assert "diverged: 1" in dpsgd.why_none and "failed: 1" in dpsgd.why_none


def test_a_language_model_is_tuned_on_its_validation_loss():
    nan = float("nan")  # a language model's trials have perplexity, no accuracy: the lowest val_loss wins
    trials = pd.DataFrame(
        [
            trial("swarm", 0, 0.1, nan, 6.46),
            trial("swarm", 1, 0.2, nan, 5.90),
            trial("swarm", 2, 0.5, nan, 5.10, status="diverged"),
            trial("swarm", 3, 1.0, nan, 39.75),
        ]
    )
    (swarm,) = choose(trials, ["swarm"])
    assert (swarm.values, swarm.val_acc, swarm.val_loss) == ({"lr": 0.2}, None, 5.90)


def test_algorithm_without_an_ok_trial_exits_1(tmp_path):
    out = tmp_path / "out"
    result = invoke("tune", *SMALL, "--algo", "swarm", "--grid", "lr=100", "--out", out)
    assert result.exit_code == 1, result.output
    text = (out / "tuned.toml").read_text()
    assert "# swarm: not tuned: none of its 1 trials finished ok (diverged: 1)" in text
    assert tomllib.loads(text) == {}


def test_algorithm_keys_apply_to_their_algorithm_only():
    tuning = plan({"engine": "sim", "nodes": 2, "algorithms": ["allreduce", "swarm"]},
                  {"lr": ["0.1", "0.2"], "swarm.local_steps": ["1", "4"]})  # fmt: skip
    assert [c.id for c in tuning.cells] == ["lr=0.1,swarm.local_steps=1", "lr=0.1,swarm.local_steps=4",
                                            "lr=0.2,swarm.local_steps=1", "lr=0.2,swarm.local_steps=4"]  # fmt: skip
    rows = [
        {**trial(a, i, c.params["lr"], 0.5 + 0.1 * (i == 1), 1.0), "swarm.local_steps": c.params["swarm.local_steps"]}
        for i, c in enumerate(tuning.cells)
        for a in ("allreduce", "swarm")
    ]
    allreduce, swarm = choose(pd.DataFrame(rows), ["allreduce", "swarm"])
    assert allreduce.values == {"lr": 0.1} and swarm.values == {"lr": 0.1, "swarm.local_steps": 4}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "lr="], "grid axis 'lr' has no values: give at least one"),
        (["--grid", "lrr=0.1,0.2"], "unknown key 'lrr' in --grid (did you mean 'lr'?)"),
        (["--grid", "lr=fast"], "'lr' must be float, got 'fast'"),
        (["--grid", "lr=0.1,inf"], "'lr' must be a finite number, got 'inf'"),
        (["--grid", "momentum=nan"], "'momentum' must be a finite number, got 'nan'"),
        (["--grid", "epochs=1,2"], "grid axis 'epochs' is not a hyperparameter of allreduce, swarm"),
        (["--grid", "dpsgd.lr=0.1"], "grid axis 'dpsgd.lr' tunes dpsgd, which is not tuned here: add --algo dpsgd"),
        (["--grid", "algorithm=swarm"], "choose them with --algo"),
        (["--grid", "lr=0.1,-1"], "grid point lr=-1.0 cannot run: --lr must be positive"),
        (["--grid", "lr=0.1", "--set", "swarm.lr=0.2"], "'swarm.lr' is set and overrides the grid axis 'lr'"),
        (["--grid", "lr=0.1", "--nodes", "2,4"], "tune runs at one node count"),
        (["--grid", "lr=0.1", "--set", "val_fraction=0"], "set --val-fraction above 0"),
        ([], "nothing to tune: pass a grid axis"),
        (["--grid", "lr"], "is not KEY=V1,V2"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    result = invoke("tune", *SMALL, "--algo", "allreduce", "--algo", "swarm", *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # nothing written


def test_tuned_toml_header_is_valid_toml_for_every_value_type():
    """Booleans, strings, tuples and floats written in tuned.toml read back as the same values."""
    from bench.experiments.tune import toml_value

    values = {"nesterov": True, "lr_schedule": "step", "lr_milestones": (1, 2), "lr": 1e-05, "momentum": 0.9}
    text = "\n".join(f"{k} = {toml_value(v)}" for k, v in values.items())
    back = tomllib.loads(text)
    assert back == {**values, "lr_milestones": [1, 2]} and math.isclose(back["lr"], 1e-05)


SUITE = """
[suite]
name = "tuned-mini"
engine = "sim"
[settings]
dataset = "digits"
epochs = 1
nodes = 2
[tune]
grid = { lr = [0.1, 0.3, 100.0] }
[[parts]]
name = "main"
[parts.grid]
algorithm = ["allreduce", "swarm"]
seed = [0]
[[tables]]
name = "accuracy"
title = "Test accuracy"
part = "main"
metric = "test_acc"
columns = "nodes"
"""


def test_suite_with_a_tuning_budget(tmp_path):
    """A suite's [tune] grid runs first (OUT/tune); the parts run at each method's chosen values and the report
    says what each method was tuned on."""
    path = tmp_path / "suite.toml"
    path.write_text(SUITE)
    out = tmp_path / "out"
    result = invoke("reproduce", path, "--out", out)
    assert result.exit_code == 0, result.output
    chosen = tomllib.loads((out / "tune" / "tuned.toml").read_text())
    meta_hyper = json.loads((out / "cells" / "seed=0" / "meta.json").read_text())["hyperparameters"]
    for algo in ("allreduce", "swarm"):
        assert chosen[algo] == {"lr": expected_choice(out / "tune", algo, [0.1, 0.3, 100.0])}
        assert meta_hyper[algo]["lr"] == chosen[algo]["lr"]
    text = "each method tuned on lr ∈ {0.1, 0.3, 100.0} (highest validation accuracy; tune/tuned.toml)"
    assert text in (out / "report" / "report.md").read_text()
    assert "E" + text[1:] + "." in (out / "report" / "tables" / "paper_accuracy.md").read_text()
    # A bad [tune] grid is refused before anything is written.
    path.write_text(SUITE.replace("lr = [0.1, 0.3, 100.0]", "lr = []"))
    result = invoke("reproduce", path, "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "grid axis 'lr' has no values" in result.output
    path.write_text(SUITE.replace("lr = [0.1, 0.3, 100.0]", "epochs = [1, 2]"))
    result = invoke("reproduce", path, "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "grid axis 'epochs' is not a hyperparameter" in result.output
    path.write_text(SUITE.replace("[tune]\n", '[tune]\nhalving = "yes"\n'))
    result = invoke("reproduce", path, "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "(key 'halving'): must be true or false" in result.output
    assert not (tmp_path / "bad").exists()


SUITE_BY_MODEL = """
[suite]
name = "tuned-by-model"
engine = "sim"
[settings]
dataset = "digits"
epochs = 1
nodes = 2
[tune]
grid = { lr = [0.05, 0.8] }
by = "model"
[[parts]]
name = "convex"
[parts.grid]
algorithm = ["local_sgd"]
seed = [0]
[parts.settings]
model = "logreg"
[[parts]]
name = "mlp"
[parts.grid]
algorithm = ["local_sgd"]
seed = [0]
[parts.settings]
model = "mlp"
"""


def test_suite_tuned_per_model(tmp_path):
    """[tune] by = "model": one tuning per model (OUT/tune/model=M), and each part runs at the values chosen for its
    own model; a part that does not fix the `by` setting is refused before anything runs."""
    path = tmp_path / "suite.toml"
    path.write_text(SUITE_BY_MODEL)
    out = tmp_path / "out"
    result = invoke("reproduce", path, "--out", out)
    assert result.exit_code == 0, result.output
    for model in ("logreg", "mlp"):
        tune = out / "tune" / f"model={model}"
        chosen = tomllib.loads((tune / "tuned.toml").read_text())["local_sgd"]["lr"]
        assert chosen == expected_choice(tune, "local_sgd", [0.05, 0.8])
        assert json.loads((tune / "meta.json").read_text())["spec"]["fixed"]["model"] == model
        (cell,) = [c for c in (out / "cells").iterdir() if f"model={model}" in c.name]
        meta = json.loads((cell / "meta.json").read_text())
        assert meta["config"]["model"] == model and meta["hyperparameters"]["local_sgd"]["lr"] == chosen
    text = "each method tuned on lr ∈ {0.05, 0.8} per model (highest validation accuracy; tune/model=*/tuned.toml)"
    assert text in (out / "report" / "report.md").read_text()
    path.write_text(SUITE_BY_MODEL.replace('[parts.settings]\nmodel = "mlp"\n', ""))
    result = invoke("reproduce", path, "--out", tmp_path / "bad")
    assert result.exit_code == 2 and "part 'mlp' sets none" in result.output, result.output
    assert not (tmp_path / "bad").exists()


def test_successive_halving(tmp_path):
    """Rung 0 trains every grid point for 1 epoch; each algorithm's best (never the diverged lr = 100) trains the
    full 2 epochs in rung 1 and is chosen."""
    from bench.experiments.tune import halving_rungs

    assert halving_rungs(6, 4, 2) == [(6, 1), (2, 2), (1, 4)]  # 6 -> 3 at 1 epoch as well: not run twice
    assert halving_rungs(9, 9, 3) == [(9, 1), (3, 3), (1, 9)]
    assert halving_rungs(1, 5, 3) == [(1, 5)]
    out = tmp_path / "out"
    args = [*SMALL[:-1], "2", "--algo", "allreduce", "--algo", "swarm", *GRID, "--halving", "--eta", "2"]
    result = invoke("tune", *args, "--out", out)
    assert result.exit_code == 0, result.output
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(set(zip(trials["rung"], trials["epochs"], strict=True))) == [(0, 1), (1, 2)]
    chosen = tomllib.loads((out / "tuned.toml").read_text())
    for algo in ("allreduce", "swarm"):
        best_of_rung_0 = expected_choice(out / "rung-0", algo, [0.1, 0.3, 100.0])
        rung_1 = trials[(trials["rung"] == 1) & (trials["algorithm"] == algo)]
        assert list(rung_1["lr"]) == [best_of_rung_0] and rung_1["chosen"].all()
        assert chosen[algo] == {"lr": best_of_rung_0}
        cell = out / "rung-1" / "cells" / f"lr={best_of_rung_0}"
        assert json.loads((cell / "meta.json").read_text())["config"]["epochs"] == 2
    assert (
        "# budget: successive halving (eta 2): rungs of 3, 1 trials per algorithm, each 1, 2 epoch(s)"
        in (out / "tuned.toml").read_text()
    )
    bad = invoke("tune", *args, "--eta", "1", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "--eta must be at least 2" in bad.output and not (tmp_path / "bad").exists()
