from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import ConfigError, FixedPoint
from tests.vectors import vectors


@vectors("encoding")
def test_known_answers(vector: dict[str, Any]) -> None:
    fp = FixedPoint.for_sum(vector["n"], vector["clip_range"], vector["ring_bits"], vector["value_bits"])
    rng = np.random.default_rng(0)
    x = np.array(vector["values"])
    assert fp.quantize(x, rng).tolist() == vector["quantized"]
    assert fp.encode(x, rng).tolist() == vector["encoded"]
    np.testing.assert_allclose(fp.decode(np.array(vector["encoded"], dtype=np.uint64)),
                               np.array(vector["quantized"]) * fp.step)


def test_overflow_configuration_is_refused_with_the_bound_to_change() -> None:
    with pytest.raises(ConfigError, match=r"raise ring_bits to at least 34"):
        FixedPoint.for_sum(1000, 1.0, ring_bits=32, value_bits=24)
    with pytest.raises(ConfigError, match="raise ring_bits"):
        FixedPoint.for_sum(2**20, 1.0, ring_bits=16)


def test_default_value_bits_leave_log2_n_headroom() -> None:
    fp = FixedPoint.for_sum(100, 1.0, ring_bits=32)
    assert fp.value_bits == 25
    assert 100 * (2 ** (fp.value_bits - 1) - 1) <= 2**31 - 1


def test_out_of_range_values_are_clipped_not_wrapped() -> None:
    fp = FixedPoint.for_sum(4, 1.0, ring_bits=16)
    enc = fp.encode(np.array([1e9, -1e9]), np.random.default_rng(0))
    np.testing.assert_allclose(fp.decode(enc), [1.0, -1.0])


def test_wrap_reduces_modulo_the_ring_instead_of_clipping() -> None:
    # clip 127/64 with 8 bits: scale exactly 64, so one ring period is 256/64 = 4.0
    fp = FixedPoint.for_sum(10**6, 127 / 64, ring_bits=8, wrap=True)  # no headroom check with wrap
    assert (fp.value_bits, fp.scale) == (8, 64.0)
    enc = fp.encode(np.array([1.5, 3.0, -2.75, 1e6, -1e6 - 1.0]), np.random.default_rng(0))
    np.testing.assert_array_equal(fp.decode(enc), [1.5, -1.0, 1.25, 0.0, -1.0])


def test_wrap_keeps_the_fraction_so_rounding_stays_unbiased() -> None:
    # far beyond the range the value is reduced before rounding: 4000 + 0.3 units must round to 0 or 1
    # with mean 0.3 (6-sigma band as below)
    fp = FixedPoint.for_sum(2, 127 / 64, ring_bits=8, wrap=True)
    q = fp.quantize(np.full(200_000, 4000.0 + 0.3 / 64), np.random.default_rng(2))
    assert set(np.unique(q)) <= {0, 1}
    assert abs(q.mean() - 0.3) < 6 * np.sqrt(0.21 / q.size)
    wide = FixedPoint.for_sum(2, (2**51 - 1) / 2**40, ring_bits=64, wrap=True)  # scale exactly 2^40
    units = wide.quantize(np.array([-1.0, 2.0**23, -(2.0**23)]), np.random.default_rng(0))
    assert units.tolist() == [-(2**40), -(2**63), -(2**63)]  # 2^63 units is -2^63 modulo 2^64


def test_stochastic_rounding_is_unbiased() -> None:
    # mean of 200k roundings of 0.3 units: std of the mean is sqrt(0.21/2e5) ~ 1e-3 units;
    # a 6-sigma band gives a false-failure rate below 1e-8.
    fp = FixedPoint(clip_range=1.0, value_bits=8, ring_bits=16)
    x = np.full(200_000, 0.3 * fp.step)
    q = fp.quantize(x, np.random.default_rng(1))
    assert abs(q.mean() - 0.3) < 6 * np.sqrt(0.21 / x.size)


@pytest.mark.parametrize("ring_bits", [16, 32, 64])
def test_quantize_is_clip_scale_round_clip_and_leaves_its_input_alone(ring_bits: int) -> None:
    # quantize rounds in place on its own copy: the same units as the textbook composition
    from protocols.encoding import stochastic_round

    fp = FixedPoint.for_sum(5, 2.0, ring_bits)
    x = np.random.default_rng(ring_bits).normal(0.0, 1.5, 5000)
    x[:6] = [2.0, -2.0, 7.5, -7.5, 0.0, fp.step / 3]
    before = x.copy()
    y = np.clip(x, -2.0, 2.0) * fp.scale
    rounded = stochastic_round(y, np.random.default_rng(3))
    want = np.clip(rounded, -fp.max_units, fp.max_units).astype(np.int64)
    np.testing.assert_array_equal(fp.quantize(x, np.random.default_rng(3)), want)
    np.testing.assert_array_equal(x, before)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    ring_bits=st.sampled_from([16, 32, 48, 64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_sum_of_encodings_decodes_to_sum(n: int, ring_bits: int, seed: int) -> None:
    if ring_bits - int(np.ceil(np.log2(n))) < 2:
        return
    fp = FixedPoint.for_sum(n, 1.0, ring_bits)
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-1, 1, size=(n, 7))
    mask = fp.modulus_mask
    acc = np.zeros(7, dtype=np.uint64)
    for x in xs:
        acc = (acc + fp.encode(x, rng)) & mask
    np.testing.assert_allclose(fp.decode(acc), xs.sum(axis=0), atol=n * fp.step)


def test_integer_input_is_units_already_unscaled_unrounded_and_uses_no_randomness() -> None:
    fp = FixedPoint(clip_range=3.0, value_bits=12, ring_bits=16)
    units = np.array([0, 1, -1, 2047, -2047, 5], dtype=np.int32)
    rng = np.random.default_rng(7)
    state = rng.bit_generator.state
    q = fp.quantize(units, rng)
    assert q.dtype == np.int64
    np.testing.assert_array_equal(q, units)
    assert rng.bit_generator.state == state  # no stochastic rounding happened
    np.testing.assert_array_equal(fp.to_signed(fp.encode(units, rng)), units)
    np.testing.assert_array_equal(fp.decode(fp.encode(units, rng)), units * fp.step)
    np.testing.assert_array_equal(fp.units(np.array([2047, 0], dtype=np.uint64)), [2047, 0])


@pytest.mark.parametrize("bad", [np.array([2048]), np.array([-2048]), np.array([2**64 - 1], dtype=np.uint64)])
def test_integer_input_outside_the_range_is_refused_not_clipped(bad: np.ndarray) -> None:
    fp = FixedPoint(clip_range=3.0, value_bits=12, ring_bits=16)
    with pytest.raises(ConfigError, match=r"client 9: integer value .* outside \+-2047"):
        fp.units(bad, who="client 9")
    with pytest.raises(ConfigError, match="outside"):
        fp.quantize(bad, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="integer units expected"):
        fp.units(np.array([1.0]))
