"""Flower round records carry ``model_bytes`` (the global parameters as stored and sent), like the
simulator's, for an uncompressed and a compressed model (issue #18)."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr")

from flwr.app import RecordDict

from securefedrec.config import ExperimentConfig
from securefedrec.flower import DeploymentSettings, FederatedRun, NodeRuntime
from securefedrec.models.compressed import CompressedModel
from securefedrec.server.simulation import Simulation
from tests.flower.test_flower import FakeLink, _task_identity, node_options  # noqa: F401 (autouse)

USERS = {"synthetic_users": 12, "synthetic_items": 30, "factors": 3, "seed": 5, "device": "cpu"}


@pytest.mark.parametrize("compression", ["none", "qr:2+int4"])
def test_a_flower_round_records_the_simulators_model_bytes(compression: str) -> None:
    n = 3
    config = ExperimentConfig(**USERS, sample_rate=1.0, rounds=1, model_compression=compression)
    settings = DeploymentSettings(min_nodes=n, reproducible_rounding=True)
    link = FakeLink({100 + i: NodeRuntime(config, settings, (i, n), RecordDict(),
                                          **node_options(settings, i, n)) for i in range(n)})
    run = FederatedRun(config, settings, link)
    run.connect()
    record = run.run_round()
    assert not record["aborted"]
    sim = Simulation(config)
    assert record["model_bytes"] == sim.run_round()["model_bytes"]
    if isinstance(sim.model, CompressedModel):  # 4-bit values, a scale per row: under half of float32
        assert record["model_bytes"] < 4 * sim.model.inner.length / 2
    else:
        assert record["model_bytes"] == 4 * sim.model.length
