"""Packed Paillier over Flower, in process: key holder, sealed key delivery, encryption on the nodes,
homomorphic sum on the server, decryption by a key-holding node; equal to the in-process simulator."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("gmpy2")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import RecordDict

from protocols import Stage
from protocols.paillier import PaillierAggregator
from protocols.secagg.client import raw_public
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError, StageError
from securefedrec.flower import (
    DeploymentSettings,
    FederatedRun,
    FlowerStage,
    Identity,
    NodeRuntime,
    NodeSettings,
    StageMessage,
    paillier_rounding_rng,
)
from securefedrec.server.simulation import Simulation
from tests.flower.conftest import train_as_nodes
from tests.flower.test_flower import FakeLink

USERS = {"synthetic_users": 24, "synthetic_items": 20, "factors": 3, "seed": 5, "device": "cpu",
         "protocol": "paillier"}
KEYS = {c: Ed25519PrivateKey.generate() for c in range(24)}
PKI = {c: raw_public(k) for c, k in KEYS.items()}
SMALL_KEY = NodeSettings(paillier_key_bits=512)  # tests only; the default is 2048
HONEST_SMALL_KEY = NodeSettings(paillier_key_bits=512, honest_server=True)


def _runtimes(config: ExperimentConfig, n: int, settings: DeploymentSettings,
              nodes: dict[int, NodeSettings] | None = None, node: NodeSettings = SMALL_KEY,
              ) -> dict[int, NodeRuntime]:
    out = {}
    for i in range(n):
        identity = Identity({c: k for c, k in KEYS.items() if c % n == i}, PKI)
        own = (nodes or {}).get(100 + i, node)
        out[100 + i] = NodeRuntime(config, settings, (i, n), RecordDict(), identity=identity,
                                   node=dataclasses.replace(own, honest_server=not settings.malicious))
    return out


def test_paillier_dp_user_randk_equals_the_simulator() -> None:
    n = 4
    config = ExperimentConfig(**USERS, sample_rate=0.7, rounds=2, dp="user", noise_multiplier=0.7,
                              compression="randk:0.3")
    settings = DeploymentSettings(malicious=False, min_nodes=n, reproducible_rounding=True)
    link = FakeLink(_runtimes(config, n, settings, node=NodeSettings(paillier_key_bits=512,
                                                                     reproducible_noise=True)))
    run = FederatedRun(config, settings, link)
    report = run.run()
    sim = train_as_nodes(Simulation(config, aggregator=PaillierAggregator(key_bits=512)), n)
    sim.run(progress=False)
    rounds = report["rounds"]
    assert [r["aborted"] for r in rounds] == [False, False]
    assert [r["clients"] for r in rounds] == [r["clients"] for r in sim.rounds]
    # same sampling, training, noise, selection and rounding streams: bit for bit
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)
    assert [r["epsilon"] for r in rounds] == [r["epsilon"] for r in sim.rounds]
    first = rounds[0]["answered"]
    assert first["PAILLIER_TRAIN"] == first["PAILLIER_ENCRYPT"] == rounds[0]["clients"]
    assert first["PAILLIER_DECRYPT"] == 1 and "PAILLIER_HOLD" not in first
    # the key holder generated the key once; every node kept it for later rounds
    keys = {bytes(rt.state.config_records["sfr.paillier"]["p"]) for rt in link.runtimes.values()}  # type: ignore[arg-type]
    assert len(keys) == 1
    # a node drops each plaintext update once it is encrypted
    assert all(len(rt.state.array_records.get("sfr.deltas", {})) == 0 for rt in link.runtimes.values())


@pytest.mark.parametrize(
    ("silent", "plan_stage", "hold"),
    [
        (FlowerStage.PAILLIER_ADVERTS, Stage.SHARE_KEYS, True),  # the key holder (client 0) is gone
        (FlowerStage.PAILLIER_DECRYPT, Stage.UNMASK, False),  # the first decryptor is gone
    ],
)
def test_paillier_dropouts_give_the_simulators_sum(
        dropout_plans: dict[int, dict[int, Stage]], silent: FlowerStage, plan_stage: Stage, hold: bool,
) -> None:
    n = 4
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1, dropout=0.01)
    settings = DeploymentSettings(malicious=False, min_nodes=n, reproducible_rounding=True)
    link = FakeLink(_runtimes(config, n, settings), silent={100: silent})
    run = FederatedRun(config, settings, link)
    run.connect()
    record = run.run_round()
    gone = [c for c in range(24) if c % n == 0]
    dropout_plans[0] = dict.fromkeys(gone, plan_stage)
    sim = train_as_nodes(Simulation(config, aggregator=PaillierAggregator(key_bits=512)), n)
    expected = sim.run_round()
    assert not record["aborted"] and record["dropped"] == expected["dropped"]
    in_sum = list(range(24)) if hold is False else [c for c in range(24) if c not in gone]
    assert record["survivors"] == in_sum
    assert ("PAILLIER_HOLD" in record["answered"]) == hold
    assert record["answered"]["PAILLIER_DECRYPT"] == 1
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)


def test_paillier_drop_before_encrypting_gives_the_survivors_sum() -> None:
    """In process, the senders share one rounding stream in id order, so a key holder that vanishes before
    encrypting shifts the later senders' draws; the nodes cannot know that in advance. The sum is then the
    survivors' exact sum up to one quantization step per client (stochastic rounding), no more."""
    import torch

    n = 4
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1)
    settings = DeploymentSettings(malicious=False, min_nodes=n, reproducible_rounding=True)
    link = FakeLink(_runtimes(config, n, settings), silent={100: FlowerStage.PAILLIER_ENCRYPT})
    run = FederatedRun(config, settings, link)
    run.connect()
    record = run.run_round()
    survivors = [c for c in range(24) if c % n != 0]
    assert not record["aborted"] and record["survivors"] == survivors
    assert record["answered"]["PAILLIER_KEY"] == 23 and record["answered"]["PAILLIER_ENCRYPT"] == 18
    sim = train_as_nodes(Simulation(config), n)
    deltas = sim.pool.train(list(range(24)), torch.from_numpy(sim.global_vec), 1, config.model.local_lr)
    bound = config.model.update_clip
    plain = deltas.clamp_(-bound, bound).to(torch.float64).numpy()[survivors].sum(0)
    error = np.abs(run.totals[0] - plain).max()
    assert 0 < error <= len(survivors) * record["quantization_step"]


