"""Record-level DP (DP-SGD inside each silo) over Flower, in process: each node trains its silos and keeps
their state across rounds; the server keeps the accountants. The result must equal the in-process simulator
at the same seed."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import Array, RecordDict

from securefedrec.config import ExperimentConfig
from securefedrec.errors import PrivacyBudgetExhausted
from securefedrec.flower import (
    DeploymentSettings,
    FederatedRun,
    FlowerStage,
    NodeRuntime,
    NodeSettings,
    StageMessage,
)
from securefedrec.flower.node.silos import SILO_PREFIX, SiloStore
from securefedrec.flower.update import dp_info
from securefedrec.privacy import SiloDPSGD
from securefedrec.server.simulation import Simulation
from tests.flower.conftest import fake_grid_and_simulator
from tests.flower.test_flower import FakeGrid, FakeLink, _task_identity, node_options  # noqa: F401 (autouse)

# 4 silos of 6 users; DP-SGD batches of 16 ratings, a few steps per round
SILOS: dict[str, Any] = {"synthetic_users": 24, "synthetic_items": 20, "synthetic_ratings_per_user": 12,
                         "factors": 3, "seed": 5, "device": "cpu", "silos": 4, "dp": "record",
                         "dp_batch_size": 16, "local_lr": 4.0, "delta": 1e-5}
RUN = {k.replace("_", "-"): v for k, v in SILOS.items()}


@pytest.fixture(autouse=True)
def _quiet_opacus() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # secure RNG off, full backward hook
        yield


def _dpsgd(privacy: Any) -> SiloDPSGD:
    assert isinstance(privacy, SiloDPSGD)
    return privacy


def _runtimes(config: ExperimentConfig, n: int, settings: DeploymentSettings,
              configs: dict[int, ExperimentConfig] | None = None) -> dict[int, NodeRuntime]:
    node, configs = NodeSettings(reproducible_noise=True), configs or {}
    return {100 + i: NodeRuntime(configs.get(100 + i, config), settings, (i, n), RecordDict(),
                                 **node_options(settings, i, n, node))
            for i in range(n)}


def _run(config: ExperimentConfig, n: int = 2, **links: Any) -> tuple[FederatedRun, FakeLink]:
    settings = DeploymentSettings(min_nodes=n, reproducible_rounding=True)
    link = links.pop("link", None) or FakeLink(_runtimes(config, n, settings, links.pop("configs", None)))
    run = FederatedRun(config, settings, link)
    run.connect()
    return run, link


# ---- the whole loop, through the ClientApp handler -----------------------------------------------
def test_fake_grid_dp_record_randk_equals_the_simulator() -> None:
    """Two SuperNodes host two silos each; Poisson sampling leaves silos out of some rounds, so their
    state waits on the node; random-k error feedback rides along."""
    n = 2
    run_config = {**RUN, "sample-rate": 0.7, "rounds": 3, "min-nodes": n, "reproducible-rounding": True,
                  "noise-multiplier": 1.0, "epsilon": 40.0, "compression": "randk:0.5"}
    run, report, sim, grid = fake_grid_and_simulator(run_config, n)
    rounds = report["rounds"]
    assert [r["aborted"] for r in rounds] == [False] * 3
    assert [r["clients"] for r in rounds] == [r["clients"] for r in sim.rounds]
    assert any(r["clients"] < 4 for r in rounds)  # some silo sat a round out
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)
    assert [r["epsilon"] for r in rounds] == [r["epsilon"] for r in sim.rounds]
    assert report["privacy"]["silo_epsilon"] == sim.privacy.summary()["silo_epsilon"]  # type: ignore[union-attr]
    # each silo's DP-SGD state lives on its own node only, and equals the simulator's silo bit for bit
    server, simulated = _dpsgd(run.sim.privacy), _dpsgd(sim.privacy)
    for nid, ctx in grid.contexts.items():
        stored = {key for key in ctx.state.array_records if key.startswith(SILO_PREFIX)}
        hosted = [c for c in range(4) if c % n == nid - 100 and simulated.silos[c].rounds > 0]
        assert stored == {f"{SILO_PREFIX}{c}" for c in hosted}
        for c in hosted:
            st = SiloStore(ctx.state).load(c, "test")
            assert st is not None and st.rounds == simulated.silos[c].rounds == server.silos[c].rounds
            assert list(st.history) == simulated.silos[c].engine.accountant.history
            assert list(st.history) == server.silos[c].engine.accountant.history  # the server's view
            np.testing.assert_array_equal(st.user, simulated.silos[c].model.user.weight.detach().numpy())
            assert st.noise_rng == simulated.silo_state(c).noise_rng


def test_calibrated_sigma_is_the_same_on_server_and_nodes_and_the_budget_stops_the_run() -> None:
    config = ExperimentConfig(**{**SILOS, "silos": 2}, sample_rate=1.0, rounds=2, epsilon=6.0)
    run, link = _run(config)
    sim = Simulation(config)
    for _ in range(2):
        record, expected = run.run_round(), sim.run_round()
        assert not record["aborted"] and record["epsilon"] == expected["epsilon"] <= 6.0
    np.testing.assert_array_equal(run.sim.global_vec, sim.global_vec)
    assert link.errors == []  # every node accepted the server's (calibrated) sigma as its own
    assert [s.noise_multiplier for s in _dpsgd(run.sim.privacy).silos] == [
        s.noise_multiplier for s in _dpsgd(sim.privacy).silos]
    before, calls = run.sim.global_vec.copy(), len(link.calls)
    with pytest.raises(PrivacyBudgetExhausted, match="round 3 would spend epsilon"):
        run.run_round()  # sigma was calibrated for 2 rounds: refused before any message goes out
    np.testing.assert_array_equal(run.sim.global_vec, before)
    assert len(link.calls) == calls and run.sim.next_round == 2
    with pytest.raises(PrivacyBudgetExhausted):
        sim.run_round()  # exactly like the simulator


def test_the_round_message_carries_each_sampled_silos_public_dp_parameters() -> None:
    config = ExperimentConfig(**SILOS, sample_rate=1.0, rounds=1, noise_multiplier=1.2)
    privacy = _dpsgd(Simulation(config).privacy)
    info = dp_info(privacy, 3, [1, 3])
    steps = {c: config.model.local_epochs * len(privacy.silos[c].loader) for c in (1, 3)}
    assert info == {"dp.mode": "record", "dp.clip": config.privacy.clip, "dp.batch": 16,
                    "dp.sigma.1": 1.2, "dp.steps.1": steps[1], "dp.rounds.1": 0,
                    "dp.sigma.3": 1.2, "dp.steps.3": steps[3], "dp.rounds.3": 0}


# ---- what a node refuses ------------------------------------------------------------------------
class Tamper(FakeLink):
    """Delivers the server's TRAIN messages with ``change(info)`` applied."""

    def __init__(self, runtimes: dict[int, NodeRuntime], change: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(runtimes)
        self.change = change

    def exchange(self, outbox: Any, timeout: float) -> dict[int, StageMessage]:
        changed = {}
        for nid, m in outbox.items():
            info = dict(m.info)
            if m.stage is FlowerStage.TRAIN:
                self.change(info)
            changed[nid] = StageMessage(m.stage, m.round_id, m.payload, m.sampled, m.global_vec, info)
        return super().exchange(changed, timeout)


def _set(**values: Any) -> Callable[[dict[str, Any]], None]:
    def change(info: dict[str, Any]) -> None:
        for key, value in values.items():
            key = key.replace("_", ".")
            if value is None:
                info.pop(key, None)
            else:
                info[key] = value
    return change


RECORD = ExperimentConfig(**{**SILOS, "silos": 2}, sample_rate=1.0, rounds=2, noise_multiplier=1.0)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_set(dp_sigma_0=0.5), "client 0, round 0, field 'dp.sigma.0': the server sent noise multiplier 0.5"),
        (_set(dp_sigma_0=2.0), "field 'dp.sigma.0'"),  # other than its own, either way
        (_set(dp_sigma_0=None), "client 0, round 0: field 'dp.sigma.0' must be a finite number"),
        (_set(dp_clip=0.1), "round 0, field 'dp.clip'"),
        (_set(dp_batch=64), "round 0, field 'dp.batch': the server sent 64.*dp_batch_size 16"),
        (_set(dp_steps_0=1), "client 0, round 0, field 'dp.steps.0': the server accounts 1 DP-SGD steps"),
        (_set(dp_mode=None), "round 0, field 'dp.mode'"),
        (_set(dp_rounds_0="x"), "field 'dp.rounds.0' must be an int"),
    ],
)
def test_node_refuses_other_dp_sgd_parameters_before_training(change: Callable[[dict[str, Any]], None],
                                                             match: str) -> None:
    settings = DeploymentSettings(min_nodes=2, reproducible_rounding=True)
    link = Tamper(_runtimes(RECORD, 2, settings), change)
    run, _ = _run(RECORD, link=link)
    record = run.run_round()
    assert 0 not in record.get("survivors", [])
    assert any(e.startswith("node 100: ") and re.search(match, e) for e in link.errors), link.errors
    node = link.runtimes[100]  # refused before any state changed
    assert "sfr.history" not in node.state.config_records
    assert not any(k.startswith(SILO_PREFIX) for k in node.state.array_records)


