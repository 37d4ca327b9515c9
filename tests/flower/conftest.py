"""Fixtures shared by the in-process Flower tests."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from protocols import Stage


@pytest.fixture
def dropout_plans(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[int, Stage]]:
    """Round index -> the simulator's dropout plan (consulted once per round when ``dropout > 0``)."""
    plans: dict[int, dict[int, Stage]] = {}
    calls = itertools.count()

    def planned(clients: Any, probability: float, rng: np.random.Generator) -> dict[int, Stage]:
        return plans.get(next(calls), {})

    monkeypatch.setattr("securefedrec.simulation.sample_dropouts", planned)
    return plans
