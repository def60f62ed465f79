"""Communication graphs for the gossip algorithms (SwarmSGD, D-PSGD, AD-PSGD).

A `Topology` is an undirected, simple, connected graph over ranks 0..n-1. Builders for the named
graphs live in the literal `TOPOLOGIES` registry; `file:PATH` reads an edge list. Everything a user
can get wrong (a node count a graph cannot have, a missing degree, a bad edge file) raises
`UserError` with one line naming the problem and the fix, so `check_topology` can run at config
validation time, before anything is launched or written.

Only numpy is imported at load: this module is loaded by the CLI's validation path, where torch or
networkx would cost seconds for nothing (scipy only for the spectral gap of large graphs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.base.console import closest
from bench.base.errors import UserError

FILE_PREFIX = "file:"

# Bounds the random-regular search so an unlucky or impossible request fails with a message
# instead of looping; for degree >= 3 a single attempt almost always succeeds.
_RANDOM_REGULAR_ATTEMPTS = 200


@dataclass(frozen=True)
class Topology:
    """An undirected simple graph over ranks 0..n-1, stored as sorted neighbour tuples per rank."""

    name: str
    n: int
    adjacency: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        # These are invariants of code that builds a Topology, not user mistakes, so they raise
        # ValueError: every builder here guarantees them, and gossip code relies on symmetry.
        if self.n < 1 or len(self.adjacency) != self.n:
            raise ValueError(f"adjacency has {len(self.adjacency)} rows for n={self.n}")
        lengths = [len(row) for row in self.adjacency]
        src = np.repeat(np.arange(self.n, dtype=np.int64), lengths)
        dst = np.fromiter((j for row in self.adjacency for j in row), dtype=np.int64, count=len(src))
        if np.any((dst < 0) | (dst >= self.n) | (dst == src)):
            raise ValueError("adjacency has a self loop or a neighbour outside [0, n)")
        # Within a row, consecutive neighbours must strictly increase (sorted, no duplicates).
        same_row = src[1:] == src[:-1]
        if np.any(same_row & (dst[1:] <= dst[:-1])):
            raise ValueError("neighbour tuples must be sorted and free of duplicates")
        # Symmetric iff the sorted edge keys equal the sorted reversed keys; numpy keeps this
        # fast for dense graphs, where a Python loop per edge took seconds at n = 1000.
        forward = np.sort(src * self.n + dst)
        backward = np.sort(dst * self.n + src)
        if not np.array_equal(forward, backward):
            raise ValueError("adjacency is not symmetric")

    def neighbors(self, rank: int) -> tuple[int, ...]:
        """Sorted neighbour ranks of `rank` (never includes `rank` itself)."""
        return self.adjacency[self._check_rank(rank)]

    def degree(self) -> tuple[int, int]:
        """(minimum, maximum) degree over all ranks; (0, 0) for a single node."""
        degrees = [len(row) for row in self.adjacency]
        return min(degrees), max(degrees)

    def edges(self) -> list[tuple[int, int]]:
        """Every edge once as (i, j) with i < j, in lexicographic order."""
        return [(i, j) for i, row in enumerate(self.adjacency) for j in row if i < j]

    def mixing_weights(self, rank: int) -> dict[int, float]:
        """Row `rank` of `mixing_matrix()` as {rank: weight}, self included.

        Computed from local degrees only (O(degree)), so a worker can call it every step
        without building the n x n matrix.
        """
        i = self._check_rank(rank)
        d_i = len(self.adjacency[i])
        row = {j: 1.0 / (1 + max(d_i, len(self.adjacency[j]))) for j in self.adjacency[i]}
        # Self weight is whatever keeps the row summing to one; Metropolis-Hastings weights are
        # at most 1/(1+d_i) each, so it is at least 1/(1+d_i) > 0.
        row[i] = 1.0 - sum(row.values())
        return dict(sorted(row.items()))

    def mixing_matrix(self) -> np.ndarray:
        """Metropolis-Hastings gossip matrix W (n x n, float64).

        W_ij = 1 / (1 + max(d_i, d_j)) on edges, W_ii = 1 - sum_j W_ij. It is symmetric,
        nonnegative and doubly stochastic for any graph, which is what averaging-consensus needs
        without knowing the global degree bound. A fresh array is returned each call.
        """
        w = np.zeros((self.n, self.n), dtype=np.float64)
        for i in range(self.n):
            for j, weight in self.mixing_weights(i).items():
                w[i, j] = weight
        return w

    def laplacian(self) -> np.ndarray:
        """Graph Laplacian L = D - A (n x n, float64)."""
        lap = np.zeros((self.n, self.n), dtype=np.float64)
        for i, row in enumerate(self.adjacency):
            lap[i, list(row)] = -1.0
            lap[i, i] = len(row)
        return lap

    def spectral_gap(self) -> float:
        """Algebraic connectivity: the second-smallest Laplacian eigenvalue; 0.0 for n == 1.

        Larger means faster gossip mixing; it is 0 exactly when the graph is disconnected. Up to
        `DENSE_GAP_NODES` nodes from the dense Laplacian's full spectrum; above, where that costs O(n^3)
        time and 8 n^2 bytes (34 GB at 65,536 nodes), from the sparse Laplacian (`_sparse_gap`).
        """
        if self.n == 1:
            return 0.0
        if self.n > DENSE_GAP_NODES:
            return _sparse_gap(self)
        eigenvalues = np.linalg.eigvalsh(self.laplacian())  # ascending for symmetric input
        # Round-off can push a tiny value below zero; the true value never is.
        return max(float(eigenvalues[1]), 0.0)

    def describe(self) -> dict:
        """Summary for meta.json: name, n, degree range, edge count and spectral gap."""
        d_min, d_max = self.degree()
        return {
            "name": self.name,
            "n": self.n,
            "degree_min": d_min,
            "degree_max": d_max,
            "edges": len(self.edges()),
            "spectral_gap": None if math.isnan(gap := self.spectral_gap()) else gap,
        }

    def _check_rank(self, rank: int) -> int:
        # Guard explicitly: tuple indexing would silently accept -1 and return the last rank.
        if not 0 <= rank < self.n:
            raise IndexError(f"rank {rank} outside [0, {self.n})")
        return rank


DENSE_GAP_NODES = 1024  # above this many nodes the spectral gap comes from the sparse Laplacian


def _sparse_gap(t: Topology) -> float:
    """The second-smallest Laplacian eigenvalue by ARPACK on the sparse Laplacian (scipy, imported here only).

    Graphs whose edges are all short in ring order (a ring, a torus: at most 2 sqrt(n) apart) factorize cheaply:
    shift-invert around -0.1 / n^2, below 0 and below every connected graph's gap (at least 4 / n^2), so the two
    eigenvalues nearest it are 0 and the gap. Expanders (hypercube, exponential, random regular) fill in when
    factorized but converge fast without: the smallest eigenvalue of L + c 11^T / n, which moves the constant
    vector's 0 to the top of the spectrum. Either falls back to the other if ARPACK does not converge."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    n = t.n
    rows = np.repeat(np.arange(n), [len(r) for r in t.adjacency])
    cols = np.fromiter((j for r in t.adjacency for j in r), dtype=np.int64, count=len(rows))
    degrees = np.bincount(rows, minlength=n).astype(np.float64)
    lap = (sp.diags(degrees) - sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))).tocsc()

    def shift_invert() -> float:
        values = eigsh(lap, k=2, sigma=-0.1 / n**2, which="LM", return_eigenvectors=False)
        return float(np.sort(values)[1])

    def deflated() -> float:
        c = 2 * float(degrees.max()) + 1
        op = LinearOperator((n, n), matvec=lambda x: lap @ x + c * x.mean(), dtype=np.float64)
        return float(eigsh(op, k=1, which="SA", tol=1e-10, maxiter=5000, return_eigenvectors=False)[0])

    ring_distance = np.minimum(np.abs(rows - cols), n - np.abs(rows - cols))
    order = (shift_invert, deflated) if ring_distance.max() <= 2 * math.isqrt(n) else (deflated, shift_invert)
    try:
        gap = order[0]()
    except ArpackNoConvergence:
        try:
            gap = order[1]()
        except ArpackNoConvergence:
            return math.nan  # unknown: meta.json says null; nothing depends on it
    return max(gap, 0.0)


