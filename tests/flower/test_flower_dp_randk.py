"""User-level DP and random-k compression over Flower, in process: the nodes add the noise shares and keep
the error feedback; the result must equal the in-process simulator at the same seed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import RecordDict

from protocols import Stage
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError, DecodeError, IntegrityError, PrivacyBudgetExhausted, StageError
from securefedrec.flower import (
    DeploymentSettings,
    FederatedRun,
    FeedbackStore,
    FlowerStage,
    NodeRuntime,
    NodeSettings,
    StageMessage,
    node_settings,
    noise_rng,
    pack,
    unpack,
)
from securefedrec.flower.node.runtime import Trainer
from securefedrec.flower.update import check_dp
from securefedrec.server.simulation import Simulation
from tests.flower.conftest import fake_grid_and_simulator, train_as_nodes
from tests.flower.test_flower import FakeGrid, FakeLink, _task_identity, node_options  # noqa: F401 (autouse)

USERS = {"synthetic_users": 24, "synthetic_items": 20, "factors": 3, "seed": 5, "device": "cpu"}
RUN = {"synthetic-users": 24, "synthetic-items": 20, "factors": 3, "seed": 5, "device": "cpu",
       "silos": "none"}


def _runtimes(config: ExperimentConfig, n: int, settings: DeploymentSettings,
              node: NodeSettings) -> dict[int, NodeRuntime]:
    return {100 + i: NodeRuntime(config, settings, (i, n), RecordDict(),
                                 **node_options(settings, i, n, node)) for i in range(n)}


# ---- the whole loop, through the ClientApp handler -----------------------------------------------
def test_fake_grid_dp_user_randk_equals_the_simulator() -> None:
    n = 4
    run_config = {**RUN, "sample-rate": 0.6, "rounds": 3, "min-nodes": n, "reproducible-rounding": True,
                  "dp": "user", "epsilon": 8.0, "compression": "randk:0.3"}
    run, report, sim, grid = fake_grid_and_simulator(run_config, n)
    rounds = report["rounds"]
    assert [r["aborted"] for r in rounds] == [False] * 3
    assert [r["clients"] for r in rounds] == [r["clients"] for r in sim.rounds]
    # Poisson sampling at 0.6: clients sit rounds out, so residuals wait on their nodes for later rounds
    assert any(r["clients"] < 24 for r in rounds)
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)
    assert [r["epsilon"] for r in rounds] == [r["epsilon"] for r in sim.rounds]
    # the epsilon against the server (no amplification, the most-sampled client) is the simulator's too
    assert [r["server_epsilon"] for r in rounds] == [r["server_epsilon"] for r in sim.rounds]
    assert all(r["server_epsilon"] > r["epsilon"] for r in rounds)  # q = 0.6: amplification is real
    assert report["privacy"]["server_epsilon"] == rounds[-1]["server_epsilon"]
    assert [r["noise_std"] for r in rounds] == [r["noise_std"] for r in sim.rounds]
    assert sim.privacy is not None and report["privacy"]["noise_multiplier"] == sim.privacy.summary()[
        "noise_multiplier"]
    # each client that trained keeps its error-feedback record on its own node, nowhere else
    for nid, ctx in grid.contexts.items():
        stored = {key for key in ctx.state.array_records if key.startswith("sfr.ef.")}
        trained = {c for r in rounds for c in r["survivors"] if c % n == nid - 100}
        assert stored == {f"sfr.ef.{c}" for c in trained}


def test_fake_grid_dp_user_mod_equals_the_simulator() -> None:
    """mod:B over Flower: nodes rotate, the server sizes the ring by the last sum; equal to the simulator."""
    n = 3
    run_config = {**RUN, "sample-rate": 0.8, "rounds": 3, "min-nodes": n, "reproducible-rounding": True,
                  "dp": "user", "epsilon": 8.0, "compression": "mod:8"}
    run, report, sim, _ = fake_grid_and_simulator(run_config, n)
    rounds = report["rounds"]
    assert [r["aborted"] for r in rounds] == [False] * 3
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)
    assert run.sim.uplink.spread == sim.uplink.spread is not None  # rounds 2 and 3 wrapped


def _recording_trainer() -> tuple[list[int], Trainer]:
    """A node trainer that returns zero deltas and records which clients it trained."""
    trained: list[int] = []

    def trainer(config: ExperimentConfig, clients: list[int], view: np.ndarray, r: int,
                state: Any) -> np.ndarray:
        trained.extend(clients)
        return np.zeros((len(clients), view.shape[0]))

    return trained, trainer


def test_node_refuses_a_wrapping_round_it_did_not_ask_for() -> None:
    """A server that asks q8 nodes for a wrapping (mod:B) ring is refused before any training."""
    n = 2
    settings = DeploymentSettings(min_nodes=n)
    trained, trainer = _recording_trainer()

    q8, mod = (ExperimentConfig(**USERS, sample_rate=1.0, rounds=1, compression=c) for c in ("q8", "mod:8"))
    link = FakeLink({100 + i: NodeRuntime(q8, settings, (i, n), RecordDict(), trainer=trainer,
                                **node_options(settings, i, n))
                     for i in range(n)})
    run = FederatedRun(mod, settings, link)
    run.sim.uplink.spread = (0.1, 24)  # a sum was released before: this round wraps
    run.connect()
    record = run.run_round()
    assert record["aborted"] and trained == []
    assert "round 0, field 'wrap'" in link.errors[0] and "'q8'" in link.errors[0]


def test_only_the_public_coordinates_are_masked_and_sent() -> None:
    from securefedrec.compression import RandomK
    from securefedrec.flower.update import selection

    n = 3
    sparse_config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1, compression="randk:0.1")
    dense_config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1)
    runs = []
    for cfg in (sparse_config, dense_config):
        settings = DeploymentSettings(min_nodes=n, reproducible_rounding=True)
        run = FederatedRun(cfg, settings, FakeLink(_runtimes(cfg, n, settings, NodeSettings())))
        run.connect()
        run.run_round()
        runs.append(run)
    sparse, dense = runs
    length = sparse.sim.layout.length
    idx = selection(RandomK(0.1), length, 5, 0)
    assert idx is not None and idx.size == int(np.ceil(0.1 * length))
    # the server scattered the sum of the public coordinates back, nothing else moved
    assert set(np.flatnonzero(sparse.totals[0])) == set(idx.tolist())
    # each masked input shrinks from L to k ring elements of ceil(32 / 8) = 4 bytes; the rest is equal
    assert dense.rounds[0]["bytes_up"] - sparse.rounds[0]["bytes_up"] == 24 * 4 * (length - idx.size)


def test_dropout_keeps_the_dropped_clients_vector_in_the_residual(
        dropout_plans: dict[int, dict[int, Stage]]) -> None:
    """Node 103 vanishes after training in round 1 and is back in round 2: its clients keep their whole
    vector for round 2 (error feedback), exactly as the simulator's Uplink does for clients that dropped."""
    n = 4
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=2, dp="user", noise_multiplier=0.8,
                              compression="randk:0.25", dropout=0.01)
    settings = DeploymentSettings(min_nodes=n, reproducible_rounding=True)
    link = FakeLink(_runtimes(config, n, settings, NodeSettings(reproducible_noise=True)))
    run = FederatedRun(config, settings, link)
    run.connect()
    dropped = [c for c in range(24) if c % n == 3]
    dropout_plans[0] = dict.fromkeys(dropped, Stage.SHARE_KEYS)
    sim = train_as_nodes(Simulation(config), n)
    link.silent = {103: FlowerStage.SHARE_KEYS}
    first, expected_first = run.run_round(), sim.run_round()
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)
    link.silent = {}
    second, expected_second = run.run_round(), sim.run_round()
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)
    assert first["survivors"] == [c for c in range(24) if c not in dropped]
    assert first["dropped"] == expected_first["dropped"] == len(dropped)
    assert second["survivors"] == list(range(24)) and expected_second["dropped"] == 0
    assert run.outcomes[dropped[0]] == (1, True) and run.outcomes[0] == (1, True)


