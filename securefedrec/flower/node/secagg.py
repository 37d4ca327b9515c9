"""A SecAgg / SecAgg+ client on a node: one stage per message, the client replayed from the transcript.

Instead of serialising the :class:`~protocols.secagg.SecAggClient` internals, the node
keeps the client's vector, its round secret and the protocol messages it has received so
far (:mod:`~securefedrec.flower.node.state`), and *replays* them into a new
``SecAggClient`` before handling the next stage. The client is deterministic given
these, so the replayed client is the same state machine; its replies to the replayed
stages are discarded. A stage is accepted only once, in order (the stored transcript is
the state), so a server cannot obtain two answers to the unmask stage. Every replayed
client holds the server's Setup to the node's own policy
(:func:`~securefedrec.flower.node.checks.node_policy`), the same rule the node applied to
the TRAIN message before training, so the protocol client never falls back to a default floor.
A submodel round (the round record says ``submodel``) replays a
:class:`~protocols.submodel.SubmodelClient` the same way, from SUBMODEL_TRAIN on
(:mod:`~securefedrec.flower.node.submodel`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from protocols.secagg import ClientPolicy, SecAggClient
from protocols.submodel import SubmodelPolicy
from securefedrec.errors import StageError
from securefedrec.flower.messages import FlowerStage, StageMessage
from securefedrec.flower.node.identity import Identity, signing_key
from securefedrec.flower.node.state import (
    KeyStream,
    client_vector,
    round_record,
    rounding_rng,
    secret_rounding_rng,
)
from securefedrec.flower.node.submodel import submodel_client
from securefedrec.flower.settings import DeploymentSettings

__all__ = ["SecAggSession"]


def _no_submodel() -> SubmodelPolicy:
    raise StageError("this node was given no submodel policy: it runs no submodel round")


_ORDER = {
    False: (FlowerStage.TRAIN, FlowerStage.SHARE_KEYS, FlowerStage.MASKED_INPUT, FlowerStage.UNMASK),
    True: (FlowerStage.TRAIN, FlowerStage.SHARE_KEYS, FlowerStage.MASKED_INPUT, FlowerStage.CONSISTENCY,
           FlowerStage.UNMASK),
}
_SUBMODEL_ORDER = {  # a submodel round: the row request first, then SecAgg's stages
    malicious: (FlowerStage.SUBMODEL_TRAIN, FlowerStage.SUBMODEL_SETUP, *order[1:])
    for malicious, order in _ORDER.items()
}
_METHOD = {
    FlowerStage.TRAIN: "advertise",
    FlowerStage.SUBMODEL_TRAIN: "request",
    FlowerStage.SUBMODEL_SETUP: "advertise",
    FlowerStage.SHARE_KEYS: "share_keys",
    FlowerStage.MASKED_INPUT: "masked_input",
    FlowerStage.CONSISTENCY: "consistency",
    FlowerStage.UNMASK: "unmask",
}


class SecAggSession:
    """Answers one SecAgg stage for one hosted client, from the round's state on the node.

    Args:
        state: the node's ``Context.state`` (the round record is updated in place).
        settings: the deployment settings (``malicious``, ``reproducible_rounding``).
        identity: the node's signing keys and the PKI (malicious-server model).
        seed: the run's seed (for ``reproducible_rounding``).
        policy: the node's own floor for the server's Setup (called when a client is built, so a
            node whose run configuration is built lazily reads it only then).
        submodel: the node's own submodel policy (a submodel round's clients,
            :mod:`~securefedrec.flower.node.submodel`); ``None``: this node runs no submodel round.
    """

    def __init__(self, state: RecordDict, settings: DeploymentSettings, identity: Identity | None,
                 seed: int, policy: Callable[[], ClientPolicy],
                 submodel: Callable[[], SubmodelPolicy] | None = None) -> None:
        self.state = state
        self.settings = settings
        self.identity = identity
        self.seed = seed
        self.policy = policy
        self.submodel = submodel if submodel is not None else _no_submodel

    def step(self, cid: int, message: StageMessage) -> bytes:
        """Client ``cid``'s reply to ``message``; the message joins its transcript.

        Raises:
            StageError: no state for the round, a Paillier round, or a stage out of order.
        """
        record = round_record(self.state, cid, message)
        where = f"client {cid}, round {message.round_id}, {message.stage.name}"
        if f"stages.{cid}" in record:
            raise StageError(f"{where}: this round runs the Paillier protocol on this node")
        stored = record[f"log.{cid}"]
        log: list[bytes] = [m for m in stored if isinstance(m, bytes)] if isinstance(stored, list) else []
        submodel = record.get("submodel") is True
        order = (_SUBMODEL_ORDER if submodel else _ORDER)[self.settings.malicious]
        if len(log) >= len(order) or order[len(log)] is not message.stage:
            done = order[len(log) - 1].name if log else "nothing"
            raise StageError(f"{where}: out of order (last stage answered: {done})")
        identity = self.identity if self.settings.malicious else None
        key = signing_key(identity, cid, where) if identity is not None else None
        options: dict[str, Any] = {
            "malicious": self.settings.malicious, "round_id": message.round_id, "identity_key": key,
            "identity_keys": identity.pki if identity is not None else None,
            "randbytes": KeyStream(record[f"secret.{cid}"]),  # type: ignore[arg-type]
            "rng": self._rounding_rng(record, cid, message.round_id), "policy": self.policy(),
        }
        client = (submodel_client(self.state, cid, self.submodel(), where, **options) if submodel
                  else SecAggClient(cid, client_vector(self.state, cid), **options))
        # replay the stages already answered (same secrets, same messages -> same state)
        for stage, received in zip(order, log, strict=False):
            getattr(client, _METHOD[stage])(received)
        reply: bytes = getattr(client, _METHOD[message.stage])(message.payload[cid])
        record[f"log.{cid}"] = [*log, message.payload[cid]]
        return reply

    def _rounding_rng(self, record: ConfigRecord, cid: int, round_id: int) -> np.random.Generator:
        if self.settings.reproducible_rounding:
            return rounding_rng(self.seed, round_id, int(record[f"rank.{cid}"]))  # type: ignore[arg-type]
        return secret_rounding_rng(record, cid)