@dataclass(frozen=True)
class TopologySpec:
    """A registry entry: the name, one line for `swarmbench list`, and the builder."""

    name: str
    description: str
    build: Callable[..., Topology]  # build(n, *, degree, seed) -> Topology


# ----------------------------------------------------------------------------------------------
# Helpers


def _from_neighbour_sets(name: str, neighbours: list[set[int]]) -> Topology:
    """Freeze neighbour sets into a Topology; sets make duplicate edges collapse for free."""
    return Topology(name=name, n=len(neighbours), adjacency=tuple(tuple(sorted(s)) for s in neighbours))


def _from_edges(name: str, n: int, edges: Iterable[tuple[int, int]]) -> Topology:
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for i, j in edges:
        neighbours[i].add(j)
        neighbours[j].add(i)
    return _from_neighbour_sets(name, neighbours)


def _count_components(adjacency: tuple[tuple[int, ...], ...] | list[set[int]]) -> int:
    """Number of connected components, by iterative DFS (no recursion limit on long rings)."""
    seen = [False] * len(adjacency)
    components = 0
    for start in range(len(adjacency)):
        if seen[start]:
            continue
        components += 1
        seen[start] = True
        stack = [start]
        while stack:
            for j in adjacency[stack.pop()]:
                if not seen[j]:
                    seen[j] = True
                    stack.append(j)
    return components