def test_a_node_that_never_trained_has_no_residual_to_settle() -> None:
    n = 4
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=2, compression="randk:0.25")
    settings = DeploymentSettings(min_nodes=n, reproducible_rounding=True)
    link = FakeLink(_runtimes(config, n, settings, NodeSettings()))
    run = FederatedRun(config, settings, link)
    run.connect()
    link.silent = {103: FlowerStage.TRAIN}
    first = run.run_round()
    assert first["survivors"] == [c for c in range(24) if c % n != 3]
    assert not any(k.startswith("sfr.ef.") for k in link.runtimes[103].state.array_records)
    assert 3 not in run.outcomes and run.outcomes[0] == (0, True)
    link.silent = {}
    assert run.run_round()["survivors"] == list(range(24))


# ---- the budget -------------------------------------------------------------------------------------
def test_the_accountant_is_checked_before_a_round_and_charged_after() -> None:
    n = 2
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=2, dp="user", epsilon=4.0)
    settings = DeploymentSettings(min_nodes=n, reproducible_rounding=True)
    run = FederatedRun(config, settings, FakeLink(_runtimes(config, n, settings, NodeSettings())))
    run.connect()
    eps = [run.run_round()["epsilon"] for _ in range(2)]
    assert 0 < eps[0] < eps[1] <= 4.0
    before = run.sim.global_vec.copy()
    with pytest.raises(PrivacyBudgetExhausted, match="round 3"):
        run.run_round()  # sigma was calibrated for 2 rounds
    np.testing.assert_array_equal(run.sim.global_vec, before)
    assert run.sim.next_round == 2 and len(run.rounds) == 2


