"""A packed-Paillier client on a node: one stage per message, the client replayed from the transcript.

As for SecAgg (:mod:`~securefedrec.flower.node.secagg`), the node keeps the client's round
secret and the messages it has received, with the stages it answered, and replays them
into a new :class:`~protocols.paillier.PaillierClient` before each stage. The Paillier
key pair this node generates or receives as a key holder is kept across rounds
(:data:`~securefedrec.flower.node.state.PAILLIER_KEY`), as the in-process aggregator
keeps it.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, RecordDict

from securefedrec.errors import ConfigError, DecodeError, IntegrityError, StageError
from securefedrec.flower.messages import (
    PAILLIER_ROUND_KEYS,
    FlowerStage,
    StageMessage,
    info_int,
    paillier_round_config,
)
from securefedrec.flower.node.identity import Identity, signing_key
from securefedrec.flower.node.state import (
    DELTAS,
    PAILLIER_KEY,
    KeyStream,
    client_vector,
    paillier_rounding_rng,
    round_record,
    secret_rounding_rng,
)
from securefedrec.flower.settings import DeploymentSettings, NodeSettings

__all__ = ["PAILLIER_STAGES", "PaillierSession", "require_identity"]

_PAILLIER_NEXT: dict[FlowerStage | None, frozenset[FlowerStage]] = {
    None: frozenset({FlowerStage.PAILLIER_TRAIN}),
    FlowerStage.PAILLIER_TRAIN: frozenset({FlowerStage.PAILLIER_ADVERTS}),
    FlowerStage.PAILLIER_ADVERTS: frozenset({FlowerStage.PAILLIER_HOLD, FlowerStage.PAILLIER_KEY}),
    FlowerStage.PAILLIER_HOLD: frozenset({FlowerStage.PAILLIER_ENCRYPT}),
    FlowerStage.PAILLIER_KEY: frozenset({FlowerStage.PAILLIER_ENCRYPT}),
    FlowerStage.PAILLIER_ENCRYPT: frozenset({FlowerStage.PAILLIER_CONSISTENCY, FlowerStage.PAILLIER_DECRYPT}),
    FlowerStage.PAILLIER_CONSISTENCY: frozenset({FlowerStage.PAILLIER_DECRYPT}),
    FlowerStage.PAILLIER_DECRYPT: frozenset(),
}
"""Paillier stage -> the stages a client may answer next (each once: the transcript is the state, so a
client signs one survivor set and decrypts once per round). CONSISTENCY exists in the malicious-server
model only; there the client itself refuses DECRYPT without it, and an honest-but-curious client
refuses CONSISTENCY."""
PAILLIER_STAGES = frozenset(s for s in _PAILLIER_NEXT if s is not None)


def require_identity(identity: Identity | None, cid: int, where: str) -> Identity:
    """The node's identity, which a Paillier round needs, holding a key for client ``cid``.

    Raises:
        ConfigError: no ``identity-key`` and ``pki``, or no key for ``cid``.
    """
    if identity is None:
        raise ConfigError(f"{where}: protocol paillier needs this node's identity-key and pki "
                          "(node config): the private key travels sealed to the clients' signed keys")
    signing_key(identity, cid, where)
    return identity


class PaillierSession:
    """Answers one Paillier stage for one hosted client, from the round's state on the node.

    Args:
        state: the node's ``Context.state`` (the round record and the key pair are updated in place).
        settings: the deployment settings (``malicious``, ``reproducible_rounding``).
        node: this node's own settings (``paillier_key_bits``: the key it makes, the smallest it takes).
        identity: the node's signing keys and the PKI.
        seed: the run's seed (for ``reproducible_rounding``).
    """

    def __init__(self, state: RecordDict, settings: DeploymentSettings, node: NodeSettings,
                 identity: Identity | None, seed: int) -> None:
        self.state = state
        self.settings = settings
        self.node = node
        self.identity = identity
        self.seed = seed

    @staticmethod
    def round_fields(message: StageMessage, clients: list[int]) -> dict[str, Any]:
        """The Paillier entries of the round record that a PAILLIER_TRAIN message starts."""
        record: dict[str, Any] = {f"paillier.{k}": message.info[f"round.{k}"] for k in PAILLIER_ROUND_KEYS}
        record["paillier.n"] = len(message.sampled)
        record.update({f"stages.{c}": [] for c in clients})
        return record

    def keypair(self, *, create: bool) -> Any:
        """The node's stored Paillier key pair if it has ``paillier_key_bits`` or more, else a new one.

        Raises:
            StageError: none stored and ``create`` is false (a replay needs the key it shared).
        """
        from protocols.paillier import PrivateKey, PublicKey
        from protocols.paillier.keys import generate_keypair

        stored = self.state.config_records.get(PAILLIER_KEY)
        if stored is not None:
            p = int.from_bytes(stored["p"], "big")  # type: ignore[arg-type]
            q = int.from_bytes(stored["q"], "big")  # type: ignore[arg-type]
            key = PrivateKey(PublicKey(p * q), p, q)
            if key.public.bits >= self.node.paillier_key_bits:
                return key
        if not create:
            raise StageError("this node holds no Paillier key to replay the key holder's stage")
        key = generate_keypair(self.node.paillier_key_bits)  # kept across rounds, as the aggregator does
        self.store_keypair(key)
        return key

    def store_keypair(self, key: Any) -> None:
        """Keep ``key`` in the node's state (a later round's key holder on this node reuses it)."""
        width = (int(key.public.bits) + 7) // 8
        self.state.config_records[PAILLIER_KEY] = ConfigRecord({
            "p": int(key.p).to_bytes(width, "big"), "q": int(key.q).to_bytes(width, "big")})

    def step(self, cid: int, message: StageMessage) -> bytes:
        """Client ``cid``'s reply to ``message``; the stage joins its transcript.

        Raises:
            StageError: no state for the round, a SecAgg round, or a stage out of order.
            DecodeError, IntegrityError: from the client (the message names client, round, stage).
        """
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from protocols.paillier import PaillierClient

        r, stage = message.round_id, message.stage
        where = f"client {cid}, round {r}, {stage.name}"
        record = round_record(self.state, cid, message)
        if f"stages.{cid}" not in record:
            raise StageError(f"{where}: this round runs SecAgg on this node")
        done = [FlowerStage[str(name)] for name in record[f"stages.{cid}"]]  # type: ignore[union-attr]
        log = [m for m in record[f"log.{cid}"] if isinstance(m, bytes)]  # type: ignore[union-attr]
        last = done[-1] if done else None
        if stage not in _PAILLIER_NEXT[last]:
            previous = last.name if last is not None else "nothing"
            raise StageError(f"{where}: out of order (last stage answered: {previous})")
        identity = require_identity(self.identity, cid, where)
        directory = {c: Ed25519PublicKey.from_public_bytes(k) for c, k in identity.pki.items()}
        client = PaillierClient(cid, identity.keys[cid], directory, r,
                                randbytes=KeyStream(record[f"secret.{cid}"]),  # type: ignore[arg-type]
                                malicious=self.settings.malicious,
                                n_clients=int(record["paillier.n"]),  # type: ignore[arg-type]
                                min_key_bits=self.node.paillier_key_bits)  # the node's own floor
        try:
            # replay the stages already answered (same ephemeral key, same messages -> same state)
            for done_stage, received in zip(done, log, strict=True):
                if done_stage is FlowerStage.PAILLIER_TRAIN:
                    client.advertise()
                elif done_stage is FlowerStage.PAILLIER_ADVERTS:
                    client.receive_adverts(received)
                elif done_stage is FlowerStage.PAILLIER_HOLD:
                    client.share_key(self.keypair(create=False))
                elif done_stage is FlowerStage.PAILLIER_KEY:
                    client.receive_key(received)
                elif done_stage is FlowerStage.PAILLIER_CONSISTENCY:  # the same set, signed again
                    client.consistency(received, int(record["paillier.threshold"]))  # type: ignore[arg-type]
                # ENCRYPT changes nothing that CONSISTENCY or DECRYPT needs; DECRYPT is the last stage
            reply, answered = self._answer(client, cid, message, record, where)
        except (StageError, DecodeError, IntegrityError) as exc:
            raise type(exc)(f"{where}: {exc}") from None
        record[f"stages.{cid}"] = [*(s.name for s in done), *(s.name for s, _ in answered)]
        record[f"log.{cid}"] = [*log, *(m for _, m in answered)]
        return reply

    def _answer(
        self, client: Any, cid: int, message: StageMessage, record: ConfigRecord, where: str
    ) -> tuple[bytes, list[tuple[FlowerStage, bytes]]]:
        """The reply to ``message`` and the (stage, message) entries to append to the transcript."""
        from protocols.paillier import RandomnessPool
        from protocols.paillier.aggregator import round_layout

        stage, payload = message.stage, message.payload[cid]
        if stage is FlowerStage.PAILLIER_TRAIN:
            return client.advertise(), [(stage, b"")]
        if stage is FlowerStage.PAILLIER_ADVERTS:
            client.receive_adverts(payload)
            if info_int(message.info, "holder", where) != cid:
                return b"", [(stage, payload)]
            bundle = client.share_key(self.keypair(create=True))
            return bundle, [(stage, payload), (FlowerStage.PAILLIER_HOLD, b"")]
        if stage is FlowerStage.PAILLIER_HOLD:
            return client.share_key(self.keypair(create=True)), [(stage, b"")]
        if stage is FlowerStage.PAILLIER_KEY:
            ack = client.receive_key(payload)
            bits = int(client.keypair.public.bits)
            if bits < self.node.paillier_key_bits:
                raise IntegrityError(f"the key holder's Paillier key has {bits} bits, below this "
                                     f"node's paillier-key-bits {self.node.paillier_key_bits}")
            self.store_keypair(client.keypair)  # a later round's key holder on this node reuses it
            return ack, [(stage, payload)]
        rc = paillier_round_config({f"round.{k}": record[f"paillier.{k}"] for k in PAILLIER_ROUND_KEYS},
                                   message.round_id, where)
        if stage is FlowerStage.PAILLIER_ENCRYPT:
            vector = client_vector(self.state, cid)
            public = client.keypair.public
            fp, layout = round_layout(int(record["paillier.n"]), rc, public)  # type: ignore[arg-type]
            if self.settings.reproducible_rounding:
                rng = paillier_rounding_rng(self.seed, message.round_id,
                                            info_int(message.info, f"rank.{cid}", where) * vector.shape[0])
            else:
                rng = secret_rounding_rng(record, cid)
            pool = RandomnessPool(public, private=client.keypair)  # filled online by masked_input
            ciphertexts: bytes = client.masked_input(vector, fp, layout, rng, pool)
            del self.state.array_records[DELTAS][str(cid)]  # the plaintext update is not needed any more
            return ciphertexts, [(stage, b"")]
        if stage is FlowerStage.PAILLIER_CONSISTENCY:
            return client.consistency(payload, rc.threshold), [(stage, payload)]
        return client.decrypt(payload, rc.threshold), [(stage, payload)]
