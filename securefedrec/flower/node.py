"""The SuperNode side: the clients a node hosts, one protocol stage per Flower message.

A Flower ClientApp process lives for one message only, so nothing survives
between stages except the node's ``Context.state`` (a RecordDict kept on the
SuperNode, never sent to the SuperLink). Instead of serialising the
:class:`~protocols.secagg.SecAggClient` internals, the node keeps

- the client's trained vector (the delta it contributes this round),
- a fresh 256-bit secret per client and round, which seeds the client's only
  source of secret randomness (:class:`KeyStream`, ChaCha20),
- the protocol messages the client has received so far this round,

and *replays* them into a new ``SecAggClient`` before handling the next stage.
The client is deterministic given these, so the replayed client is the same
state machine; its replies to the replayed stages are discarded. A stage is
accepted only once, in order (the stored transcript is the state), so a server
cannot obtain two answers to the unmask stage. The secret and the vector are
deleted when the round ends.

Which clients a node hosts comes from its node config: ``partition-id`` and
``num-partitions`` (Flower's convention); the node hosts every client ``c``
with ``c % num-partitions == partition-id`` -- one client (a device, or a silo
of users with ``silos``) when ``num-partitions`` equals the number of clients.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from protocols.secagg import SecAggClient
from securefedrec import streams
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError, StageError
from securefedrec.flower.messages import FlowerStage, StageMessage
from securefedrec.flower.settings import DeploymentSettings

__all__ = ["Identity", "KeyStream", "NodeRuntime", "hosted_clients", "load_identity", "partition_of",
           "rounding_rng"]

STATE, DELTAS, HISTORY = "sfr.node", "sfr.deltas", "sfr.history"

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
    :class:`~securefedrec.simulation.Simulation` hands its aggregator).
    """
    sequence = np.random.SeedSequence([seed, round_id, streams.ROUNDING], spawn_key=(rank,))
    return np.random.default_rng(sequence)


