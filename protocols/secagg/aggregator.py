"""In-process driver: SecAgg and SecAgg+ as :class:`~protocols.base.Aggregator` s.

The aggregator creates one :class:`SecAggClient` per input and one
:class:`SecAggServer`, passes the real encoded messages between them stage by
stage, applies the :data:`~protocols.base.DropoutPlan` (a client that drops
at a stage sends nothing from that stage on), counts every byte and times
every call per role.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import ClassVar

import numpy as np

from protocols.base import AggregationResult, Aggregator, RoundConfig, Stage
from protocols.errors import ConfigError
from protocols.secagg._runner import RoundDriver, identities, make_runner
from protocols.secagg.client import ClientPolicy, SecAggClient
from protocols.secagg.graph import CORRUPTION_RATE, choose_degree, effective_degree
from protocols.secagg.server import SecAggServer

__all__ = ["SecAggAggregator", "SecAggPlusAggregator"]


class SecAggAggregator(Aggregator):
    """Secure aggregation by pairwise masking (Bonawitz et al. 2017; Bell et al. 2020 with ``neighbors``).

    Args:
        neighbors: degree of the masking graph; ``None`` is the complete graph (SecAgg),
            an int k a k-regular Harary graph over a random permutation (SecAgg+).
            ``RoundConfig.neighbors``, when set, overrides it.
        malicious: ``True`` (default) protects against a malicious server: Ed25519-signed
            key advertisements and the consistency-check round. ``False`` is Flower's
            semi-honest model: no signatures, no consistency round.
        randbytes: the source of all secret randomness (key pairs, identity keys,
            self-mask seeds, Shamir polynomials, graph seed). Tests pin it.
        rng: generator for stochastic rounding in the fixed-point encoding only;
            default a fresh ``np.random.default_rng()``. Each client gets its own
            stream (``rng.spawn``).
        workers: simulate the clients in this many processes, this one and ``workers - 1``
            forked ones (clients are independent machines; this only uses more cores, and
            the sum is the same ring sum). ``1`` (default) runs everything in this process;
            more needs ``randbytes=os.urandom``.
        corruption_rate: gamma, the fraction of clients the server may control; the malicious
            model's Shamir threshold t' counts that many corrupted share holders
            (:func:`~protocols.secagg.graph.share_threshold`), and so does each client's policy.

    Notes:
        Thresholds: the round aborts when fewer than ``RoundConfig.threshold`` clients
        answer any stage. Secrets are Shamir-shared among a client's neighbours and
        itself; the Shamir threshold t' is ``threshold`` for the complete graph and,
        for SecAgg+, ``threshold`` scaled to the neighbourhood (``ceil(threshold *
        (k + 1) / n)``), raised in the malicious model above half of the neighbourhood
        plus the holders the server may control -- see
        :func:`~protocols.secagg.graph.share_threshold`. A neighbourhood
        left with fewer than t' responders aborts the round (never a wrong sum).

        Threat model: the server sees masked vectors, each a uniform ring element
        unless it learns both the self-mask seed b_u and the mask key s_sk of the
        same client. Shamir shares of both are held by u's neighbours; an honest
        client answers an unmask request for at most one of the two per peer and
        raises :class:`~protocols.errors.IntegrityError` when asked for both.
    """

    name: ClassVar[str] = "secagg"
    secure: ClassVar[bool] = True
    supports_wrap: ClassVar[bool] = True
    threat_models: ClassVar[frozenset[str]] = frozenset({"semi-honest", "malicious"})
    parallel_clients: ClassVar[bool] = True
    pairwise_masks: ClassVar[bool] = True

    def __init__(
        self,
        *,
        neighbors: int | None = None,
        malicious: bool = True,
        randbytes: Callable[[int], bytes] = os.urandom,
        rng: np.random.Generator | None = None,
        workers: int = 1,
        corruption_rate: float = CORRUPTION_RATE,
    ) -> None:
        if neighbors is not None and neighbors < 1:
            raise ConfigError(f"neighbors must be >= 1 or None, got {neighbors}")
        if not 0.0 <= corruption_rate < 0.5:
            raise ConfigError(f"corruption_rate must be in [0, 0.5), got {corruption_rate}")
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if workers > 1 and randbytes is not os.urandom:
            raise ConfigError(
                "workers > 1 needs randbytes=os.urandom: a pinned generator would repeat "
                "the same secrets in every worker process"
            )
        self.workers = workers
        self.neighbors = neighbors
        self.malicious = malicious
        self.corruption_rate = corruption_rate
        """The fraction of clients the server may control: the malicious model's t' counts them."""
        self.randbytes = randbytes
        self.rng = rng if rng is not None else np.random.default_rng()
        self.last_server: SecAggServer | None = None
        """The server object of the last round (what an attacker running the server sees)."""

    def degree_for(self, n: int, config: RoundConfig) -> int | None:
        """The requested degree for ``n`` clients (``None``: complete graph)."""
        return config.neighbors if config.neighbors is not None else self.neighbors

    def client_policy(self, n: int, config: RoundConfig) -> ClientPolicy:
        """The floor each simulated client holds the server's Setup to, from this aggregator's own config.

        The clients' policy comes from the same configuration as the server's
        parameters, never from the server's messages: the threshold, ring, clipping
        range and wrap flag of ``config``, and this aggregator's degree for ``n``
        clients (the complete graph when it asks for none).
        """
        return ClientPolicy(
            min_threshold=config.threshold, min_threshold_fraction=0.0,
            min_degree=effective_degree(n, self.degree_for(n, config)),
            corruption_rate=self.corruption_rate, degree_bound=False,
            ring_bits=config.ring_bits, clip_range=config.clip_range, wrap=config.wrap,
        )

    def _aggregate(
        self, inputs: Mapping[int, np.ndarray], config: RoundConfig, plan: dict[int, Stage], length: int
    ) -> AggregationResult:
        """Run one SecAgg(+) round in process; raise ``AggregationAborted`` below threshold."""
        ids = sorted(inputs)
        if any(not 0 <= c < 2**63 for c in ids):
            raise ConfigError(f"round {config.round_id}: client ids must be in [0, 2^63)")
        identity, pki, offline = identities(ids, self.randbytes, self.malicious)
        t0 = time.perf_counter()
        server = SecAggServer(
            config, ids, length, neighbors=self.degree_for(len(ids), config),
            malicious=self.malicious, randbytes=self.randbytes, corruption_rate=self.corruption_rate,
        )
        server_setup = time.perf_counter() - t0
        self.last_server = server
        rngs = self.rng.spawn(len(ids))  # one rounding stream per client, also across processes
        policy = self.client_policy(len(ids), config)

        def make_client(c: int) -> SecAggClient:
            return SecAggClient(
                c, inputs[c], malicious=self.malicious, identity_key=identity.get(c),
                identity_keys=pki or None, round_id=config.round_id,
                randbytes=self.randbytes, rng=rngs[ids.index(c)], policy=policy,
            )

        runner = make_runner(make_client, ids, self.workers)
        driver = RoundDriver(runner, ids, plan)
        driver.seconds["server"] += server_setup
        try:
            replies = driver.secagg_stages(server, driver.on_server(server.setup), self.malicious)
        finally:
            runner.close()
        t0 = time.perf_counter()
        result = server.receive_unmask(replies)
        total = result.decode()
        driver.seconds["server"] += time.perf_counter() - t0
        return AggregationResult(
            total=total,
            survivors=result.survivors,
            bytes_up=driver.bytes_up,
            bytes_down=driver.bytes_down,
            seconds_clients=driver.seconds["clients"],
            seconds_server=driver.seconds["server"],
            offline_seconds=offline,
        )


class SecAggPlusAggregator(SecAggAggregator):
    """SecAgg+ with the degree chosen from n by :func:`~protocols.secagg.graph.choose_degree`.

    Args:
        neighbors: fixed degree; ``None`` (default) picks ``choose_degree(n, dropout_rate,
            corruption_rate)`` per round for the round's threshold and threat model,
            O(log n) (Bell et al. 2020).
        dropout_rate, corruption_rate: the rates the degree must tolerate.
        malicious, randbytes, rng, workers: as for :class:`SecAggAggregator`.
    """

    name: ClassVar[str] = "secagg+"
    sparse_graph: ClassVar[bool] = True

    def __init__(
        self,
        *,
        neighbors: int | None = None,
        dropout_rate: float = 0.05,
        corruption_rate: float = CORRUPTION_RATE,
        malicious: bool = True,
        randbytes: Callable[[int], bytes] = os.urandom,
        rng: np.random.Generator | None = None,
        workers: int = 1,
    ) -> None:
        super().__init__(neighbors=neighbors, malicious=malicious, randbytes=randbytes, rng=rng,
                         workers=workers, corruption_rate=corruption_rate)
        if not 0.0 <= dropout_rate < 0.5:
            raise ConfigError(f"dropout_rate must be in [0, 0.5), got {dropout_rate}")
        self.dropout_rate = dropout_rate

    def degree_for(self, n: int, config: RoundConfig) -> int | None:
        """``config.neighbors``, else the fixed degree, else ``choose_degree(n, ...)``."""
        fixed = super().degree_for(n, config)
        if fixed is not None:
            return fixed
        return choose_degree(n, self.dropout_rate, self.corruption_rate, threshold=config.threshold,
                             malicious=self.malicious)

    def client_policy(self, n: int, config: RoundConfig) -> ClientPolicy:
        """As for :class:`SecAggAggregator`; a degree chosen from n is bounded by the corruption rate.

        When no degree is fixed, the clients do not pin the one :func:`choose_degree`
        returns: each checks the announced degree against Bell et al.'s security
        bound for this aggregator's ``corruption_rate`` (which that degree meets).
        """
        policy = super().client_policy(n, config)
        if super().degree_for(n, config) is not None:
            return policy
        return replace(policy, min_degree=None, degree_bound=True)
