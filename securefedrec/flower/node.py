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
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from protocols import aggregator_class
from protocols.secagg import SecAggClient
from protocols.secagg.client import raw_public
from securefedrec import streams
from securefedrec.compression import rotate
from securefedrec.config import ExperimentConfig
from securefedrec.errors import (
    ConfigError,
    DecodeError,
    IntegrityError,
    ProtocolError,
    SecureFedRecError,
    StageError,
)
from securefedrec.flower.messages import PAILLIER_ROUND_KEYS, FlowerStage, StageMessage, paillier_round_config
from securefedrec.flower.settings import DeploymentSettings, NodeSettings
from securefedrec.flower.update import (
    FeedbackStore,
    NodeSilos,
    check_dp,
    info_int,
    noise_rng,
    rotation,
    selection,
    uplink_compressor,
)

if TYPE_CHECKING:
    from protocols.secagg.messages import Setup
    from securefedrec.privacy import DistributedGaussian

__all__ = ["Identity", "KeyStream", "NodeRuntime", "check_setup", "hosted_clients", "load_identity",
           "own_min_degree", "own_threshold", "paillier_rounding_rng", "partition_of", "rounding_rng"]

STATE, DELTAS, HISTORY, PAILLIER_KEY = "sfr.node", "sfr.deltas", "sfr.history", "sfr.paillier"
REFUSED = "sfr.refused"
"""Node-state record of the last round this node refused (``round``, ``reason``); it answers no more of it."""

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
_PAILLIER_STAGES = frozenset(s for s in _PAILLIER_NEXT if s is not None)


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


def paillier_rounding_rng(seed: int, round_id: int, offset: int) -> np.random.Generator:
    """The simulator's Paillier rounding stream, ``offset`` draws in.

    In process, :class:`~protocols.paillier.PaillierAggregator` rounds with one generator,
    ``default_rng([seed, round_id, streams.ROUNDING])``, that the senders draw from in client-id
    order, one double per value: the sender of rank ``j`` with ``k`` values starts ``j * k`` draws in.
    """
    bits = np.random.PCG64(np.random.SeedSequence([seed, round_id, streams.ROUNDING]))
    return np.random.Generator(bits.advance(offset))


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


def own_threshold(config: ExperimentConfig, n: int) -> int:
    """The smallest release threshold this node accepts for a round of ``n`` clients.

    ``ceil(threshold_fraction * n)`` (at least 1) from the node's own run configuration, exactly
    the simulator's round config (:meth:`~securefedrec.simulation.Simulation.round_config`).
    """
    return max(1, math.ceil(config.threshold_fraction * n))


def own_min_degree(config: ExperimentConfig, n: int, threshold: int, malicious: bool) -> int:
    """The smallest neighbour degree this node accepts for a SecAgg(+) round of ``n`` clients.

    SecAgg: the complete graph (``n - 1``). SecAgg+: the run's fixed ``neighbors``, else
    :func:`~protocols.secagg.graph.choose_degree` for the dropout rate the simulator sizes
    the graph for and the default 5 % corruption rate, for the round's threshold and threat
    model -- the degree an honest server computes, capped at the complete graph.
    """
    from protocols.secagg.graph import choose_degree

    if not aggregator_class(config.protocol).sparse_graph:
        return n - 1
    if config.neighbors is not None:
        return min(config.neighbors, n - 1)
    rate = 0.05
    if config.dropout > 0:
        from securefedrec.simulation import dropout_by_unmask

        rate = dropout_by_unmask(config.dropout)
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
    if not setup.wrap and n * (2 ** (setup.value_bits - 1) - 1) > 2 ** (setup.ring_bits - 1) - 1:
        raise refuse("ring_bits", f"{n} clients at value_bits {setup.value_bits} overflow a "
                                  f"{setup.ring_bits}-bit ring")


class _RoundParams(NamedTuple):
    """What a node needs of the round's protocol settings before training."""

    clip_range: float
    threshold: int
    length: int
    wrap: bool = False