def test_a_node_refuses_a_key_below_its_paillier_key_bits() -> None:
    n = 4
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1)
    settings = DeploymentSettings(malicious=False, min_nodes=n)
    strict = NodeSettings(paillier_key_bits=1024)
    link = FakeLink(_runtimes(config, n, settings, nodes={102: strict}))
    run = FederatedRun(config, settings, link)
    run.connect()
    record = run.run_round()  # node 100 (client 0) holds a 512-bit key; node 102 never acknowledges it
    assert record["survivors"] == [c for c in range(24) if c % n != 2]
    assert "sfr.paillier" not in link.runtimes[102].state.config_records
    # the client itself refuses, holding the node's paillier-key-bits as its own floor
    assert link.errors == ["node 102: client 2, round 0, PAILLIER_KEY: round 0: client 2 refuses the 512-bit "
                           "Paillier key of holder 0: below its minimum of 1024 bits"]


def test_paillier_needs_every_clients_identity_key() -> None:
    n = 2
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1)
    settings = DeploymentSettings(malicious=False, min_nodes=n)
    runtimes = _runtimes(config, n, settings)
    runtimes[101] = NodeRuntime(config, settings, (1, n), RecordDict(), node=HONEST_SMALL_KEY)  # no identity
    with pytest.raises(ConfigError, match="no identity key for clients \\[1, 3, 5"):
        FederatedRun(config, settings, FakeLink(runtimes)).connect()
    with pytest.raises(ConfigError, match=r"malicious-server model .* needs this node's identity-key"):
        NodeRuntime(config, DeploymentSettings(malicious=True), (1, n), RecordDict(), node=SMALL_KEY)


# ---- the malicious-server model: signed ciphertexts, consistency stage, verified decryption ---------
def test_malicious_paillier_equals_the_simulator() -> None:
    n = 4
    config = ExperimentConfig(**USERS, sample_rate=0.7, rounds=2)
    settings = DeploymentSettings(min_nodes=n, reproducible_rounding=True, malicious=True)
    link = FakeLink(_runtimes(config, n, settings))
    run = FederatedRun(config, settings, link)
    report = run.run()
    sim = train_as_nodes(Simulation(config, aggregator=PaillierAggregator(key_bits=512, malicious=True)),
                         n)
    sim.run(progress=False)
    rounds = report["rounds"]
    assert [r["aborted"] for r in rounds] == [False, False] and not link.errors
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)
    for r in rounds:
        answered = r["answered"]
        assert answered["PAILLIER_ENCRYPT"] == answered["PAILLIER_CONSISTENCY"] == r["clients"]
        assert answered["PAILLIER_DECRYPT"] == 1
    # the decryptor downloads every survivor's ciphertexts: the malicious round costs more bytes down
    plain = DeploymentSettings(malicious=False, min_nodes=n)
    honest = FederatedRun(config, dataclasses.replace(plain, reproducible_rounding=True),
                          FakeLink(_runtimes(config, n, plain))).run()
    assert rounds[0]["bytes_down"] > honest["rounds"][0]["bytes_down"]


