from __future__ import annotations

from protocols import Aggregator, PlaintextAggregator
from tests.protocols.contract import AggregatorContract, make_inputs


class TestPlaintextContract(AggregatorContract):
    exact = True
    exhaustive_n = 4

    def make_aggregator(self) -> Aggregator:
        return PlaintextAggregator()


def test_plaintext_exposes_individual_updates() -> None:
    from protocols import RoundConfig

    inputs = make_inputs(3, 5)
    agg = PlaintextAggregator()
    agg.aggregate(inputs, RoundConfig(threshold=1))
    assert set(agg.last_messages) == set(inputs)
    for cid, v in inputs.items():
        assert (agg.last_messages[cid] == v).all()


def test_sparse_inputs_sum_like_dense_ones_and_travel_smaller() -> None:
    import numpy as np

    from protocols import RoundConfig, SparseVector, Stage

    rng = np.random.default_rng(0)
    sparse = {c: SparseVector(np.sort(rng.choice(1000, 30, replace=False)), rng.normal(size=30), 1000)
              for c in range(5)}
    cfg = RoundConfig(threshold=3)
    got = PlaintextAggregator().aggregate(sparse, cfg, {2: Stage.SHARE_KEYS})
    want = sum(v.dense() for c, v in sparse.items() if c != 2)
    np.testing.assert_allclose(got.total, want, rtol=0, atol=1e-12)
    dense = PlaintextAggregator().aggregate({c: v.dense() for c, v in sparse.items()}, cfg)
    assert got.bytes_up[0] < dense.bytes_up[0] / 10


def test_sparse_vector_validation() -> None:
    import numpy as np
    import pytest

    from protocols import ConfigError, SparseVector

    with pytest.raises(ConfigError, match="outside"):
        SparseVector(np.array([0, 10]), np.zeros(2), 10)
    with pytest.raises(ConfigError, match="same length"):
        SparseVector(np.array([0, 1]), np.zeros(3), 10)
