"""Compressed transmission (securefedrec.compression): codecs, error feedback, protocols, simulation."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from protocols import FixedPoint, PlaintextAggregator, RoundConfig, Stage
from protocols.secagg import SecAggAggregator, SecAggPlusAggregator
from securefedrec.compression import (
    COMPRESSORS,
    Compressor,
    Downlink,
    ErrorFeedback,
    ModularQuantizer,
    NoCompression,
    Quantizer,
    RandomK,
    TopK,
    Uplink,
    parse_compression,
    rotate,
    rotation_signs,
    unrotate,
)
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError, DecodeError

SPECS = ["none", "q8", "q16", "randk:0.1", "randk:1", "topk:0.1", "topk:0.5", "mod:8", "mod:13"]


def vector(length: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 0.3, length) * (rng.random(length) < 0.3)


# ---- one round-trip suite, every compressor ----------------------------------------------------
@pytest.mark.parametrize("spec", SPECS)
class TestRoundTrip:
    def test_spec_parses_back(self, spec: str) -> None:
        comp = parse_compression(spec)
        assert isinstance(comp, Compressor)
        assert parse_compression(comp.spec).spec == comp.spec
        assert type(comp) is COMPRESSORS[comp.spec.partition(':')[0]]

    def test_round_trip_error_is_bounded(self, spec: str) -> None:
        comp = parse_compression(spec)
        x = vector()
        out = comp.decode(comp.encode(x, np.random.default_rng(1)), x.size)
        assert out.shape == x.shape and out.dtype == np.float64
        sent = out != 0
        if isinstance(comp, Quantizer):
            assert np.max(np.abs(out - x)) <= np.max(np.abs(x)) / comp.levels * (1 + 1e-12)
        elif isinstance(comp, NoCompression):
            assert (out == x).all()
        elif isinstance(comp, ModularQuantizer):  # each rotated value within a step; rotations keep norms
            levels = 2 ** (comp.bits - 1) - 1
            assert np.linalg.norm(out - x) <= np.sqrt(x.size) * np.linalg.norm(x) / levels
        else:  # sparsifiers: at most ceil(F L) coordinates, each one exact (top-k: float32)
            assert sent.sum() <= comp.kept(x.size)
            np.testing.assert_allclose(out[sent], x[sent], rtol=1e-6, atol=0)

    def test_message_is_no_bigger_than_float64(self, spec: str) -> None:
        comp = parse_compression(spec)
        x = vector(2000)
        message = comp.encode(x, np.random.default_rng(0))
        assert len(message) <= 8 * x.size + 32
        if spec not in ("none", "randk:1"):
            assert len(message) < 0.6 * 8 * x.size

    def test_zero_vector_stays_zero(self, spec: str) -> None:
        comp = parse_compression(spec)
        z = np.zeros(64)
        assert (comp.decode(comp.encode(z, np.random.default_rng(0)), 64) == 0).all()

    def test_same_rng_same_message(self, spec: str) -> None:
        comp = parse_compression(spec)
        x = vector()
        assert comp.encode(x, np.random.default_rng(5)) == comp.encode(x, np.random.default_rng(5))

    def test_damaged_messages_raise_decode_error(self, spec: str) -> None:
        comp = parse_compression(spec)
        x = vector(100)
        message = comp.encode(x, np.random.default_rng(0))
        with pytest.raises(DecodeError):
            comp.decode(message[:-3], x.size)
        with pytest.raises(DecodeError):
            comp.decode(message[:4] + bytes([message[4] ^ 0x7F]) + message[5:], x.size)
        if not isinstance(comp, TopK):  # top-k carries its own count; the others must match L
            with pytest.raises(DecodeError):
                comp.decode(message, x.size + 1)

    def test_rejects_non_finite_input(self, spec: str) -> None:
        comp = parse_compression(spec)
        with pytest.raises(ConfigError):
            comp.encode(np.array([1.0, np.nan]), np.random.default_rng(0))


@pytest.mark.parametrize(
    "bad", ["q4", "gzip", "randk", "randk:0", "randk:1.5", "topk:x", "q8:1", "randk:nan",
            "mod", "mod:7", "mod:33", "mod:8.5", "mod:x"]
)
def test_parse_rejects_bad_specs_naming_the_choices(bad: str) -> None:
    with pytest.raises(ConfigError, match="compression"):
        parse_compression(bad)


def test_unknown_spec_lists_every_registered_codec() -> None:
    with pytest.raises(ConfigError) as info:
        parse_compression("gzip")
    assert all(name in str(info.value) for name in COMPRESSORS)


# ---- stochastic quantization is unbiased ---------------------------------------------------------
FALSE_FAILURE = 1e-6
"""Bound on the chance that the statistical tests below fail for a correct (unbiased) quantizer."""


def _hoeffding_radius(width: float, samples: int, failure: float) -> float:
    """t with P(|mean - E| >= t) <= failure for ``samples`` independent values in an interval of ``width``."""
    return width * math.sqrt(math.log(2 / failure) / (2 * samples))


@pytest.mark.parametrize("bits", [8, 16])
def test_codec_quantization_is_unbiased(bits: int) -> None:
    """Mean of N decodings per coordinate is within Hoeffding's radius of x (union bound over m).

    Each decoded value lies in an interval of width one step around x, so with N trials
    and m coordinates the test fails for an unbiased quantizer with probability at most
    FALSE_FAILURE (per-coordinate failure FALSE_FAILURE / m, union bound). A rounding that
    always floors has bias up to one step and fails it.
    """
    comp = Quantizer(bits)
    rng = np.random.default_rng(2024)
    x = rng.uniform(-1, 1, 64)
    x[0] = 1.0  # fixes the scale to 1, so step = 1 / levels
    step = 1.0 / comp.levels
    trials = 4000
    total = np.zeros_like(x)
    for _ in range(trials):
        total += comp.decode(comp.encode(x, rng), x.size)
    radius = _hoeffding_radius(step, trials, FALSE_FAILURE / x.size)
    assert np.max(np.abs(total / trials - x)) <= radius
    assert radius < step / 10  # the test has power: a flooring quantizer (bias ~step/2) fails it


def test_protocol_fixed_point_is_unbiased_through_plaintext_q8() -> None:
    """Plaintext with value_bits=8 (int8 on the wire): E[decoded sum] = true sum, same bound as above."""
    rng = np.random.default_rng(7)
    inputs = {c: rng.uniform(-0.5, 0.5, 40) for c in range(3)}
    cfg = RoundConfig(clip_range=1.0, value_bits=8, ring_bits=10, threshold=1)
    step = FixedPoint(clip_range=1.0, value_bits=8, ring_bits=10).step
    agg = PlaintextAggregator(rng=np.random.default_rng(11))
    trials = 3000
    acc = np.zeros(40)
    for _ in range(trials):
        acc += agg.aggregate(inputs, cfg).total
    want = sum(inputs.values())
    radius = _hoeffding_radius(len(inputs) * step, trials, FALSE_FAILURE / 40)
    assert np.max(np.abs(acc / trials - want)) <= radius


def test_plaintext_q8_sends_int8() -> None:
    inputs = {c: np.linspace(-1, 1, 300) for c in range(4)}
    q8 = PlaintextAggregator(rng=np.random.default_rng(0)).aggregate(
        inputs, RoundConfig(value_bits=8, ring_bits=10, threshold=1))
    q16 = PlaintextAggregator(rng=np.random.default_rng(0)).aggregate(
        inputs, RoundConfig(value_bits=16, ring_bits=18, threshold=1))
    plain = PlaintextAggregator().aggregate(inputs, RoundConfig(threshold=1))
    assert set(q8.bytes_up.values()) == {9 + 300}
    assert set(q16.bytes_up.values()) == {9 + 600}
    assert set(plain.bytes_up.values()) == {9 + 2400}
    np.testing.assert_allclose(q8.total, plain.total, atol=4 / 127)


# ---- error feedback never loses mass ------------------------------------------------------------
def test_error_feedback_invariant() -> None:
    ef = ErrorFeedback()
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    full = ef.begin(3, x)
    sent = full * (rng.random(50) < 0.2)
    ef.commit(3, full, sent)
    assert np.array_equal(sent + ef.residuals[3], full)
    y = rng.normal(size=50)
    np.testing.assert_allclose(ef.begin(3, y), y + full - sent, rtol=0, atol=1e-15)


@pytest.mark.parametrize("spec", ["randk:0.1", "randk:0.3", "topk:0.05", "topk:0.2"])
def test_sent_plus_residual_equals_everything_computed(spec: str) -> None:
    """Over rounds with dropouts, what reached the server + what clients still hold == all inputs."""
    up = Uplink(parse_compression(spec), seed=9)
    agg = PlaintextAggregator()
    rng = np.random.default_rng(1)
    clients, length = list(range(6)), 120
    computed = {c: np.zeros(length) for c in clients}
    delivered = np.zeros(length)
    for r in range(8):
        inputs = {c: rng.normal(0, 0.5, length) for c in clients if rng.random() < 0.8}
        if len(inputs) < 2:
            continue
        for c, v in inputs.items():
            computed[c] += v
        dropper = sorted(inputs)[0]
        plan = {dropper: Stage(r % 5)}
        cfg = up.round_config(RoundConfig(round_id=r, clip_range=0.6, threshold=1), len(inputs))
        delivered += up.aggregate(agg, inputs, cfg, plan).total
    residual = sum(up.feedback.residuals.values(), np.zeros(length))
    np.testing.assert_allclose(delivered + residual, sum(computed.values()), rtol=0, atol=1e-9)


def test_randk_sends_only_the_selected_coordinates() -> None:
    up = Uplink(RandomK(0.1), seed=0)
    inputs = {c: vector(1000, c) for c in range(3)}
    agg = PlaintextAggregator()
    result = up.aggregate(agg, inputs, RoundConfig(threshold=1))
    assert {len(v) for v in agg.last_messages.values()} == {100}
    assert set(result.bytes_up.values()) == {9 + 8 * 100}
    assert (result.total != 0).sum() <= 100


# ---- secure protocols: same sum with and without random-k ---------------------------------------
def _secure(name: str) -> SecAggAggregator:
    if name == "secagg":
        return SecAggAggregator(rng=np.random.default_rng(0))
    return SecAggPlusAggregator(neighbors=3, rng=np.random.default_rng(0))


@pytest.mark.parametrize("protocol", ["secagg", "secagg+"])
def test_secure_sum_same_with_and_without_randk(protocol: str) -> None:
    rng = np.random.default_rng(3)
    n, length = 6, 400
    inputs = {10 + c: rng.uniform(-0.5, 0.5, length) for c in range(n)}
    cfg = RoundConfig(round_id=4, clip_range=1.0, threshold=4)
    dense = Uplink(NoCompression(), seed=1).aggregate(_secure(protocol), inputs, cfg)
    plan = {11: Stage.CONSISTENCY}  # in the sum: it sent its masked input
    up = Uplink(RandomK(0.25), seed=1)
    sparse = up.aggregate(_secure(protocol), inputs, cfg, plan)
    plain = Uplink(RandomK(0.25), seed=1).aggregate(PlaintextAggregator(), inputs, cfg, plan)
    tol = n * FixedPoint.for_sum(n, 1.0, 32).step
    sel = plain.total != 0
    assert sel.sum() == 100
    np.testing.assert_allclose(sparse.total[sel], dense.total[sel], rtol=0, atol=tol)
    np.testing.assert_allclose(sparse.total, plain.total, rtol=0, atol=tol)
    assert (sparse.total[~sel] == 0).all()
    for c in inputs.keys() - plan.keys():  # each masked input is 4 bytes x 300 values shorter
        assert dense.bytes_up[c] - sparse.bytes_up[c] == 4 * (length - 100)


def test_paillier_sum_same_with_and_without_randk() -> None:
    pytest.importorskip("gmpy2")
    from protocols.paillier import PaillierAggregator
    from tests.protocols.test_paillier import small_key

    rng = np.random.default_rng(4)
    inputs = {c: rng.uniform(-0.5, 0.5, 300) for c in range(4)}
    cfg = RoundConfig(clip_range=1.0, threshold=2)
    key = small_key()
    dense = PaillierAggregator(keypair=key, rng=np.random.default_rng(0)).aggregate(inputs, cfg)
    up = Uplink(RandomK(0.2), seed=2)
    sparse = up.aggregate(PaillierAggregator(keypair=key, rng=np.random.default_rng(0)), inputs, cfg)
    sel = sparse.total != 0
    assert sel.sum() == 60
    tol = 4 * FixedPoint.for_sum(4, 1.0, 32).step
    np.testing.assert_allclose(sparse.total[sel], dense.total[sel], rtol=0, atol=tol)
    assert sparse.total_bytes_up < dense.total_bytes_up


# ---- quantization shrinks the ring and the messages ---------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 100, 943])
def test_q8_ring_is_value_bits_plus_headroom(n: int) -> None:
    cfg = Uplink(Quantizer(8), seed=0).round_config(RoundConfig(threshold=1), n)
    assert cfg.value_bits == 8 and cfg.ring_bits == max(8, 8 + math.ceil(math.log2(n)))
    FixedPoint.for_sum(n, cfg.clip_range, cfg.ring_bits, cfg.value_bits)  # fits, by construction


def test_secagg_q8_masked_input_is_packed_at_its_ring_bits() -> None:
    rng = np.random.default_rng(5)
    n, length = 8, 1000
    inputs = {c: rng.uniform(-1, 1, length) for c in range(n)}
    base = RoundConfig(clip_range=1.0, threshold=5)
    agg = SecAggAggregator(malicious=False, rng=np.random.default_rng(0))
    dense = Uplink(NoCompression(), 0).aggregate(agg, inputs, base)
    up = Uplink(Quantizer(8), 0)
    cfg = up.round_config(base, n)
    q8 = up.aggregate(agg, inputs, cfg)
    assert cfg.ring_bits == 11
    for c in inputs:  # the masked input shrinks from 32 to 11 bits per value; the rest is equal
        assert dense.bytes_up[c] - q8.bytes_up[c] == 4 * length - (11 * length + 7) // 8
    step = FixedPoint.for_sum(n, 1.0, cfg.ring_bits, 8).step
    np.testing.assert_allclose(q8.total, sum(inputs.values()), rtol=0, atol=n * step)


def test_paillier_q8_packs_more_values_per_ciphertext() -> None:
    from protocols.paillier.aggregator import round_layout
    from tests.protocols.test_paillier import small_key

    public = small_key().public
    for n in (10, 100):
        up = Uplink(Quantizer(8), 0)
        base = RoundConfig(threshold=1)
        _, dense = round_layout(n, base, public)
        _, packed = round_layout(n, up.round_config(base, n), public)
        assert packed.slots >= 2 * dense.slots if n <= 64 else packed.slots > dense.slots


# ---- mod:B: a ring sized for the sum, after a random rotation ------------------------------------
def test_rotation_is_orthonormal_linear_and_public() -> None:
    rng = np.random.default_rng(8)
    xs = rng.normal(size=(5, 999))
    signs = rotation_signs(999, np.random.default_rng([1, 2, 3]))
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert (signs == rotation_signs(999, np.random.default_rng([1, 2, 3]))).all()
    ys = rotate(xs, signs)
    np.testing.assert_allclose(np.linalg.norm(ys, axis=1), np.linalg.norm(xs, axis=1), rtol=1e-12)
    np.testing.assert_allclose(ys.sum(axis=0), rotate(xs.sum(axis=0), signs), atol=1e-12)
    np.testing.assert_allclose(unrotate(ys, signs), xs, atol=1e-12)
    spike = np.zeros(999)
    spike[17] = 1.0  # a one-item update is spread over every coordinate
    assert np.max(np.abs(rotate(spike, signs))) <= np.sqrt(2 / 999) + 1e-12


def _correlated(n: int, length: int, seed: int) -> dict[int, np.ndarray]:
    """Client updates that share a direction, as federated updates do, plus their own part."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0, 0.05, length)
    return {20 + c: common + rng.normal(0, 0.05, length) * (rng.random(length) < 0.2) for c in range(n)}