def test_malicious_paillier_survives_a_node_lost_at_the_consistency_stage(
        dropout_plans: dict[int, dict[int, Stage]]) -> None:
    n = 4
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1, dropout=0.01)
    settings = DeploymentSettings(min_nodes=n, reproducible_rounding=True, malicious=True)
    link = FakeLink(_runtimes(config, n, settings), silent={100: FlowerStage.PAILLIER_CONSISTENCY})
    run = FederatedRun(config, settings, link)
    run.connect()
    record = run.run_round()
    gone = [c for c in range(24) if c % n == 0]
    dropout_plans[0] = dict.fromkeys(gone, Stage.CONSISTENCY)
    sim = train_as_nodes(Simulation(config, aggregator=PaillierAggregator(key_bits=512, malicious=True)),
                         n)
    sim.run_round()
    assert not record["aborted"] and record["survivors"] == list(range(24))  # their ciphertexts arrived
    assert record["answered"]["PAILLIER_CONSISTENCY"] == 18  # >= t' = 13
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)


def test_malicious_paillier_aborts_below_t_prime_signatures() -> None:
    n = 4
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1)
    settings = DeploymentSettings(min_nodes=n, malicious=True)
    silent = {100: FlowerStage.PAILLIER_CONSISTENCY, 101: FlowerStage.PAILLIER_CONSISTENCY}
    link = FakeLink(_runtimes(config, n, settings), silent=silent)
    run = FederatedRun(config, settings, link)
    run.connect()
    record = run.run_round()  # 12 of 24 sign; t' = 13 although the threshold is 12
    assert record["aborted"] and "only 12 consistency signatures" in record["error"]
    assert "PAILLIER_DECRYPT" not in link.calls


def test_a_server_in_the_other_model_gets_no_sum() -> None:
    n = 2
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1)
    for nodes, server, error in ((True, False, "message kind 9, expected 6"),
                                 (False, True, "client 0 sent unsigned ciphertexts")):
        runtimes = _runtimes(config, n, DeploymentSettings(min_nodes=n, malicious=nodes))
        run = FederatedRun(config, DeploymentSettings(min_nodes=n, malicious=server), FakeLink(runtimes))
        run.connect()
        record = run.run_round()  # signed ciphertexts to an honest server, or unsigned to a checking one
        assert record["aborted"] and error in record["error"]


def test_paillier_node_answers_each_stage_once_and_in_order() -> None:
    n = 2
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1)
    settings = DeploymentSettings(malicious=False, min_nodes=n)
    sim = Simulation(config)
    info = {"round.clip_range": 16.0, "round.ring_bits": 32, "round.value_bits": 0, "round.threshold": 12,
            "round.length": sim.layout.length}
    train = StageMessage(FlowerStage.PAILLIER_TRAIN, 0, {0: b"", 2: b""}, tuple(range(24)), sim.global_vec,
                         info)

    def trained() -> NodeRuntime:  # each refusal ends the round on its node: a fresh node per case
        node = _runtimes(config, n, settings)[100]
        node.handle(train)
        return node

    with pytest.raises(StageError, match="client 0, round 0, PAILLIER_KEY: this node has no state"):
        _runtimes(config, n, settings)[100].handle(StageMessage(FlowerStage.PAILLIER_KEY, 0, {0: b"x"}))
    for stage in (FlowerStage.PAILLIER_KEY, FlowerStage.PAILLIER_ENCRYPT, FlowerStage.PAILLIER_DECRYPT):
        with pytest.raises(StageError, match=f"client 0, round 0, {stage.name}: out of order"):
            trained().handle(StageMessage(stage, 0, {0: b"x"}))
    with pytest.raises(StageError, match="never run twice"):
        trained().handle(train)
    with pytest.raises(StageError, match="runs the Paillier protocol"):
        trained().handle(StageMessage(FlowerStage.SHARE_KEYS, 0, {0: b"x"}))


def test_paillier_rounding_stream_is_the_simulators_shared_one() -> None:
    shared = np.random.default_rng([5, 1, 2])
    draws = shared.random(3 * 7 + 7)
    np.testing.assert_array_equal(paillier_rounding_rng(5, 1, 3 * 7).random(7), draws[21:])