class NodeRuntime:
    """Handles one Flower message for the clients this node hosts.

    Args:
        config: the run's experiment, or a function that builds it (called only when
            training: building it imports the training stack, which the other stages skip).
        settings: the deployment settings.
        partition: ``(partition-id, num-partitions)`` of this node.
        state: the node's ``Context.state`` (read and updated in place).
        seed: the run's seed (for ``reproducible_rounding``); default ``config.seed``.
        identity: the node's signing keys and the PKI (malicious-server model, Paillier).
        node: this node's own settings (its node config); default :class:`NodeSettings()`.
        trainer: local training (default :func:`train_clients`; tests inject a fake); with
            ``dp = "record"`` the silos train with DP-SGD instead (:class:`~.update.NodeSilos`).
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
        node: NodeSettings | None = None,
        trainer: Trainer = train_clients,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._config = config
        if seed is None:
            seed = self.config.seed
        self.seed = seed
        self.identity = identity
        self.node = node if node is not None else NodeSettings()
        if settings.malicious and identity is None:
            raise ConfigError(
                "malicious: the malicious-server model (run config malicious=true, the default) needs this "
                "node's identity-key and pki in its node config: identity-key = a JSON file {client id: "
                "hex Ed25519 private key} for the clients it hosts, pki = a JSON file {client id: hex public "
                "key} for every client, distributed out of band (README, 'Run on Flower'); to run the "
                "honest-but-curious model instead, set malicious=false in the run config and "
                "honest-server=true in every node's node config")
        if not settings.malicious and not self.node.honest_server:
            raise ConfigError(
                "malicious: the run config asks for the honest-but-curious model (malicious=false: unsigned "
                "keys, a malicious server can read every input); this node takes part only with "
                "honest-server=true in its node config, or give it identity-key and pki and run with "
                "malicious=true")
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
        pid, count = self.partition
        if message.stage is FlowerStage.HELLO:
            info: dict[str, int | float | str] = {"partition-id": pid, "num-partitions": count}
            if self.identity is not None:  # the hosted clients' public identity keys (Paillier's directory)
                for c, key in sorted(self.identity.keys.items()):
                    if c % count == pid:
                        info[f"pki.{c}"] = raw_public(key).hex()
            return StageMessage(FlowerStage.HELLO, message.round_id, info=info)
        self._check_not_refused(message)
        try:
            return self._handle_round(message)
        except SecureFedRecError as exc:
            self._refuse(message.round_id, exc)
            raise
        except Exception as exc:  # a library's own error inside a stage is a refusal in our type all the same
            self._refuse(message.round_id, exc)
            raise ProtocolError(f"round {message.round_id}, {message.stage.name}: "
                                f"{type(exc).__name__}: {exc}") from exc

    def _handle_round(self, message: StageMessage) -> StageMessage:
        pid, count = self.partition
        foreign = sorted(c for c in message.payload if c % count != pid)
        if foreign:
            raise IntegrityError(f"round {message.round_id}: node {pid}/{count} was sent messages for "
                                 f"clients {foreign[:5]} that it does not host")
        if message.stage in (FlowerStage.TRAIN, FlowerStage.PAILLIER_TRAIN):
            self._start_round(message)
        step = self._paillier_step if message.stage in _PAILLIER_STAGES else self._step
        replies = {c: step(c, message) for c in sorted(message.payload)}
        if message.stage is FlowerStage.UNMASK:
            self._finish_round()
        return StageMessage(message.stage, message.round_id, replies)

    # ---- a refused round stays refused ------------------------------------------------------------
    def _check_not_refused(self, message: StageMessage) -> None:
        """Refuse any message of a round at or before the last round this node refused."""
        record = self.state.config_records.get(REFUSED)
        if record is None:
            return
        refused, reason = record.get("round"), record.get("reason")
        if isinstance(refused, int) and message.round_id <= refused:
            raise StageError(f"round {message.round_id}, {message.stage.name}: this node refused round "
                             f"{refused} ({reason!s}); it answers no further message of that "
                             "round or an earlier one")

    def _refuse(self, round_id: int, exc: BaseException) -> None:
        """Remember the refusal of ``round_id`` and erase the round's secrets (h11 style: terminal)."""
        record = self.state.config_records.get(REFUSED)
        before = record.get("round") if record is not None else None
        if isinstance(before, int) and before >= round_id:
            return
        reason = f"{type(exc).__name__}: {exc}"
        self.state.config_records[REFUSED] = ConfigRecord({"round": round_id, "reason": reason[:300]})
        current = self.state.config_records.get(STATE)
        started = current.get("round") if current is not None else None
        if isinstance(started, int) and started <= round_id:
            self._finish_round()

    # ---- a round's first message: validate, train, privatize, compress -------------------------
    def _round_params(self, cid: int, message: StageMessage, paillier: bool) -> _RoundParams:
        where = f"client {cid}, round {message.round_id}"
        if not paillier:
            from protocols.secagg.messages import Setup

            try:
                setup = Setup.decode(message.payload[cid])
            except DecodeError as exc:
                raise DecodeError(f"{where}: {exc}") from None
            check_setup(self.config, setup, cid=cid, round_id=message.round_id, sampled=message.sampled,
                        malicious=self.settings.malicious)
            return _RoundParams(setup.clip_range, setup.threshold, setup.length, setup.wrap)
        rc = paillier_round_config(message.info, message.round_id, where)
        n = len(message.sampled)
        if rc.threshold < own_threshold(self.config, n):
            raise IntegrityError(f"{where}, field 'round.threshold': the server asks for {rc.threshold} of "
                                 f"{n} clients, this node's run configuration requires at least "
                                 f"{own_threshold(self.config, n)}")
        return _RoundParams(rc.clip_range, rc.threshold, info_int(message.info, "round.length", where))

    def _start_round(self, message: StageMessage) -> None:
        r = message.round_id
        if message.global_vec is None:
            raise StageError(f"round {r}: {message.stage.name} message without the global vector")
        history = self.state.config_records.get(HISTORY)
        last = history.get("last_round") if history is not None else None
        if isinstance(last, int) and r <= last:
            # a second instance of a round would mask the same update again under fresh secrets
            raise StageError(f"round {r}: this node already took part in round {last}; "
                             "a round is never run twice")
        cfg = self.config
        paillier = message.stage is FlowerStage.PAILLIER_TRAIN
        if paillier != aggregator_class(cfg.protocol).homomorphic:
            raise IntegrityError(f"round {r}, field 'protocol': a {message.stage.name} message, but this "
                                 f"node's run configuration has protocol {cfg.protocol!r}")
        clients = sorted(message.payload)
        ranks = {c: i for i, c in enumerate(sorted(message.sampled))}
        missing = [c for c in clients if c not in ranks]
        if missing:
            raise IntegrityError(f"round {r}: clients {missing} are not in the sampled list")
        if paillier:
            for c in clients:
                self._require_identity(c, f"client {c}, round {r}")
        # validate everything before any state changes
        params = {c: self._round_params(c, message, paillier) for c in clients}
        mechanisms: dict[int, tuple[DistributedGaussian, int]] = {}
        comp = uplink_compressor(cfg)
        for c in clients:  # wrap-around cannot weaken privacy, but only mod:B asks for it
            if params[c].wrap and not comp.wraps:
                raise IntegrityError(f"client {c}, round {r}, field 'wrap': the server asks for a wrapping "
                                     f"sum, but this node's run configuration has compression {comp.spec!r}")
        if cfg.dp == "user":
            mechanisms = {c: check_dp(cfg, message.info, protocol_threshold=params[c].threshold,
                                      clip_range=params[c].clip_range, wrap=params[c].wrap,
                                      where=f"client {c}, round {r}")
                          for c in clients}
        elif cfg.dp not in ("none", "record"):
            raise ConfigError(f"round {r}, field 'dp': {cfg.dp!r} does not run on the Flower deployment "
                              "engine")
        idx = selection(comp, int(message.global_vec.shape[0]), self.seed, r)
        signs = rotation(comp, int(message.global_vec.shape[0]), self.seed, r)
        width = int(message.global_vec.shape[0]) if idx is None else int(idx.size)
        for c in clients:
            if params[c].length != width:
                raise IntegrityError(f"client {c}, round {r}, field 'length': the server expects "
                                  f"{params[c].length} values, this node sends {width} "
                                  f"(compression {comp.spec})")
        # dp record: each silo's DP-SGD, continued from its state on this node (built and checked here)
        silos = (NodeSilos(cfg, clients, message.info, self.state, r,
                           reproducible=self.node.reproducible_noise) if cfg.dp == "record" else None)
        feedback = FeedbackStore(self.state)
        residuals = ({c: feedback.residual(c, message.info, f"client {c}, round {r}") for c in clients}
                     if idx is not None else {})
        self.state.config_records[HISTORY] = ConfigRecord({"last_round": r})
        if silos is not None:
            deltas = silos.train(message.global_vec)
            silos.keep()  # the privacy is spent once trained, whatever happens to the round
        else:
            deltas = self.trainer(cfg, clients, message.global_vec)
        vectors: dict[int, np.ndarray] = {}
        pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for j, c in enumerate(clients):
            v = np.asarray(deltas[j], dtype=np.float64)
            if c in mechanisms:  # UserLevelPrivacy.privatize: clip to L2 <= C, add this client's share
                mechanism, threshold = mechanisms[c]
                v = mechanism.privatize(v, threshold, self._noise_rng(r, c))
            if idx is not None:  # Uplink.aggregate: residual in, public coordinates out
                residual = residuals.get(c)
                full = np.array(v, dtype=np.float64) if residual is None else v + residual
                sent = np.clip(full[idx], -params[c].clip_range, params[c].clip_range)
                pending[c] = (full, sent)
                v = sent
            if signs is not None:  # Uplink._rotated (mod:B): the public rotation, then the ring
                v = rotate(v, signs)
            vectors[c] = v
        if idx is not None:
            for c, (full, sent) in pending.items():
                feedback.keep(c, r, full, idx, sent)
        record: dict[str, Any] = {"round": r, "clients": clients}
        if paillier:
            record.update({f"paillier.{k}": message.info[f"round.{k}"] for k in PAILLIER_ROUND_KEYS})
            record["paillier.n"] = len(message.sampled)
        for c in clients:
            record[f"secret.{c}"] = self.randbytes(32)
            record[f"rounding.{c}"] = self.randbytes(32)
            record[f"log.{c}"] = []
            record[f"rank.{c}"] = ranks[c]
            if paillier:
                record[f"stages.{c}"] = []
        self.state.config_records[STATE] = ConfigRecord(record)
        self.state.array_records[DELTAS] = ArrayRecord(array_dict={
            str(c): Array.from_numpy_ndarray(np.ascontiguousarray(vectors[c], dtype=np.float64))
            for c in clients
        })

    def _noise_rng(self, round_id: int, cid: int) -> np.random.Generator:
        if self.node.reproducible_noise:
            return noise_rng(self.seed, round_id, cid)
        from securefedrec.privacy import secure_generator

        return secure_generator()

    def _finish_round(self) -> None:
        for key in (STATE,):
            if key in self.state.config_records:
                del self.state.config_records[key]
        if DELTAS in self.state.array_records:
            del self.state.array_records[DELTAS]

    # ---- SecAgg / SecAgg+ -------------------------------------------------------------------------
    def _step(self, cid: int, message: StageMessage) -> bytes:
        record = self.state.config_records.get(STATE)
        where = f"client {cid}, round {message.round_id}, {message.stage.name}"
        if record is None or record.get("round") != message.round_id or f"log.{cid}" not in record:
            raise StageError(f"{where}: this node has no state for that round (it did not train in it)")
        if f"stages.{cid}" in record:
            raise StageError(f"{where}: this round runs the Paillier protocol on this node")
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
            rng=self._rounding_rng(record, cid, message.round_id),
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
        return np.random.default_rng(np.frombuffer(record[f"rounding.{cid}"], dtype=np.uint32))  # type: ignore[arg-type]

    # ---- packed Paillier --------------------------------------------------------------------------
    def _require_identity(self, cid: int, where: str) -> Identity:
        identity = self.identity
        if identity is None:
            raise ConfigError(f"{where}: protocol paillier needs this node's identity-key and pki "
                              "(node config): the private key travels sealed to the clients' signed keys")
        if cid not in identity.keys:
            raise ConfigError(f"{where}: identity-key holds no key for client {cid}")
        return identity

    def _paillier_keypair(self, *, create: bool) -> Any:
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
        self._store_keypair(key)
        return key

    def _store_keypair(self, key: Any) -> None:
        width = (int(key.public.bits) + 7) // 8
        self.state.config_records[PAILLIER_KEY] = ConfigRecord({
            "p": int(key.p).to_bytes(width, "big"), "q": int(key.q).to_bytes(width, "big")})

    def _paillier_step(self, cid: int, message: StageMessage) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from protocols.paillier import PaillierClient

        r, stage = message.round_id, message.stage
        where = f"client {cid}, round {r}, {stage.name}"
        record = self.state.config_records.get(STATE)
        if record is None or record.get("round") != r or f"log.{cid}" not in record:
            raise StageError(f"{where}: this node has no state for that round (it did not train in it)")
        if f"stages.{cid}" not in record:
            raise StageError(f"{where}: this round runs SecAgg on this node")
        done = [FlowerStage[str(name)] for name in record[f"stages.{cid}"]]  # type: ignore[union-attr]
        log = [m for m in record[f"log.{cid}"] if isinstance(m, bytes)]  # type: ignore[union-attr]
        last = done[-1] if done else None
        if stage not in _PAILLIER_NEXT[last]:
            previous = last.name if last is not None else "nothing"
            raise StageError(f"{where}: out of order (last stage answered: {previous})")
        identity = self._require_identity(cid, where)
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
                    client.share_key(self._paillier_keypair(create=False))
                elif done_stage is FlowerStage.PAILLIER_KEY:
                    client.receive_key(received)
                elif done_stage is FlowerStage.PAILLIER_CONSISTENCY:  # the same set, signed again
                    client.consistency(received, int(record["paillier.threshold"]))  # type: ignore[arg-type]
                # ENCRYPT changes nothing that CONSISTENCY or DECRYPT needs; DECRYPT is the last stage
            reply, answered = self._paillier_answer(client, cid, message, record, where)
        except (StageError, DecodeError, IntegrityError) as exc:
            raise type(exc)(f"{where}: {exc}") from None
        record[f"stages.{cid}"] = [*(s.name for s in done), *(s.name for s, _ in answered)]
        record[f"log.{cid}"] = [*log, *(m for _, m in answered)]
        return reply

    def _paillier_answer(
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
            bundle = client.share_key(self._paillier_keypair(create=True))
            return bundle, [(stage, payload), (FlowerStage.PAILLIER_HOLD, b"")]
        if stage is FlowerStage.PAILLIER_HOLD:
            return client.share_key(self._paillier_keypair(create=True)), [(stage, b"")]
        if stage is FlowerStage.PAILLIER_KEY:
            ack = client.receive_key(payload)
            bits = int(client.keypair.public.bits)
            if bits < self.node.paillier_key_bits:
                raise IntegrityError(f"the key holder's Paillier key has {bits} bits, below this "
                                  f"node's paillier-key-bits {self.node.paillier_key_bits}")
            self._store_keypair(client.keypair)  # a later round's key holder on this node reuses it
            return ack, [(stage, payload)]
        rc = paillier_round_config({f"round.{k}": record[f"paillier.{k}"] for k in PAILLIER_ROUND_KEYS},
                                   message.round_id, where)
        if stage is FlowerStage.PAILLIER_ENCRYPT:
            deltas = self.state.array_records[DELTAS]
            vector = np.asarray(deltas[str(cid)].numpy(), dtype=np.float64)
            public = client.keypair.public
            fp, layout = round_layout(int(record["paillier.n"]), rc, public)  # type: ignore[arg-type]
            if self.settings.reproducible_rounding:
                rng = paillier_rounding_rng(self.seed, message.round_id,
                                            info_int(message.info, f"rank.{cid}", where) * vector.shape[0])
            else:
                rng = np.random.default_rng(np.frombuffer(record[f"rounding.{cid}"], dtype=np.uint32))  # type: ignore[arg-type]
            pool = RandomnessPool(public, private=client.keypair)  # filled online by masked_input
            ciphertexts: bytes = client.masked_input(vector, fp, layout, rng, pool)
            del deltas[str(cid)]  # the plaintext update is not needed any more
            return ciphertexts, [(stage, b"")]
        if stage is FlowerStage.PAILLIER_CONSISTENCY:
            return client.consistency(payload, rc.threshold), [(stage, payload)]
        return client.decrypt(payload, rc.threshold), [(stage, payload)]
