"""Fixtures shared by the in-process Flower tests."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from protocols import Stage
from securefedrec.flower import FederatedRun, GridLink, Identity, experiment_config
from securefedrec.server.simulation import Simulation

TEST_CLIENTS = 256
"""Every test client id below this has a (test-only, derived) Ed25519 identity key."""


@functools.cache
def _test_keys() -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Client id -> raw private key, and -> raw public key; derived from the id (tests only: public)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocols.secagg.client import raw_public

    private = {c: hashlib.sha256(f"securefedrec test identity {c}".encode()).digest()
               for c in range(TEST_CLIENTS)}
    public = {c: raw_public(Ed25519PrivateKey.from_private_bytes(k)) for c, k in private.items()}
    return private, public


def test_identity(partition: int, nodes: int) -> Identity:
    """The identity (signing keys of its hosted clients, the whole PKI) of node ``partition`` of ``nodes``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private, public = _test_keys()
    keys = {c: Ed25519PrivateKey.from_private_bytes(k) for c, k in private.items() if c % nodes == partition}
    return Identity(keys, dict(public))


test_identity.__test__ = False  # type: ignore[attr-defined]  # not a test


def identity_node_config(directory: Path, partition: int, nodes: int) -> dict[str, str]:
    """Write node ``partition``'s identity-key file and the PKI under ``directory``; its node config keys."""
    private, public = _test_keys()
    directory.mkdir(parents=True, exist_ok=True)
    pki = directory / "pki.json"
    pki.write_text(json.dumps({c: k.hex() for c, k in public.items()}))
    key = directory / f"identity-{partition}.json"
    key.write_text(json.dumps({c: k.hex() for c, k in private.items() if c % nodes == partition}))
    return {"identity-key": str(key), "pki": str(pki)}


@pytest.fixture
def dropout_plans(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[int, Stage]]:
    """Round index -> the simulator's dropout plan (consulted once per round when ``dropout > 0``)."""
    plans: dict[int, dict[int, Stage]] = {}
    calls = itertools.count()

    def planned(clients: Any, probability: float, rng: np.random.Generator) -> dict[int, Stage]:
        return plans.get(next(calls), {})

    monkeypatch.setattr("securefedrec.server.simulation.sample_dropouts", planned)
    return plans


def train_as_nodes(sim: Simulation, nodes: int) -> Simulation:
    """Make ``sim`` train each SuperNode's clients in a batched call of their own, as the nodes do.

    The pool trains all sampled clients in one padded batch; a node hosting ``c % nodes == p``
    trains only its own (:func:`securefedrec.flower.node.runtime.train_clients`). A user's normal
    equations ``X^T X`` (:func:`securefedrec.models.mf.solve_users`, a batched float32 matmul that
    reduces over the padded ratings axis) then come from a batch of another size, for which
    the BLAS picks another kernel and another summation order: per-client deltas differ in the
    last bits (measured: 13 of 151 values of the 4-node test's model, up to 8.6e-9), and how
    they differ depends on the CPU (tests/core/test_client.py bounds it). Grouped like this, the
    simulator's training *is* the deployment's computation; everything after it (noise
    shares, rounding streams, ring sums, the server optimizer) is the same computation
    replayed, so the fake-grid tests may compare bit for bit.
    """
    train = sim.pool.train

    def grouped(clients: Any, global_vec: torch.Tensor, epochs: int, lr: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
        clients = [int(c) for c in clients]
        out = torch.empty(len(clients), sim.model.length, dtype=torch.float64)
        row = {c: j for j, c in enumerate(clients)}
        for p in range(nodes):
            hosted = sorted(c for c in clients if c % nodes == p)  # the node trains sorted(payload)
            if hosted:
                deltas = train(hosted, global_vec, epochs, lr)
                for i, c in enumerate(hosted):
                    out[row[c]] = deltas[i]
        return out

    sim.pool.train = grouped  # type: ignore[method-assign]
    return sim


def fake_grid_and_simulator(run_config: dict[str, Any], n: int) -> tuple[FederatedRun, dict[str, Any],
                                                                         Simulation, Any]:
    """The same run on ``n`` in-process SuperNodes (reproducible noise) and in the simulator.

    Returns the Flower run, its report, the finished simulation and the fake grid (its node contexts).
    """
    from tests.flower.test_flower import FakeGrid

    config, settings = experiment_config(run_config)
    grid = FakeGrid(n, run_config)
    for ctx in grid.contexts.values():
        ctx.node_config["reproducible-noise"] = True
    run = FederatedRun(config, settings, GridLink(grid, poll=0.0))
    report = run.run()
    sim = train_as_nodes(Simulation(config), n)
    sim.run(progress=False)
    return run, report, sim, grid
