"""SecAgg / SecAgg+ against the aggregator contract, plus protocol-specific tests."""

from __future__ import annotations

import hashlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import AggregationAborted, Aggregator, FixedPoint, RoundConfig, Stage, sample_dropouts
from protocols.secagg import SecAggAggregator, SecAggPlusAggregator, choose_degree, share_threshold
from tests.protocols.contract import AggregatorContract, make_inputs, senders


def pinned_randbytes(seed: int = 0):  # type: ignore[no-untyped-def]
    """Deterministic stand-in for os.urandom (SHAKE-256 counter stream) so runs are reproducible."""
    counter = [0]

    def randbytes(n: int) -> bytes:
        counter[0] += 1
        return hashlib.shake_256(f"{seed}/{counter[0]}".encode()).digest(n) if n else b""

    return randbytes


class TestSecAggContract(AggregatorContract):
    """SecAgg, complete graph, malicious model (signatures + consistency round)."""

    def survivors_needed(self, n: int, config: RoundConfig) -> int:
        """Every share holder a corrupted one could stand in for: t' of the complete graph."""
        return max(config.threshold, share_threshold(config.threshold, n, n - 1, True))

    def make_aggregator(self) -> Aggregator:
        return SecAggAggregator(randbytes=pinned_randbytes(1), rng=np.random.default_rng(1))


class TestSecAggSemiHonestContract(AggregatorContract):
    """SecAgg, complete graph, Flower's semi-honest model (no signatures, no consistency round)."""

    ring_bits = 64

    def make_aggregator(self) -> Aggregator:
        return SecAggAggregator(malicious=False, rng=np.random.default_rng(2))


class TestSecAggPlusContract(AggregatorContract):
    """SecAgg+ with a 4-regular graph (complete for n <= 5), malicious model."""

    neighbors = 4
    malicious = True

    def survivors_needed(self, n: int, config: RoundConfig) -> int:
        """t' of the complete graph (the exhaustive test's n is below the degree)."""
        if not self.malicious:
            return config.threshold
        return max(config.threshold, share_threshold(config.threshold, n, n - 1, True))

    def make_aggregator(self) -> Aggregator:
        return SecAggAggregator(neighbors=4, rng=np.random.default_rng(3))

    def test_ten_percent_drop_at_every_stage(self) -> None:
        """SecAgg+'s guarantee is per neighbourhood, so this pattern may abort -- never mis-sum.

        The contract's pattern removes half of the 20 clients (2 per stage) with a
        threshold of exactly 10. With k = 4 a neighbourhood of 5 often keeps fewer than
        t' = 3 share holders, and no 4-regular graph can guarantee otherwise: Bell et
        al. (2020) promise correctness only with high probability, for a degree chosen
        from the dropout rate (see ``choose_degree``). Over ten graphs (the graph seed is
        derived from the round id) that pattern must abort cleanly, and a milder one (one
        client per stage) must complete with the exact sum in at least half of them --
        so the test fails if every round aborts. In the malicious model t' also covers one
        corrupted holder (4 of 5 at k = 4), so there the graph is 8-regular (6 of 9).
        """
        degree = 8 if self.malicious else 4
        inputs = make_inputs(20, 30, seed=11)
        ids = sorted(inputs)
        harsh = {ids[2 * s]: s for s in Stage} | {ids[2 * s + 1]: s for s in Stage}
        mild = {ids[4 * s]: s for s in Stage}
        completed = 0
        for round_id in range(10):
            cfg = RoundConfig(round_id=round_id, ring_bits=self.ring_bits, threshold=10, neighbors=degree)
            for plan in (harsh, mild):
                agg = SecAggAggregator(neighbors=degree, malicious=self.malicious,
                                       randbytes=pinned_randbytes(round_id))
                try:
                    result = agg.aggregate(inputs, cfg, plan)
                except AggregationAborted:  # a neighbourhood ran out of share holders or signers
                    continue
                self.check_sum(result, inputs, senders(inputs, plan), cfg)
                completed += plan is mild
        assert completed >= 5


class TestSecAggPlusSemiHonestContract(TestSecAggPlusContract):
    """SecAgg+ (k = 4) in the semi-honest model."""

    malicious = False

    def make_aggregator(self) -> Aggregator:
        return SecAggAggregator(neighbors=4, malicious=False, rng=np.random.default_rng(4))


class TestSecAggPlusDefaultContract(TestSecAggContract):
    """The registry's "secagg+": degree from choose_degree (the complete graph at these small n)."""

    def make_aggregator(self) -> Aggregator:
        return SecAggPlusAggregator(rng=np.random.default_rng(5))


def test_secagg_plus_with_chosen_degree_survives_random_dropout() -> None:
    """With the degree from choose_degree for a 10% dropout rate, random 10% dropout leaves the exact sum."""
    inputs = make_inputs(60, 50, seed=7)
    plan = sample_dropouts(inputs, 0.02, np.random.default_rng(0))  # ~10% over the five stages
    assert plan
    cfg = RoundConfig(threshold=20, ring_bits=40)
    agg = SecAggPlusAggregator(dropout_rate=0.1, randbytes=pinned_randbytes(5))
    assert agg.degree_for(60, cfg) == choose_degree(60, 0.1, 0.05, threshold=20, malicious=True) < 59
    result = agg.aggregate(inputs, cfg, plan)
    want = np.sum([inputs[c] for c in sorted(senders(inputs, plan))], axis=0)
    assert result.survivors == frozenset(senders(inputs, plan))
    np.testing.assert_allclose(result.total, want, atol=60 * 2.0 / 2 ** (40 - 6 - 1))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 5),
    length=st.integers(1, 40),
    ring_bits=st.sampled_from([16, 24, 32, 40, 64]),
    clip=st.floats(0.01, 100.0),
    seed=st.integers(0, 2**32 - 1),
    malicious=st.booleans(),
)
def test_encode_mask_sum_unmask_decode(
    n: int, length: int, ring_bits: int, clip: float, seed: int, malicious: bool
) -> None:
    """Property: for any inputs in range, the unmasked decoded sum is within n quantization steps."""
    inputs = make_inputs(n, length, seed=seed % 1000, clip=clip)
    cfg = RoundConfig(threshold=max(1, n - 1), ring_bits=ring_bits, clip_range=clip)
    agg = SecAggAggregator(
        malicious=malicious, randbytes=pinned_randbytes(seed), rng=np.random.default_rng(seed)
    )
    result = agg.aggregate(inputs, cfg)
    step = FixedPoint.for_sum(n, clip, ring_bits).step
    # plus float64 rounding of the decoded sum itself (a 64-bit ring has steps near 1e-14)
    np.testing.assert_allclose(result.total, np.sum(list(inputs.values()), axis=0), rtol=1e-14, atol=n * step)
