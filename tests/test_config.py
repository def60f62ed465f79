"""Configuration precedence and type checking (single process, no training)."""

from __future__ import annotations

import pytest

from bench.base.errors import UserError
from bench.training.config import RunConfig, algo_config, resolve


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
    assert resolve({"algorithms": ["all"]}).algorithms == RunConfig().algorithms
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
