"""The node's entry point: one Flower message for the clients this node hosts (:class:`NodeRuntime`).

A round's first message (TRAIN, SUBMODEL_TRAIN or PAILLIER_TRAIN) is validated against this node's own
configuration (:mod:`~securefedrec.flower.node.checks`, :func:`~securefedrec.flower.update.check_dp`)
before any state changes; the clients then train (:func:`train_clients`, or the silos' DP-SGD,
:mod:`~securefedrec.flower.node.silos`), add their noise shares, apply random-k with error
feedback or the ``mod:B`` rotation (:mod:`securefedrec.flower.update`), and the round's state is
stored (:mod:`~securefedrec.flower.node.state`). Every later stage goes to the protocol's session
(:class:`~securefedrec.flower.node.secagg.SecAggSession`,
:class:`~securefedrec.flower.node.paillier.PaillierSession`). A node that refuses a round
answers no further message of it (h11 style: terminal), and its secrets are erased.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from protocols import aggregator_class
from protocols.secagg.client import raw_public
from securefedrec.compression import rotate
from securefedrec.config import ExperimentConfig
from securefedrec.errors import (
    ConfigError,
    IntegrityError,
    ProtocolError,
    SecureFedRecError,
    StageError,
)
from securefedrec.flower.messages import FlowerStage, StageMessage
from securefedrec.flower.node.checks import (
    check_sampled,
    node_dataset,
    node_policy,
    paillier_params,
    secagg_params,
)
from securefedrec.flower.node.identity import Identity
from securefedrec.flower.node.paillier import PAILLIER_STAGES, PaillierSession, require_identity
from securefedrec.flower.node.secagg import SecAggSession
from securefedrec.flower.node.silos import NodeSilos
from securefedrec.flower.node.state import DELTAS, HISTORY, REFUSED, STATE, keep_local, kept_local
from securefedrec.flower.node.submodel import (
    LAYOUT,
    check_submodel_info,
    check_submodel_setup,
    keep_layout,
    round_layout,
    submodel_policy,
)
from securefedrec.flower.settings import DeploymentSettings, NodeSettings
from securefedrec.flower.update import (
    FeedbackStore,
    check_dp,
    noise_rng,
    rotation,
    selection,
    uplink_compressor,
)

if TYPE_CHECKING:
    from securefedrec.privacy import DistributedGaussian

__all__ = ["NodeRuntime", "Trainer", "train_clients"]


Trainer = Callable[[ExperimentConfig, list[int], np.ndarray, int, RecordDict], np.ndarray]
"""(config, clients, global view, round id, node state) -> their clipped deltas (len(clients), L) float64."""


def train_clients(
    config: ExperimentConfig, clients: list[int], view: np.ndarray, round_id: int, state: RecordDict
) -> np.ndarray:
    """Train ``clients`` locally from ``view`` with the simulator's math; clip to ``update_clip``.

    Loads the configured dataset on this node (once per process). The model's local part of the hosted users
    (user embeddings, ...) is read from and written back to the node's state
    (:func:`~securefedrec.flower.node.state.kept_local`), so it persists across rounds on the
    node as it does in the simulator; what training samples comes from the simulator's
    generator of the round (:func:`~securefedrec.server.simulation.round_generator`).
    """
    import torch

    from securefedrec.server.simulation import Simulation, round_generator

    sim = Simulation(config, dataset=node_dataset(config))  # the data set parsed once per process
    users, kept = kept_local(state)
    if len(users):
        idx = torch.as_tensor(users)
        for name, rows in kept.items():
            sim.pool.local[name][idx] = torch.from_numpy(rows).to(sim.pool.local[name].dtype)
    trained = sim.pool.train(clients, torch.from_numpy(np.asarray(view, np.float64)),
                             config.model.local_epochs, config.model.local_lr,
                             round_generator(config.run.seed, round_id))
    hosted = np.union1d(users, np.concatenate([sim.pool.groups[c] for c in clients]))
    keep_local(state, hosted, {name: value.numpy() for name, value in sim.pool.rows(hosted).items()})
    bound = config.model.update_clip
    out: np.ndarray = trained.clamp_(-bound, bound).to("cpu", torch.float64).numpy()
    return out


class NodeRuntime:
    """Handles one Flower message for the clients this node hosts.

    Args:
        config: the run's experiment, or a function that builds it (called only when
            training: building it imports the training stack, which the other stages skip).
        settings: the deployment settings.
        partition: ``(partition-id, num-partitions)`` of this node.
        state: the node's ``Context.state`` (read and updated in place).
        seed: the run's seed (for ``reproducible_rounding``); default ``config.run.seed``.
        identity: the node's signing keys and the PKI (malicious-server model, Paillier).
        node: this node's own settings (its node config); default :class:`NodeSettings()`.
        trainer: local training (default :func:`train_clients`; tests inject a fake); with
            ``dp = "record"`` the silos train with DP-SGD instead
            (:class:`~securefedrec.flower.node.silos.NodeSilos`).
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
            seed = self.config.run.seed
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
        self.secagg = SecAggSession(state, settings, identity, seed, policy=lambda: node_policy(self.config),
                                    submodel=lambda: submodel_policy(self.config))
        self.paillier = PaillierSession(state, settings, self.node, identity, seed)

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
        if message.stage in (FlowerStage.TRAIN, FlowerStage.PAILLIER_TRAIN, FlowerStage.SUBMODEL_TRAIN):
            self._start_round(message)
        if message.stage is FlowerStage.SUBMODEL_SETUP:  # the setup bounded before any client sees it
            for c in sorted(message.payload):
                check_submodel_setup(self.config, message, c, malicious=self.settings.malicious)
        step = self.paillier.step if message.stage in PAILLIER_STAGES else self.secagg.step
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
        if paillier != aggregator_class(cfg.federation.protocol).homomorphic:
            raise IntegrityError(f"round {r}, field 'protocol': a {message.stage.name} message, but this "
                                 f"node's run configuration has protocol {cfg.federation.protocol!r}")
        submodel = message.stage is FlowerStage.SUBMODEL_TRAIN
        if submodel != cfg.federation.submodel:  # a submodel round reveals (randomized) row sets
            raise IntegrityError(f"round {r}, field 'submodel': a {message.stage.name} message, but this "
                                 f"node's run configuration has submodel={cfg.federation.submodel}")
        clients = sorted(message.payload)
        ranks = {c: i for i, c in enumerate(sorted(message.sampled))}
        missing = [c for c in clients if c not in ranks]
        if missing:
            raise IntegrityError(f"round {r}: clients {missing} are not in the sampled list")
        check_sampled(cfg, message.sampled, r)  # the public Poisson sample, not the server's choice
        if paillier:
            for c in clients:
                require_identity(self.identity, c, f"client {c}, round {r}")
        # validate everything before any state changes
        layout = None
        if submodel:  # the setup comes after training (it answers the row requests): the policy now
            check_submodel_info(cfg, message.info, f"round {r}")
            layout = round_layout(cfg)
            got = int(message.global_vec.shape[0])
            if layout.length != got:
                raise IntegrityError(f"round {r}, field 'global': the server sends {got} values, this "
                                     f"node's model has {layout.length}")
        params = {c: paillier_params(cfg, message, c) if paillier
                  else secagg_params(cfg, message, c, malicious=self.settings.malicious)
                  for c in ([] if submodel else clients)}
        mechanisms: dict[int, tuple[DistributedGaussian, int]] = {}
        comp = uplink_compressor(cfg)
        for c in params:  # wrap-around cannot weaken privacy, but only mod:B asks for it
            if params[c].wrap and not comp.wraps:
                raise IntegrityError(f"client {c}, round {r}, field 'wrap': the server asks for a wrapping "
                                     f"sum, but this node's run configuration has compression {comp.spec!r}")
        if cfg.privacy.mode == "user":
            mechanisms = {c: check_dp(cfg, message.info, protocol_threshold=params[c].threshold,
                                      clip_range=params[c].clip_range, wrap=params[c].wrap,
                                      where=f"client {c}, round {r}")
                          for c in clients}
        elif cfg.privacy.mode not in ("none", "record"):
            raise ConfigError(f"round {r}, field 'dp': {cfg.privacy.mode!r} does not run on the Flower "
                              "deployment engine")
        idx = selection(comp, int(message.global_vec.shape[0]), self.seed, r)
        signs = rotation(comp, int(message.global_vec.shape[0]), self.seed, r)
        width = int(message.global_vec.shape[0]) if idx is None else int(idx.size)
        for c in params:
            if params[c].length != width:
                raise IntegrityError(f"client {c}, round {r}, field 'length': the server expects "
                                  f"{params[c].length} values, this node sends {width} "
                                  f"(compression {comp.spec})")
        # dp record: each silo's DP-SGD, continued from its state on this node (built and checked here)
        dp_record = cfg.privacy.mode == "record"
        silos = (NodeSilos(cfg, clients, message.info, self.state, r,
                           reproducible=self.node.reproducible_noise) if dp_record else None)
        feedback = FeedbackStore(self.state)
        residuals = ({c: feedback.residual(c, message.info, f"client {c}, round {r}") for c in clients}
                     if idx is not None else {})
        self.state.config_records[HISTORY] = ConfigRecord({"last_round": r})
        if silos is not None:
            deltas = silos.train(message.global_vec)
            silos.keep()  # the privacy is spent once trained, whatever happens to the round
        else:
            deltas = self.trainer(cfg, clients, message.global_vec, r, self.state)
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
            record.update(PaillierSession.round_fields(message, clients))
        if layout is not None:
            record["submodel"] = True
            keep_layout(self.state, layout)
        for c in clients:
            record[f"secret.{c}"] = self.randbytes(32)
            record[f"rounding.{c}"] = self.randbytes(32)
            record[f"log.{c}"] = []
            record[f"rank.{c}"] = ranks[c]
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
        for key in (DELTAS, LAYOUT):
            if key in self.state.array_records:
                del self.state.array_records[key]