def test_noise_is_fresh_unless_the_node_asks_for_the_public_stream() -> None:
    n = 2
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1, dp="user", noise_multiplier=1.0)
    settings = DeploymentSettings(min_nodes=n, reproducible_rounding=True)
    totals, globals_ = [], []
    for node in (NodeSettings(reproducible_noise=True), NodeSettings(), NodeSettings()):
        run = FederatedRun(config, settings, FakeLink(_runtimes(config, n, settings, node)))
        run.connect()
        run.run_round()
        totals.append(run.totals[0])
        globals_.append(run.sim.global_vec)
    sim = train_as_nodes(Simulation(config), n)
    sim.run_round()
    seeded, fresh_a, fresh_b = totals
    assert not np.array_equal(fresh_a, fresh_b) and not np.array_equal(fresh_a, seeded)
    np.testing.assert_array_equal(globals_[0], sim.global_vec)
    assert not np.array_equal(globals_[1], sim.global_vec)
    # the public stream is the simulator's [seed, round, NOISE, client]
    mechanism = sim.privacy.mechanism  # type: ignore[union-attr]
    share = mechanism.privatize(np.zeros(4), 12, noise_rng(5, 0, 7))
    again = mechanism.privatize(np.zeros(4), 12, sim.privacy.rng_factory(0, 7))  # type: ignore[union-attr]
    np.testing.assert_array_equal(share, again)


# ---- what a node refuses ------------------------------------------------------------------------
DP_CONFIG = ExperimentConfig(**USERS, sample_rate=1.0, rounds=2, dp="user", noise_multiplier=1.0, clip=0.5)
GOOD = {"dp.sigma": 1.0, "dp.clip": 0.5, "dp.threshold": 12}


@pytest.mark.parametrize(
    ("change", "protocol_threshold", "clip_range", "error", "match"),
    [
        ({}, 12, 16.5, None, ""),
        ({"dp.sigma": 1.5}, 12, 20.0, None, ""),  # more noise than required is allowed
        ({"dp.sigma": 0.5}, 12, 16.5, IntegrityError, "client 3, round 1, field 'dp.sigma'"),
        ({"dp.clip": 2.0}, 12, 16.5, IntegrityError, "field 'dp.clip'"),
        ({"dp.threshold": 13}, 12, 16.5, IntegrityError, "field 'dp.threshold'"),
        ({"dp.threshold": 0}, 12, 16.5, IntegrityError, "field 'dp.threshold'"),
        ({}, 12, 0.6, IntegrityError, "field 'clip_range'"),
        ({"dp.sigma": "1.0"}, 12, 16.5, DecodeError, "field 'dp.sigma'"),
        ({"dp.threshold": None}, 12, 16.5, DecodeError, "field 'dp.threshold'"),
    ],
)
def test_node_checks_the_servers_dp_parameters(change: dict[str, Any], protocol_threshold: int,
                                               clip_range: float, error: type[Exception] | None,
                                               match: str) -> None:
    info = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    if error is None:
        mechanism, threshold = check_dp(DP_CONFIG, info, protocol_threshold=protocol_threshold,
                                        clip_range=clip_range, where="client 3, round 1")
        assert threshold == info["dp.threshold"] and mechanism.noise_multiplier == info["dp.sigma"]
        return
    with pytest.raises(error, match=match):
        check_dp(DP_CONFIG, info, protocol_threshold=protocol_threshold, clip_range=clip_range,
                 where="client 3, round 1")


def test_node_refuses_a_round_with_lowered_noise_before_training() -> None:
    n = 2
    settings = DeploymentSettings(min_nodes=n)
    trained, trainer = _recording_trainer()

    node = NodeRuntime(DP_CONFIG, settings, (0, n), RecordDict(), trainer=trainer,
                                **node_options(settings, 0, n))

    class Tamper(FakeLink):
        """Delivers the server's messages with a lowered noise multiplier."""

        def exchange(self, outbox: Any, timeout: float) -> dict[int, StageMessage]:
            return super().exchange({
                nid: StageMessage(m.stage, m.round_id, m.payload, m.sampled, m.global_vec,
                                  {**m.info, "dp.sigma": 0.01} if m.stage is FlowerStage.TRAIN else m.info)
                for nid, m in outbox.items()}, timeout)

    link = Tamper({100: node, 101: NodeRuntime(DP_CONFIG, settings, (1, n), RecordDict(), trainer=trainer,
                                **node_options(settings, 1, n))})
    run = FederatedRun(DP_CONFIG, settings, link)
    run.connect()
    record = run.run_round()
    assert record["aborted"] and trained == []
    assert len(link.errors) == 2 and "client 0, round 0, field 'dp.sigma'" in link.errors[0]
    assert "sfr.history" not in node.state.config_records  # refused before any state changed