def test_node_refuses_a_silo_it_trained_more_often_than_the_server_accounts() -> None:
    """A server that lost count (say, restarted) would let the silo overspend: the node says no."""
    settings = DeploymentSettings(min_nodes=2, reproducible_rounding=True)
    rounds_seen: list[int] = []

    def forget(info: dict[str, Any]) -> None:
        rounds_seen.append(int(info["dp.rounds.0"]))
        info["dp.rounds.0"] = 0

    link = Tamper(_runtimes(RECORD, 2, settings), forget)
    run, _ = _run(RECORD, link=link)
    assert not run.run_round()["aborted"]
    stored = link.runtimes[100].state.array_records[f"{SILO_PREFIX}0"]["user"].numpy().copy()
    record = run.run_round()
    assert rounds_seen == [0, 0, 1, 1] and 0 not in record.get("survivors", [])  # once per node
    assert any("client 0, round 1, field 'dp.rounds.0': the server accounts 0 rounds of silo 0, this node "
               "trained it in 1" in e for e in link.errors)
    np.testing.assert_array_equal(link.runtimes[100].state.array_records[f"{SILO_PREFIX}0"]["user"].numpy(),
                                  stored)


def test_node_never_trains_a_silo_past_its_own_budget() -> None:
    """The node's own accountant stops it even when the server asks for more rounds."""
    strict = ExperimentConfig(**{**SILOS, "silos": 2}, sample_rate=1.0, rounds=2, noise_multiplier=1.0,
                              epsilon=1e-3)
    run, link = _run(RECORD, configs={101: strict})  # the server has no budget; node 101 has a tiny one
    record = run.run_round()
    assert 1 not in record.get("survivors", [])
    assert any(e.startswith("node 101: ") and "round 1 would spend epsilon" in e and "silo 1" in e
               for e in link.errors)
    assert not any(k.startswith(SILO_PREFIX) for k in link.runtimes[101].state.array_records)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda rec: rec.pop("noise_rng"), "node state 'sfr.silo.0' lacks field 'noise_rng'"),
        (lambda rec: rec.__setitem__("user", Array.from_numpy_ndarray(np.zeros((5, 3), np.float32))),
         "silo 0, field 'user'"),
        (lambda rec: rec.__setitem__("counts", Array.from_numpy_ndarray(np.array([1, 1, 0], np.int64))),
         "silo 0, field 'silo'"),
        (lambda rec: rec.__setitem__("history", Array.from_numpy_ndarray(np.zeros((1, 2)))),
         "field 'history'"),
    ],
)
def test_node_refuses_a_corrupted_silo_state(corrupt: Callable[[Any], Any], match: str) -> None:
    run, link = _run(RECORD)
    run.run_round()
    corrupt(link.runtimes[100].state.array_records[f"{SILO_PREFIX}0"])
    record = run.run_round()
    assert 0 not in record.get("survivors", []) and any(match in e for e in link.errors), link.errors
