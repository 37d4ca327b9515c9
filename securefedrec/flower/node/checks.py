"""The bounds a node enforces on the server's round parameters, from its own run configuration.

A node never takes a security parameter on the server's word: the release threshold, the
SecAgg+ neighbour degree, the Shamir threshold t', the ring size (SecAgg :class:`Setup`)
and the Paillier round configuration are checked here, before any client state exists
(the DP parameters in :func:`~securefedrec.flower.update.check_dp`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from protocols.encoding import FixedPoint
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError, DecodeError, IntegrityError
from securefedrec.flower.messages import StageMessage, info_int, paillier_round_config

if TYPE_CHECKING:
    from protocols.secagg.messages import Setup

__all__ = ["RoundParams", "check_setup", "own_min_degree", "own_threshold", "paillier_params",
           "secagg_params"]


def own_threshold(config: ExperimentConfig, n: int) -> int:
    """The smallest release threshold this node accepts for a round of ``n`` clients.

    ``ceil(threshold_fraction * n)`` (at least 1) from the node's own run configuration, exactly
    the simulator's round config (:meth:`~securefedrec.server.simulation.Simulation.round_config`).
    """
    return max(1, math.ceil(config.federation.threshold_fraction * n))


def own_min_degree(config: ExperimentConfig, n: int, threshold: int, malicious: bool) -> int:
    """The smallest neighbour degree this node accepts for a SecAgg(+) round of ``n`` clients.

    SecAgg: the complete graph (``n - 1``). SecAgg+: the run's fixed ``neighbors``, else
    :func:`~protocols.secagg.graph.choose_degree` for the dropout rate the simulator sizes
    the graph for and the default 5 % corruption rate, for the round's threshold and threat
    model -- the degree an honest server computes, capped at the complete graph.
    """
    from protocols import aggregator_class
    from protocols.secagg.graph import choose_degree

    if not aggregator_class(config.federation.protocol).sparse_graph:
        return n - 1
    if config.federation.neighbors is not None:
        return min(config.federation.neighbors, n - 1)
    rate = 0.05
    if config.federation.dropout > 0:
        from securefedrec.server.simulation import dropout_by_unmask

        rate = dropout_by_unmask(config.federation.dropout)
    return min(choose_degree(n, rate, 0.05, threshold=threshold, malicious=malicious), n - 1)


def check_setup(config: ExperimentConfig, setup: Setup, *, cid: int, round_id: int, sampled: Sequence[int],
                malicious: bool) -> None:
    """Bound a SecAgg ``Setup`` by this node's own configuration, before any client state exists.

    Checked: the round and recipient, the client list against the round's sampled list, the
    threat model, the release threshold (:func:`own_threshold`), the neighbour degree
    (:func:`own_min_degree`), the Shamir threshold t' (at least
    :func:`~protocols.secagg.graph.share_threshold` of the round -- a strict neighbourhood
    majority in the malicious model) and, unless the round wraps (``mod:B``), a ring that
    holds the sum of ``n`` clients (no overflow). With ``dp = "user"`` the range must hold the
    noise share as well (:func:`~securefedrec.flower.update.check_dp`).

    Raises:
        IntegrityError: a parameter weaker than this node's own (the message names client, round, field).
    """
    from protocols.secagg.graph import share_threshold

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
    need = own_threshold(config, n)
    if setup.threshold < need:
        raise refuse("threshold", f"the server asks for {setup.threshold} of {n} clients, this node requires "
                                  f"at least {need}")
    degree = own_min_degree(config, n, setup.threshold, malicious)
    if setup.degree < degree:
        raise refuse("degree", f"the server asks for {setup.degree} neighbours of {n} clients, this node "
                               f"requires at least {degree}")
    t_prime = share_threshold(setup.threshold, n, setup.degree, malicious)
    if setup.share_threshold < t_prime:
        raise refuse("share_threshold", f"the server asks for t' = {setup.share_threshold} of "
                                        f"{min(setup.degree, n - 1) + 1} share holders, this node requires "
                                        f"at least {t_prime}")
    if not setup.wrap:  # the encoding every protocol uses refuses a ring the sum could overflow
        try:
            FixedPoint.for_sum(n, setup.clip_range, setup.ring_bits, setup.value_bits)
        except ConfigError as exc:
            raise refuse("ring_bits", str(exc)) from None


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
    if rc.threshold < own_threshold(config, n):
        raise IntegrityError(f"{where}, field 'round.threshold': the server asks for {rc.threshold} of "
                             f"{n} clients, this node's run configuration requires at least "
                             f"{own_threshold(config, n)}")
    return RoundParams(rc.clip_range, rc.threshold, info_int(message.info, "round.length", where))