def _no_degree(name: str, degree: int | None) -> None:
    # Silently ignoring --degree would let a user believe they ran a graph they did not.
    if degree is not None:
        raise UserError(
            f"--degree only applies to the random-regular topology, not '{name}': "
            f"drop --degree or use --topology random-regular"
        )


def _format_counts(counts: list[int]) -> str:
    return ", ".join(str(c) for c in counts)


# ----------------------------------------------------------------------------------------------
# Builders. All share the signature build(n, *, degree=None, seed=0) so the registry is uniform;
# only random-regular uses degree and seed.


def _build_complete(n: int, *, degree: int | None = None, seed: int = 0) -> Topology:
    _no_degree("complete", degree)
    return _from_neighbour_sets("complete", [set(range(n)) - {i} for i in range(n)])


def _build_ring(n: int, *, degree: int | None = None, seed: int = 0) -> Topology:
    _no_degree("ring", degree)
    # For n == 2 both i+1 and i-1 are the other node; the set keeps one edge. n == 1 drops the
    # self loop and leaves an isolated single node.
    return _from_neighbour_sets("ring", [{(i + 1) % n, (i - 1) % n} - {i} for i in range(n)])


def _torus_shape(n: int) -> tuple[int, int] | None:
    """Most square (r, c) with r * c = n and 2 <= r <= c, or None when n has no such factors."""
    for r in range(math.isqrt(n), 1, -1):
        if n % r == 0:
            return r, n // r
    return None


def _torus_counts(limit: int) -> list[int]:
    return [m for m in range(4, limit + 1) if _torus_shape(m) is not None]


def _build_torus(n: int, *, degree: int | None = None, seed: int = 0) -> Topology:
    _no_degree("torus", degree)
    if n == 1:
        # Every named topology accepts a single node (a smoke test or one-worker baseline);
        # treat it as the degenerate 1 x 1 torus, which has no edges once self loops go.
        return _from_neighbour_sets("torus", [set()])
    shape = _torus_shape(n)
    if shape is None:
        below = max((m for m in _torus_counts(n) if m < n), default=None)
        above = next(m for m in range(n + 1, 2 * n + 5) if _torus_shape(m) is not None)
        nearest = f"{below} or {above}" if below is not None else str(above)
        raise UserError(
            f"torus needs --nodes = r x c with r, c >= 2, got {n} (prime or too small): use {nearest} "
            f"(valid counts up to 32: {_format_counts(_torus_counts(32))}, ...)"
        )
    rows, cols = shape
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            # With a side of length 2 the +1 and -1 wrap-around neighbours coincide; the set
            # collapses them, so 2 x c connects each column pair once and 2 x 2 is a 4-cycle.
            neighbours[i] |= {
                ((r + 1) % rows) * cols + c,
                ((r - 1) % rows) * cols + c,
                r * cols + (c + 1) % cols,
                r * cols + (c - 1) % cols,
            }
    return _from_neighbour_sets("torus", neighbours)


