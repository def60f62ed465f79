"""Configuration precedence and type checking (single process, no training)."""

from __future__ import annotations

import pytest

from bench.base.errors import UserError
from bench.training.config import Hyper, RunConfig, algo_config, hyper, resolve


def test_precedence_defaults_file_options_set(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("nodes = 3\nlr = 0.2\nepochs = 7\n[swarm]\nlocal_steps = 6\n")
    cfg = resolve({"lr": 0.3}, str(f), ["epochs=9"])
    assert cfg.nodes == 3  # from the file
    assert cfg.lr == 0.3  # option beats file
    assert cfg.epochs == 9  # --set beats everything
    assert cfg.batch_size == RunConfig().batch_size  # default
    assert algo_config(cfg, "swarm").local_steps == 6  # per-algorithm table
    assert algo_config(cfg, "local_sgd").local_steps == cfg.local_steps  # shared key defaults to the run's


def test_algorithms_all_and_dedup():
    from bench.training.registry import ALGORITHMS

    # every algorithm that runs on the model: ADSAGA only on logistic regression
    assert resolve({"algorithms": ["all"]}).algorithms == tuple(a for a in ALGORITHMS if a != "adsaga")
    assert resolve({"algorithms": ["all"], "model": "logreg"}).algorithms == tuple(ALGORITHMS)
    # and with --compute cost-only, every one that runs on the stand-in (PowerSGD needs the model's own tensors)
    cheap = resolve({"algorithms": ["all"], "engine": "sim", "compute": "cost-only", "steps": 3}).algorithms
    assert cheap == tuple(a for a in ALGORITHMS if a not in ("adsaga", "powersgd"))
    assert set(RunConfig().algorithms) < set(ALGORITHMS)  # the default: SwarmSGD and the classic baselines
    assert resolve({"algorithms": ["swarm", "swarm", "dpsgd"]}).algorithms == ("swarm", "dpsgd")


def test_set_types_are_checked():
    assert resolve({}, None, ["degree=none"]).degree is None
    with pytest.raises(UserError, match="must be int"):
        resolve({}, None, ["nodes=2.5"])
    with pytest.raises(UserError, match="local_steps must be at least 1"):
        resolve({}, None, ["swarm.local_steps=0"])


def test_round_trip_through_dict():
    cfg = resolve({"algorithms": ["swarm"]}, None, ["swarm.local_steps=2", "seed=5"])
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_numbers_are_refused(value):
    """--lr inf would train and report numbers that mean nothing: every float option must be finite."""
    with pytest.raises(UserError, match="must be a finite number"):
        resolve({"lr": float(value)})
    with pytest.raises(UserError, match="must be a finite number"):
        resolve({}, None, [f"momentum={value}"])


def test_per_algorithm_hyperparameters_from_set_and_tables(tmp_path):
    f = tmp_path / "tuned.toml"
    f.write_text('lr = 0.02\n[allreduce]\nlr = 0.2\nwarmup_epochs = 1\nlr_scaling = "linear"\n')
    cfg = resolve(
        {"nodes": 4, "epochs": 5}, str(f), ["swarm.lr=0.1", "swarm.lr_schedule=cosine", "swarm.nesterov=true"]
    )
    allreduce, swarm, dpsgd = hyper(cfg, "allreduce"), hyper(cfg, "swarm"), hyper(cfg, "dpsgd")
    assert (allreduce.lr, allreduce.warmup_epochs, allreduce.peak_lr(4)) == (0.2, 1.0, pytest.approx(0.8))
    assert (swarm.lr, swarm.lr_schedule, swarm.nesterov) == (0.1, "cosine", True)
    assert (dpsgd.lr, dpsgd.lr_schedule) == (0.02, "constant")  # the run's values
    assert algo_config(cfg, "swarm").local_steps == cfg.local_steps  # hyperparameters are not algorithm options


def test_learning_rate_schedules():
    base = dict(lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0, lr_gamma=0.1, lr_scaling="none")
    warm_step = Hyper(**base, warmup_epochs=2, lr_schedule="step", lr_milestones=(4, 6))
    assert warm_step.lr_at(0, 8, 1) == pytest.approx(0.01)  # warmup starts at a tenth of the peak
    assert warm_step.lr_at(1, 8, 1) == pytest.approx(0.055)
    assert [warm_step.lr_at(e, 8, 1) for e in (2, 3.9, 4, 6, 7.5)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.001])
    cosine = Hyper(**{**base, "lr_scaling": "sqrt"}, warmup_epochs=0, lr_schedule="cosine", lr_milestones=())
    assert [cosine.lr_at(e, 10, 4) for e in (0, 5, 10)] == pytest.approx([0.2, 0.1, 0.0])
    assert Hyper(**base, warmup_epochs=0, lr_schedule="constant", lr_milestones=()).constant()


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["lr_schedule=exponential"], "unknown schedule 'exponential'"),
        (["lr_schedule=step", "lr_milestones=3,9"], "lr_milestones 9 is not inside the run's 8 epochs"),
        (["lr_schedule=step"], "a step schedule needs milestones"),
        (["swarm.nesterov=true", "swarm.momentum=0"], "swarm.nesterov needs momentum > 0"),
        (["warmup_epochs=8"], "--warmup-epochs must be in [0, epochs = 8)"),
        (["allreduce.lr=-1"], "allreduce.lr must be positive"),
        (["swarm.lr_gamma=2"], "swarm.lr_gamma must be in (0, 1]"),
    ],
)
def test_bad_hyperparameters_are_one_line(sets, needle):
    with pytest.raises(UserError) as exc:
        resolve({"epochs": 8}, None, sets)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