def partition_of(node_config: Mapping[str, Any]) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from a node config, validated."""
    try:
        pid, count = node_config["partition-id"], node_config["num-partitions"]
    except KeyError as exc:
        raise ConfigError(
            f"node config: {exc.args[0]!r} is missing; start the SuperNode with "
            "--node-config 'partition-id=I num-partitions=N'"
        ) from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (pid, count)):
        raise ConfigError(
            f"node config: partition-id and num-partitions must be ints, got {pid!r}, {count!r}")
    if not 0 <= pid < count:
        raise ConfigError(f"node config: need 0 <= partition-id < num-partitions, got {pid}, {count}")
    return pid, count


def hosted_clients(partition_id: int, num_partitions: int, num_clients: int) -> list[int]:
    """The clients a node hosts: every ``c`` with ``c % num_partitions == partition_id``."""
    return list(range(partition_id, num_clients, num_partitions))


@dataclass(frozen=True)
class Identity:
    """A node's long-term signing key and the PKI (malicious-server model).

    Attributes:
        keys: hosted client id -> its Ed25519 private key.
        pki: every client id -> its raw 32-byte Ed25519 public key, distributed out of band
            (a PKI relayed by the server would let a malicious server substitute keys).
    """

    keys: dict[int, Ed25519PrivateKey]
    pki: dict[int, bytes]


def load_identity(node_config: Mapping[str, Any]) -> Identity | None:
    """Read ``identity-key`` (JSON ``{client id: hex private key}``) and ``pki`` (JSON ``{client id: hex
    public key}``) named by the node config; ``None`` when neither is set.

    Raises:
        ConfigError: only one of them is set, a file is unreadable, or a key is malformed.
    """
    key_path, pki_path = node_config.get("identity-key"), node_config.get("pki")
    if key_path is None and pki_path is None:
        return None
    if not isinstance(key_path, str) or not isinstance(pki_path, str):
        raise ConfigError("node config: the malicious model needs both identity-key and pki (file paths)")
    try:
        raw_keys = json.loads(Path(key_path).read_text())
        raw_pki = json.loads(Path(pki_path).read_text())
        keys = {int(c): Ed25519PrivateKey.from_private_bytes(bytes.fromhex(h)) for c, h in raw_keys.items()}
        pki = {int(c): bytes.fromhex(h) for c, h in raw_pki.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"node config: cannot read identity-key {key_path} / pki {pki_path}: {exc}") from None
    if any(len(v) != 32 for v in pki.values()):
        raise ConfigError(f"node config: {pki_path}: every public key must be 32 bytes (64 hex digits)")
    return Identity(keys, pki)


Trainer = Callable[[ExperimentConfig, list[int], np.ndarray], np.ndarray]
"""(config, clients, global view) -> their clipped deltas (len(clients), L) float64."""


def train_clients(config: ExperimentConfig, clients: list[int], view: np.ndarray) -> np.ndarray:
    """Train ``clients`` locally from ``view`` with the simulator's math; clip to ``update_clip``.

    Loads the configured dataset on this node and keeps only the hosted clients' rows.
    """
    import torch

    from securefedrec.simulation import Simulation

    sim = Simulation(config)
    trained = sim.pool.train(clients, torch.from_numpy(np.asarray(view, np.float64)),
                             config.local_epochs, config.local_lr)
    out: np.ndarray = trained.clamp_(-config.update_clip, config.update_clip).to("cpu", torch.float64).numpy()
    return out


class NodeRuntime:
    """Handles one Flower message for the clients this node hosts.

    Args:
        config: the run's experiment, or a function that builds it (called only when
            training: building it imports the training stack, which the other stages skip).
        settings: the deployment settings.
        partition: ``(partition-id, num-partitions)`` of this node.
        state: the node's ``Context.state`` (read and updated in place).
        seed: the run's seed (for ``reproducible_rounding``); default ``config.seed``.
        trainer: local training (default :func:`train_clients`; tests inject a fake).
        randbytes: source of the per-round client secrets.
    """

    def __init__(
        self,
        config: ExperimentConfig | Callable[[], ExperimentConfig],
        settings: DeploymentSettings,
        partition: tuple[int, int],
        state: RecordDict,
        *,
        seed: int | None = None,
        identity: Identity | None = None,
        trainer: Trainer = train_clients,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._config = config
        if seed is None:
            seed = self.config.seed
        self.seed = seed
        self.identity = identity
        if settings.malicious and identity is None:
            raise ConfigError("malicious: the malicious-server model needs this node's identity-key and pki "
                              "(node config)")
        self.settings = settings
        self.partition = partition
        self.state = state
        self.trainer = trainer
        self.randbytes = randbytes

    @property
    def config(self) -> ExperimentConfig:
        """The run's experiment (built on first use)."""
        if not isinstance(self._config, ExperimentConfig):
            self._config = self._config()
        return self._config

    def handle(self, message: StageMessage) -> StageMessage:
        """Run ``message.stage`` for every addressed client; return the node's reply."""
        if message.stage is FlowerStage.HELLO:
            pid, count = self.partition
            return StageMessage(FlowerStage.HELLO, message.round_id,
                                info={"partition-id": pid, "num-partitions": count})
        pid, count = self.partition
        foreign = sorted(c for c in message.payload if c % count != pid)
        if foreign:
            raise ConfigError(f"round {message.round_id}: node {pid}/{count} was sent messages for clients "
                              f"{foreign[:5]} that it does not host")
        if message.stage is FlowerStage.TRAIN:
            self._start_round(message)
        replies = {c: self._step(c, message) for c in sorted(message.payload)}
        if message.stage is FlowerStage.UNMASK:
            self._finish_round()
        return StageMessage(message.stage, message.round_id, replies)

    # ---- state ---------------------------------------------------------------------------
    def _start_round(self, message: StageMessage) -> None:
        if message.global_vec is None:
            raise StageError(f"round {message.round_id}: TRAIN message without the global vector")
        history = self.state.config_records.get(HISTORY)
        last = history.get("last_round") if history is not None else None
        if isinstance(last, int) and message.round_id <= last:
            # a second instance of a round would mask the same update again under fresh secrets
            raise StageError(f"round {message.round_id}: this node already took part in round {last}; "
                             "a round is never run twice")
        self.state.config_records[HISTORY] = ConfigRecord({"last_round": message.round_id})
        clients = sorted(message.payload)
        deltas = self.trainer(self.config, clients, message.global_vec)
        ranks = {c: i for i, c in enumerate(sorted(message.sampled))}
        missing = [c for c in clients if c not in ranks]
        if missing:
            raise ConfigError(f"round {message.round_id}: clients {missing} are not in the sampled list")
        record: dict[str, Any] = {"round": message.round_id, "clients": clients}
        for c in clients:
            record[f"secret.{c}"] = self.randbytes(32)
            record[f"rounding.{c}"] = self.randbytes(32)
            record[f"log.{c}"] = []
            record[f"rank.{c}"] = ranks[c]
        self.state.config_records[STATE] = ConfigRecord(record)
        self.state.array_records[DELTAS] = ArrayRecord(array_dict={
            str(c): Array.from_numpy_ndarray(np.ascontiguousarray(deltas[j], dtype=np.float64))
            for j, c in enumerate(clients)
        })

    def _finish_round(self) -> None:
        for key in (STATE,):
            if key in self.state.config_records:
                del self.state.config_records[key]
        if DELTAS in self.state.array_records:
            del self.state.array_records[DELTAS]

    def _step(self, cid: int, message: StageMessage) -> bytes:
        record = self.state.config_records.get(STATE)
        where = f"client {cid}, round {message.round_id}, {message.stage.name}"
        if record is None or record.get("round") != message.round_id or f"log.{cid}" not in record:
            raise StageError(f"{where}: this node has no state for that round (it did not train in it)")
        stored = record[f"log.{cid}"]
        log: list[bytes] = [m for m in stored if isinstance(m, bytes)] if isinstance(stored, list) else []
        order = _ORDER[self.settings.malicious]
        if len(log) >= len(order) or order[len(log)] is not message.stage:
            done = order[len(log) - 1].name if log else "nothing"
            raise StageError(f"{where}: out of order (last stage answered: {done})")
        deltas = self.state.array_records[DELTAS]
        vector = np.asarray(deltas[str(cid)].numpy(), dtype=np.float64)
        identity = self.identity if self.settings.malicious else None
        if identity is not None and cid not in identity.keys:
            raise ConfigError(f"{where}: identity-key holds no key for client {cid}")
        client = SecAggClient(
            cid, vector, malicious=self.settings.malicious, round_id=message.round_id,
            identity_key=identity.keys[cid] if identity is not None else None,
            identity_keys=identity.pki if identity is not None else None,
            randbytes=KeyStream(record[f"secret.{cid}"]),  # type: ignore[arg-type]
            rng=(rounding_rng(self.seed, message.round_id, int(record[f"rank.{cid}"]))  # type: ignore[arg-type]
                 if self.settings.reproducible_rounding
                 else np.random.default_rng(np.frombuffer(record[f"rounding.{cid}"], dtype=np.uint32))),  # type: ignore[arg-type]
        )
        # replay the stages already answered (same secrets, same messages -> same state)
        for stage, received in zip(order, log, strict=False):
            getattr(client, _METHOD[stage])(received)
        reply: bytes = getattr(client, _METHOD[message.stage])(message.payload[cid])
        record[f"log.{cid}"] = [*log, message.payload[cid]]
        return reply
