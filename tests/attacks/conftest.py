"""Small synthetic runs shared by the attack tests."""

from __future__ import annotations

import pytest

from securefedrec.config import ExperimentConfig
from securefedrec.data import Dataset, synthetic


@pytest.fixture(scope="session")
def small() -> Dataset:
    """120 users x 50 items, ~10 ratings each: a round of SecAgg+ takes about a second."""
    return synthetic(num_users=120, num_items=50, ratings_per_user=10, seed=3)


def config(protocol: str, **overrides: object) -> ExperimentConfig:
    """Every user in every round, few factors, CPU."""
    values: dict[str, object] = dict(protocol=protocol, factors=4, sample_rate=1.0, rounds=2, device="cpu")
    values.update(overrides)
    return ExperimentConfig(**values)  # type: ignore[arg-type]
