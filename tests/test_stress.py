"""A handful of the `make stress` worlds in CI: no deadlock, no lost update, consensus at the mean; a killed rank
ends its world instead of hanging it."""

from bench.diagnostics import stress


def test_stress_handful():
    # seed 12 draws a 5-process pull-push world (exponential graph) and a 3-process world that loses a rank
    counts = stress.run(runs=2, seed=12, steps=40)
    assert counts == {"ok": 2, "lost_update": 0, "no_consensus": 0, "failed_or_deadlocked": 0}


def test_a_killed_world_passes_only_when_the_killed_rank_ended_it():
    """The verdict of a world that loses a rank: the killed rank's status is KILLED_EXIT and the survivors only lost
    a peer; a survivor's unrelated exception, or another death, is a failure."""
    from bench.engine.processes.localworld import WorldFailed
    from bench.engine.processes.worker import KILLED_EXIT

    lost = "Traceback (most recent call last):\n  ...\nRuntimeError: [gloo] Connection closed by peer [127.0.0.1]:1234"
    other = "Traceback (most recent call last):\n  ...\nZeroDivisionError: division by zero"
    exits = {0: -9, 1: KILLED_EXIT, 2: -9}
    assert stress.killed_verdict(WorldFailed("distributed run failed: rank 0:", exits, {0: lost}), (1, 5)) is None
    assert stress.killed_verdict(WorldFailed("distributed run failed: ranks ended", exits, {}), (1, 5)) is None
    why = stress.killed_verdict(WorldFailed("distributed run failed: rank 0:", exits, {0: other}), (1, 5))
    assert why == "rank 0 failed otherwise: ZeroDivisionError: division by zero"
    why = stress.killed_verdict(WorldFailed("distributed run failed: rank 1:", {**exits, 1: 1}, {1: other}), (1, 5))
    assert why is not None and "ended with status 1" in why
    hung = WorldFailed("distributed run failed: timed out after 120s waiting for ranks (a deadlock or a hang)", exits)
    assert "hung" in stress.killed_verdict(hung, (1, 5))
