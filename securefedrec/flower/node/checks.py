"""The bounds a node enforces on the server's round parameters, from its own run configuration.

A node never takes a security parameter on the server's word: the release threshold, the
SecAgg+ neighbour degree, the Shamir threshold t', the ring size (SecAgg :class:`Setup`)
and the Paillier round configuration are checked here, before any client state exists
(the DP parameters in :func:`~securefedrec.flower.update.check_dp`); the SecAgg parameters by
the protocol client's own rule, :meth:`~protocols.secagg.ClientPolicy.check`, with the node's
policy (:func:`node_policy`). The client list itself is the public Poisson sample of the
round, recomputed by the node (:func:`check_sampled`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from protocols import MIN_INPUTS
from protocols.secagg.client import ClientPolicy, PolicyRefusal
from securefedrec.config import DataConfig, ExperimentConfig, RunConfig
from securefedrec.errors import DecodeError, IntegrityError
from securefedrec.flower.messages import StageMessage, info_int, paillier_round_config

if TYPE_CHECKING:
    from protocols.secagg.messages import Setup
    from securefedrec.data import Dataset

__all__ = ["COMPLETE", "RoundParams", "check_sampled", "check_setup", "node_dataset", "node_policy",
           "own_threshold", "paillier_params", "secagg_params"]

COMPLETE = 2**31
"""A ``min_degree`` no round reaches: only the complete graph is accepted (SecAgg)."""


def own_threshold(config: ExperimentConfig, n: int) -> int:
    """The smallest release threshold this node accepts for a round of ``n`` clients.

    ``ceil(threshold_fraction * n)`` (at least 2) from the node's own run configuration, exactly
    the simulator's round config (:meth:`~securefedrec.server.simulation.Simulation.round_config`).
    """
    return node_policy(config).threshold_floor(n)


def node_policy(config: ExperimentConfig) -> ClientPolicy:
    """The :class:`~protocols.secagg.ClientPolicy` this node holds a SecAgg Setup to, from its own run.

    The release threshold is at least ``threshold_fraction`` of the round (the simulator's
    round config) and at least :data:`~protocols.MIN_INPUTS` (2): a released sum of one input
    is that input, so a node takes no part in a round of one client (the simulator skips such
    rounds, :meth:`~securefedrec.server.simulation.Simulation.run_round`). The degree: SecAgg,
    the complete graph; SecAgg+ with a fixed ``neighbors``, at least that; otherwise secure for
    the run's ``corruption_rate`` (Bell et al.'s bound) and at least the degree an honest
    server chooses for the dropout rate the simulator sizes the graph for
    (:func:`~securefedrec.server.simulation.dropout_by_unmask`). t', the graph seed and overflow
    are the policy's own rules (:meth:`~protocols.secagg.ClientPolicy.check`).
    """
    from protocols import aggregator_class

    fed = config.federation
    if not aggregator_class(fed.protocol).sparse_graph:
        return ClientPolicy(min_threshold=MIN_INPUTS, min_threshold_fraction=fed.threshold_fraction,
                            min_degree=COMPLETE, corruption_rate=fed.corruption_rate)
    if fed.neighbors is not None:
        return ClientPolicy(min_threshold=MIN_INPUTS, min_threshold_fraction=fed.threshold_fraction,
                            min_degree=fed.neighbors, corruption_rate=fed.corruption_rate)
    rate = 0.05
    if fed.dropout > 0:
        from securefedrec.server.simulation import dropout_by_unmask

        rate = dropout_by_unmask(fed.dropout)
    return ClientPolicy(min_threshold=MIN_INPUTS, min_threshold_fraction=fed.threshold_fraction,
                        dropout_rate=rate, corruption_rate=fed.corruption_rate)


@functools.lru_cache(maxsize=2)
def _dataset(data: DataConfig, seed: int) -> Dataset:
    from securefedrec.server.simulation import load_configured_dataset

    return load_configured_dataset(ExperimentConfig(data=data, run=RunConfig(seed=seed)))


def node_dataset(config: ExperimentConfig) -> Dataset:
    """The run's data set as this node loads it, once per process (ML-100K takes seconds to parse;
    the node needs it at every round's first message)."""
    return _dataset(config.data, config.run.seed)


