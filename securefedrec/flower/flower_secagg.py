"""The comparison path: Flower's own ``SecAggPlusWorkflow`` + ``secaggplus_mod`` carries the updates.

``transport = "flower-secaggplus"`` in the run config. Same clients, same
training, same server optimizer as our transport; only the secure aggregation
is Flower's (semi-honest; the 32-bit-seeded Mersenne Twister masks and the
stage-level dropout behaviour described in ``benchmarks/secure_aggregation.py``).
Every connected node takes part in every round (``sample-rate`` must be 1) and
hosts exactly one client (``num-partitions`` = number of clients).

Flower's workflow averages the (weight-1) updates of the nodes that survived;
the strategy below turns that mean back into the survivors' sum and applies the
server optimizer exactly as :class:`~securefedrec.flower.rounds.run.FederatedRun` does.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from flwr.app import Context, Message

from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError
from securefedrec.flower.settings import DeploymentSettings

__all__ = ["check_flower_secaggplus", "client_train", "run_flower_secaggplus"]

log = logging.getLogger("securefedrec.flower")


def client_train(message: Message, context: Context) -> Message:
    """ClientApp side (behind ``secaggplus_mod``): train this node's client from the broadcast parameters."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from securefedrec.flower.node import train_clients
    from securefedrec.flower.settings import (
        experiment_config,
        hosted_clients,
        node_config,
        node_settings,
        partition_of,
    )

    own = node_config(context.node_config)
    config, _ = experiment_config(context.run_config, own)
    if not node_settings(own).honest_server:
        raise ConfigError("transport flower-secaggplus: Flower's SecAgg+ is honest-but-curious only; this "
                          "node takes part only with honest-server=true in its node config")
    pid, count = partition_of(own)
    num_clients = config.privacy.silos if config.privacy.silos is not None else config.data.synthetic_users
    clients = hosted_clients(pid, count, num_clients)
    if len(clients) != 1:
        raise ConfigError(f"transport flower-secaggplus: node {pid}/{count} would host {len(clients)} "
                          "clients; start one SuperNode per client (num-partitions = number of clients)")
    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    (view,) = parameters_to_ndarrays(fitins.parameters)
    round_id = int(fitins.config.get("round", 0))  # seeds only what training samples (no security role)
    delta = train_clients(config, clients, np.asarray(view, np.float64), round_id, context.state)[0]
    res = FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters([delta]), num_examples=1,
                 metrics={"client": clients[0]})
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=message)


def check_flower_secaggplus(config: ExperimentConfig) -> None:
    """Refuse what Flower's own SecAgg+ transport cannot carry, before anything starts.

    Raises:
        ConfigError: sample rate below 1, differential privacy or compression (this
            transport sends the plain update through Flower's masking: a DP run would
            silently train without noise, a compressed one uncompressed).
    """
    if config.federation.sample_rate != 1.0:
        raise ConfigError("sample-rate: transport flower-secaggplus runs every node every round; use 1.0")
    if config.privacy.mode != "none":
        raise ConfigError(f"dp: transport flower-secaggplus adds no noise, so dp {config.privacy.mode!r} "
                          "would run without privacy; use transport 'securefedrec'")
    if config.compression.codec != "none":
        raise ConfigError(f"compression: transport flower-secaggplus sends uncompressed updates; "
                          f"{config.compression.codec!r} needs transport 'securefedrec'")
    if config.federation.submodel:
        raise ConfigError("submodel: transport flower-secaggplus sends dense updates; submodel rounds run "
                          "over transport 'securefedrec' (or in the simulator)")


def run_flower_secaggplus(grid: Any, context: Context, config: ExperimentConfig,
                          settings: DeploymentSettings) -> dict[str, Any]:
    """ServerApp side: ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` with our MF strategy."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    from securefedrec.flower.rounds.run import write_result
    from securefedrec.server.simulation import Simulation

    check_flower_secaggplus(config)
    if settings.malicious:
        raise ConfigError("transport: flower-secaggplus is Flower's honest-but-curious SecAgg+ (no signed "
                          "keys, no consistency round); set malicious=false in the run config and "
                          "honest-server=true in every node's node config, or use transport='securefedrec'")
    sim = Simulation(config)
    n = sim.pool.num_clients
    records: list[dict[str, Any]] = []
    totals: list[np.ndarray] = []

    class MFStrategy(FedAvg):
        """FedAvg's plumbing; aggregation = our server optimizer on the survivors' sum."""

        def initialize_parameters(self, client_manager: Any) -> Any:
            return ndarrays_to_parameters([sim.global_vec])

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            if not results:
                records.append({"round": server_round, "aborted": True, "clients": n, "dropped": n})
                totals.append(np.zeros_like(sim.global_vec))
                return None, {}
            (mean,) = parameters_to_ndarrays(results[0][1].parameters)
            total = np.asarray(mean, np.float64) * len(results)  # weight-1 mean of the survivors -> sum
            sim.global_vec = sim.optimizer.step(sim.global_vec, total / (config.federation.sample_rate * n))
            sim.next_round = server_round
            survivors = sorted(int(res.metrics.get("client", -1)) for _, res in results)
            records.append({"round": server_round, "aborted": False, "clients": n,
                            "dropped": n - len(results), "survivors": survivors})
            totals.append(total)
            log.info("round %s: %s of %s clients in the sum (Flower SecAgg+)", server_round, len(results), n)
            return ndarrays_to_parameters([sim.global_vec]), {}

        def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            return []

    strategy = MFStrategy(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=settings.min_nodes,
                          min_available_clients=settings.min_nodes,
                          on_fit_config_fn=lambda server_round: {"round": server_round - 1})
    shares = n if config.federation.neighbors is None else min(n, config.federation.neighbors + 1)
    threshold = max(shares // 2 + 1, math.ceil(config.federation.threshold_fraction * shares))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=config.federation.rounds),
                           strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=shares, reconstruction_threshold=threshold, max_weight=1.0,
        clipping_range=config.model.update_clip, timeout=settings.stage_timeout))
    workflow(grid, legacy)
    done = {r["round"] for r in records}
    for r in range(1, config.federation.rounds + 1):  # Flower skips aggregate_fit when its unmasking fails
        if r not in done:
            records.append({"round": r, "aborted": True, "clients": n, "dropped": None,
                            "error": "Flower's SecAggPlusWorkflow did not produce an aggregate"})
            totals.append(np.zeros_like(sim.global_vec))
    order = sorted(range(len(records)), key=lambda i: records[i]["round"])
    records, totals = [records[i] for i in order], [totals[i] for i in order]
    report = {"config": config.to_dict(), "transport": settings.transport.value, "rounds": records,
              "nodes": n}
    if settings.output:
        write_result(settings.output, report, sim.global_vec, totals)
    return report