def _build_hypercube(n: int, *, degree: int | None = None, seed: int = 0) -> Topology:
    _no_degree("hypercube", degree)
    if n & (n - 1):
        lower = 1 << (n.bit_length() - 1)
        raise UserError(f"hypercube needs --nodes to be a power of two, got {n}: use {lower} or {lower * 2}")
    dims = n.bit_length() - 1
    return _from_neighbour_sets("hypercube", [{i ^ (1 << k) for k in range(dims)} for i in range(n)])


def _build_exponential(n: int, *, degree: int | None = None, seed: int = 0) -> Topology:
    _no_degree("exponential", degree)
    hops = [1 << k for k in range(n.bit_length()) if (1 << k) < n]
    # 0 < 2^k < n, so i +- 2^k is never i mod n: no self loops to remove.
    return _from_neighbour_sets(
        "exponential", [{(i + h) % n for h in hops} | {(i - h) % n for h in hops} for i in range(n)]
    )


def _pair_stubs(n: int, d: int, rng: np.random.Generator) -> set[tuple[int, int]] | None:
    """One pairing-model attempt at a simple d-regular graph, or None when it gets stuck.

    Plain configuration-model rejection (reject the whole pairing on any loop or multi-edge)
    succeeds with probability ~exp(-(d^2 - 1) / 4), hopeless for d >= 8. Following Steger and
    Wormald (as networkx does), only the bad pairs are rejected and their stubs re-paired.
    """
    edges: set[tuple[int, int]] = set()
    stubs = [node for node in range(n) for _ in range(d)]
    while stubs:
        leftover: dict[int, int] = {}
        order = rng.permutation(len(stubs))
        for a, b in zip(order[0::2], order[1::2], strict=True):
            u, v = sorted((stubs[a], stubs[b]))
            if u != v and (u, v) not in edges:
                edges.add((u, v))
            else:
                leftover[u] = leftover.get(u, 0) + 1
                leftover[v] = leftover.get(v, 0) + 1
        nodes = sorted(leftover)
        # Stuck when every remaining pair of distinct nodes is already an edge: restart.
        if leftover and not any((u, v) not in edges for k, u in enumerate(nodes) for v in nodes[k + 1 :]):
            return None
        stubs = [node for node in nodes for _ in range(leftover[node])]
    return edges


def _random_regular_edges(n: int, d: int, rng: np.random.Generator) -> set[tuple[int, int]] | None:
    """A random simple d-regular graph (not necessarily connected), or None on a stuck attempt."""
    if d == 2:
        # The connected 2-regular graphs are exactly the Hamiltonian cycles; a random cycle is
        # direct, whereas rejection would need ~sqrt(n) attempts to hit a single cycle.
        perm = rng.permutation(n).tolist()
        pairs = ((perm[k], perm[(k + 1) % n]) for k in range(n))
        return {(min(u, v), max(u, v)) for u, v in pairs}
    complement = d > (n - 1) / 2
    # Dense graphs pair badly (few free pairs remain late); build the sparse complement instead.
    # n*(n-1) is even, so n*(n-1-d) is even exactly when n*d is.
    sparse = _pair_stubs(n, n - 1 - d, rng) if complement else _pair_stubs(n, d, rng)
    if sparse is None or not complement:
        return sparse
    return {(i, j) for i in range(n) for j in range(i + 1, n) if (i, j) not in sparse}


