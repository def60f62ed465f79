"""Allreduce cost models as MPI and NCCL implement them, and the choice their tuners make.

Notation: p nodes, n bytes per node, a = latency per message (s), b = 1 / bandwidth (s per byte); every node has
one full-duplex link, so a node can send and receive at once. The reduction arithmetic is not charged here.

    ring            2 (p - 1) a + 2 (p - 1) / p n b
                    reduce-scatter then allgather around a ring; bandwidth-optimal, latency linear in p
                    (Thakur, Rabenseifner, Gropp 2005, sec. 4.4; NCCL's ring algorithm)
    recursive       ceil(log2 p) (a + n b)             when p is a power of two
    doubling        + 2 (a + n b)                       otherwise (the p - p' extra ranks first hand their vector to
                                                        a partner and get the result back, p' = 2^floor(log2 p))
                    latency-optimal; MPICH's choice for short messages (Thakur et al. 2005, sec. 4.4)
    rabenseifner    2 log2 p' a + 2 (p' - 1) / p' n b   reduce-scatter by recursive halving, allgather by
                    + 2 (a + n b) when p is not a power of two      recursive doubling; MPICH's choice for long
                    messages (Rabenseifner 2004; Thakur et al. 2005, sec. 4.4)
    binomial tree   2 ceil(log2 p) (a + n b)           binomial reduce to a root, then broadcast; the whole message
                    crosses every level (Thakur et al. 2005, sec. 4.1-4.2)
    double binary   2 (d + k - 1) (a + n b / k),       d = ceil(log2 p) levels; NCCL's tree: two complementary
    tree            k = the pipeline chunk count that minimizes it       binary trees each reduce and broadcast
                    half of the message, pipelined in k chunks, so an interior node receives n per phase at full
                    link bandwidth (Sanders, Speck, Traff 2009, "Two-tree algorithms for full bandwidth broadcast,
                    reduction and scan"; NCCL 2.4 release notes and docs, "double binary trees")

`auto` takes the cheapest of these for the message size and node count, as MPICH's size thresholds and NCCL's tuner
do with their own measured constants; the simulator records which one each message size got.

Hierarchical hosts (`gpus_per_host` G > 1, p = G H): as NCCL does across nodes, a reduce-scatter over the G
devices of a host on the intra-host link (NVLink or PCIe), an allreduce of the host's data between the H hosts on
the network (the G shards of n / G bytes share the host's network link, so the inter-host step moves n bytes per
host and is costed as one allreduce of n bytes over H nodes, its algorithm chosen as above), then an allgather
inside the host:

    2 ((G - 1) a_i + (G - 1) / G n b_i) + allreduce(n, H)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALGORITHMS = ("ring", "recursive_doubling", "rabenseifner", "binomial_tree", "double_binary_tree")
CHOICES = ("auto", "ring", "tree", *ALGORITHMS[1:])  # "tree" is the binomial tree (the older option name)
MAX_CHUNKS = 1024  # NCCL splits a message into at most this many pipeline chunks here


@dataclass(frozen=True)
class Link:
    latency: float  # seconds per message
    bandwidth: float  # bytes per second

    @property
    def per_byte(self) -> float:
        return 1.0 / self.bandwidth


def _pow2_floor(p: int) -> int:
    return 1 << (p.bit_length() - 1)


def ring(n: float, p: int, link: Link) -> float:
    return 2 * (p - 1) * link.latency + 2 * (p - 1) / p * n * link.per_byte


def recursive_doubling(n: float, p: int, link: Link) -> float:
    step = link.latency + n * link.per_byte
    q = _pow2_floor(p)
    return math.log2(q) * step + (2 * step if q < p else 0.0)


def rabenseifner(n: float, p: int, link: Link) -> float:
    q = _pow2_floor(p)
    core = 2 * math.log2(q) * link.latency + 2 * (q - 1) / q * n * link.per_byte if q > 1 else 0.0
    return core + (2 * (link.latency + n * link.per_byte) if q < p else 0.0)


def binomial_tree(n: float, p: int, link: Link) -> float:
    return 2 * math.ceil(math.log2(p)) * (link.latency + n * link.per_byte)


def double_binary_tree(n: float, p: int, link: Link) -> float:
    depth = math.ceil(math.log2(p))
    # d/dk of (d + k - 1)(a + n b / k) = 0 at k = sqrt((d - 1) n b / a); check the integers around it.
    best = math.sqrt(max(depth - 1, 0) * n * link.per_byte / link.latency) if link.latency > 0 else MAX_CHUNKS
    candidates = {1, MAX_CHUNKS, max(1, min(MAX_CHUNKS, math.floor(best))), max(1, min(MAX_CHUNKS, math.ceil(best)))}
    return min(2 * (depth + k - 1) * (link.latency + n * link.per_byte / k) for k in candidates)


FORMULAS = {
    "ring": ring,
    "recursive_doubling": recursive_doubling,
    "rabenseifner": rabenseifner,
    "binomial_tree": binomial_tree,
    "double_binary_tree": double_binary_tree,
}


def flat(n: float, p: int, link: Link, algorithm: str) -> tuple[str, float]:
    """(algorithm used, seconds) of one allreduce of n bytes per node over p nodes on one kind of link."""
    if p <= 1:
        return "none", 0.0
    if algorithm == "auto":
        return min(((name, f(n, p, link)) for name, f in FORMULAS.items()), key=lambda c: (c[1], c[0]))
    name = "binomial_tree" if algorithm == "tree" else algorithm
    return name, FORMULAS[name](n, p, link)


def allreduce(
    n: float, p: int, network: Link, algorithm: str, per_host: int = 1, intra: Link | None = None
) -> tuple[str, float]:
    """(algorithm used, seconds): flat over the network, or two-level when `per_host` devices share a host."""
    if per_host <= 1 or intra is None or p <= per_host:
        if per_host > 1 and intra is not None:  # every node on one host: the intra-host link only
            return flat(n, p, intra, algorithm)
        return flat(n, p, network, algorithm)
    hosts = math.ceil(p / per_host)
    g = per_host
    inside = 2 * ((g - 1) * intra.latency + (g - 1) / g * n * intra.per_byte)
    name, between = flat(n, hosts, network, algorithm)
    return f"hierarchical({name})", inside + between


def reduced_coordinates(algorithm: str, p: int) -> float:
    """Additions per coordinate of the message that one node performs in an allreduce (the gamma term of Thakur,
    Rabenseifner and Gropp 2005): (p - 1) / p for the reduce-scatter based algorithms (ring, Rabenseifner, NCCL's
    pipelined trees, whose reductions are spread over the nodes), log2 p for recursive doubling and at the root
    of a binomial tree (whole vectors at every level)."""
    if p <= 1:
        return 0.0
    if algorithm in ("recursive_doubling", "binomial_tree"):
        return math.ceil(math.log2(p))
    return (p - 1) / p
