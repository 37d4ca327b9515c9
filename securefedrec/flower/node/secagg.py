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
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from protocols.secagg import ClientPolicy, SecAggClient
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
from securefedrec.flower.settings import DeploymentSettings

__all__ = ["SecAggSession"]

_ORDER = {
    False: (FlowerStage.TRAIN, FlowerStage.SHARE_KEYS, FlowerStage.MASKED_INPUT, FlowerStage.UNMASK),
    True: (FlowerStage.TRAIN, FlowerStage.SHARE_KEYS, FlowerStage.MASKED_INPUT, FlowerStage.CONSISTENCY,
           FlowerStage.UNMASK),
}
_METHOD = {
    FlowerStage.TRAIN: "advertise",
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
    """

    def __init__(self, state: RecordDict, settings: DeploymentSettings, identity: Identity | None,
                 seed: int, policy: Callable[[], ClientPolicy]) -> None:
        self.state = state
        self.settings = settings
        self.identity = identity
        self.seed = seed
        self.policy = policy

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
        order = _ORDER[self.settings.malicious]
        if len(log) >= len(order) or order[len(log)] is not message.stage:
            done = order[len(log) - 1].name if log else "nothing"
            raise StageError(f"{where}: out of order (last stage answered: {done})")
        vector = client_vector(self.state, cid)
        identity = self.identity if self.settings.malicious else None
        key = signing_key(identity, cid, where) if identity is not None else None
        client = SecAggClient(
            cid, vector, malicious=self.settings.malicious, round_id=message.round_id,
            identity_key=key,
            identity_keys=identity.pki if identity is not None else None,
            randbytes=KeyStream(record[f"secret.{cid}"]),  # type: ignore[arg-type]
            rng=self._rounding_rng(record, cid, message.round_id),
            policy=self.policy(),
        )
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
