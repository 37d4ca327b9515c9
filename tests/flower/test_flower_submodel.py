"""Submodel rounds over Flower in process: the same sum as the simulator, dropouts, the node's own policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import RecordDict

from protocols import Stage
from protocols.secagg.messages import Setup
from protocols.submodel import SubmodelSetup
from securefedrec import streams
from securefedrec.config import ExperimentConfig
from securefedrec.errors import IntegrityError, StageError
from securefedrec.flower import (
    DeploymentSettings,
    FederatedRun,
    FlowerStage,
    GridLink,
    NodeRuntime,
    StageMessage,
    discover,
    experiment_config,
    submodel_round,
)
from securefedrec.flower.rounds.submodel import submodel_info
from securefedrec.server.simulation import Simulation
from securefedrec.server.submodel import submodel_inputs
from tests.flower.conftest import test_identity, train_as_nodes
from tests.flower.test_flower import FakeGrid, FakeLink, _runtimes, _task_identity  # noqa: F401 (autouse)

NODES = 4
EXACT = 40.0
"""An item epsilon whose randomized response keeps every true row and adds none (flip 4e-18 a row):
the simulator's reported sets (os.urandom) and the nodes' (their keystreams) are then the same."""
SMALL = {"synthetic_users": 12, "synthetic_items": 30, "factors": 4, "sample_rate": 1.0, "seed": 5,
         "device": "cpu", "submodel": True, "protocol": "secagg+"}


def _deltas(sim: Simulation, clients: list[int]) -> np.ndarray:
    """The sampled clients' clipped deltas of round 0, trained as the nodes train them."""
    cfg = sim.config
    trained = train_as_nodes(sim, NODES).pool.train(clients, torch.from_numpy(sim.global_vec),
                                                    cfg.model.local_epochs, cfg.model.local_lr)
    bound = cfg.model.update_clip
    out: np.ndarray = trained.clamp_(-bound, bound).to(torch.float64).numpy()
    return out


def _flower_round(config: ExperimentConfig, silent: dict[int, FlowerStage] | None = None) -> Any:
    """One submodel round on NODES in-process nodes (malicious model, reproducible rounding)."""
    settings = DeploymentSettings(reproducible_rounding=True, malicious=True)
    link = FakeLink(_runtimes(config, NODES, settings), silent=silent)
    sim = Simulation(config)
    assert sim.submodel is not None
    sampled = sim.sample(0)
    rc = sim.round_config(0, len(sampled))
    server = sim.submodel.aggregator.server(rc, sampled)
    outcome = submodel_round(link, server, {c: 100 + c % NODES for c in sampled}, sim.global_vec,
                             malicious=True, train_timeout=1, stage_timeout=1,
                             info=submodel_info(config.federation.item_epsilon, 2))
    return outcome, server, sim, sampled, rc


@pytest.mark.parametrize("malicious", [True, False])
def test_submodel_rounds_over_flower_equal_the_simulator(tmp_path: Path, malicious: bool) -> None:
    """Two rounds on 4 SuperNodes (a fake grid through the real ClientApp handler) give the simulator's
    model bit for bit: the ring sums over the union are exact and replayed with the same rounding."""
    run_config = {"synthetic-users": 12, "synthetic-items": 30, "factors": 4, "sample-rate": 1.0, "seed": 5,
                  "device": "cpu", "rounds": 2, "min-nodes": NODES, "reproducible-rounding": True,
                  "submodel": True, "item-epsilon": EXACT, "protocol": "secagg+", "malicious": malicious,
                  "output": str(tmp_path / "out.npz")}
    config, settings = experiment_config(run_config)
    run = FederatedRun(config, settings, GridLink(FakeGrid(NODES, run_config), poll=0.0))
    report = run.run()
    sim = train_as_nodes(Simulation(config.replace(
        threat_model="malicious" if malicious else "semi-honest")), NODES)
    sim.run(progress=False)
    assert [r["aborted"] for r in report["rounds"]] == [False, False]
    assert [r["rows_union"] for r in report["rounds"]] == [r["rows_union"] for r in sim.rounds]
    assert all(r["item_epsilon"] == EXACT for r in report["rounds"])
    assert not np.array_equal(run.sim.global_vec, Simulation(config).global_vec)  # the model moved
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)
    with np.load(tmp_path / "out.npz") as z:
        np.testing.assert_array_equal(z["global_vec"], sim.global_vec)