def test_mod_first_round_is_exact_then_the_ring_is_b_bits_and_wraps() -> None:
    up = Uplink(ModularQuantizer(8), seed=0)
    base = RoundConfig(clip_range=4.0, threshold=1)
    first = up.round_config(base, 100)
    assert (first.ring_bits, first.value_bits, first.wrap, first.clip_range) == (15, 8, False, 4.0)
    up.observe(np.full(64, 0.5), survivors=50)
    later = up.round_config(base, 100)
    assert (later.ring_bits, later.value_bits, later.wrap) == (8, 8, True)
    assert later.clip_range == pytest.approx(ModularQuantizer.margin * 0.5 * 100 / 50)
    up.observe(np.zeros(64), survivors=50)  # nothing to size the ring by: back to an exact round
    assert not up.round_config(base, 100).wrap


@pytest.mark.parametrize("protocol", ["plaintext", "secagg", "secagg+"])
def test_mod_recovers_the_sum_through_the_protocols(protocol: str) -> None:
    n, length = 20, 600
    up = Uplink(ModularQuantizer(8), seed=3)
    agg = PlaintextAggregator(rng=np.random.default_rng(0)) if protocol == "plaintext" else _secure(protocol)
    errors, sizes = [], []
    for r in range(3):
        inputs = _correlated(n, length, seed=r)
        cfg = up.round_config(RoundConfig(round_id=r, clip_range=1.0, threshold=15), n)
        result = up.aggregate(agg, inputs, cfg, {20: Stage.MASKED_INPUT})
        want = np.sum([v for c, v in inputs.items() if c != 20], axis=0)
        errors.append(np.linalg.norm(result.total - want) / np.linalg.norm(want))
        sizes.append(result.bytes_up[21])
    # rounds 2 and 3: rounding noise of RMS margin * sqrt(n / 6) / 127 ~ 6.5 % of the sum; 15 % bounds it
    # with room for the odd wrapped coordinate (round 1 is exact, at 8 value bits in 13-bit ring)
    assert max(errors) < 0.15
    assert min(errors[1:]) > 0.02  # the 8-bit ring does cost precision: this is not an exact sum
    if protocol != "plaintext":  # masked inputs: 8 + 5 bits per value in round 1, then 8
        assert sizes[0] - sizes[1] == (13 * length + 7) // 8 - length == sizes[0] - sizes[2]


