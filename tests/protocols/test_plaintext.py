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
