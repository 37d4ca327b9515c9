"""What a node keeps between the messages of a round, and the client's randomness derived from it.

A Flower ClientApp process lives for one message only, so nothing survives
between stages except the node's ``Context.state`` (a RecordDict kept on the
SuperNode, never sent to the SuperLink). Per round, record :data:`STATE` holds for
each hosted client a fresh 256-bit secret (``secret.<c>``, seeding :class:`KeyStream`,
the client's only source of secret randomness), a rounding seed (``rounding.<c>``), its
rank among the sampled clients and the transcript of protocol messages it has received
(``log.<c>``; Paillier also ``stages.<c>``); record :data:`DELTAS` holds the vectors
the clients contribute. Both are deleted when the round ends. Record :data:`LOCAL`
holds the model's local part of the users this node has trained (user embeddings,
personal heads) and is kept across rounds: it never leaves the node.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from securefedrec import streams
from securefedrec.errors import ConfigError, StageError
from securefedrec.flower.messages import StageMessage

__all__ = ["DELTAS", "HISTORY", "LOCAL", "PAILLIER_KEY", "REFUSED", "STATE", "KeyStream", "client_vector",
           "keep_local", "kept_local", "paillier_rounding_rng", "round_record", "rounding_rng",
           "secret_rounding_rng"]

STATE, DELTAS, HISTORY, PAILLIER_KEY = "sfr.node", "sfr.deltas", "sfr.history", "sfr.paillier"
LOCAL = "sfr.local"
"""Node-state record of the model's local part: ``users`` (their ids) and one array per local tensor."""
REFUSED = "sfr.refused"
"""Node-state record of the last round this node refused (``round``, ``reason``); it answers no more of it."""


class KeyStream:
    """A ``randbytes`` callable: successive bytes of the ChaCha20 keystream under a 256-bit key.

    Notes:
        This is the client's only source of secrets in a round (key pairs, self-mask
        seed, Shamir polynomials), so replaying it reproduces the round's client.
        The key comes from ``os.urandom`` and never leaves the node; ChaCha20 with a
        256-bit key is a standard CSPRNG (RFC 8439), and one key produces at most a
        few kilobytes here.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigError(f"KeyStream key must be 32 bytes, got {len(key)}")
        self._enc = Cipher(algorithms.ChaCha20(bytes(key), bytes(16)), mode=None).encryptor()

    def __call__(self, n: int) -> bytes:
        """The next ``n`` keystream bytes."""
        return self._enc.update(bytes(n))


def rounding_rng(seed: int, round_id: int, rank: int) -> np.random.Generator:
    """The stochastic-rounding stream the simulator gives the ``rank``-th sampled client of a round.

    Equals ``default_rng([seed, round_id, streams.ROUNDING]).spawn(n)[rank]`` (what
    :class:`~securefedrec.server.simulation.Simulation` hands its aggregator).
    """
    sequence = np.random.SeedSequence([seed, round_id, streams.ROUNDING], spawn_key=(rank,))
    return np.random.default_rng(sequence)


def paillier_rounding_rng(seed: int, round_id: int, offset: int) -> np.random.Generator:
    """The simulator's Paillier rounding stream, ``offset`` draws in.

    In process, :class:`~protocols.paillier.PaillierAggregator` rounds with one generator,
    ``default_rng([seed, round_id, streams.ROUNDING])``, that the senders draw from in client-id
    order, one double per value: the sender of rank ``j`` with ``k`` values starts ``j * k`` draws in.
    """
    bits = np.random.PCG64(np.random.SeedSequence([seed, round_id, streams.ROUNDING]))
    return np.random.Generator(bits.advance(offset))



def secret_rounding_rng(record: ConfigRecord, cid: int) -> np.random.Generator:
    """Client ``cid``'s stochastic-rounding generator from its secret round seed (``rounding.<c>``)."""
    return np.random.default_rng(np.frombuffer(record[f"rounding.{cid}"], dtype=np.uint32))  # type: ignore[arg-type]


def round_record(state: RecordDict, cid: int, message: StageMessage) -> ConfigRecord:
    """The round record that holds client ``cid``'s state for ``message``'s round.

    Raises:
        StageError: this node did not train ``cid`` in that round.
    """
    record = state.config_records.get(STATE)
    if record is None or record.get("round") != message.round_id or f"log.{cid}" not in record:
        raise StageError(f"client {cid}, round {message.round_id}, {message.stage.name}: this node has no "
                         "state for that round (it did not train in it)")
    return record


def client_vector(state: RecordDict, cid: int) -> np.ndarray:
    """The vector client ``cid`` contributes this round (float64)."""
    return np.asarray(state.array_records[DELTAS][str(cid)].numpy(), dtype=np.float64)


def kept_local(state: RecordDict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The local part this node kept: user ids and, per local tensor, their rows (empty at first)."""
    record = state.array_records.get(LOCAL)
    if record is None:
        return np.zeros(0, np.int64), {}
    users = np.asarray(record["users"].numpy(), dtype=np.int64)
    return users, {name: np.asarray(a.numpy()) for name, a in record.items() if name != "users"}


def keep_local(state: RecordDict, users: np.ndarray, local: dict[str, np.ndarray]) -> None:
    """Replace the kept local part by the rows of ``users``."""
    arrays = {"users": Array.from_numpy_ndarray(np.ascontiguousarray(users, np.int64))}
    arrays.update({name: Array.from_numpy_ndarray(np.ascontiguousarray(v)) for name, v in local.items()})
    state.array_records[LOCAL] = ArrayRecord(array_dict=arrays)
