"""The SecAgg+ communication graph, its degree and the per-neighbourhood Shamir threshold.

SecAgg (Bonawitz et al., CCS 2017) masks every pair of clients: the complete
graph, cost O(n^2 L) in total. SecAgg+ (Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020) masks and
secret-shares only along the edges of a sparse random graph of degree
k = O(log n); each client then costs O(k L) and the server O(n k L)
plus O(n L) for the self masks.

Like Bell et al. (their Harary-graph construction, Section 4), the graph is a
Harary graph H(k, n) -- client ``i`` joins ``i +- 1 .. i +- k/2`` on a cycle,
plus the antipodal client when k is odd -- laid over a *random permutation*
of the clients. The permutation comes from a 256-bit seed that every party
derives from the round's public data (:func:`graph_seed`), so the server
cannot pick it: each client recomputes the seed and its own neighbourhood and
refuses a setup that announces another one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from protocols.prg import expand

__all__ = [
    "CORRUPTION_RATE",
    "choose_degree",
    "corrupt_holders",
    "degree_is_secure",
    "effective_degree",
    "graph_seed",
    "harary_neighbors",
    "neighbors_of",
    "share_threshold",
]

_GRAPH_DOMAIN = b"securefedrec/secagg/v1/graph"

CORRUPTION_RATE = 0.05
"""gamma, the default fraction of clients a malicious server controls (Bell et al.'s tables)."""


def graph_seed(round_id: int, client_ids: Sequence[int]) -> bytes:
    """The 32-byte seed of a round's graph: SHA-256 of the round id and the sorted client ids.

    Every party computes it from public data, so nobody chooses it.

    Notes:
        Threat: in SecAgg+ a client's secrets are shared among its k neighbours
        only, so a server that picks the graph (Bell et al., CCS 2020, assume a
        graph drawn at random *independently of the corrupted set*) can grind
        seeds until a victim's neighbourhood holds t' clients it controls, and
        then rebuild both of the victim's secrets. Deriving the seed by hashing
        the round id and the invited set leaves the server one graph per
        (round, client set) instead of a free 256-bit choice; a client that pins
        the round id (``SecAggClient(round_id=...)``) also removes the round id
        from the server's choices. What remains is the choice of *who* is
        invited, which the server makes anyway by sampling; a deployment that
        must exclude it samples clients from a public beacon (Flamingo, Ma et
        al., S&P 2023, derive neighbourhoods from such a beacon).
    """
    order = sorted(client_ids)
    h = hashlib.sha256(_GRAPH_DOMAIN)
    h.update(round_id.to_bytes(8, "big"))
    h.update(len(order).to_bytes(4, "big"))
    h.update(b"".join(c.to_bytes(8, "big") for c in order))
    return h.digest()


def effective_degree(n: int, neighbors: int | None) -> int:
    """The degree actually used for ``n`` clients.

    ``None`` or any ``neighbors >= n - 1`` gives the complete graph (n - 1).
    A k-regular graph on n vertices needs n*k even, so an odd k with odd n is
    raised to k + 1.
    """
    if n < 1:
        raise ValueError(f"need at least one client, got {n}")
    if neighbors is None or neighbors >= n - 1:
        return n - 1
    if neighbors < 1:
        raise ValueError(f"neighbors must be >= 1, got {neighbors}")
    if neighbors % 2 and n % 2:
        return neighbors + 1
    return neighbors


def harary_neighbors(ids: Sequence[int], degree: int, seed: bytes) -> dict[int, frozenset[int]]:
    """client id -> its ``degree`` neighbours (not itself) in H(degree, n) over a seeded permutation.

    Args:
        ids: the round's clients (any order; the result depends only on the set).
        degree: a value returned by :func:`effective_degree`.
        seed: 32 random bytes from the server; the permutation is ``argsort(PRG(seed))``.
    """
    order = sorted(ids)
    n = len(order)
    if degree >= n - 1:
        everyone = frozenset(order)
        return {c: everyone - {c} for c in order}
    if degree % 2 and n % 2:
        raise ValueError(f"no {degree}-regular graph on {n} vertices (n * k must be even)")
    placed = _placement(order, seed)
    half = degree // 2
    out: dict[int, set[int]] = {c: set() for c in order}
    for pos, c in enumerate(placed):
        for d in range(1, half + 1):
            out[c].add(placed[(pos + d) % n])
            out[c].add(placed[(pos - d) % n])
        if degree % 2:
            out[c].add(placed[(pos + n // 2) % n])
    return {c: frozenset(v) for c, v in out.items()}


def neighbors_of(client: int, ids: Sequence[int], degree: int, seed: bytes) -> frozenset[int]:
    """The neighbours of one client, as :func:`harary_neighbors` gives them, without the whole graph."""
    order = sorted(ids)
    n = len(order)
    if degree >= n - 1:
        return frozenset(order) - {client}
    if degree % 2 and n % 2:
        raise ValueError(f"no {degree}-regular graph on {n} vertices (n * k must be even)")
    placed = _placement(order, seed)
    pos = placed.index(client)
    out = {placed[(pos + d) % n] for d in range(1, degree // 2 + 1)}
    out |= {placed[(pos - d) % n] for d in range(1, degree // 2 + 1)}
    if degree % 2:
        out.add(placed[(pos + n // 2) % n])
    return frozenset(out)


def _placement(order: list[int], seed: bytes) -> list[int]:
    perm = np.argsort(expand(seed, len(order)), kind="stable")
    return [order[int(i)] for i in perm]


def corrupt_holders(n: int, degree: int, corruption_rate: float, security_bits: int = 40) -> int:
    """How many of a neighbourhood's ``degree + 1`` share holders the server may control.

    - Complete graph (``degree >= n - 1``): ``ceil(corruption_rate * n)``, the clients of the
      round a server controlling that fraction holds (Bonawitz et al.'s n_c; at least one
      whenever the rate is positive).
    - Sparse graph: no more than that, and no more than the smallest c with
      P(Bin(degree + 1, corruption_rate) > c) at most ``2^-security_bits / n`` (the graph
      comes from public data, so the server cannot place its clients around a victim: each
      holder is one of them independently, union bound over the n neighbourhoods, as in
      :func:`degree_is_secure`).
    """
    if not 0.0 <= corruption_rate < 0.5:
        raise ValueError(f"corruption_rate must be in [0, 0.5), got {corruption_rate}")
    holders = min(degree, n - 1) + 1
    if corruption_rate == 0.0:
        return 0
    in_round = min(holders, math.ceil(corruption_rate * n))
    if degree >= n - 1:
        return in_round
    bound = 2.0 ** -security_bits / n
    p, m = corruption_rate, holders
    tail = _upper_tail(m, p, in_round + 1)  # P(Bin > c), for c = in_round
    if tail > bound:
        return in_round
    c, term = in_round, _binom_mass(m, p, in_round, in_round + 1)  # term = P(Bin = c)
    while c > 0 and tail + term <= bound:  # P(Bin > c - 1) is under the bound too: step down
        tail += term
        term *= c / (m - c + 1) * (1.0 - p) / p  # P(Bin = c - 1)
        c -= 1
    return c


def _upper_tail(m: int, p: float, lo: int) -> float:
    """P(Bin(m, p) >= lo), summed upwards from ``lo`` until past the mean the terms vanish."""
    lo = max(lo, 0)
    if lo > m:
        return 0.0
    term = _binom_mass(m, p, lo, lo + 1)
    total = 0.0
    for i in range(lo, m + 1):
        total += term
        if (i > m * p and term <= total * 1e-18) or i == m:
            break
        term *= (m - i) / (i + 1) * p / (1.0 - p)  # P(Bin = i + 1)
    return total


def share_threshold(threshold: int, n: int, degree: int, malicious: bool,
                    corruption_rate: float = CORRUPTION_RATE, security_bits: int = 40) -> int:
    """Shamir threshold t' for a neighbourhood of ``degree + 1`` share holders (the client counts).

    Complete graph (``degree == n - 1``): t' = ``threshold``, as in Bonawitz et
    al. (every client holds a share of every secret, its own included). Sparse graph
    (SecAgg+): the global threshold is scaled to the neighbourhood,
    t' = ceil(threshold * (degree + 1) / n): the same *fraction* of share holders
    must respond.

    Against a malicious server (``malicious=True``) t' is raised to
    ``floor((m + c) / 2) + 1`` for m = degree + 1 holders of which c =
    :func:`corrupt_holders` may be the server's. A server that shows a victim's holders
    two survivor sets (the victim alive to one group, which then reveals shares of its
    self-mask seed; dropped to the other, which reveals shares of its mask key) needs t'
    holders in each group. Its own clients sign both views and answer both requests, so
    the two groups together need ``2t' - c`` distinct holders, and the honest ones refuse
    to reveal both shares of a peer: with ``m + c < 2t'`` the split is impossible. A
    strict majority alone (c = 0) falls to one corrupted holder whenever m is odd -- the
    ``split-view-colluder`` scenario of :mod:`attacks.malicious.secagg`; Bonawitz et al.
    state the same bound as ``2t - n > n_c``.

    Correctness under dropout is then probabilistic (Bell et al. Thm 3.x): a
    neighbourhood whose responders fall below t' cannot be unmasked and the round
    aborts -- it never returns a wrong sum. Pick the degree with :func:`choose_degree`.
    """
    holders = min(degree, n - 1) + 1
    t = threshold if degree >= n - 1 else math.ceil(threshold * holders / n)
    if malicious:
        c = corrupt_holders(n, degree, corruption_rate, security_bits)
        t = max(t, (holders + c) // 2 + 1)
    return max(1, min(t, holders))


def degree_is_secure(
    n: int, degree: int, threshold: int, *, malicious: bool, corruption_rate: float, security_bits: int = 40
) -> bool:
    """Whether a ``degree``-regular graph on ``n`` clients meets Bell et al.'s security bound.

    The bound of :func:`choose_degree` alone (no correctness part): with every
    client corrupted independently with probability ``corruption_rate``, the
    chance that some neighbourhood of ``degree + 1`` holders contains t' =
    :func:`share_threshold` ``(threshold, n, degree, malicious)`` corrupted clients
    is at most ``2^-security_bits`` (union bound over the n neighbourhoods).
    The complete graph (``degree >= n - 1``) is always accepted: it is plain
    SecAgg, whose security rests on t' alone. Checked by each client on the
    degree the server announces (a client never takes the degree on the server's
    word), and met by every degree :func:`choose_degree` returns for the same
    ``threshold``, rates and ``security_bits``.
    """
    if n < 1 or degree < 1:
        raise ValueError(f"need n >= 1 and degree >= 1, got n={n}, degree={degree}")
    if not 0.0 <= corruption_rate < 0.5:
        raise ValueError(f"corruption_rate must be in [0, 0.5), got {corruption_rate}")
    if degree >= n - 1 or corruption_rate == 0.0:
        return True
    m = degree + 1
    t = share_threshold(threshold, n, degree, malicious, corruption_rate, security_bits)
    return _binom_mass(m, corruption_rate, t, m + 1) <= 2.0 ** -security_bits / n


def _binom_mass(m: int, p: float, lo: int, hi: int) -> float:
    """P(lo <= Bin(m, p) < hi), summed term by term (no 1 - x cancellation)."""
    total = 0.0
    for i in range(max(lo, 0), min(hi, m + 1)):
        log_pmf = (
            math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1)
            + (i * math.log(p) if i else 0.0)
            + ((m - i) * math.log1p(-p) if m - i else 0.0)
        )
        total += math.exp(log_pmf)
    return total


def choose_degree(
    n: int,
    dropout_rate: float = 0.05,
    corruption_rate: float = CORRUPTION_RATE,
    *,
    threshold: int | None = None,
    malicious: bool = False,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> int:
    """Smallest even degree k for which SecAgg+ is both secure and correct w.h.p. for n clients.

    The rule follows Bell et al. (CCS 2020, Section 3.3 and their Table of
    parameters): pick a neighbourhood of m = k + 1 holders and a threshold t'
    such that, with every client independently dropping with probability
    ``dropout_rate`` (delta) and corrupted with probability ``corruption_rate``
    (gamma), union-bounded over all n neighbourhoods,

    * security: P(at least t' corrupt in a neighbourhood) <= 2^-security_bits / n,
    * correctness: P(fewer than t' survivors in a neighbourhood) <= 2^-correctness_bits / n.

    Both are exact binomial tails. With ``threshold`` (the round's release
    threshold) both bounds are checked for the t' the aggregator will really use,
    :func:`share_threshold` ``(threshold, n, k, malicious)`` -- what the
    aggregators pass. Without it, for each even k the search takes the smallest
    t' that meets the security bound and accepts k if that t' also meets the
    correctness bound, a protocol-agnostic answer that can be too small for
    another t': a malicious server's majority t' = floor(m / 2) + 1 is below
    that t' at low corruption rates (weaker security) and far above it at high
    dropout rates (rounds abort).
    The result grows like O(log n) (for fixed rates the tails decay exponentially
    in k), which is the point of SecAgg+; for small
    n it reaches n - 1, i.e. plain SecAgg. Raises ``ValueError`` for rates outside
    [0, 0.5) or n < 1.
    """
    if n < 1:
        raise ValueError(f"need at least one client, got {n}")
    if not (0.0 <= dropout_rate < 0.5 and 0.0 <= corruption_rate < 0.5):
        raise ValueError("dropout_rate and corruption_rate must be in [0, 0.5)")
    sec = 2.0 ** -security_bits / n
    cor = 2.0 ** -correctness_bits / n
    for k in range(2, n - 1, 2):
        m = k + 1
        if threshold is not None:
            t = share_threshold(threshold, n, k, malicious, corruption_rate, security_bits)
            secure = corruption_rate == 0.0 or _binom_mass(m, corruption_rate, t, m + 1) <= sec
            if secure and (dropout_rate == 0.0 or _binom_mass(m, 1.0 - dropout_rate, 0, t) <= cor):
                return k
            continue
        for t in range(1, m + 1):
            bad_sec = _binom_mass(m, corruption_rate, t, m + 1) if corruption_rate > 0 else 0.0
            if bad_sec > sec:
                continue
            if dropout_rate == 0.0 or _binom_mass(m, 1.0 - dropout_rate, 0, t) <= cor:
                return k
            break  # larger t only makes correctness worse
    return max(n - 1, 0)