def test_mod_range_cannot_remove_noise_it_only_wraps() -> None:
    """A range far too small wraps the rotated sum modulo the ring; nothing is clipped away."""
    n, length = 10, 256
    inputs = _correlated(n, length, seed=9)
    up = Uplink(ModularQuantizer(12), seed=1)
    up.spread = (1e-3, n)  # the server claims a tiny spread: the range is 4.5e-3
    cfg = up.round_config(RoundConfig(round_id=1, threshold=1), n)
    got = up.aggregate(PlaintextAggregator(rng=np.random.default_rng(2)), inputs, cfg)
    signs = up.signs(length, 1)
    rotated = rotate(np.sum(list(inputs.values()), axis=0), signs)
    period = 2 * cfg.clip_range * 2**11 / (2**11 - 1)  # the ring's span in float
    wrapped = rotated - period * np.round(rotated / period)
    step = cfg.clip_range / (2**11 - 1)
    assert np.abs(rotate(got.total, signs) - wrapped).max() <= n * step + 1e-12


def test_mod_is_refused_with_paillier_naming_why() -> None:
    with pytest.raises(ConfigError, match="carries into its neighbour"):
        ExperimentConfig(protocol="paillier", compression="mod:8")


# ---- top-k is refused with secure protocols -----------------------------------------------------
@pytest.mark.parametrize("protocol", ["secagg", "secagg+", "paillier"])
def test_topk_refused_with_secure_protocols(protocol: str) -> None:
    with pytest.raises(ConfigError, match="rated") as info:
        ExperimentConfig(protocol=protocol, compression="topk:0.1")
    assert isinstance(info.value, ValueError)
    ExperimentConfig(protocol=protocol, compression="randk:0.1")
    ExperimentConfig(protocol="plaintext", compression="topk:0.1")