def _build_random_regular(n: int, *, degree: int | None = None, seed: int = 0) -> Topology:
    name = "random-regular"
    if degree is None:
        raise UserError(
            f"random-regular needs --degree D (1 <= D < {n}, {n} * D even): e.g. --degree {_suggest_degree(n)}"
        )
    d = degree
    if n == 1:
        if d != 0:
            raise UserError(f"random-regular with --nodes 1 has no neighbours: use --degree 0, got {d}")
        return _from_neighbour_sets(name, [set()])
    if not 0 <= d < n:
        raise UserError(
            f"random-regular needs 1 <= --degree < --nodes ({n}), got {d}: try --degree {_suggest_degree(n)}"
        )
    if (n * d) % 2:
        # n is odd here, so the degree must be even; d +- 1 are the nearest even ones (d < n keeps
        # d + 1 below n, and d == 1 has no smaller even degree that stays connected).
        evens = [e for e in (d - 1, d + 1) if 2 <= e < n]
        raise UserError(
            f"random-regular needs --nodes * --degree even, got {n} * {d}: "
            f"use --degree {' or '.join(str(e) for e in evens)}"
        )
    if d == 0 or (d == 1 and n > 2):
        raise UserError(f"random-regular with --degree {d} is disconnected for --nodes {n}: use --degree >= 2")
    rng = np.random.default_rng(seed)
    for _ in range(_RANDOM_REGULAR_ATTEMPTS):
        edges = _random_regular_edges(n, d, rng)
        if edges is None:
            continue
        topology = _from_edges(name, n, edges)
        if _count_components(topology.adjacency) == 1:
            return topology
    raise UserError(
        f"random-regular found no connected simple {d}-regular graph on {n} nodes in "
        f"{_RANDOM_REGULAR_ATTEMPTS} attempts (seed {seed}): try another --seed or --degree"
    )


def _suggest_degree(n: int) -> int:
    """A valid degree for n nodes, for error messages: 4 if it fits, else the largest that does."""
    for d in (4, 3, 2, 1):
        if d < n and (n * d) % 2 == 0:
            return d
    return 0


# ----------------------------------------------------------------------------------------------
# Edge-list files


def _build_file(spec: str, n: int, *, degree: int | None = None, seed: int = 0) -> Topology:
    """Read `file:PATH`: one `i j` edge per line, 0-based, `#` comments and blank lines allowed."""
    _no_degree(spec, degree)
    raw_path = spec[len(FILE_PREFIX) :]
    if not raw_path.strip():
        raise UserError("topology 'file:' has no path: use --topology file:PATH with an edge list file")
    path = Path(raw_path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"topology file '{path}' does not exist: check the path after 'file:'") from None
    except IsADirectoryError:
        raise UserError(f"topology file '{path}' is a directory: point 'file:' at an edge list file") from None
    except UnicodeDecodeError:
        raise UserError(f"topology file '{path}' is not UTF-8 text: write one 'i j' edge per line") from None
    except OSError as exc:
        raise UserError(f"topology file '{path}' cannot be read ({exc.strerror}): check its permissions") from None

    neighbours: list[set[int]] = [set() for _ in range(n)]
    for lineno, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        fields = content.split()
        try:
            if len(fields) != 2:
                raise ValueError
            i, j = int(fields[0]), int(fields[1])
        except ValueError:
            # repr keeps the message on one line whatever the line holds; long lines are cut.
            raise UserError(
                f"{path}:{lineno}: expected two integer ranks 'i j', got {content[:60]!r}: fix or comment out the line"
            ) from None
        for rank in (i, j):
            if not 0 <= rank < n:
                raise UserError(
                    f"{path}:{lineno}: rank {rank} is outside [0, {n}) for --nodes {n}: "
                    f"use 0-based ranks below {n} or raise --nodes"
                )
        if i == j:
            raise UserError(f"{path}:{lineno}: self loop {i} {j} is not allowed: remove the line")
        neighbours[i].add(j)
        neighbours[j].add(i)
    return _from_neighbour_sets(spec, neighbours)


