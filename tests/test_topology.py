"""Tests for bench.core.topology: known small graphs, mixing-matrix invariants, spectra, files, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench.base.errors import UserError
from bench.core.topology import TOPOLOGIES, Topology, build_topology, check_topology

NAMED = ["complete", "ring", "torus", "hypercube", "exponential"]
TORUS_OK = {1, 4, 6, 8, 9, 10, 12}
HYPERCUBE_OK = {1, 2, 4, 8}


def valid_cases(max_n: int = 12) -> list[tuple[str, int, int | None]]:
    """Every (name, n, degree) that should build for n in 1..max_n."""
    cases: list[tuple[str, int, int | None]] = []
    for n in range(1, max_n + 1):
        cases += [("complete", n, None), ("ring", n, None), ("exponential", n, None)]
        if n in TORUS_OK:
            cases.append(("torus", n, None))
        if n in HYPERCUBE_OK:
            cases.append(("hypercube", n, None))
        if n == 1:
            cases.append(("random-regular", 1, 0))
        if n == 2:
            cases.append(("random-regular", 2, 1))
        for d in range(2, n):
            if n * d % 2 == 0:
                cases.append(("random-regular", n, d))
    return cases


CASES = valid_cases()
CASE_IDS = [f"{name}-{n}-{d}" for name, n, d in CASES]


def nbrs(t: Topology) -> dict[int, set[int]]:
    return {i: set(t.neighbors(i)) for i in range(t.n)}


def components(t: Topology) -> int:
    # Independent of the module's DFS: count zero Laplacian eigenvalues.
    return int(np.sum(np.linalg.eigvalsh(t.laplacian()) < 1e-9))


# ---------------------------------------------------------------------------- known small graphs


def test_registry_is_complete_and_described() -> None:
    assert set(TOPOLOGIES) == {"complete", "ring", "torus", "hypercube", "exponential", "random-regular"}
    for key, spec in TOPOLOGIES.items():
        assert spec.name == key
        assert spec.description and "\n" not in spec.description


def test_ring_5() -> None:
    t = build_topology("ring", 5)
    assert nbrs(t) == {0: {1, 4}, 1: {0, 2}, 2: {1, 3}, 3: {2, 4}, 4: {0, 3}}
    assert t.edges() == [(0, 1), (0, 4), (1, 2), (2, 3), (3, 4)]


def test_ring_2_is_one_edge() -> None:
    t = build_topology("ring", 2)
    assert t.adjacency == ((1,), (0,))
    assert t.edges() == [(0, 1)]


def test_torus_3x3() -> None:
    t = build_topology("torus", 9)
    # Rank r*3 + c; each node has its four wrap-around neighbours.
    assert set(t.neighbors(0)) == {1, 2, 3, 6}
    assert set(t.neighbors(4)) == {1, 3, 5, 7}
    assert set(t.neighbors(8)) == {2, 5, 6, 7}
    assert t.degree() == (4, 4)
    assert len(t.edges()) == 18


def test_torus_2x2_is_a_4_cycle() -> None:
    t = build_topology("torus", 4)
    assert nbrs(t) == {0: {1, 2}, 1: {0, 3}, 2: {0, 3}, 3: {1, 2}}
    assert len(t.edges()) == 4


def test_torus_2x4_connects_rows_once() -> None:
    t = build_topology("torus", 8)
    # Rows 0..3 and 4..7 are 4-cycles; each column pair (c, c+4) is one edge, not two.
    assert set(t.neighbors(0)) == {1, 3, 4}
    assert set(t.neighbors(5)) == {4, 6, 1}
    assert t.degree() == (3, 3)
    assert len(t.edges()) == 12


def test_torus_picks_most_square_factorisation() -> None:
    # 12 = 3 x 4 (not 2 x 6): every node has degree 4.
    assert build_topology("torus", 12).degree() == (4, 4)
    # 16 = 4 x 4.
    t = build_topology("torus", 16)
    assert set(t.neighbors(0)) == {1, 3, 4, 12}


def test_hypercube_8() -> None:
    t = build_topology("hypercube", 8)
    assert nbrs(t) == {i: {i ^ 1, i ^ 2, i ^ 4} for i in range(8)}


def test_exponential_8() -> None:
    t = build_topology("exponential", 8)
    # Hops 1, 2, 4 both ways; +4 and -4 coincide mod 8.
    assert set(t.neighbors(0)) == {1, 2, 4, 6, 7}
    assert set(t.neighbors(3)) == {2, 4, 1, 5, 7}
    assert t.degree() == (5, 5)


def test_exponential_non_power_of_two() -> None:
    t = build_topology("exponential", 6)
    assert set(t.neighbors(0)) == {1, 2, 4, 5}


def test_complete_4() -> None:
    t = build_topology("complete", 4)
    assert nbrs(t) == {i: set(range(4)) - {i} for i in range(4)}
    assert len(t.edges()) == 6


@pytest.mark.parametrize("name", NAMED)
def test_single_node_is_valid(name: str) -> None:
    t = build_topology(name, 1)
    assert t.adjacency == ((),)
    assert t.degree() == (0, 0)
    assert t.edges() == []
    assert t.mixing_matrix().tolist() == [[1.0]]
    assert t.mixing_weights(0) == {0: 1.0}
    assert t.spectral_gap() == 0.0


def test_random_regular_single_node() -> None:
    assert build_topology("random-regular", 1, degree=0).adjacency == ((),)


# ---------------------------------------------------------------------------- invariants


@pytest.mark.parametrize(("name", "n", "degree"), CASES, ids=CASE_IDS)
def test_structure_and_mixing_matrix(name: str, n: int, degree: int | None) -> None:
    t = build_topology(name, n, degree=degree, seed=3)
    assert t.n == n and len(t.adjacency) == n
    for i in range(n):
        row = t.neighbors(i)
        assert list(row) == sorted(set(row))
        assert i not in row
        assert all(i in t.neighbors(j) for j in row)
    assert all(i < j for i, j in t.edges())
    assert components(t) == 1

    w = t.mixing_matrix()
    assert w.shape == (n, n)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w, w.T, atol=0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    # Off-diagonal support is exactly the edge set.
    off = (w > 0) & ~np.eye(n, dtype=bool)
    assert {(int(i), int(j)) for i, j in zip(*np.nonzero(off), strict=True) if i < j} == set(t.edges())
    for i in range(n):
        row = t.mixing_weights(i)
        assert set(row) == set(t.neighbors(i)) | {i}
        dense = np.zeros(n)
        for j, v in row.items():
            dense[j] = v
        np.testing.assert_array_equal(dense, w[i])


def test_metropolis_hastings_weights_on_uneven_degrees(tmp_path: Path) -> None:
    # Star plus one leaf edge: centre degree 3, so each centre edge weighs 1/4.
    path = tmp_path / "star.txt"
    path.write_text("0 1\n0 2\n0 3\n1 2\n")
    t = build_topology(f"file:{path}", 4)
    assert t.mixing_weights(0) == pytest.approx({0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25})
    assert t.mixing_weights(1) == pytest.approx({0: 0.25, 1: 1 - 0.25 - 1 / 3, 2: 1 / 3})
    assert t.mixing_weights(3) == pytest.approx({0: 0.25, 3: 0.75})


def test_neighbors_rejects_out_of_range_rank() -> None:
    t = build_topology("ring", 4)
    with pytest.raises(IndexError):
        t.neighbors(-1)
    with pytest.raises(IndexError):
        t.mixing_weights(4)


def test_topology_rejects_asymmetric_adjacency() -> None:
    with pytest.raises(ValueError, match="symmetric"):
        Topology(name="bad", n=2, adjacency=((1,), ()))
    with pytest.raises(ValueError, match="self loop"):
        Topology(name="bad", n=1, adjacency=((0,),))


# ---------------------------------------------------------------------------- spectra


@pytest.mark.parametrize("n", range(2, 13))
def test_spectral_gap_complete(n: int) -> None:
    assert build_topology("complete", n).spectral_gap() == pytest.approx(n)


@pytest.mark.parametrize("n", range(3, 13))
def test_spectral_gap_ring(n: int) -> None:
    assert build_topology("ring", n).spectral_gap() == pytest.approx(2 - 2 * math.cos(2 * math.pi / n))


@pytest.mark.parametrize(
    "name, n, degree",
    [
        ("ring", 300, None),
        ("torus", 300, None),
        ("hypercube", 256, None),
        ("exponential", 300, None),
        ("random-regular", 300, 4),
        ("complete", 40, None),
    ],
)
def test_sparse_spectral_gap_equals_the_dense_one(name: str, n: int, degree: int | None) -> None:
    """Above DENSE_GAP_NODES the gap comes from the sparse Laplacian (shift-invert for graphs of short edges in ring
    order, the deflated Lanczos iteration for expanders): the same number as the dense spectrum's."""
    from bench.core.topology import _sparse_gap

    t = build_topology(name, n, degree=degree, seed=1)
    dense = float(np.sort(np.linalg.eigvalsh(t.laplacian()))[1])
    assert _sparse_gap(t) == pytest.approx(dense, rel=1e-7)