# ---- downlink -----------------------------------------------------------------------------------
def test_downlink_counts_snapshot_then_deltas() -> None:
    length = 1000
    g = np.random.default_rng(0).normal(size=length)
    down = Downlink(Quantizer(8), g, num_clients=4)
    rng = np.random.default_rng(1)
    snap = 9 + 4 * length
    delta = 9 + 1 + 8 + length
    view, total = down.broadcast(g, [0, 1], rng)
    assert total == 2 * snap
    for _ in range(2):
        g = g + np.random.default_rng(2).normal(0, 0.01, length)
        view, total = down.broadcast(g, [0], rng)
        assert total == delta
    _, total = down.broadcast(g, [1, 2], rng)  # 1 missed 2, needs 3 (cheaper than a snapshot); 2 is new
    assert total == 3 * delta + snap
    for _ in range(4):
        _, total = down.broadcast(g, [0], rng)
    _, total = down.broadcast(g, [1], rng)  # 5 deltas cost more than a snapshot
    assert total == snap
    assert np.max(np.abs(view - g)) < 0.05 / 127 + 1e-6  # within one step of the last delta


def test_downlink_none_is_a_float32_snapshot() -> None:
    g = np.arange(10.0)
    view, total = Downlink(NoCompression(), g, 3).broadcast(g, [0, 2], np.random.default_rng(0))
    assert total == 2 * (9 + 40) and (view == g).all()


