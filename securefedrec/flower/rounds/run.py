"""The federated loop of a deployment (:class:`FederatedRun`) and its result file (:func:`write_result`).

The server builds the same :class:`~securefedrec.server.simulation.Simulation` as an in-process
run and drives each round with :func:`~securefedrec.flower.rounds.secagg.secagg_round` or
:func:`~securefedrec.flower.rounds.paillier.paillier_round`; the clients -- training,
noise shares, error feedback -- run on the SuperNodes (:mod:`securefedrec.flower.node`).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protocols import MIN_INPUTS, AggregationAborted, aggregator_class, protocols_where
from protocols.secagg import SecAggAggregator, SecAggServer
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError, PrivacyBudgetExhausted, SecureFedRecError
from securefedrec.flower.messages import FlowerStage
from securefedrec.flower.rounds.paillier import paillier_round
from securefedrec.flower.rounds.secagg import secagg_round
from securefedrec.flower.rounds.submodel import rows_reported, submodel_info, submodel_round
from securefedrec.flower.settings import DeploymentSettings
from securefedrec.flower.transport import NodeLink, discover

__all__ = ["FederatedRun", "write_result"]

log = logging.getLogger("securefedrec.flower")

class FederatedRun:
    """The federated loop of a deployment: sample, broadcast, secure round, server optimizer.

    The server builds the same :class:`~securefedrec.server.simulation.Simulation` as an
    in-process run, but uses only its public parts (item count and layout,
    initial global vector, Poisson sampling, round configuration, broadcast
    codec, server optimizer, the DP accountant); the clients train on the SuperNodes.

    What runs: protocols ``secagg``, ``secagg+`` and ``paillier``, and submodel rounds
    (``submodel``: SecAgg over each client's randomized-response rows,
    :func:`~securefedrec.flower.rounds.submodel.submodel_round`); ``dp`` ``none``,
    ``user`` (the accountant is checked before a round and charged after it, as in
    the simulator; each node adds its clients' noise shares) or ``record`` (each node
    runs DP-SGD for its silos, their state kept on the node; the server keeps every
    silo's accountant from the public sigma, sample rate and steps, checks it before
    a round and charges each sampled silo after it, :mod:`securefedrec.flower.node.silos`);
    compression ``none``, ``q8``, ``q16``, ``randk:F`` (error feedback on the nodes,
    the server scatters the sum back) and ``mod:B`` (nodes rotate with the public
    signs, the server sizes the ring from the last sum and rotates the sum back);
    the broadcast is compressed exactly as in the simulator.

    Args:
        config, settings: the run.
        link: the transport to the SuperNodes.
    """

    def __init__(self, config: ExperimentConfig, settings: DeploymentSettings, link: NodeLink) -> None:
        from securefedrec.compression import parse_compression
        from securefedrec.privacy import SiloDPSGD, UserLevelPrivacy
        from securefedrec.server.simulation import Simulation

        threat_model = config.federation.threat_model
        if threat_model != "default" and (threat_model == "malicious") != settings.malicious:
            raise ConfigError(
                f"threat-model: {config.federation.threat_model!r} disagrees with the deployment key "
                f"malicious={str(settings.malicious).lower()}; on Flower the deployment key decides (set "
                "malicious=true and the nodes' identity-key and pki, or leave threat-model at 'default')")
        compressor = parse_compression(config.compression.codec)
        if not compressor.secure_ok:
            raise ConfigError(f"compression: {compressor.spec} cannot run over the securefedrec Flower "
                              "transport: its indices reveal which items each user rated; use randk:F, q8, "
                              "q16, mod:B or none")
        if not aggregator_class(config.federation.protocol).secure:
            raise ConfigError(f"protocol: {config.federation.protocol!r} cannot run over the securefedrec "
                              f"Flower transport; use one of "
                              f"{', '.join(protocols_where(lambda cls: cls.secure))}")
        if config.federation.submodel and config.model.compression != "none":
            raise ConfigError(f"model-compression: {config.model.compression!r} with submodel rounds runs "
                              "in the simulator only (securefedrec run); on Flower, submodel rounds send "
                              "float32 rows")
        if config.federation.dropout > 0:
            log.warning("dropout %.2f is a simulation setting; on the deployment engine only real "
                        "dropouts happen", config.federation.dropout)
        self.config = config
        self.settings = settings
        self.link = link
        # calibrates sigma (dp user; each silo's with dp record) before round 1; its aggregator sizes the
        # SecAgg+ graph for the deployment's threat model, as each node checks (node.node_policy)
        model = "malicious" if settings.malicious else "semi-honest"
        self.sim = Simulation(config.replace(threat_model=model)
                              if config.federation.threat_model == "default" else config)
        if self.sim.privacy is not None and not isinstance(self.sim.privacy, UserLevelPrivacy | SiloDPSGD):
            raise ConfigError(f"dp: the {type(self.sim.privacy).__name__} mechanism does not run on the "
                              "Flower deployment engine yet; dp 'user' runs with the Gaussian mechanism "
                              "(noise shares added on the nodes)")
        self.compressor = compressor
        aggregator = self.sim.aggregator
        self.secagg: SecAggAggregator | None = (aggregator if isinstance(aggregator, SecAggAggregator)
                                                 else None)
        self.node_of: dict[int, int] = {}
        self.directory: dict[int, bytes] = {}
        """Client id -> raw Ed25519 identity key, as the nodes reported it (Paillier)."""
        self.outcomes: dict[int, tuple[int, bool]] = {}
        """Client id -> (last round whose first reply arrived, whether the client was in its sum)."""
        self.rounds: list[dict[str, Any]] = []
        self.totals: list[np.ndarray] = []
        self.stopped: str | None = None

    def connect(self) -> None:
        """Discover the nodes (and, for Paillier, the clients' identity keys)."""
        self.node_of = discover(self.link, self.sim.pool.num_clients, self.settings, self.directory)
        if aggregator_class(self.config.federation.protocol).homomorphic:
            missing = sorted(set(self.node_of) - set(self.directory))
            if missing:
                raise ConfigError(f"protocol {self.config.federation.protocol}: no identity key for clients "
                                  f"{missing[:10]} "
                                  f"({len(missing)} in all); give their nodes identity-key and pki "
                                  "(node config)")

    def run_round(self) -> dict[str, Any]:
        """Run the next round; return its record.

        Raises:
            PrivacyBudgetExhausted: the round would exceed the budget (nothing changed).
        """
        from securefedrec import streams
        from securefedrec.compression import unrotate
        from securefedrec.flower.update import dp_info, feedback_info, rotation, selection
        from securefedrec.models.compressed import model_bytes
        from securefedrec.privacy import SiloDPSGD

        sim, cfg = self.sim, self.config
        r = sim.next_round
        if sim.privacy is not None:
            sim.privacy.check_round(r)  # raises PrivacyBudgetExhausted before anything changes
        t0 = time.perf_counter()
        sampled = sim.sample(r)
        record: dict[str, Any] = {"round": r + 1, "clients": len(sampled), "dropped": 0, "aborted": False,
                                  "bytes_up": 0, "bytes_down": 0, "rmse": None, "mae": None, "epsilon": None,
                                  "server_epsilon": None, "model_bytes": model_bytes(sim.model)}
        total = np.zeros_like(sim.global_vec)
        if 0 < len(sampled) < MIN_INPUTS:  # the nodes refuse: a secure sum of one input is that input
            record.update(aborted=True, error=f"{len(sampled)} client sampled; a secure sum needs at least "
                                              f"{MIN_INPUTS}: round skipped, the model is unchanged")
            log.warning("round %s skipped: %s", r + 1, record["error"])
        elif sampled:
            view, bytes_down = sim.downlink.broadcast(
                sim.global_vec, sampled, np.random.default_rng([cfg.run.seed, r, streams.DOWNLINK]))
            rc = sim.round_config(r, len(sampled))
            idx = selection(self.compressor, sim.model.length, cfg.run.seed, r)
            signs = rotation(self.compressor, sim.model.length, cfg.run.seed, r)
            length = sim.model.length if idx is None else int(idx.size)
            info = dp_info(sim.privacy, rc.threshold, sampled)
            client_info = feedback_info(self.outcomes, sampled) if idx is not None else None
            trace: dict[str, set[int]] = {}
            survivors: frozenset[int] = frozenset()
            try:
                if sim.submodel is not None:  # each client sends only its randomized-response rows
                    sub = sim.submodel.aggregator.server(rc, sampled)
                    outcome = submodel_round(
                        self.link, sub, self.node_of, view, malicious=self.settings.malicious,
                        train_timeout=self.settings.train_timeout, stage_timeout=self.settings.stage_timeout,
                        info=submodel_info(sim.submodel.item_epsilon, sub.min_holders), trace=trace)
                    record.update(item_epsilon=sim.submodel.item_epsilon, **rows_reported(sub))
                elif self.secagg is None:
                    outcome = paillier_round(
                        self.link, self.directory, rc, sampled, self.node_of, view, length=length,
                        train_timeout=self.settings.train_timeout, stage_timeout=self.settings.stage_timeout,
                        info=info, client_info=client_info, trace=trace, malicious=self.settings.malicious)
                else:
                    server = SecAggServer(rc, sampled, length,
                                          neighbors=self.secagg.degree_for(len(sampled), rc),
                                          malicious=self.settings.malicious,
                                          corruption_rate=self.secagg.corruption_rate)
                    outcome = secagg_round(
                        self.link, server, self.node_of, view, malicious=self.settings.malicious,
                        train_timeout=self.settings.train_timeout, stage_timeout=self.settings.stage_timeout,
                        info=info, client_info=client_info, trace=trace)
            except AggregationAborted as exc:
                record.update(aborted=True, dropped=len(sampled) - exc.survivors, error=str(exc))
                log.warning("round %s aborted: %s", r + 1, exc)
            except SecureFedRecError as exc:  # an integrity failure aborts the round, never the run
                record.update(aborted=True, dropped=len(sampled), error=f"{type(exc).__name__}: {exc}")
                log.warning("round %s aborted: %s", r + 1, exc)
            else:
                survivors = outcome.survivors
                if signs is not None:  # mod:B: size the next ring by this sum, then undo the rotation
                    sim.uplink.observe(outcome.total, len(survivors))
                    total = unrotate(outcome.total, signs)
                elif idx is None:
                    total = outcome.total
                else:  # random-k: scatter the sum of the selected coordinates back
                    total[idx] = outcome.total
                mean = total / (cfg.federation.sample_rate * sim.pool.num_clients)
                sim.global_vec = sim.optimizer.step(sim.global_vec, mean, coords=idx)
                record.update(
                    dropped=len(sampled) - len(survivors),
                    survivors=sorted(survivors),
                    bytes_up=sum(outcome.bytes_up.values()),
                    bytes_down=bytes_down + sum(outcome.bytes_down.values()),
                    seconds_server=outcome.seconds_server,
                    answered=outcome.answered,
                    quantization_step=outcome.step,
                )
                if sim.privacy is not None:
                    record["noise_std"] = sim.privacy.realized_std(len(survivors), rc.threshold)
            first = (FlowerStage.SUBMODEL_TRAIN if sim.submodel is not None
                     else FlowerStage.PAILLIER_TRAIN if self.secagg is None else FlowerStage.TRAIN)
            for c in trace.get(first.name, ()):  # what each node settles its error feedback with
                self.outcomes[c] = (r, c in survivors)
        if len(sampled) >= MIN_INPUTS and isinstance(sim.privacy, SiloDPSGD):  # they trained on their nodes
            sim.privacy.charge(sampled)
        if sim.privacy is not None:
            sim.privacy.count_participants(sampled)
            record["epsilon"] = sim.privacy.commit_round(r)
            record["server_epsilon"] = sim.privacy.server_epsilon()
        record["seconds"] = time.perf_counter() - t0
        sim.next_round = r + 1
        self.rounds.append(record)
        self.totals.append(total)
        return record

    def run(self) -> dict[str, Any]:
        """Discover the nodes, run every round, write ``settings.output``; return the report."""
        self.connect()
        log.info("%d clients on %d SuperNodes", len(self.node_of), len(set(self.node_of.values())))
        for _ in range(self.sim.next_round, self.config.federation.rounds):
            try:
                record = self.run_round()
            except PrivacyBudgetExhausted as exc:
                self.stopped = f"privacy budget exhausted: {exc}"
                log.warning("stopped: %s", self.stopped)
                break
            log.info("round %s: %s clients, %s dropped%s", record["round"], record["clients"],
                     record["dropped"], " (aborted)" if record["aborted"] else "")
        privacy = self.sim.privacy
        report = {"config": self.config.to_dict(), "transport": self.settings.transport.value,
                  "rounds": self.rounds, "nodes": len(set(self.node_of.values())), "stopped": self.stopped,
                  "privacy": ({**privacy.summary(), "server_epsilon": privacy.server_epsilon(),
                               "secure_aggregation": True}
                              if privacy is not None else None)}
        if self.settings.output:
            write_result(self.settings.output, report, self.sim.global_vec, self.totals)
        return report


def write_result(path: str | Path, report: Mapping[str, Any], global_vec: np.ndarray,
                 totals: Sequence[np.ndarray] | Iterable[np.ndarray]) -> Path:
    """Atomically write ``report`` (as JSON), the final global vector and each round's sum to an ``.npz``."""
    from securefedrec.report import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {
        "report": np.frombuffer(json.dumps(report, default=str).encode(), np.uint8),
        "global_vec": np.asarray(global_vec, np.float64),
    }
    for r, t in enumerate(totals):
        arrays[f"total_{r}"] = np.asarray(t, np.float64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return atomic_write_bytes(path, buf.getvalue())
