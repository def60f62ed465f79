"""A handful of the `make stress` worlds in CI: no deadlock, no lost update, consensus at the mean."""

from bench.diagnostics import stress


def test_stress_handful():
    counts = stress.run(runs=2, seed=11, steps=40)
    assert counts == {"ok": 2, "lost_update": 0, "no_consensus": 0, "failed_or_deadlocked": 0}