# ---- simulation ----------------------------------------------------------------------------------
def _small(**kw: object) -> ExperimentConfig:
    values: dict[str, object] = {
        "synthetic_users": 40, "synthetic_items": 30, "synthetic_ratings_per_user": 10,
        "rounds": 4, "factors": 4, "device": "cpu", "update_clip": 4.0, **kw,
    }
    return ExperimentConfig.from_mapping(values)


def _track_uplink(sim: Any) -> list[tuple[float, float]]:
    """Record, per round, how far the uplink's decoded sum is from what the survivors meant to send.

    What a survivor meant to send this round is its delta plus its residual from earlier rounds,
    less the residual it keeps (error feedback: random-k and top-k deliver the rest later; a
    clipped part stays in the residual too). The codec's own error is then bounded by:
    quantization (``qB``, ``mod:B``): every coordinate is stochastically rounded to the round's
    fixed-point grid, off by less than one step, so the sum of ``n`` survivors is off by less
    than ``n`` steps per coordinate (``mod:B``: per coordinate of the *rotated* sum, which the
    public rotation gives back exactly); sparsifiers: the kept coordinates travel exactly (top-k
    as float32, and the residual keeps what float32 rounding lost), so only float64 summation
    error remains, below ``1e-9`` of the largest value; and each survivor's delivered part holds
    at most ``kept(L)`` coordinates, each its clipped value to float32 rounding (``2^-24``
    relative). Returns one ``(error, bound)`` per check.
    """
    up = sim.uplink
    records: list[tuple[float, float]] = []
    original = up.aggregate

    def aggregate(aggregator: Any, inputs: Any, config: RoundConfig, dropout: Any = None) -> Any:
        before = {c: r.copy() for c, r in up.feedback.residuals.items()}
        result = original(aggregator, inputs, config, dropout)
        survivors = sorted(result.survivors)
        zero = np.zeros(len(result.total))
        meant = np.sum([np.asarray(inputs[c], np.float64) + before.get(c, zero)
                        - up.feedback.residuals.get(c, zero) for c in survivors], axis=0)
        diff, size = result.total - meant, float(np.abs(meant).max())
        if config.value_bits is None:  # no quantization: the sum of what was sent
            records.append((float(np.abs(diff).max()), 1e-9 * len(survivors) * size))
            for c in survivors:  # and each survivor sent at most kept(L) of its coordinates, as they were
                full = np.asarray(inputs[c], np.float64) + before.get(c, zero)
                delivered = full - up.feedback.residuals.get(c, zero)
                kept = delivered != 0
                assert kept.sum() <= up.compressor.kept(len(full))
                wanted = np.clip(full, -config.clip_range, config.clip_range)[kept]
                records.append((float(np.abs(delivered[kept] - wanted).max(initial=0.0)),
                                2.0**-24 * float(np.abs(wanted).max(initial=0.0))))  # float32 rounding
            return result
        step = FixedPoint(clip_range=config.clip_range, value_bits=config.value_bits,
                          ring_bits=config.ring_bits, wrap=config.wrap).step
        if isinstance(up.compressor, ModularQuantizer):
            diff = rotate(diff, up.signs(len(diff), config.round_id))
        records.append((float(np.abs(diff).max()), len(survivors) * step))
        return result

    up.aggregate = aggregate
    return records


