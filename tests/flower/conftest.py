"""Fixtures shared by the in-process Flower tests."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from protocols import Stage
from securefedrec.flower import FederatedRun, GridLink, experiment_config
from securefedrec.simulation import Simulation


@pytest.fixture
def dropout_plans(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[int, Stage]]:
    """Round index -> the simulator's dropout plan (consulted once per round when ``dropout > 0``)."""
    plans: dict[int, dict[int, Stage]] = {}
    calls = itertools.count()

    def planned(clients: Any, probability: float, rng: np.random.Generator) -> dict[int, Stage]:
        return plans.get(next(calls), {})

    monkeypatch.setattr("securefedrec.simulation.sample_dropouts", planned)
    return plans


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
    sim = Simulation(config)
    sim.run(progress=False)
    return run, report, sim, grid
