"""The server's submodel SecAgg round over Flower (:mod:`protocols.submodel`): rows in, rows summed."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from protocols.submodel import SubmodelServer
from securefedrec.flower.messages import FlowerStage
from securefedrec.flower.rounds.exchange import Exchanges, Info, RoundOutcome
from securefedrec.flower.rounds.secagg import key_stages
from securefedrec.flower.transport import NodeLink

__all__ = ["rows_reported", "submodel_info", "submodel_round"]


def submodel_info(item_epsilon: float, min_holders: int) -> dict[str, int | float | str]:
    """The SUBMODEL_TRAIN message's public fields: the policy the server runs the round for.

    The nodes never use them: each client draws its row set with its OWN ``item_epsilon`` and
    holds the sums to its own holder floor; a node refuses a round announced with other values
    (:func:`~securefedrec.flower.node.submodel.check_submodel_info`), so the report's
    ``item_epsilon`` is the one the clients applied.
    """
    return {"submodel.item_epsilon": float(item_epsilon), "submodel.min_holders": int(min_holders)}


def rows_reported(server: SubmodelServer) -> dict[str, int | float]:
    """What the server learnt of the sets, as the simulator reports them: the union's rows, the mean size."""
    sizes = [r.size for r in server.table.values()]
    return {"rows_union": server.union_rows(), "rows_reported": float(np.mean(sizes)) if sizes else 0.0}


def submodel_round(
    link: NodeLink,
    server: SubmodelServer,
    node_of: Mapping[int, int],
    view: np.ndarray,
    *,
    malicious: bool,
    train_timeout: float,
    stage_timeout: float,
    info: Info | None = None,
    trace: dict[str, set[int]] | None = None,
) -> RoundOutcome:
    """Drive ``server`` through a submodel round: train + row request, setup + advertise, then SecAgg's.

    SUBMODEL_TRAIN carries the global vector (as the simulator, the clients train on the whole
    broadcast, :mod:`securefedrec.server.submodel`) and answers each client's randomized-response
    row set; SUBMODEL_SETUP carries each requester's SecAgg setup with the table of every set and
    answers the key advertisement; the rest is :func:`~securefedrec.flower.rounds.secagg.key_stages`.
    The sum (length L) is exact over the union of the reported rows and the shared coordinates.

    Args:
        server: a fresh :class:`~protocols.submodel.SubmodelServer` for the round's sampled clients
            (:meth:`~protocols.submodel.SubmodelAggregator.server`).
        info: public fields of the SUBMODEL_TRAIN message (:func:`submodel_info`).
        The other arguments as in :func:`~securefedrec.flower.rounds.secagg.secagg_round`.

    Raises:
        AggregationAborted: fewer than ``threshold`` clients at a stage, or a row left with fewer
            than ``min_holders`` surviving holders.
    """
    x = Exchanges(link, node_of, server.config.round_id, server.client_ids, trace)
    requests = x(FlowerStage.SUBMODEL_TRAIN, dict.fromkeys(server.client_ids, b""), train_timeout, view=view,
                 info=info)
    setups = x.on_server(server.receive_requests, requests)
    adverts = x(FlowerStage.SUBMODEL_SETUP, setups, stage_timeout)
    return key_stages(x, server, x.on_server(server.receive_advertisements, adverts), malicious=malicious,
                      stage_timeout=stage_timeout)