def test_spectral_gap_of_65536_nodes_without_a_dense_matrix() -> None:
    """A 65,536-node ring's gap (2 - 2 cos(2 pi / n), ~9e-9: the hardest to resolve) and a hypercube's (2), where the
    dense Laplacian alone would take 34 GB."""
    n = 65_536
    assert build_topology("ring", n).spectral_gap() == pytest.approx(2 - 2 * math.cos(2 * math.pi / n), rel=1e-6)
    assert build_topology("hypercube", n).spectral_gap() == pytest.approx(2.0)


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_spectral_gap_hypercube(n: int) -> None:
    assert build_topology("hypercube", n).spectral_gap() == pytest.approx(2.0)


def test_describe() -> None:
    d = build_topology("torus", 9).describe()
    assert d == {
        "name": "torus",
        "n": 9,
        "degree_min": 4,
        "degree_max": 4,
        "edges": 18,
        "spectral_gap": pytest.approx(3.0),  # C3 x C3: the gap of C3, 2 - 2cos(2pi/3) = 3
    }
    assert isinstance(d["spectral_gap"], float)


# ---------------------------------------------------------------------------- random-regular


@pytest.mark.parametrize(("n", "d"), [(10, 3), (12, 4), (16, 5), (11, 8), (9, 2), (30, 7), (20, 19)])
def test_random_regular_exact_degree_and_determinism(n: int, d: int) -> None:
    a = build_topology("random-regular", n, degree=d, seed=7)
    b = build_topology("random-regular", n, degree=d, seed=7)
    assert a == b
    assert a.degree() == (d, d)
    assert components(a) == 1


