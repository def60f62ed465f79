"""The simulator's memory: what one more node costs against its bound, and the pre-flight estimate against the
measured peak. Each size runs in a fresh process (`measure_sim_memory`: peak RSS from /proc, Linux only)."""

from __future__ import annotations

import sys

import pytest

from bench.diagnostics.benchmarks import measure_sim_memory

SIZES = (64, 512)  # nodes of the default MLP (118,282 parameters), SwarmSGD

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak RSS from /proc")


@pytest.fixture(scope="module")
def measured() -> dict[int, dict]:
    """4 epochs evaluated once: every node takes 4 steps, so all hold momentum at once (the estimate's case and
    the bound's worst case)."""
    return {n: measure_sim_memory(n, epochs=4) for n in SIZES}


def per_node_bytes(runs: dict[int, dict]) -> float:
    """What one more node costs: the growth of the peak from the smaller size to the larger, per node added."""
    small, large = (runs[n] for n in SIZES)
    return ((large["peak"] - large["before"]) - (small["peak"] - small["before"])) / (SIZES[1] - SIZES[0])


def test_one_more_node_costs_at_most_four_models_and_64_kb(measured):
    """Parameters, gradients, momentum and the published copy at most, when every node holds momentum and a
    published copy at once and pauses between steps: every other tensor (the module, the evaluation model, the
    data) is shared by all nodes, what a node keeps of its own beyond them stays under 64 kB, the autograd graph
    is freed with the backward pass, and a step's activations leave no holes in the heap. (The worst case: after a
    single step per node, a node holds no momentum yet.)"""
    per_node, params = per_node_bytes(measured), measured[SIZES[1]]["params"]
    bound = 4 * 4 * params + 64_000
    assert per_node <= bound, f"{per_node:,.0f} B per node, bound {bound:,} B"
    assert per_node >= 3 * 4 * params  # the measurement sees the nodes: parameters, momentum, published copy


@pytest.mark.parametrize("nodes", SIZES)
def test_estimate_is_within_a_quarter_of_the_measured_peak(measured, nodes):
    m = measured[nodes]
    growth = m["peak"] - m["before"]
    assert m["estimate"] == pytest.approx(growth, rel=0.25), f"estimate {m['estimate']:,} B, measured {growth:,} B"