# ----------------------------------------------------------------------------------------------
# Registry and entry points

TOPOLOGIES: dict[str, TopologySpec] = {
    "complete": TopologySpec(
        name="complete",
        description="every pair of nodes connected; any node count",
        build=_build_complete,
    ),
    "ring": TopologySpec(
        name="ring",
        description="cycle i ~ i+-1 mod n; any node count",
        build=_build_ring,
    ),
    "torus": TopologySpec(
        name="torus",
        description="2-D wrap-around grid r x c, most square; n = 1 or r*c with r, c >= 2 (4, 6, 8, 9, ...)",
        build=_build_torus,
    ),
    "hypercube": TopologySpec(
        name="hypercube",
        description="i ~ i XOR 2^k; node counts that are powers of two (1, 2, 4, 8, ...)",
        build=_build_hypercube,
    ),
    "exponential": TopologySpec(
        name="exponential",
        description="i ~ i +- 2^k mod n for 2^k < n (undirected SGP graph); any node count",
        build=_build_exponential,
    ),
    "random-regular": TopologySpec(
        name="random-regular",
        description="seeded random connected D-regular graph; needs --degree D < n with n*D even",
        build=_build_random_regular,
    ),
}


@dataclass(frozen=True)
class OnePeerExponential:
    """SGP's directed, time-varying graph (Assran et al. 2019): at step k node i sends to i + 2^(k mod L) mod n
    and receives from i - 2^(k mod L) mod n, with L = floor(log2(n - 1)) + 1 hops (2^k < n; L = log2 n when n is a
    power of two). Every node has one out-peer and one in-peer per step, so the mixing matrix (I + shift)/2 is
    doubly stochastic, and on 2^L nodes the product over L consecutive steps is the exact average."""

    n: int

    @property
    def period(self) -> int:
        """L: the hops cycle through 2^0, ..., 2^(L-1); 0 for a single node (no peers)."""
        return (self.n - 1).bit_length()

    def hop(self, step: int) -> int:
        return 1 << (step % self.period)

    def out_peer(self, rank: int, step: int) -> int:
        return (rank + self.hop(step)) % self.n

    def in_peer(self, rank: int, step: int) -> int:
        return (rank - self.hop(step)) % self.n


# Time-varying directed graphs, for the algorithms that schedule their own peers (`swarmbench list` shows them).
DIRECTED_GRAPHS = {
    "one-peer-exponential": (
        OnePeerExponential,
        "directed, time-varying: i -> i + 2^(k mod L) mod n at step k, L = floor(log2(n-1)) + 1 (sgp); any n",
    ),
}


def build_topology(spec: str, n: int, *, degree: int | None = None, seed: int = 0) -> Topology:
    """Build the graph named by `spec` (a TOPOLOGIES key or `file:PATH`) over `n` ranks.

    Raises UserError for anything the user can fix, including a disconnected graph for n > 1
    (gossip on it could never reach consensus).
    """
    if n < 1:
        raise UserError(f"--nodes must be at least 1, got {n}")
    if spec.startswith(FILE_PREFIX):
        topology = _build_file(spec, n, degree=degree, seed=seed)
    else:
        key = spec.strip().lower()
        if key not in TOPOLOGIES:
            choices = [*TOPOLOGIES, "file:PATH"]
            raise UserError(f"unknown topology '{spec}'{closest(key, choices)}: choose from {', '.join(choices)}")
        topology = TOPOLOGIES[key].build(n, degree=degree, seed=seed)
    components = _count_components(topology.adjacency)
    if components > 1:
        # Only reachable from file: (the named builders are connected by construction).
        raise UserError(
            f"topology '{topology.name}' is disconnected ({components} components over {n} nodes): "
            f"add edges so every rank is reachable"
        )
    return topology


def check_topology(spec: str, n: int, *, degree: int | None = None, seed: int = 0) -> None:
    """Validate without keeping the graph: building is cheap and is the only complete check."""
    build_topology(spec, n, degree=degree, seed=seed)
