"""In-process driver of a submodel SecAgg round (:class:`SubmodelAggregator`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from protocols.base import AggregationResult, RoundConfig, Stage
from protocols.errors import ConfigError
from protocols.secagg._runner import RoundDriver, identities, make_runner
from protocols.secagg.aggregator import SecAggPlusAggregator
from protocols.secagg.client import ClientPolicy
from protocols.secagg.graph import CORRUPTION_RATE, effective_degree
from protocols.submodel.client import SubmodelClient, SubmodelPolicy
from protocols.submodel.rows import RowLayout
from protocols.submodel.server import SubmodelServer

__all__ = ["SubmodelAggregator", "SubmodelInput", "SubmodelResult"]


@dataclass(frozen=True)
class SubmodelInput:
    """One client's update: the rows it touched, its values there, and its shared coordinates."""

    rows: np.ndarray
    values: np.ndarray = field(repr=False)
    shared: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class SubmodelResult:
    """The round's :class:`~protocols.base.AggregationResult` and what the server learnt of the sets."""

    result: AggregationResult
    reported: dict[int, int]
    """client -> size of its reported row set."""
    union: int
    """Rows in the union of the reported sets."""


class SubmodelAggregator:
    """Submodel SecAgg over :class:`SubmodelInput` s, dropouts included (secrets shared as in SecAgg+).

    Args:
        layout: the public row layout of the global vector.
        item_epsilon: each client's randomized-response epsilon (its own policy).
        min_holders: each client's holder floor.
        neighbors: the degree of the graph the secrets are shared on; ``None`` (default) picks
            :func:`~protocols.secagg.graph.choose_degree` for n, ``dropout_rate`` and
            ``corruption_rate``, as :class:`~protocols.secagg.SecAggPlusAggregator` does; the
            clients then check the announced degree against Bell et al.'s bound for
            ``corruption_rate`` (a fixed degree: they require at least that degree).
        dropout_rate, corruption_rate: the rates the degree must tolerate.
        malicious: the malicious-model variant (signed keys, consistency round binding the row table).
        randbytes: source of every secret, the randomized response included (tests pin it).
        rng: stochastic rounding only (each client gets ``rng.spawn``).
        workers: simulate the clients on this many processes (needs ``randbytes=os.urandom``).
    """

    def __init__(
        self,
        layout: RowLayout,
        *,
        item_epsilon: float,
        min_holders: int = 2,
        neighbors: int | None = None,
        dropout_rate: float = 0.05,
        corruption_rate: float = CORRUPTION_RATE,
        malicious: bool = True,
        randbytes: Callable[[int], bytes] = os.urandom,
        rng: np.random.Generator | None = None,
        workers: int = 1,
    ) -> None:
        self.policy = SubmodelPolicy(item_epsilon=item_epsilon, min_holders=min_holders)
        # the secrets are shared on SecAgg+'s graph: its degree, checks and client policy are SecAgg+'s
        self.graph = SecAggPlusAggregator(neighbors=neighbors, dropout_rate=dropout_rate,
                                          corruption_rate=corruption_rate, malicious=malicious,
                                          randbytes=randbytes, rng=rng, workers=workers)
        self.layout = layout
        self.malicious = malicious
        self.randbytes = randbytes
        self.rng = self.graph.rng
        self.workers = workers
        self.last_server: SubmodelServer | None = None
        """The server object of the last round (what a server sees: the table of reported sets)."""

    def degree_for(self, n: int, config: RoundConfig) -> int:
        """SecAgg+'s degree: ``config.neighbors``, else the fixed degree, else ``choose_degree(n, ...)``."""
        return effective_degree(n, self.graph.degree_for(n, config))

    def client_policy(self, n: int, config: RoundConfig) -> ClientPolicy:
        """Each client's floor, from this aggregator's own configuration (never the server's word):
        :meth:`protocols.secagg.SecAggPlusAggregator.client_policy`."""
        return self.graph.client_policy(n, config)

    def server(self, config: RoundConfig, ids: Sequence[int]) -> SubmodelServer:
        """A fresh server for a round of the clients ``ids`` (also what a deployment's server drives)."""
        return SubmodelServer(config, ids, self.layout, neighbors=self.degree_for(len(ids), config),
                              min_holders=self.policy.min_holders, malicious=self.malicious,
                              corruption_rate=self.graph.corruption_rate)

    def aggregate(
        self,
        inputs: Mapping[int, SubmodelInput],
        config: RoundConfig,
        plan: Mapping[int, Stage] | None = None,
    ) -> SubmodelResult:
        """Run one round; return the exact ring sum over every coordinate, decoded (length L).

        A client that drops at ``Stage.ADVERTISE`` sends no row request either.

        Raises:
            AggregationAborted: below the threshold, or a row would be left with fewer than
                ``min_holders`` surviving holders (nothing revealed).
            ConfigError: no inputs, bad ids, or inputs that do not fit the layout.
        """
        drops = dict(plan or {})
        ids = sorted(inputs)
        if not ids:
            raise ConfigError(f"round {config.round_id}: no client inputs")
        if any(not 0 <= c < 2**63 for c in ids):
            raise ConfigError(f"round {config.round_id}: client ids must be in [0, 2^63)")
        if config.threshold > len(ids):
            raise ConfigError(
                f"round {config.round_id}: threshold {config.threshold} exceeds {len(ids)} clients")
        identity, pki, offline = identities(ids, self.randbytes, self.malicious)
        policy = self.client_policy(len(ids), config)
        rngs = dict(zip(ids, self.rng.spawn(len(ids)), strict=True))

        def make_client(c: int) -> SubmodelClient:
            x = inputs[c]
            return SubmodelClient(c, self.layout, x.rows, x.values, x.shared, submodel=self.policy,
                                  malicious=self.malicious, identity_key=identity.get(c),
                                  identity_keys=pki or None, round_id=config.round_id,
                                  randbytes=self.randbytes, rng=rngs[c], policy=policy)

        t0 = time.perf_counter()
        server = self.server(config, ids)
        server_setup = time.perf_counter() - t0
        self.last_server = server
        runner = make_runner(make_client, ids, self.workers)
        driver = RoundDriver(runner, ids, drops)
        driver.seconds["server"] += server_setup
        try:  # a client that drops at ADVERTISE sends no row request either
            msgs = driver.on_clients(Stage.ADVERTISE, dict.fromkeys(ids, b""), "request")
            replies = driver.secagg_stages(server, driver.on_server(lambda: server.receive_requests(msgs)),
                                           self.malicious)
        finally:
            runner.close()
        t0 = time.perf_counter()
        out = server.receive_unmask(replies)
        total = out.decode()
        driver.seconds["server"] += time.perf_counter() - t0
        result = AggregationResult(total=total, survivors=out.survivors, bytes_up=driver.bytes_up,
                                   bytes_down=driver.bytes_down, seconds_clients=driver.seconds["clients"],
                                   seconds_server=driver.seconds["server"], offline_seconds=offline)
        return SubmodelResult(result, {c: int(r.size) for c, r in server.table.items()}, server.union_rows())
