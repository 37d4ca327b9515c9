"""A submodel SecAgg client on a node (:mod:`protocols.submodel`): its policy, the row layout, its setup.

A submodel round runs in :class:`~securefedrec.flower.node.secagg.SecAggSession` like a SecAgg
round (the client replayed from its secret and transcript before each stage), with a
:class:`~protocols.submodel.SubmodelClient` and one stage more:

* SUBMODEL_TRAIN: train, then answer the row request, the randomized-response set drawn
  with this node's OWN ``item_epsilon`` (:func:`submodel_policy`) from the client's secret
  keystream; a round announced with another epsilon or holder floor is refused
  (:func:`check_submodel_info`), so what the server reports is what the clients applied;
* SUBMODEL_SETUP: the SecAgg setup inside it is bounded by the node's policy
  (:func:`check_submodel_setup`, the rule of :func:`~securefedrec.flower.node.checks.check_setup`)
  before the client advertises.

The public row layout of the model (:func:`~securefedrec.server.submodel.row_layout`) is built
from the node's own run configuration at the round's first message and kept with the round
(record :data:`LAYOUT`), so the later stages need neither the data set nor the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from protocols.submodel import RowLayout, SubmodelClient, SubmodelPolicy, SubmodelSetup
from securefedrec.config import ExperimentConfig
from securefedrec.errors import DecodeError, IntegrityError, StageError
from securefedrec.flower.messages import StageMessage, info_float, info_int
from securefedrec.flower.node.checks import check_setup, node_dataset
from securefedrec.flower.node.state import client_vector

__all__ = ["LAYOUT", "check_submodel_info", "check_submodel_setup", "keep_layout", "round_layout",
           "submodel_client", "submodel_policy"]

LAYOUT = "sfr.layout"
"""Node-state record of the round's row layout (``length``, ``rows``); deleted when the round ends."""


def submodel_policy(config: ExperimentConfig) -> SubmodelPolicy:
    """This node's :class:`~protocols.submodel.SubmodelPolicy`, from its own run configuration.

    ``item_epsilon`` is the run's; the holder floor is the protocol's default (2), the one the
    simulator's :class:`~securefedrec.server.submodel.SubmodelRounds` holds its clients to.
    """
    return SubmodelPolicy(item_epsilon=config.federation.item_epsilon)


def check_submodel_info(config: ExperimentConfig, info: Mapping[str, Any], where: str) -> None:
    """Refuse a round the server runs for another submodel policy than this node's.

    Raises:
        DecodeError: a field is missing or of the wrong type.
        IntegrityError: ``submodel.item_epsilon`` or ``submodel.min_holders`` differs from this node's.
    """
    own = submodel_policy(config)
    epsilon = info_float(info, "submodel.item_epsilon", where)
    if epsilon != own.item_epsilon:
        raise IntegrityError(f"{where}, field 'submodel.item_epsilon': the server runs the round for item "
                             f"epsilon {epsilon!r}, this node's run configuration has {own.item_epsilon!r}")
    holders = info_int(info, "submodel.min_holders", where)
    if holders != own.min_holders:
        raise IntegrityError(f"{where}, field 'submodel.min_holders': the server expects a holder floor of "
                             f"{holders}, this node holds every sum to {own.min_holders}")


def check_submodel_setup(config: ExperimentConfig, message: StageMessage, cid: int, *,
                         malicious: bool) -> None:
    """Bound the SecAgg setup in client ``cid``'s SUBMODEL_SETUP message by this node's configuration.

    The rule of :func:`~securefedrec.flower.node.checks.check_setup` (round, recipient, the
    sampled list, the threat model, every security parameter by the node's policy); a submodel
    round never wraps (no compression).

    Raises:
        DecodeError: a malformed message. IntegrityError: a parameter weaker than this node's own.
    """
    from protocols.secagg.messages import Setup

    where = f"client {cid}, round {message.round_id}"
    try:
        setup = Setup.decode(SubmodelSetup.split(message.payload[cid])[0])
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from None
    check_setup(config, setup, cid=cid, round_id=message.round_id, sampled=message.sampled,
                malicious=malicious)
    if setup.wrap:
        raise IntegrityError(f"{where}, field 'wrap': the server asks for a wrapping sum in a submodel round")


def round_layout(config: ExperimentConfig) -> RowLayout:
    """The model's public row layout, built from this node's run configuration and data set."""
    from securefedrec.models.registry import build_model
    from securefedrec.server.submodel import row_layout

    dataset = node_dataset(config)
    return row_layout(build_model(config, dataset.num_items, dataset=dataset))


def keep_layout(state: RecordDict, layout: RowLayout) -> None:
    """Keep the round's row layout in the node's state (:data:`LAYOUT`)."""
    state.array_records[LAYOUT] = ArrayRecord(array_dict={
        "length": Array.from_numpy_ndarray(np.array([layout.length], dtype=np.int64)),
        "rows": Array.from_numpy_ndarray(np.ascontiguousarray(layout.rows, dtype=np.int64)),
    })


def submodel_client(state: RecordDict, cid: int, submodel: SubmodelPolicy, where: str,
                    **options: Any) -> SubmodelClient:
    """Client ``cid``'s :class:`~protocols.submodel.SubmodelClient` from its vector and the kept layout.

    The rows it touched are the non-zero rows of its delta
    (:func:`~securefedrec.server.submodel.submodel_inputs`, as in the simulator); ``options`` are
    :class:`~protocols.secagg.SecAggClient`'s keywords.

    Raises:
        StageError: no layout kept for the round.
    """
    from securefedrec.server.submodel import submodel_inputs

    record = state.array_records.get(LAYOUT)
    if record is None or "length" not in record or "rows" not in record:
        raise StageError(f"{where}: this node keeps no row layout for the round")
    layout = RowLayout(int(record["length"].numpy()[0]), record["rows"].numpy())
    x = submodel_inputs(layout, client_vector(state, cid)[None, :], [cid])[cid]
    return SubmodelClient(cid, layout, x.rows, x.values, x.shared, submodel=submodel, **options)