def test_feedback_store_settles_a_pending_round_from_the_servers_outcome() -> None:
    state = RecordDict()
    store = FeedbackStore(state)
    full, idx, sent = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 3]), np.array([2.0, 3.5])
    assert store.residual(7, {}, "w") is None
    store.keep(7, 4, full, idx, sent)
    # reported in its sum: what was sent leaves the residual (the clip kept 0.5 of coordinate 3)
    np.testing.assert_array_equal(store.residual(7, {"ef.round.7": 4, "ef.in.7": 1}, "w"), [1.0, 0, 3.0, 0.5])
    # not in the sum, not reported, or reported for an earlier round: everything stays
    for info in ({"ef.round.7": 4, "ef.in.7": 0}, {}, {"ef.round.7": 2, "ef.in.7": 1}):
        np.testing.assert_array_equal(store.residual(7, info, "w"), full)
    with pytest.raises(StageError, match=r"field 'ef\.round\.7'.*round 5.*round 4"):
        store.residual(7, {"ef.round.7": 5, "ef.in.7": 1}, "client 7, round 6")
    with pytest.raises(DecodeError, match=r"'ef\.in\.7' must be 0 or 1"):
        store.residual(7, {"ef.round.7": 4, "ef.in.7": 2}, "w")
    store.keep(8, 1, np.array([1.0, 1.0]), np.array([0, 1]), np.array([1.0, 1.0]))
    assert store.residual(8, {"ef.round.8": 1, "ef.in.8": 1}, "w") is None  # all sent


# ---- what the server refuses, with the reason ------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"protocol": "plaintext"}, "protocol: 'plaintext' cannot run.*secagg, secagg\\+, paillier"),
    ],
)
def test_federated_run_refuses_what_does_not_run_over_flower(options: dict[str, Any], match: str) -> None:
    config = ExperimentConfig(**{**USERS, "sample_rate": 1.0, "rounds": 1, **options})
    with pytest.raises(ConfigError, match=match):
        FederatedRun(config, DeploymentSettings(), FakeLink({}))


def test_node_settings_come_from_the_node_config() -> None:
    from protocols.paillier.keys import MIN_KEY_BITS
    from securefedrec.flower.settings import MIN_PAILLIER_KEY_BITS

    assert MIN_PAILLIER_KEY_BITS == MIN_KEY_BITS
    assert node_settings({"partition-id": 0}) == NodeSettings()
    assert node_settings({"reproducible-noise": True, "paillier-key-bits": 512}) == NodeSettings(
        reproducible_noise=True, paillier_key_bits=512)
    with pytest.raises(ConfigError, match="reproducible-noise must be true or false"):
        node_settings({"reproducible-noise": "yes"})
    with pytest.raises(ConfigError, match="paillier-key-bits must be an even int"):
        node_settings({"paillier-key-bits": 257})


def test_info_fields_carry_floats_and_refuse_other_types() -> None:
    msg = StageMessage(FlowerStage.TRAIN, 1, info={"dp.sigma": 1.25, "dp.threshold": 3, "s": "x"})
    assert unpack(pack(msg)).info == {"dp.sigma": 1.25, "dp.threshold": 3, "s": "x"}
    content = pack(msg)
    content.config_records["sfr.meta"]["info.flag"] = True
    with pytest.raises(DecodeError, match=r"field 'info\.flag' must be an int, float or str"):
        unpack(content, where="node 4")


def test_only_the_gaussian_mechanism_runs_over_flower() -> None:
    if "dp_mechanism" not in ExperimentConfig.field_names():
        pytest.skip("this build has no other DP mechanism")
    options: dict[str, Any] = {"dp_mechanism": "skellam"}
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1, dp="user", noise_multiplier=1.0, **options)
    with pytest.raises(ConfigError, match="mechanism does not run on the Flower deployment engine"):
        FederatedRun(config, DeploymentSettings(), FakeLink({}))
    with pytest.raises(ConfigError, match="client 1, round 0, field 'dp_mechanism'"):
        check_dp(config, GOOD, protocol_threshold=12, clip_range=20.0, where="client 1, round 0")