def test_the_sum_covers_exactly_the_reported_rows_at_a_low_item_epsilon() -> None:
    """At item epsilon 1 the reported sets differ from the true ones (rows dropped, rows added): the sum is
    each client's update on its reported rows (zeros on added ones), within the rounding of n inputs, and
    exactly zero on every row nobody reported or too few clients hold."""
    config = ExperimentConfig(**SMALL, item_epsilon=1.0, rounds=1)
    outcome, server, sim, sampled, _ = _flower_round(config)
    layout = sim.submodel.layout
    inputs = submodel_inputs(layout, _deltas(sim, sampled), sampled)
    assert any(not np.array_equal(server.table[c], inputs[c].rows) for c in sampled)  # RR changed the sets
    holders = np.bincount(np.concatenate(list(server.table.values())), minlength=layout.num_rows)
    expected = np.zeros(layout.length)
    for c in sampled:
        expected[layout.shared] += inputs[c].shared
        sent = np.intersect1d(server.table[c], inputs[c].rows)
        sent = sent[holders[sent] >= 2]  # a row fewer than two clients hold is sent as zeros
        at = np.searchsorted(inputs[c].rows, sent)
        expected[layout.rows[sent].ravel()] += inputs[c].values[at].ravel()
    assert outcome.survivors == frozenset(sampled)
    silent_rows = layout.rows[holders < 2].ravel()
    assert np.all(outcome.total[silent_rows] == 0.0)
    np.testing.assert_allclose(outcome.total, expected, rtol=0, atol=len(sampled) * outcome.step)
    assert np.abs(expected).max() > 100 * len(sampled) * outcome.step  # the tolerance can catch a bad codec


@pytest.mark.parametrize("stage", [FlowerStage.SUBMODEL_TRAIN, FlowerStage.SUBMODEL_SETUP,
                                   FlowerStage.SHARE_KEYS, FlowerStage.MASKED_INPUT, FlowerStage.UNMASK])
def test_a_node_lost_at_a_stage_gives_the_survivors_exact_sum(stage: FlowerStage) -> None:
    """Node 3 (clients 3, 7, 11) stops answering at ``stage``: the Flower round gives the sum the in-process
    protocol gives with the same dropouts, bit for bit (a client lost at UNMASK had masked: it is in it)."""
    config = ExperimentConfig(**SMALL, item_epsilon=EXACT, rounds=1)
    outcome, _, sim, sampled, rc = _flower_round(config, silent={100 + NODES - 1: stage})
    dropped = {FlowerStage.SUBMODEL_TRAIN: Stage.ADVERTISE, FlowerStage.SUBMODEL_SETUP: Stage.ADVERTISE,
               FlowerStage.SHARE_KEYS: Stage.SHARE_KEYS, FlowerStage.MASKED_INPUT: Stage.MASKED_INPUT,
               FlowerStage.UNMASK: Stage.UNMASK}[stage]
    plan = {c: dropped for c in sampled if c % NODES == NODES - 1}
    inputs = submodel_inputs(sim.submodel.layout, _deltas(sim, sampled), sampled)
    sim.submodel.aggregator.rng = np.random.default_rng([config.run.seed, 0, streams.ROUNDING])
    expected = sim.submodel.aggregator.aggregate(inputs, rc, plan).result
    survivors = frozenset(sampled) if stage is FlowerStage.UNMASK else frozenset(sampled) - set(plan)
    assert outcome.survivors == frozenset(expected.survivors) == survivors
    np.testing.assert_array_equal(outcome.total, expected.total)


def test_a_round_below_threshold_aborts_cleanly_and_keeps_the_model() -> None:
    """With every client required (threshold fraction 1), a node lost before masking aborts the round:
    nothing is revealed, the model is unchanged, the record says why, and the next round runs."""
    config = ExperimentConfig(**SMALL, item_epsilon=EXACT, rounds=2, threshold_fraction=1.0)
    settings = DeploymentSettings(min_nodes=NODES, malicious=True)
    link = FakeLink(_runtimes(config, NODES, settings), silent={100 + NODES - 1: FlowerStage.MASKED_INPUT})
    run = FederatedRun(config, settings, link)
    run.node_of = discover(link, config.data.synthetic_users, settings)
    before = run.sim.global_vec.copy()
    record = run.run_round()
    assert record["aborted"] and "threshold" in record["error"]
    np.testing.assert_array_equal(run.sim.global_vec, before)
    link.silent.clear()
    assert not run.run_round()["aborted"]


def _node(config: ExperimentConfig, trained: list[int] | None = None, partition: int = 0) -> NodeRuntime:
    def trainer(cfg: ExperimentConfig, clients: list[int], view: np.ndarray, r: int,
                state: Any) -> np.ndarray:
        if trained is not None:
            trained.extend(clients)
        return np.zeros((len(clients), view.shape[0]))

    return NodeRuntime(config, DeploymentSettings(malicious=True), (partition, NODES), RecordDict(),
                       identity=test_identity(partition, NODES), trainer=trainer)


