"""The aggregator contract: one test class that every protocol inherits.

Usage (see test_plaintext.py)::

    class TestMyProtocol(AggregatorContract):
        def make_aggregator(self) -> Aggregator:
            return MyAggregator(...)

Rules every protocol obeys:
- a client's input is in the sum exactly when it sent its masked input
  (it did not drop at ADVERTISE, SHARE_KEYS or MASKED_INPUT);
- when at least ``threshold`` clients are present at every stage, the result is
  the sum of those inputs within ``n`` quantization steps (exact for plaintext);
- when fewer than ``threshold`` clients send their input, the round raises
  ``AggregationAborted``;
- bad input raises ``ConfigError`` before anything is sent.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Mapping

import numpy as np
import pytest

from protocols import (
    AggregationAborted,
    AggregationResult,
    Aggregator,
    ConfigError,
    FixedPoint,
    RoundConfig,
    SparseVector,
    Stage,
    aggregator_class,
)
from protocols.base import CAPABILITIES

STAGES_PLUS_NONE: list[Stage | None] = [None, *Stage]


def make_inputs(n: int, length: int, seed: int = 0, clip: float = 1.0) -> dict[int, np.ndarray]:
    """n random vectors in [-clip, clip], keyed by client ids that are not 0..n-1 (ids are labels)."""
    rng = np.random.default_rng(seed)
    return {100 + 7 * i: rng.uniform(-clip, clip, size=length) for i in range(n)}


def senders(inputs: Mapping[int, np.ndarray], plan: Mapping[int, Stage]) -> set[int]:
    """Clients whose input must be in the sum: those that did not drop at or before MASKED_INPUT."""
    return {c for c in inputs if plan.get(c) is None or plan[c] > Stage.MASKED_INPUT}


def min_present(inputs: Mapping[int, np.ndarray], plan: Mapping[int, Stage]) -> int:
    """The fewest clients present at any stage."""
    return min(sum(1 for c in inputs if plan.get(c) is None or plan[c] > s) for s in Stage)


class AggregatorContract:
    """Inherit and implement :meth:`make_aggregator`; set the class knobs if needed."""

    exact: bool = False
    """True when the protocol sums floats without quantization (plaintext)."""
    ring_bits: int = 32
    neighbors: int | None = None
    exhaustive_n: int = 3
    """n for the test that tries every dropout pattern (6^n patterns)."""
    wraps: bool = True
    """False for a protocol that refuses ``RoundConfig.wrap`` (Paillier: slots would carry)."""

    def make_aggregator(self) -> Aggregator:
        raise NotImplementedError

    # ---- helpers -------------------------------------------------------------------
    def config(self, n: int, threshold: int, clip: float = 1.0, round_id: int = 0) -> RoundConfig:
        return RoundConfig(
            round_id=round_id,
            clip_range=clip,
            ring_bits=self.ring_bits,
            threshold=threshold,
            neighbors=None if self.neighbors is None else min(self.neighbors, n - 1),
        )

    def survivors_needed(self, n: int, config: RoundConfig) -> int:
        """The fewest clients present at every stage for which the protocol must release the sum.

        The release threshold; a protocol whose share holders need more (SecAgg's t' in the
        malicious model on the complete graph) overrides it.
        """
        return config.threshold

    def tolerance(self, n: int, config: RoundConfig) -> float:
        if self.exact:
            return 1e-9
        return n * FixedPoint.for_sum(n, config.clip_range, config.ring_bits, config.value_bits).step

    def check_sum(
        self,
        result: AggregationResult,
        inputs: Mapping[int, np.ndarray],
        expected: set[int],
        config: RoundConfig,
    ) -> None:
        assert result.survivors == frozenset(expected)
        want = np.sum([inputs[c] for c in sorted(expected)], axis=0)
        np.testing.assert_allclose(result.total, want, rtol=0, atol=self.tolerance(len(inputs), config))

    # ---- the contract --------------------------------------------------------------
    def test_sum_without_dropout(self) -> None:
        inputs = make_inputs(6, 257)
        cfg = self.config(6, threshold=4)
        result = self.make_aggregator().aggregate(inputs, cfg)
        self.check_sum(result, inputs, set(inputs), cfg)

    def test_bytes_and_seconds_are_reported(self) -> None:
        inputs = make_inputs(4, 64)
        cfg = self.config(4, threshold=3)
        result = self.make_aggregator().aggregate(inputs, cfg)
        assert set(result.bytes_up) >= set(inputs)
        assert all(result.bytes_up[c] > 0 for c in inputs)
        assert result.seconds_clients >= 0 and result.seconds_server >= 0

    def test_matches_plaintext_within_quantization(self) -> None:
        from protocols import PlaintextAggregator

        inputs = make_inputs(5, 1000, seed=3, clip=0.5)
        cfg = self.config(5, threshold=3, clip=0.5)
        ours = self.make_aggregator().aggregate(inputs, cfg).total
        plain = PlaintextAggregator().aggregate(inputs, cfg).total
        np.testing.assert_allclose(ours, plain, rtol=0, atol=self.tolerance(5, cfg))

    @pytest.mark.parametrize("stage", list(Stage))
    def test_one_client_drops_at_each_stage(self, stage: Stage) -> None:
        inputs = make_inputs(6, 40, seed=int(stage))
        dropper = sorted(inputs)[2]
        plan = {dropper: stage}
        cfg = self.config(6, threshold=4)
        result = self.make_aggregator().aggregate(inputs, cfg, plan)
        self.check_sum(result, inputs, senders(inputs, plan), cfg)

    def test_ten_percent_drop_at_every_stage(self) -> None:
        # 24 clients, 2 vanish at each of the 5 stages: 14 answer at the end, a strict
        # majority, so even the malicious-model protocols (t' > n/2) must finish
        inputs = make_inputs(24, 30, seed=11)
        ids = sorted(inputs)
        plan = {ids[2 * s]: s for s in Stage} | {ids[2 * s + 1]: s for s in Stage}
        cfg = self.config(24, threshold=12)
        result = self.make_aggregator().aggregate(inputs, cfg, plan)
        self.check_sum(result, inputs, senders(inputs, plan), cfg)

    def test_abort_below_threshold(self) -> None:
        inputs = make_inputs(5, 16)
        ids = sorted(inputs)
        plan = {ids[0]: Stage.MASKED_INPUT, ids[1]: Stage.ADVERTISE, ids[2]: Stage.SHARE_KEYS}
        cfg = self.config(5, threshold=3)
        with pytest.raises(AggregationAborted) as info:
            self.make_aggregator().aggregate(inputs, cfg, plan)
        assert info.value.threshold == 3

    def test_every_dropout_pattern_small_n(self) -> None:
        n = self.exhaustive_n
        inputs = make_inputs(n, 8, seed=5)
        ids = sorted(inputs)
        cfg = self.config(n, threshold=2)
        for stages in itertools.product(STAGES_PLUS_NONE, repeat=n):
            plan = {c: s for c, s in zip(ids, stages, strict=True) if s is not None}
            agg = self.make_aggregator()
            if len(senders(inputs, plan)) < cfg.threshold:
                with pytest.raises(AggregationAborted):
                    agg.aggregate(inputs, cfg, plan)
            elif min_present(inputs, plan) >= self.survivors_needed(n, cfg):
                self.check_sum(agg.aggregate(inputs, cfg, plan), inputs, senders(inputs, plan), cfg)
            else:  # enough inputs, too few later: the protocol may abort, but never give a wrong sum
                try:
                    result = agg.aggregate(inputs, cfg, plan)
                except AggregationAborted:
                    continue
                self.check_sum(result, inputs, senders(inputs, plan), cfg)

    def test_rejects_vectors_of_different_lengths(self) -> None:
        inputs = make_inputs(3, 10)
        inputs[next(iter(inputs))] = np.zeros(11)
        with pytest.raises(ConfigError, match="length"):
            self.make_aggregator().aggregate(inputs, self.config(3, threshold=2))

    def test_rejects_threshold_above_clients(self) -> None:
        inputs = make_inputs(3, 10)
        with pytest.raises(ConfigError, match="threshold"):
            self.make_aggregator().aggregate(inputs, self.config(3, threshold=4))

    def test_rejects_non_finite_input(self) -> None:
        inputs = make_inputs(3, 10)
        first = next(iter(inputs))
        inputs[first] = inputs[first].copy()
        inputs[first][3] = np.nan
        with pytest.raises(ConfigError, match=f"client {first}"):
            self.make_aggregator().aggregate(inputs, self.config(3, threshold=2))

    # ---- integer inputs: fixed-point units handed in by the caller (protocols.encoding) ----------
    def integer_setup(self, n: int, length: int, seed: int) -> tuple[dict[int, np.ndarray], RoundConfig]:
        """n int64 vectors of units spanning the whole range of value_bits=20 (extremes included)."""
        cfg = dataclasses.replace(self.config(n, threshold=max(1, n - 2), clip=2.5), value_bits=20)
        limit = 2**19 - 1
        rng = np.random.default_rng(seed)
        inputs = {100 + 7 * i: rng.integers(-limit, limit + 1, size=length) for i in range(n)}
        first = inputs[100]
        first[:2] = (limit, -limit)
        return inputs, cfg

    def test_integer_units_are_summed_bit_exactly(self) -> None:
        inputs, cfg = self.integer_setup(5, 301, seed=21)
        dropper = sorted(inputs)[3]
        plan = {dropper: Stage.MASKED_INPUT}
        result = self.make_aggregator().aggregate(inputs, cfg, plan)
        fp = FixedPoint.for_sum(len(inputs), cfg.clip_range, cfg.ring_bits, cfg.value_bits)
        want = np.sum([inputs[c] for c in sorted(senders(inputs, plan))], axis=0)  # exact int64 sum
        assert result.survivors == frozenset(senders(inputs, plan))
        # equal as floats means equal integer sums: decode is int_sum * step, and one unit off changes it
        np.testing.assert_array_equal(result.total, want.astype(np.float64) * fp.step)
        np.testing.assert_array_equal(np.rint(result.total * fp.scale).astype(np.int64), want)

    def test_integer_units_beyond_value_bits_are_refused_naming_the_client(self) -> None:
        inputs, cfg = self.integer_setup(4, 20, seed=22)
        bad = sorted(inputs)[2]
        inputs[bad][7] = -(2**19)  # one past the signed 20-bit limit
        with pytest.raises(ConfigError, match=f"client {bad}: integer value -524288 at index 7"):
            self.make_aggregator().aggregate(inputs, cfg)

    def test_integer_units_need_value_bits_and_no_mixing(self) -> None:
        inputs, cfg = self.integer_setup(3, 10, seed=23)
        with pytest.raises(ConfigError, match=r"need RoundConfig\.value_bits"):
            self.make_aggregator().aggregate(inputs, dataclasses.replace(cfg, value_bits=None))
        mixed = dict(inputs)
        floats = sorted(mixed)[1]
        mixed[floats] = mixed[floats] / 2**19
        with pytest.raises(ConfigError, match=f"client {floats} sent floats"):
            self.make_aggregator().aggregate(mixed, cfg)

    # ---- wrap-around: modular clipping (protocols.encoding) ----------------------------------------
    def test_wrapped_sum_is_the_sum_modulo_the_ring(self) -> None:
        """With ``wrap`` an 8-bit ring returns the signed sum modulo 256, for units and for floats alike."""
        n = 6
        # clip 127/64 makes the scale exactly 64: the floats k/64 round to k with no randomness
        cfg = dataclasses.replace(self.config(n, threshold=n - 2, clip=127 / 64), ring_bits=8, value_bits=8,
                                  wrap=True)
        rng = np.random.default_rng(31)
        units = {100 + 7 * i: rng.integers(-127, 128, size=301) for i in range(n)}
        plan = {sorted(units)[2]: Stage.MASKED_INPUT}
        exact = np.sum([units[c] for c in sorted(senders(units, plan))], axis=0)
        assert np.abs(exact).max() > 128  # some coordinates do wrap
        want = ((exact + 128) % 256 - 128) / 64
        assert type(self.make_aggregator()).supports_wrap is self.wraps
        for inputs in (units, {c: u / 64 for c, u in units.items()}):
            if not self.wraps:
                with pytest.raises(ConfigError, match="cannot wrap"):
                    self.make_aggregator().aggregate(inputs, cfg, plan)
                continue
            result = self.make_aggregator().aggregate(inputs, cfg, plan)
            assert result.survivors == frozenset(senders(units, plan))
            np.testing.assert_array_equal(result.total, want)

    # ---- capabilities: what callers ask instead of the protocol's name (protocols.base.CAPABILITIES) ----
    def test_declares_its_capabilities_and_the_registry_resolves_its_class(self) -> None:
        cls = type(self.make_aggregator())
        assert aggregator_class(cls.name) in cls.__mro__  # the registered class or this subclass of it
        for capability in CAPABILITIES:
            value = getattr(cls, capability)
            if capability == "threat_models":
                assert isinstance(value, frozenset) and value <= {"semi-honest", "malicious"}
            else:
                assert isinstance(value, bool), capability
        assert not (cls.sparse_graph and not cls.pairwise_masks)

    def test_capabilities_match_the_constructor(self) -> None:
        """Each capability that names a constructor option: the option exists exactly when declared."""
        cls = type(self.make_aggregator())
        options = inspect.signature(cls).parameters
        assert ("workers" in options) is cls.parallel_clients
        assert ("neighbors" in options) is cls.pairwise_masks
        assert ("dropout_rate" in options) is cls.sparse_graph
        assert ("key_bits" in options) is cls.homomorphic
        assert ("malicious" in options) is bool(cls.threat_models)

    def test_sparse_inputs_follow_accepts_sparse(self) -> None:
        dense = make_inputs(4, 12, seed=5)
        for v in dense.values():
            v[::2] = 0.0
        sparse = {c: SparseVector(np.flatnonzero(v), v[v != 0], len(v)) for c, v in dense.items()}
        cfg = self.config(4, threshold=3)
        agg = self.make_aggregator()
        if not type(agg).accepts_sparse:
            with pytest.raises(ConfigError, match=f"client {min(sparse)} sent a SparseVector"):
                agg.aggregate(sparse, cfg)
            return
        self.check_sum(agg.aggregate(sparse, cfg), dense, set(dense), cfg)

    def test_only_an_insecure_protocol_hands_the_server_the_inputs(self) -> None:
        inputs = make_inputs(4, 9, seed=6)
        agg = self.make_aggregator()
        agg.aggregate(inputs, self.config(4, threshold=3))
        received = getattr(agg, "last_messages", {})
        if type(agg).secure:
            assert not received
        else:
            assert sorted(received) == sorted(inputs)