@pytest.mark.parametrize(("protocol", "spec"), [("plaintext", "q8"), ("plaintext", "randk:0.2"),
                                               ("plaintext", "topk:0.2"), ("secagg+", "q8"),
                                               ("secagg+", "mod:8")])
def test_simulation_counts_fewer_bytes_and_sums_within_the_codec_bound(protocol: str, spec: str) -> None:
    from securefedrec.server.simulation import Simulation

    base = Simulation(_small(rounds=2, protocol=protocol)).run(progress=False)
    sim = Simulation(_small(rounds=2, protocol=protocol, compression=spec))
    errors = _track_uplink(sim)
    comp = sim.run(progress=False)
    for a, b in zip(base["rounds"], comp["rounds"], strict=True):
        assert b["bytes_up"] < a["bytes_up"] and b["bytes_down"] <= a["bytes_down"]
    assert comp["rounds"][1]["bytes_down"] < base["rounds"][1]["bytes_down"]
    assert len(errors) >= 2 and all(e <= bound for e, bound in errors), errors


@pytest.mark.parametrize("spec", ["randk:0.2", "mod:8"])
def test_checkpoint_keeps_residuals_and_downlink(tmp_path: object, spec: str) -> None:
    from pathlib import Path

    from securefedrec.server.simulation import Simulation

    path = Path(str(tmp_path)) / "ck.npz"
    cfg = _small(compression=spec, sample_rate=0.5, protocol="plaintext")
    straight = Simulation(cfg)
    for _ in range(4):
        straight.run_round()
    first = Simulation(cfg)
    for _ in range(2):
        first.run_round()
    first.save_checkpoint(path)
    resumed = Simulation(cfg)
    resumed.load_checkpoint(path)
    assert set(resumed.uplink.feedback.residuals) == set(first.uplink.feedback.residuals)
    assert resumed.uplink.spread == first.uplink.spread
    assert (resumed.uplink.spread is not None) == (spec == "mod:8")
    for _ in range(2):
        resumed.run_round()
    np.testing.assert_allclose(resumed.global_vec, straight.global_vec, rtol=0, atol=1e-9)
    assert [r["bytes_down"] for r in resumed.rounds] == [r["bytes_down"] for r in straight.rounds]