def test_random_regular_seed_changes_graph() -> None:
    graphs = {build_topology("random-regular", 16, degree=3, seed=s).adjacency for s in range(5)}
    assert len(graphs) > 1


def test_random_regular_large_dense_is_fast() -> None:
    # Dense degrees go through the complement; they must neither hang nor fail.
    t = build_topology("random-regular", 200, degree=190, seed=1)
    assert t.degree() == (190, 190)


# ---------------------------------------------------------------------------- files


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edges.txt"
    path.write_text(text)
    return path


def test_file_good(tmp_path: Path) -> None:
    path = write(tmp_path, "# a path with a chord\n\n0 1\n1 2   # inline comment\n  2 3\n3 0\n1 0\n0 2\n")
    t = build_topology(f"file:{path}", 4)
    assert t.name == f"file:{path}"
    assert nbrs(t) == {0: {1, 2, 3}, 1: {0, 2}, 2: {0, 1, 3}, 3: {0, 2}}  # 1 0 collapsed into 0 1
    assert len(t.edges()) == 5


def test_file_single_node_without_edges(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing\n")
    assert build_topology(f"file:{path}", 1).adjacency == ((),)


@pytest.mark.parametrize("bad", ["0 1 2", "0", "a b", "0 1.5", "0,1"])
def test_file_malformed_line_names_file_and_line(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path, f"0 1\n# comment\n{bad}\n")
    with pytest.raises(UserError, match=r"edges\.txt:3: expected two integer ranks") as info:
        build_topology(f"file:{path}", 4)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", ["0 4", "-1 2"])
def test_file_rank_out_of_range(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path, f"0 1\n{bad}\n")
    with pytest.raises(UserError, match=r"edges\.txt:2: rank -?\d+ is outside \[0, 4\)"):
        build_topology(f"file:{path}", 4)


def test_file_self_loop(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"edges\.txt:1: self loop"):
        build_topology(f"file:{write(tmp_path, '2 2')}", 4)


def test_file_disconnected(tmp_path: Path) -> None:
    path = write(tmp_path, "0 1\n2 3\n")
    with pytest.raises(UserError, match=r"disconnected \(3 components over 5 nodes\)"):
        build_topology(f"file:{path}", 5)


def test_file_missing_and_empty_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        build_topology(f"file:{tmp_path / 'nope.txt'}", 4)
    with pytest.raises(UserError, match="is a directory"):
        build_topology(f"file:{tmp_path}", 4)
    with pytest.raises(UserError, match="has no path"):
        build_topology("file:", 4)


# ---------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    ("spec", "n", "degree", "pattern"),
    [
        ("torus", 7, None, r"got 7 .*use 6 or 8 .*4, 6, 8, 9, 10, 12"),
        ("torus", 2, None, r"got 2 .*use 4 "),
        ("torus", 3, None, r"got 3 .*use 4 "),
        ("torus", 13, None, r"use 12 or 14"),
        ("hypercube", 12, None, r"power of two, got 12: use 8 or 16"),
        ("hypercube", 3, None, r"use 2 or 4"),
        ("random-regular", 8, None, r"needs --degree D"),
        ("random-regular", 9, 3, r"even, got 9 \* 3: use --degree 2 or 4"),
        ("random-regular", 8, 8, r"--degree < --nodes \(8\), got 8"),
        ("random-regular", 8, -1, r"got -1"),
        ("random-regular", 8, 1, r"disconnected .*--degree >= 2"),
        ("random-regular", 1, 2, r"--degree 0"),
        ("ring", 4, 2, r"--degree only applies to the random-regular"),
        ("rnig", 4, None, r"unknown topology 'rnig' \(did you mean 'ring'\?\): choose from complete, ring"),
        ("hypercub", 4, None, r"did you mean 'hypercube'"),
        ("star", 4, None, r"unknown topology 'star'.*random-regular, file:PATH"),
        ("ring", 0, None, r"--nodes must be at least 1"),
    ],
)
def test_user_errors(spec: str, n: int, degree: int | None, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern) as info:
        build_topology(spec, n, degree=degree)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError):
        check_topology(spec, n, degree=degree)


def test_check_topology_accepts_valid() -> None:
    assert check_topology("torus", 12) is None
    assert check_topology("random-regular", 10, degree=3, seed=1) is None


def test_name_lookup_ignores_case_and_spaces() -> None:
    assert build_topology(" Ring ", 3).name == "ring"