def check_sampled(config: ExperimentConfig, sampled: Sequence[int], round_id: int) -> None:
    """Refuse a round whose client list is not the public Poisson sample of this node's run.

    The server samples from the run's public seed
    (:func:`~securefedrec.server.simulation.poisson_sample`), so a node recomputes the list from
    its own run configuration (seed, ``sample-rate``, the number of clients: ``silos``, or the
    data set's users). A server that picked the clients itself could shrink a round to a victim
    and clients it controls, or try client sets until the SecAgg+ graph gives its clients a
    victim's neighbourhood (the graph seed is derived from the list).

    Raises:
        IntegrityError: another list (the message names the round and the field ``sampled``).
    """
    from securefedrec.server.simulation import poisson_sample

    fed = config.federation
    silos = config.privacy.silos
    count = silos if silos is not None else node_dataset(config).num_users
    expected = poisson_sample(config.run.seed, round_id, count, fed.sample_rate)
    if list(sampled) != expected:
        extra = sorted(set(sampled) - set(expected))[:5]
        missing = sorted(set(expected) - set(sampled))[:5]
        raise IntegrityError(
            f"round {round_id}, field 'sampled': the server lists {len(sampled)} clients, this node's run "
            f"configuration draws {len(expected)} (seed {config.run.seed}, sample-rate {fed.sample_rate}, "
            f"{count} clients); not drawn: {extra}, left out: {missing}")


def check_setup(config: ExperimentConfig, setup: Setup, *, cid: int, round_id: int, sampled: Sequence[int],
                malicious: bool) -> None:
    """Bound a SecAgg ``Setup`` by this node's own configuration, before any client state exists.

    Checked here: the round and recipient, the client list against the round's sampled list and
    the threat model; then every security parameter by the same rule the protocol's client
    applies (:meth:`~protocols.secagg.ClientPolicy.check` of :func:`node_policy`): the release
    threshold, the neighbour degree, the Shamir threshold t' (a strict neighbourhood majority
    in the malicious model), the graph seed and, unless the round wraps (``mod:B``), a ring that
    holds the sum of ``n`` clients. With ``dp = "user"`` the range must hold the noise share as
    well (:func:`~securefedrec.flower.update.check_dp`).

    Raises:
        IntegrityError: a parameter weaker than this node's own (the message names client, round, field).
    """
    where = f"client {cid}, round {round_id}"
    n = len(setup.client_ids)

    def refuse(field: str, why: str) -> IntegrityError:
        return IntegrityError(f"{where}, field {field!r}: {why}")

    if setup.round_id != round_id or setup.client_id != cid:
        raise refuse("round_id", f"the setup is for client {setup.client_id} in round {setup.round_id}")
    if tuple(setup.client_ids) != tuple(sorted(sampled)):
        raise refuse("client_ids", f"the setup lists {n} clients, the round's message samples {len(sampled)}")
    if setup.malicious != malicious:
        raise refuse("malicious", f"the server runs malicious={setup.malicious}, this node's run "
                                  f"configuration malicious={malicious}")
    try:
        node_policy(config).check(setup, malicious)
    except PolicyRefusal as exc:
        raise refuse(exc.field, exc.why) from None


class RoundParams(NamedTuple):
    """What a node needs of the round's protocol settings before training."""

    clip_range: float
    threshold: int
    length: int
    wrap: bool = False


def secagg_params(config: ExperimentConfig, message: StageMessage, cid: int, *,
                  malicious: bool) -> RoundParams:
    """Client ``cid``'s SecAgg ``Setup`` in a TRAIN message, decoded and bounded (:func:`check_setup`)."""
    from protocols.secagg.messages import Setup

    where = f"client {cid}, round {message.round_id}"
    try:
        setup = Setup.decode(message.payload[cid])
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from None
    check_setup(config, setup, cid=cid, round_id=message.round_id, sampled=message.sampled,
                malicious=malicious)
    return RoundParams(setup.clip_range, setup.threshold, setup.length, setup.wrap)


def paillier_params(config: ExperimentConfig, message: StageMessage, cid: int) -> RoundParams:
    """The Paillier round configuration of a PAILLIER_TRAIN message, decoded and bounded.

    Raises:
        DecodeError: a field is missing or of the wrong type.
        IntegrityError: a threshold below :func:`own_threshold`.
    """
    where = f"client {cid}, round {message.round_id}"
    rc = paillier_round_config(message.info, message.round_id, where)
    n = len(message.sampled)
    floor = own_threshold(config, n)
    if rc.threshold < floor:
        raise IntegrityError(f"{where}, field 'round.threshold': the server asks for {rc.threshold} of "
                             f"{n} clients, this node's run configuration requires at least {floor}")
    return RoundParams(rc.clip_range, rc.threshold, info_int(message.info, "round.length", where))
