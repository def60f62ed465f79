"""A handful of the `make stress` worlds in CI: no deadlock, no lost update, consensus at the mean; a killed rank
ends its world instead of hanging it."""

from bench.diagnostics import stress


def test_stress_handful():
    # seed 12 draws a 5-process pull-push world (exponential graph) and a 3-process world that loses a rank
    counts = stress.run(runs=2, seed=12, steps=40)
    assert counts == {"ok": 2, "lost_update": 0, "no_consensus": 0, "failed_or_deadlocked": 0}