def test_cli_flag_reaches_the_config() -> None:
    from securefedrec.cli import build_parser, config_from_args

    args = build_parser().parse_args(["run", "--protocol", "plaintext", "--compression", "topk:0.05"])
    assert config_from_args(args).compression.codec == "topk:0.05"


def test_uplink_refuses_topk_with_a_secure_aggregator() -> None:
    inputs = {c: vector(50, c) for c in range(3)}
    with pytest.raises(ConfigError, match="rated"):
        Uplink(TopK(0.1), 0).aggregate(SecAggAggregator(), inputs, RoundConfig(threshold=2))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize(("secure", "supports_wrap"),
                         [(False, True), (True, True), (True, False), (False, False)])
def test_codec_refusal_asks_the_protocol_capabilities(spec: str, secure: bool, supports_wrap: bool) -> None:
    """Top-k needs a protocol that is not secure, mod:B one carrying wrapping sums; others run anywhere."""
    comp = parse_compression(spec)
    reason = comp.refused_by(SimpleNamespace(name="stub", secure=secure, supports_wrap=supports_wrap))
    expected = (spec.startswith("topk") and secure) or (spec.startswith("mod") and not supports_wrap)
    assert (reason is not None) == expected
    assert comp.refused_by(PlaintextAggregator) is None
    assert (comp.refused_by(SecAggAggregator) is not None) == spec.startswith("topk")