@pytest.mark.parametrize(("field", "info"), [
    ("submodel.item_epsilon", submodel_info(8.0, 2)),   # a larger epsilon than this node's 4: less private
    ("submodel.item_epsilon", submodel_info(2.0, 2)),   # another policy all the same: the report would lie
    ("submodel.min_holders", submodel_info(4.0, 1)),
])
def test_a_node_refuses_a_submodel_round_announced_for_another_policy(field: str, info: Any) -> None:
    config = ExperimentConfig(**SMALL, item_epsilon=4.0, rounds=1)
    sim = Simulation(config)
    trained: list[int] = []
    node = _node(config, trained)
    clients = tuple(sim.sample(0))
    with pytest.raises(IntegrityError, match=f"round 0, field '{field}'"):
        node.handle(StageMessage(FlowerStage.SUBMODEL_TRAIN, 0, {0: b""}, clients, sim.global_vec, info))
    assert trained == [] and "sfr.node" not in node.state.config_records
    with pytest.raises(StageError, match="this node refused round 0"):
        node.handle(StageMessage(FlowerStage.SUBMODEL_TRAIN, 0, {0: b""}, clients, sim.global_vec,
                                 submodel_info(4.0, 2)))


def test_submodel_and_dense_nodes_refuse_each_others_rounds() -> None:
    """A dense node never reveals a row set; a submodel node never takes a dense round for one."""
    sub = ExperimentConfig(**SMALL, item_epsilon=4.0, rounds=1)
    dense = sub.replace(submodel=False)
    sim = Simulation(dense)
    clients = tuple(sim.sample(0))
    with pytest.raises(IntegrityError, match="round 0, field 'submodel'"):
        _node(dense).handle(StageMessage(FlowerStage.SUBMODEL_TRAIN, 0, {0: b""}, clients, sim.global_vec,
                                         submodel_info(4.0, 2)))
    with pytest.raises(IntegrityError, match="round 0, field 'submodel'"):
        _node(sub).handle(StageMessage(FlowerStage.TRAIN, 0, {0: b""}, clients, sim.global_vec))


@pytest.mark.parametrize(("field", "lie"), [
    ("threshold", lambda s: dataclasses.replace(s, threshold=1)),
    ("share_threshold", lambda s: dataclasses.replace(s, share_threshold=1)),
    ("malicious", lambda s: dataclasses.replace(s, malicious=False)),
    ("client_ids", lambda s: dataclasses.replace(s, client_ids=s.client_ids[:6], degree=5,
                                                 share_threshold=6)),
])
def test_a_node_refuses_a_submodel_setup_weaker_than_its_own(field: str, lie: Any) -> None:
    """The SecAgg setup inside SUBMODEL_SETUP is bounded by the node's policy before the client advertises;
    the round is then refused for good and the client's secrets erased."""
    config = ExperimentConfig(**SMALL, item_epsilon=4.0, rounds=1)
    sim = Simulation(config)
    assert sim.submodel is not None
    clients = sim.sample(0)
    node = _node(config)

    def train(c: int, runtime: NodeRuntime) -> bytes:
        return runtime.handle(StageMessage(FlowerStage.SUBMODEL_TRAIN, 0, {c: b""}, tuple(clients),
                                           sim.global_vec, submodel_info(4.0, 2))).payload[c]

    requests = {c: train(c, node if c == 0 else _node(config, partition=c % NODES)) for c in clients}
    assert "sfr.layout" in node.state.array_records
    server = sim.submodel.aggregator.server(sim.round_config(0, len(clients)), clients)
    setup_bytes, table = SubmodelSetup.split(server.receive_requests(requests)[0])
    weak = SubmodelSetup.encode_parts(lie(Setup.decode(setup_bytes)).encode(), table)
    with pytest.raises(IntegrityError, match=f"client 0, round 0, field '{field}'"):
        node.handle(StageMessage(FlowerStage.SUBMODEL_SETUP, 0, {0: weak}, tuple(clients)))
    assert "sfr.node" not in node.state.config_records and "sfr.layout" not in node.state.array_records
    honest = SubmodelSetup.encode_parts(setup_bytes, table)
    with pytest.raises(StageError, match="this node refused round 0"):
        node.handle(StageMessage(FlowerStage.SUBMODEL_SETUP, 0, {0: honest}, tuple(clients)))


def test_submodel_with_a_compressed_model_is_refused_on_flower() -> None:
    """The nodes send float32 rows; a compressed model's stored rows would not line up (simulator only)."""
    from securefedrec.errors import ConfigError
    from securefedrec.flower.rounds.run import FederatedRun

    config = ExperimentConfig(**SMALL, model_compression="int8")
    Simulation(config)  # the simulator takes it
    with pytest.raises(ConfigError, match="model-compression: 'int8' with submodel rounds runs in the"):
        FederatedRun(config, DeploymentSettings(malicious=True), FakeLink({}))
