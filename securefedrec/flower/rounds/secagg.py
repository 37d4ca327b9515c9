"""The server's SecAgg / SecAgg+ round over Flower: one Flower message per protocol stage."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from protocols.secagg import SecAggServer
from securefedrec.flower.messages import FlowerStage
from securefedrec.flower.rounds.exchange import Exchanges, Info, RoundOutcome
from securefedrec.flower.transport import NodeLink

__all__ = ["key_stages", "secagg_round"]


def secagg_round(
    link: NodeLink,
    server: SecAggServer,
    node_of: Mapping[int, int],
    view: np.ndarray,
    *,
    malicious: bool,
    train_timeout: float,
    stage_timeout: float,
    info: Info | None = None,
    client_info: Mapping[int, Info] | None = None,
    trace: dict[str, set[int]] | None = None,
) -> RoundOutcome:
    """Drive ``server`` through a round: TRAIN (+advertise), share keys, masked input, [consistency], unmask.

    Args:
        link: the transport.
        server: a fresh server for the round's sampled clients.
        node_of: client id -> the node hosting it.
        view: the global vector the clients train from.
        malicious: whether the consistency stage runs.
        train_timeout, stage_timeout: seconds to wait for the first / the other stages.
        info, client_info: public fields of the TRAIN message (the DP parameters; per client,
            the error-feedback outcome), see :mod:`securefedrec.flower.update`.
        trace: filled with stage name -> clients that answered (also when the round aborts).

    Raises:
        AggregationAborted: fewer than ``threshold`` clients survived a stage.
    """
    x = Exchanges(link, node_of, server.config.round_id, server.client_ids, trace)
    msgs = x.on_server(server.setup)
    msgs = x(FlowerStage.TRAIN, msgs, train_timeout, view=view, info=info, client_info=client_info)
    return key_stages(x, server, x.on_server(server.receive_advertisements, msgs), malicious=malicious,
                      stage_timeout=stage_timeout)


def key_stages(x: Exchanges, server: SecAggServer, broadcast: Mapping[int, bytes], *, malicious: bool,
               stage_timeout: float) -> RoundOutcome:
    """SecAgg's stages after the advertisements: share keys, masked input, [consistency], unmask.

    Args:
        x: the round's exchanges.
        server: the round's server, its advertisements received.
        broadcast: what :meth:`~protocols.secagg.SecAggServer.receive_advertisements` returned.
        malicious, stage_timeout: as for :func:`secagg_round`.

    Raises:
        AggregationAborted: fewer than ``threshold`` clients survived a stage.
    """
    msgs = x(FlowerStage.SHARE_KEYS, broadcast, stage_timeout)
    msgs = x.on_server(server.receive_shares, msgs)
    msgs = x(FlowerStage.MASKED_INPUT, msgs, stage_timeout)
    msgs = x.on_server(server.receive_masked_inputs, msgs)
    if malicious:
        msgs = x(FlowerStage.CONSISTENCY, msgs, stage_timeout)
        msgs = x.on_server(server.receive_signatures, msgs)
    msgs = x(FlowerStage.UNMASK, msgs, stage_timeout)
    result = x.on_server(server.receive_unmask, msgs)
    total = x.on_server(result.decode)
    return RoundOutcome(total, frozenset(result.survivors), float(result.encoding.step), x.up, x.down,
                        x.seconds, x.answered, result)