def test_uplink_refuses_mod_with_a_protocol_that_cannot_wrap() -> None:
    class NoWrap(PlaintextAggregator):
        supports_wrap = False

    inputs = {c: vector(50, c) for c in range(3)}
    up = Uplink(ModularQuantizer(8), 0)
    with pytest.raises(ConfigError, match="wrap"):
        up.aggregate(NoWrap(), inputs, up.round_config(RoundConfig(threshold=2), 3))


@pytest.mark.parametrize("spec", SPECS)
def test_round_config_follows_the_codec_ring(spec: str) -> None:
    """Every codec's exact ring is ``ring_bits(n)``; a codec without value bits leaves the config alone."""
    comp, base = parse_compression(spec), RoundConfig(threshold=1)
    cfg = Uplink(comp, 0).round_config(base, 100)
    if comp.value_bits is None:
        assert comp.ring_bits(100) is None and cfg == base
    else:
        assert (cfg.value_bits, cfg.ring_bits, cfg.wrap) == (comp.value_bits, comp.ring_bits(100), False)


def test_randk_selection_is_public_and_data_independent() -> None:
    comp, public = RandomK(0.05), [7, 3, 101]
    a = comp.select(np.zeros(1000), np.random.default_rng(public))
    b = comp.select(np.ones(1000), np.random.default_rng(public))
    assert np.array_equal(a, b) and a.size == 50 and np.all(np.diff(a) > 0)


def test_public_coords_come_from_the_run_seed_and_only_for_shared_selections() -> None:
    """A round's public coordinates: ``select`` on ``[seed, round, STREAM_SELECT]``; the Uplink sends them."""
    a = RandomK(0.05).public_coords(1000, 7, 3)
    expected = RandomK(0.05).select(np.ones(1000), np.random.default_rng([7, 3, 101]))
    assert a is not None and np.array_equal(a, expected)
    assert not np.array_equal(a, RandomK(0.05).public_coords(1000, 7, 4))
    for spec in ("none", "q8", "mod:8", "topk:0.1"):
        assert parse_compression(spec).public_coords(1000, 7, 3) is None
    up = Uplink(RandomK(0.05), seed=7)
    inputs = {c: vector(1000, c) for c in range(3)}
    up.aggregate(PlaintextAggregator(), inputs, RoundConfig(round_id=3, threshold=1))
    assert up.last_coords is not None and np.array_equal(up.last_coords, a)
