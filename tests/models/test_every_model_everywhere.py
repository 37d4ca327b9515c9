"""Every registered model through the rest of securefedrec: the protocols, user-level DP, compression,
checkpoint/resume and the Flower node, with nothing changed but ``--model`` (issue #16).

Each case would fail if a part still assumed biased MF's layout, or dropped the local part
the implicit models keep between rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from securefedrec import ExperimentConfig, Simulation
from securefedrec.models.registry import MODELS

SMALL: dict[str, Any] = dict(synthetic_users=30, synthetic_items=25, synthetic_ratings_per_user=8,
                             split="loo", factors=4, device="cpu", sample_rate=1.0, rounds=2, seed=3)
EXTRA: dict[str, dict[str, Any]] = {"mf": {}, "implicit-mf": {"feedback": "implicit"},
                                    "ncf": {"feedback": "implicit", "mlp_layers": "8,4"},
                                    "fism": {"feedback": "implicit"}, "content": {}, "popularity": {}}


def _config(model: str, **changes: Any) -> ExperimentConfig:
    return ExperimentConfig(**{**SMALL, "model": model, **EXTRA[model], **changes})


def test_every_registered_model_is_covered_here() -> None:
    assert set(EXTRA) == set(MODELS)


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize(("protocol", "options"), [("secagg+", {}), ("paillier", {"key_bits": 512})])
def test_a_secure_protocol_gives_the_plaintext_model(model: str, protocol: str,
                                                     options: dict[str, Any]) -> None:
    """The secure sum equals the plaintext one up to the fixed-point step: the same model after 2 rounds.

    FedAvg, not FedAdam: Adam divides by the root of the second moment, which turns the
    fixed-point step on a coordinate whose sum is near zero into a full-size move.
    """
    from protocols import get_aggregator

    run = dict(local_epochs=2, server_optimizer="fedavg", server_lr=1.0)  # 2 epochs: dense updates
    plain = Simulation(_config(model, protocol="plaintext", **run))
    plain.run(progress=False)
    secure = Simulation(_config(model, protocol=protocol, **run),
                        aggregator=get_aggregator(protocol, **options))
    secure.run(progress=False)
    assert not any(r["aborted"] for r in secure.rounds)
    moved = np.abs(plain.global_vec - Simulation(_config(model, protocol="plaintext")).global_vec).max()
    assert moved > 1e-3  # training changed the model, so agreement below is not trivial
    np.testing.assert_allclose(secure.global_vec, plain.global_vec, atol=1e-5)
    for name, value in plain.pool.local.items():  # the local part trained the same on every device
        torch.testing.assert_close(secure.pool.local[name], value, atol=1e-3, rtol=0)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_user_level_dp_and_compression_run_with_every_model(model: str) -> None:
    report = Simulation(_config(model, protocol="secagg+", dp="user", epsilon=8.0, compression="q8")).run(
        progress=False)
    assert not any(r["aborted"] for r in report["rounds"])
    assert 0 < report["final"]["epsilon"] <= 8.0
    assert report["rounds"][-1]["noise_std"] > 0
    assert report["final"]["hr@10"] is not None


@pytest.mark.parametrize("model", sorted(MODELS))
def test_resume_replays_the_uninterrupted_run(model: str, tmp_path: Path) -> None:
    """The local part (user embeddings of the implicit models) and the training generator are restored."""
    whole = Simulation(_config(model, protocol="plaintext", rounds=3))
    whole.run(progress=False)
    ckpt = tmp_path / "run.npz"
    Simulation(_config(model, protocol="plaintext", rounds=1)).run(checkpoint=ckpt, progress=False)
    resumed = Simulation(_config(model, protocol="plaintext", rounds=3))
    resumed.load_checkpoint(ckpt)
    resumed.run(progress=False)
    np.testing.assert_array_equal(resumed.global_vec, whole.global_vec)
    for name, value in whole.pool.local.items():
        torch.testing.assert_close(resumed.pool.local[name], value, rtol=0, atol=0)


def _node_replays_the_simulator(config: ExperimentConfig) -> tuple[Simulation, Any]:
    """Two rounds of clients 1, 4, 7 on a Flower node and in the simulator: equal deltas.

    Returns the simulation and the node's state (its kept local part) after both rounds.
    """
    from flwr.app import RecordDict

    from securefedrec.flower.node.runtime import train_clients
    from securefedrec.server.simulation import round_generator

    sim = Simulation(config)
    state = RecordDict()
    clients = [1, 4, 7]
    views = [sim.global_vec, sim.global_vec + 0.01]
    on_node = [train_clients(config, clients, view, r, state) for r, view in enumerate(views)]
    for r, view in enumerate(views):
        deltas = sim.pool.train(clients, torch.from_numpy(view), config.model.local_epochs,
                                config.model.local_lr, round_generator(config.run.seed, r))
        expected = deltas.clamp(-config.model.update_clip, config.model.update_clip).numpy()
        np.testing.assert_array_equal(on_node[r], expected)  # the same computation replayed
    return sim, state


@pytest.mark.parametrize("model", ["implicit-mf", "ncf", "fism"])
def test_a_flower_node_trains_the_implicit_models_as_the_simulator(model: str) -> None:
    """Two rounds on a node (its local part kept in its state) equal the simulator's pool."""
    pytest.importorskip("flwr")
    _node_replays_the_simulator(_config(model, protocol="plaintext"))


@pytest.mark.parametrize(("feedback", "fusion"), [("implicit", "implicit-mf,popularity"),
                                                  ("explicit", "mf,popularity")])
def test_a_flower_node_trains_a_fusion_as_the_simulator(feedback: str, fusion: str) -> None:
    """A fusion on a node: its deltas and its kept local part (the members' user parts and the
    client's personal fusion weights) equal the simulator's after two rounds."""
    pytest.importorskip("flwr")
    from securefedrec.flower.node.state import kept_local

    config = ExperimentConfig(**{**SMALL, "feedback": feedback, "fusion": fusion, "protocol": "plaintext"})
    sim, state = _node_replays_the_simulator(config)
    users, kept = kept_local(state)
    expected_local = sim.pool.rows(users)
    assert set(kept) == set(expected_local) and any("fusion" in name for name in kept)
    for name, rows in kept.items():
        np.testing.assert_array_equal(rows, expected_local[name].numpy())
