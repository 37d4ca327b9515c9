"""Compressed transmission that composes with secure aggregation (DESIGN.md step 5).

Compressors, by name (``--compression``):

==========  ===================================================================
``none``    float vectors, as before
``q8/q16``  stochastic fixed-point quantization to 8 / 16 bits (sign included);
            unbiased. Uplink: the protocol's own :class:`~protocols.FixedPoint`
            encodes with ``value_bits = v`` in a ring of ``v + ceil(log2 n)``
            bits (SecAgg / SecAgg+ pack ``b`` bits per value, Paillier packs
            ``b``-bit slots, plaintext sends int8 / int16).
``randk:F`` shared-seed random-k: each round a *public* seed picks the same
            ``ceil(F L)`` coordinates for every client, so masked sums line up;
            only those are handed to the protocol and the server scatters the
            decoded sum back. Per-client error feedback keeps what was not sent.
``topk:F``  per-client top-k by magnitude with error feedback; indices + float32
            values. Plaintext only (see Notes).
``mod:B``   a ``B``-bit ring sized for the *sum*, not for every client's worst
            case: modular clipping after a public random rotation (Kairouz, Liu,
            Steinke, ICML 2021). Lossy by design: rare overflows wrap. Masking
            protocols and plaintext; Paillier refuses it (see Notes).
==========  ===================================================================

Every compressor has a self-contained round-trip codec (:meth:`Compressor.encode`
-> bytes -> :meth:`Compressor.decode`), used for the downlink, for top-k and by
the shared round-trip tests. :class:`Uplink` applies a compressor between the
(clipped, privatized) client deltas and the aggregator; :class:`Downlink`
compresses the broadcast of the global vector (quantized delta from what
clients already hold) and counts its bytes per client.

Notes:
    Top-k leaks: the indices a client sends are the items whose factors moved
    most, i.e. the items the user rated (the "rated-items" attack needs nothing
    else). Secure aggregation cannot hide them, since masked vectors must agree
    on coordinates. Random-k avoids this because its coordinates come from a
    public per-round seed that does not depend on any client's data.

    How small q8 can get under masking. A masked value must be uniform over a
    ring that holds every possible sum -- two sums that collide modulo the ring
    cannot be told apart -- so with ``n`` clients and ``v``-bit values each
    client sends at least ``log2(n (2^v - 1) + 1)`` bits per coordinate, about
    ``v + log2 n``. The ring of ``v + ceil(log2 n)`` bits is within one bit of
    that bound and is sent bit-exactly. Against the uncompressed 32-bit ring
    (24 value bits + headroom at ~200 clients, as precise as the float run to
    2e-7 RMSE) q8 is therefore (8 + ceil(log2 n)) / 32: 50 % at 129..256
    clients, 53 % at 257..512; below 30 % would take a wider uncompressed ring
    or a lossy sum: ``mod:B`` below (modular clipping after a random rotation,
    as in Kairouz et al. 2021, which lets rare overflows wrap).

    ``mod:B``, how it works. Every round the server publishes random signs
    ``D`` (seed ``[seed, round, STREAM_ROTATE]``); each client sends
    ``R x = DCT(D x)`` (orthonormal, any length), stochastically rounded at a
    common scale and reduced modulo ``2^B`` (``RoundConfig.wrap``); the server
    decodes the signed ring sum and applies ``R^-1``. The rotation spreads every
    update over all coordinates, so the rotated sum's coordinates are close to
    Gaussian with RMS ``sigma = ||sum|| / sqrt(L)``. The ring is sized to hold
    ``+-margin * sigma`` (margin 4.5: a coordinate wraps with probability
    ~7e-6), with ``sigma`` predicted from the previous round's released sum,
    scaled by the clients' count (public: the server learns that sum anyway).
    A wrapped coordinate is off by ``2^B`` units, which ``R^-1`` spreads thinly
    over the whole vector. The rounding noise of the sum has RMS
    ``sqrt(n / 6)`` units against ``2^(B-1) / margin`` units for ``sigma``: at
    ``B = 8`` and ~190 clients about 20 % of the sum's norm, unbiased. The first
    round, with no sum to go by, is exact: ``B + ceil(log2 n)`` bits, values
    clipped to ``clip_range`` as for ``qB``. Because each client's value is
    reduced modulo ``2^B`` rather than clipped, the server's choice of range can
    only cost accuracy, never remove DP noise (post-processing of the sum).
    Paillier cannot wrap: a slot that overflows carries into the next.

    Error feedback with distributed DP: a residual carries its own noise share
    into the round where it is finally sent; accounting that assumes each
    round's release is a fresh Gaussian sum is then approximate.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import struct
import time
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
import scipy.fft

from protocols import AggregationAborted, AggregationResult, Aggregator, DropoutPlan, RoundConfig, Stage
from protocols.base import abort_if_below_threshold, check_inputs
from protocols.encoding import FixedPoint, stochastic_round
from protocols.wire import frame, pack_array, pack_uints, unframe, unpack_array, unpack_uints
from securefedrec import streams
from securefedrec.errors import CheckpointError, ConfigError, DecodeError

__all__ = [
    "COMPRESSORS",
    "STREAM_DOWNLINK",
    "STREAM_ROTATE",
    "STREAM_SELECT",
    "Compressor",
    "Downlink",
    "ErrorFeedback",
    "ModularQuantizer",
    "NoCompression",
    "Q8",
    "Q16",
    "Quantizer",
    "RandomK",
    "TopK",
    "Uplink",
    "load_state",
    "parse_compression",
    "rotate",
    "rotation_signs",
    "state_arrays",
    "unrotate",
]

STREAM_SELECT = streams.SELECT
"""Random stream (``default_rng([seed, round, STREAM_SELECT])``) of the public random-k selection."""
STREAM_DOWNLINK = streams.DOWNLINK
"""Random stream of the downlink's stochastic rounding."""
STREAM_ROTATE = streams.ROTATE
"""Random stream (``default_rng([seed, round, STREAM_ROTATE])``) of ``mod:B``'s public signs."""

_KIND_FLOAT, _KIND_QUANT, _KIND_RANDK, _KIND_TOPK, _KIND_MOD = 0x40, 0x41, 0x42, 0x43, 0x44
_F8 = struct.Struct("<d")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _int_dtype(bits: int) -> str:
    return f"<i{next(w for w in (1, 2, 4, 8) if bits <= 8 * w)}"


def _check_vector(x: np.ndarray) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1 or not np.all(np.isfinite(v)):
        raise ConfigError(f"compressor input must be a finite 1-D vector, got shape {v.shape}")
    return v


def rotation_signs(length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` random signs (float64 +-1) from ``rng``: the ``D`` of :func:`rotate`."""
    signs: np.ndarray = 2.0 * rng.integers(0, 2, size=length) - 1.0
    return signs


def rotate(x: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """The random rotation ``DCT(signs * x)`` along the last axis (orthonormal: keeps norms and sums)."""
    rotated: np.ndarray = scipy.fft.dct(np.asarray(x, dtype=np.float64) * signs, norm="ortho", axis=-1)
    return rotated


def unrotate(y: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rotate`."""
    back: np.ndarray = scipy.fft.idct(np.asarray(y, dtype=np.float64), norm="ortho", axis=-1) * signs
    return back


class Compressor(abc.ABC):
    """A named way to shrink a vector. Subclasses register in :data:`COMPRESSORS`.

    Attributes:
        secure_ok: whether it composes with secure aggregation (the coordinates sent
            do not depend on the client's data).
        value_bits: bits per value the protocol should encode with (``None``: its default).
        feedback: whether clients keep an error-feedback residual.
        downlink_bits: bits per value of the compressed broadcast (``None``: full float32).
        wraps: whether the protocol's sum may wrap (``mod:B``: rotation + modular clipping).
    """

    name: ClassVar[str]
    secure_ok: ClassVar[bool] = True
    value_bits: int | None = None
    feedback: bool = False
    downlink_bits: int | None = 8
    wraps: ClassVar[bool] = False

    @property
    def spec(self) -> str:
        """The ``--compression`` string that builds this compressor."""
        return self.name

    def kept(self, length: int) -> int:
        """How many coordinates the protocol carries for a vector of ``length``."""
        return length

    def select(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Coordinates to send (sorted int64), or ``None`` for all. ``rng`` is the round's public seed."""
        return None

    @abc.abstractmethod
    def encode(self, x: np.ndarray, rng: np.random.Generator) -> bytes:
        """Compress ``x`` into a self-contained framed message (randomness from ``rng``)."""

    @abc.abstractmethod
    def decode(self, message: bytes, length: int) -> np.ndarray:
        """Inverse of :meth:`encode`: a float64 vector of ``length``; raises ``DecodeError``."""


class NoCompression(Compressor):
    """Float64 values, bit-exact (the ``none`` baseline)."""

    name: ClassVar[str] = "none"
    downlink_bits = None

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> bytes:
        """Framed float64 values."""
        return frame(_KIND_FLOAT, pack_array(_check_vector(x), "<f8"))

    def decode(self, message: bytes, length: int) -> np.ndarray:
        """Float64 values."""
        return unpack_array(unframe(message, _KIND_FLOAT), "<f8", length).astype(np.float64)


class Quantizer(Compressor):
    """Stochastic fixed-point quantization to ``bits`` bits (``q8``, ``q16``).

    The codec scales by the vector's largest magnitude (sent as a float64), so
    no value is clipped and ``E[decode(encode(x))] = x`` exactly; the error of one
    value is below ``max|x| / (2^(bits-1) - 1)``. Through a protocol the scale is
    the round's ``clip_range`` instead (one common scale, which masking needs).
    """

    name: ClassVar[str] = "q"

    def __init__(self, bits: int) -> None:
        if bits not in (8, 16):
            raise ConfigError(f"compression: quantization bits must be 8 or 16, got {bits}")
        self.bits = bits
        self.value_bits = bits
        self.downlink_bits = bits

    @property
    def spec(self) -> str:
        """``q8`` or ``q16``."""
        return f"q{self.bits}"

    @property
    def levels(self) -> int:
        """Largest integer magnitude, ``2^(bits-1) - 1``."""
        return (1 << (self.bits - 1)) - 1

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> bytes:
        """Scale (float64) then ``bits``-bit signed integers, stochastically rounded."""
        v = _check_vector(x)
        scale = float(np.max(np.abs(v))) if v.size else 0.0
        q = (stochastic_round(v * (self.levels / scale), rng) if scale > 0 else np.zeros_like(v))
        q = np.clip(q, -self.levels, self.levels)
        return frame(_KIND_QUANT, bytes([self.bits]) + _F8.pack(scale) + pack_array(q, _int_dtype(self.bits)))

    def decode(self, message: bytes, length: int) -> np.ndarray:
        """Integers times ``scale / levels``."""
        payload = unframe(message, _KIND_QUANT)
        if len(payload) < 1 + _F8.size or payload[0] != self.bits:
            raise DecodeError(f"quantized message: expected {self.bits}-bit values")
        (scale,) = _F8.unpack_from(payload, 1)
        if not (math.isfinite(scale) and scale >= 0):
            raise DecodeError(f"quantized message: bad scale {scale}")
        q = unpack_array(payload[1 + _F8.size :], _int_dtype(self.bits), length)
        if np.any(np.abs(q.astype(np.int64)) > self.levels):
            raise DecodeError(f"quantized message: a value exceeds {self.levels}")
        out: np.ndarray = q.astype(np.float64) * (scale / self.levels)
        return out


class Q8(Quantizer):
    """``q8``: 8-bit stochastic quantization."""

    name: ClassVar[str] = "q8"

    def __init__(self) -> None:
        super().__init__(8)


class Q16(Quantizer):
    """``q16``: 16-bit stochastic quantization."""

    name: ClassVar[str] = "q16"

    def __init__(self) -> None:
        super().__init__(16)


class ModularQuantizer(Compressor):
    """``mod:B``: random rotation, then a ``B``-bit ring sized for the sum (module Notes).

    The standalone codec rotates with signs from a seed it sends (uint64), scales
    by the rotated vector's largest magnitude (float64) like :class:`Quantizer`,
    and packs ``B``-bit values bit-exactly; one vector never wraps. Through a
    protocol, :class:`Uplink` chooses the common scale and lets sums wrap.
    """

    name: ClassVar[str] = "mod"
    wraps: ClassVar[bool] = True
    margin: ClassVar[float] = 4.5
    """The ring holds ``+-margin`` times the predicted RMS of the rotated sum's coordinates."""

    def __init__(self, bits: int) -> None:
        if not 8 <= bits <= 32:
            raise ConfigError(f"compression: mod ring bits must be in [8, 32], got {bits}")
        self.bits = bits
        self.value_bits = bits
        self.downlink_bits = 8 if bits < 16 else 16

    @property
    def spec(self) -> str:
        """``mod:B``."""
        return f"mod:{self.bits}"

    def _encoding(self, scale: float) -> FixedPoint:
        return FixedPoint(clip_range=scale if scale > 0 else 1.0, value_bits=self.bits, ring_bits=self.bits)

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> bytes:
        """Rotation seed (uint64), scale (float64), then ``B``-bit rotated values, stochastically rounded."""
        v = _check_vector(x)
        seed = int(rng.integers(0, 2**63))
        y = rotate(v, rotation_signs(v.shape[0], np.random.default_rng(seed)))
        scale = float(np.max(np.abs(y))) if y.size else 0.0
        fp = self._encoding(scale)
        return frame(_KIND_MOD, bytes([self.bits]) + _U64.pack(seed) + _F8.pack(scale)
                     + pack_uints(fp.encode(y, rng), self.bits))

    def decode(self, message: bytes, length: int) -> np.ndarray:
        """Decode the values and undo the rotation."""
        payload = unframe(message, _KIND_MOD)
        head = 1 + _U64.size + _F8.size
        if len(payload) < head or payload[0] != self.bits:
            raise DecodeError(f"mod message: expected {self.bits}-bit values")
        (seed,) = _U64.unpack_from(payload, 1)
        (scale,) = _F8.unpack_from(payload, 1 + _U64.size)
        if not (math.isfinite(scale) and scale >= 0):
            raise DecodeError(f"mod message: bad scale {scale}")
        fp = self._encoding(scale)
        y = fp.decode(unpack_uints(payload[head:], self.bits, length))
        return unrotate(y, rotation_signs(length, np.random.default_rng(seed)))


class _Fraction(Compressor):
    """Common part of the sparsifiers: a fraction F of the coordinates, error feedback."""

    feedback = True

    def __init__(self, fraction: float) -> None:
        if not (math.isfinite(fraction) and 0 < fraction <= 1):
            raise ConfigError(f"compression: {self.name} fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    @property
    def spec(self) -> str:
        """``NAME:F``."""
        return f"{self.name}:{self.fraction:g}"

    def kept(self, length: int) -> int:
        """``ceil(F * length)`` (at least 1 for a non-empty vector)."""
        return min(length, max(1 if length else 0, math.ceil(self.fraction * length)))


class RandomK(_Fraction):
    """Shared-seed random-k (``randk:F``): the same ``ceil(F L)`` coordinates for every client.

    Unscaled (not the unbiased ``L/k`` rescaling): error feedback delivers the rest
    in later rounds, which keeps the variance of the sum low.
    """

    name: ClassVar[str] = "randk"

    def select(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``ceil(F L)`` coordinates drawn from ``rng`` (the same for all clients given the same seed)."""
        length = int(np.shape(x)[0])
        return np.sort(rng.choice(length, size=self.kept(length), replace=False)).astype(np.int64)

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> bytes:
        """A 64-bit selection seed drawn from ``rng`` and the float64 values it selects."""
        v = _check_vector(x)
        seed = int(rng.integers(0, 2**63))
        idx = self.select(v, np.random.default_rng(seed))
        return frame(_KIND_RANDK, _U64.pack(seed) + pack_array(v[idx], "<f8"))

    def decode(self, message: bytes, length: int) -> np.ndarray:
        """The selected values scattered into zeros."""
        payload = unframe(message, _KIND_RANDK)
        if len(payload) < _U64.size:
            raise DecodeError("random-k message: truncated seed")
        (seed,) = _U64.unpack_from(payload)
        idx = self.select(np.zeros(length), np.random.default_rng(seed))
        out = np.zeros(length, dtype=np.float64)
        out[idx] = unpack_array(payload[_U64.size :], "<f8", idx.size)
        return out


class TopK(_Fraction):
    """Per-client top-k by magnitude (``topk:F``): uint32 indices + float32 values.

    Plaintext only: the indices depend on the client's data (module Notes).
    """

    name: ClassVar[str] = "topk"
    secure_ok: ClassVar[bool] = False

    def select(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The ``ceil(F L)`` largest-magnitude coordinates of ``x`` (ties: lowest index)."""
        v = np.asarray(x)
        k = self.kept(int(v.shape[0]))
        if k >= v.shape[0]:
            return np.arange(v.shape[0], dtype=np.int64)
        idx = np.argpartition(-np.abs(v), k - 1, kind="introselect")[:k]
        return np.sort(idx).astype(np.int64)

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> bytes:
        """Count, indices, float32 values."""
        v = _check_vector(x)
        if v.shape[0] >= 2**32:
            raise ConfigError("top-k: vectors longer than 2^32 are not supported")
        idx = self.select(v, rng)
        return frame(_KIND_TOPK, _U32.pack(idx.size) + pack_array(idx, "<u4") + pack_array(v[idx], "<f4"))

    def decode(self, message: bytes, length: int) -> np.ndarray:
        """Values scattered at their indices into zeros."""
        payload = unframe(message, _KIND_TOPK)
        if len(payload) < _U32.size:
            raise DecodeError("top-k message: truncated count")
        (k,) = _U32.unpack_from(payload)
        if len(payload) != _U32.size + 8 * k:
            raise DecodeError(f"top-k message: {len(payload)} bytes do not hold {k} entries")
        idx = unpack_array(payload[_U32.size : _U32.size + 4 * k], "<u4").astype(np.int64)
        if idx.size and (idx.max() >= length or np.any(np.diff(idx) <= 0)):
            raise DecodeError(f"top-k message: indices must be increasing and below {length}")
        out = np.zeros(length, dtype=np.float64)
        out[idx] = unpack_array(payload[_U32.size + 4 * k :], "<f4", k)
        return out


COMPRESSORS: dict[str, type[Compressor]] = {
    "none": NoCompression, "q8": Q8, "q16": Q16, "randk": RandomK, "topk": TopK, "mod": ModularQuantizer,
}
"""Registry: ``--compression`` name -> class (``randk`` and ``topk`` take ``:F``, ``mod`` takes ``:B``)."""

_USAGE = "none, q8, q16, randk:F, topk:F (0 < F <= 1), mod:B (8 <= B <= 32)"


def parse_compression(spec: str) -> Compressor:
    """Build the compressor named by ``spec`` (``"none"``, ``"q8"``, ``"randk:0.1"``, ...).

    Raises:
        ConfigError: unknown name or bad fraction; the message lists the registry.
    """
    name, sep, arg = spec.strip().partition(":")
    cls = COMPRESSORS.get(name)
    if cls is None:
        raise ConfigError(
            f"compression: unknown {spec!r}; valid: {_USAGE} (registry: {', '.join(COMPRESSORS)})"
        )
    if cls is ModularQuantizer:
        if not arg.isdigit():
            raise ConfigError(f"compression: mod needs ring bits, e.g. mod:8, got {spec!r}")
        return ModularQuantizer(int(arg))
    if issubclass(cls, _Fraction):
        try:
            fraction = float(arg)
        except ValueError:
            raise ConfigError(
                f"compression: {name} needs a fraction, e.g. {name}:0.1, got {spec!r}"
            ) from None
        return cls(fraction)
    if sep:
        raise ConfigError(f"compression: {name} takes no argument, got {spec!r}")
    return cls()


class ErrorFeedback:
    """Per-client residuals: what a client computed but did not send yet (client-local state).

    ``begin`` adds the residual to a new vector; ``commit`` keeps ``full - sent``.
    The invariant ``sent + residual == full`` holds exactly for every client, so no
    update mass is ever lost, only delayed.
    """

    def __init__(self) -> None:
        self.residuals: dict[int, np.ndarray] = {}

    def begin(self, cid: int, x: np.ndarray) -> np.ndarray:
        """``x`` plus client ``cid``'s residual (a new array)."""
        r = self.residuals.get(cid)
        return np.array(x, dtype=np.float64) if r is None else x + r

    def commit(self, cid: int, full: np.ndarray, sent: np.ndarray) -> None:
        """Keep ``full - sent`` (dense vectors of the same length) for client ``cid``."""
        residual = np.asarray(full, dtype=np.float64) - sent
        if np.any(residual):
            self.residuals[cid] = residual
        else:
            self.residuals.pop(cid, None)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for a checkpoint."""
        ids = sorted(self.residuals)
        length = next(iter(self.residuals.values())).shape[0] if ids else 0
        values = np.stack([self.residuals[c] for c in ids]) if ids else np.zeros((0, length))
        return {"ef_ids": np.asarray(ids, dtype=np.int64), "ef_values": values}

    def load_arrays(self, arrays: Mapping[str, np.ndarray], length: int) -> None:
        """Restore from :meth:`state_arrays` output (checked before anything changes)."""
        ids, values = arrays.get("ef_ids"), arrays.get("ef_values")
        if ids is None or values is None:
            raise CheckpointError("checkpoint lacks the error-feedback residuals of this compression")
        if values.shape != (ids.shape[0], length) and ids.shape[0]:
            raise CheckpointError(
                f"error-feedback residuals have shape {values.shape}, expected (*, {length})"
            )
        self.residuals = {int(c): np.array(values[i]) for i, c in enumerate(ids)}


class Uplink:
    """Applies a compressor between the client deltas and an aggregator, with error feedback.

    Args:
        compressor: what ``--compression`` built.
        seed: the run's seed; the random-k selection of round r comes from
            ``default_rng([seed, r, STREAM_SELECT])``, which everyone may know.
    """

    def __init__(self, compressor: Compressor, seed: int) -> None:
        self.compressor = compressor
        self.seed = seed
        self.feedback = ErrorFeedback()
        self.last_coords: np.ndarray | None = None
        """The public coordinates of the last :meth:`aggregate` (random-k), ``None`` = all."""
        self.spread: tuple[float, int] | None = None
        """``mod:B``: (RMS of the last released rotated sum's coordinates, clients in it); server state."""

    def round_config(self, config: RoundConfig, n: int) -> RoundConfig:
        """``config`` with the ring narrowed for quantization.

        ``qB``, and ``mod:B`` before any sum was released: ``b = B + ceil(log2 n)``,
        exact. ``mod:B`` after: ``b = B`` with wrap-around, and ``clip_range`` is
        the range of the sum, ``margin`` times the last sum's RMS times ``n`` over
        its clients (module Notes).
        """
        comp = self.compressor
        bits = comp.value_bits
        if bits is None:
            return config
        if isinstance(comp, ModularQuantizer) and self.spread is not None:
            rms, clients = self.spread
            return dataclasses.replace(config, value_bits=bits, ring_bits=bits, wrap=True,
                                       clip_range=comp.margin * rms * max(n, 1) / clients)
        headroom = max(0, math.ceil(math.log2(max(n, 1))))
        return dataclasses.replace(config, value_bits=bits, ring_bits=max(8, bits + headroom))

    def signs(self, length: int, round_id: int) -> np.ndarray:
        """Round ``round_id``'s public rotation signs (``mod:B``), from the run's seed."""
        return rotation_signs(length, np.random.default_rng([self.seed, round_id, STREAM_ROTATE]))

    def observe(self, rotated_total: np.ndarray, survivors: int) -> None:
        """``mod:B``, server side: remember the spread of a released rotated sum for the next range."""
        rms = float(np.sqrt(np.mean(np.square(rotated_total)))) if rotated_total.size else 0.0
        self.spread = (rms, survivors) if survivors > 0 and math.isfinite(rms) and rms > 0 else None

    def aggregate(
        self,
        aggregator: Aggregator,
        inputs: Mapping[int, np.ndarray],
        config: RoundConfig,
        dropout: DropoutPlan | None = None,
    ) -> AggregationResult:
        """Compress, aggregate, scatter back; commit each client's residual.

        A client whose input is not in the sum (it dropped, or the round aborted)
        keeps its whole vector as residual. ``config`` should come from
        :meth:`round_config`. Returns the full-length decoded sum.
        """
        comp = self.compressor
        self.last_coords = None
        if isinstance(comp, ModularQuantizer):
            return self._rotated(aggregator, inputs, config, dropout)
        if not comp.feedback:
            return aggregator.aggregate(inputs, config, dropout)
        length = check_inputs(inputs, config)
        full = {cid: self.feedback.begin(cid, v) for cid, v in inputs.items()}
        clip = config.clip_range
        if comp.secure_ok:
            public = np.random.default_rng([self.seed, config.round_id, STREAM_SELECT])
            idx = comp.select(np.zeros(length), public)
            if idx is None:
                idx = np.arange(length)
            else:
                self.last_coords = idx
            sent = {cid: np.clip(v[idx], -clip, clip) for cid, v in full.items()}
            try:
                result = aggregator.aggregate(sent, config, dropout)
            except AggregationAborted:
                for cid, v in full.items():
                    self.feedback.commit(cid, v, np.zeros(length))
                raise
            total = np.zeros(length, dtype=np.float64)
            total[idx] = result.total
            for cid, v in full.items():
                dense = np.zeros(length, dtype=np.float64)
                if cid in result.survivors:
                    dense[idx] = sent[cid]
                self.feedback.commit(cid, v, dense)
            return dataclasses.replace(result, total=total)
        if getattr(aggregator, "secure", True):
            raise ConfigError(f"compression {comp.spec} cannot be used with protocol {aggregator.name}: "
                              "its indices reveal which items each user rated; use randk:F")
        return self._sparse_plaintext(aggregator, full, length, config, dropout or {})

    def _rotated(
        self, aggregator: Aggregator, inputs: Mapping[int, np.ndarray], config: RoundConfig,
        dropout: DropoutPlan | None,
    ) -> AggregationResult:
        """``mod:B``: rotate every input, aggregate (the ring may wrap), observe, rotate the sum back."""
        length = check_inputs(inputs, config)
        if any(np.issubdtype(np.asarray(v).dtype, np.integer) for v in inputs.values()):
            raise ConfigError(f"compression {self.compressor.spec}: integer inputs (fixed-point units) "
                              "cannot be rotated; use --compression none")
        signs = self.signs(length, config.round_id)
        result = aggregator.aggregate({cid: rotate(v, signs) for cid, v in inputs.items()}, config, dropout)
        self.observe(result.total, len(result.survivors))
        return dataclasses.replace(result, total=unrotate(result.total, signs))

    def _sparse_plaintext(
        self, aggregator: Aggregator, full: Mapping[int, np.ndarray], length: int,
        config: RoundConfig, dropout: DropoutPlan,
    ) -> AggregationResult:
        """Top-k: each client sends its own sparse message in the clear; the server decodes and sums."""
        comp, clip = self.compressor, config.clip_range
        t0 = time.perf_counter()
        rng = np.random.default_rng()  # top-k draws nothing; the codec API wants a generator
        messages = {cid: comp.encode(np.clip(v, -clip, clip), rng)
                    for cid, v in full.items() if dropout.get(cid, Stage.UNMASK + 1) > Stage.MASKED_INPUT}
        t1 = time.perf_counter()
        try:
            abort_if_below_threshold(len(messages), config, Stage.MASKED_INPUT)
        except AggregationAborted:
            for cid, v in full.items():
                self.feedback.commit(cid, v, np.zeros(length))
            raise
        received = {cid: comp.decode(m, length) for cid, m in messages.items()}
        total = np.zeros(length, dtype=np.float64)
        for cid in sorted(received):
            total += received[cid]
        t2 = time.perf_counter()
        for cid, v in full.items():
            self.feedback.commit(cid, v, received.get(cid, np.zeros(length)))
        if hasattr(aggregator, "last_messages"):
            aggregator.last_messages = received
        return AggregationResult(
            total=total, survivors=frozenset(received),
            bytes_up={cid: len(m) for cid, m in messages.items()},
            seconds_clients=t1 - t0, seconds_server=t2 - t1,
        )


class Downlink:
    """The broadcast of the global vector, compressed, with bytes counted per client.

    Clients hold a *view* of the global vector. Each broadcast the server sends
    the quantized difference between the current global vector and that view
    (stochastic rounding, max-magnitude scale) and both sides add it to the view,
    so the quantization error is fed back, never accumulated. A client that
    missed ``m`` broadcasts downloads ``min(m delta messages, one float32 snapshot
    of the view)``; a new client downloads the snapshot. With ``none`` every
    sampled client downloads the full float32 vector.

    Args:
        compressor: its ``downlink_bits`` choose the delta quantization.
        initial: the global vector before the first round.
        num_clients: clients that may be sampled (ids ``0 .. num_clients-1``).
    """

    def __init__(self, compressor: Compressor, initial: np.ndarray, num_clients: int) -> None:
        self.bits = compressor.downlink_bits
        self.codec = Quantizer(self.bits) if self.bits is not None else None
        self.view = np.asarray(initial, dtype=np.float32).copy()
        self.last_sync = np.full(num_clients, -1, dtype=np.int64)
        """Per client: the broadcast number it last received (-1: never)."""
        self.sizes: list[int] = []
        """Bytes of each delta broadcast so far."""

    def snapshot_bytes(self) -> int:
        """Size of the framed float32 snapshot of the view."""
        return len(frame(_KIND_FLOAT, b"")) + 4 * int(self.view.shape[0])

    def broadcast(
        self, global_vec: np.ndarray, clients: Sequence[int], rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """Send the round's broadcast to ``clients``; return (what they now hold, total bytes down)."""
        if self.codec is None:
            self.view = np.asarray(global_vec, dtype=np.float32)
            return np.asarray(global_vec, dtype=np.float64), self.snapshot_bytes() * len(clients)
        message = self.codec.encode(np.asarray(global_vec, dtype=np.float64) - self.view, rng)
        self.view = (self.view + self.codec.decode(message, self.view.shape[0])).astype(np.float32)
        self.sizes.append(len(message))
        version = len(self.sizes) - 1
        cum = np.concatenate([[0], np.cumsum(self.sizes)])
        snap = self.snapshot_bytes()
        total = 0
        for c in clients:
            last = int(self.last_sync[c])
            total += snap if last < 0 else min(snap, int(cum[version + 1] - cum[last + 1]))
            self.last_sync[c] = version
        return self.view.astype(np.float64), total

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for a checkpoint."""
        return {"down_view": self.view, "down_last_sync": self.last_sync,
                "down_sizes": np.asarray(self.sizes, dtype=np.int64)}

    def load_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Restore from :meth:`state_arrays` output (checked before anything changes)."""
        try:
            view, last, sizes = arrays["down_view"], arrays["down_last_sync"], arrays["down_sizes"]
        except KeyError:
            raise CheckpointError("checkpoint lacks the downlink state of this compression") from None
        if view.shape != self.view.shape or last.shape != self.last_sync.shape:
            raise CheckpointError("downlink state in the checkpoint does not match this data set")
        self.view, self.last_sync, self.sizes = view.astype(np.float32), last.astype(np.int64), sizes.tolist()


def state_arrays(uplink: Uplink, downlink: Downlink) -> dict[str, np.ndarray]:
    """The compression state (residuals, downlink views, ``mod:B``'s spread) for a checkpoint."""
    spread = {} if uplink.spread is None else {"mod_spread": np.asarray(uplink.spread, dtype=np.float64)}
    return {**uplink.feedback.state_arrays(), **downlink.state_arrays(), **spread}


def load_state(
    arrays: Mapping[str, np.ndarray], uplink: Uplink, downlink: Downlink, length: int
) -> tuple[ErrorFeedback, Downlink, tuple[float, int] | None]:
    """New error-feedback, downlink and ``mod:B`` spread from :func:`state_arrays` output; nothing is changed.

    Raises:
        CheckpointError: state missing (for a compressor that needs it) or of the wrong shape.
    """
    feedback = ErrorFeedback()
    if uplink.compressor.feedback:
        feedback.load_arrays(arrays, length)
    down = Downlink(uplink.compressor, downlink.view, downlink.last_sync.shape[0])
    if downlink.codec is not None:
        down.load_arrays(arrays)
    spread = None
    if "mod_spread" in arrays:  # absent before the first released sum: the next round is exact
        rms, clients = (float(v) for v in np.asarray(arrays["mod_spread"]).reshape(-1)[:2])
        if not (math.isfinite(rms) and rms > 0 and clients >= 1):
            raise CheckpointError(f"compression state: bad mod:B spread ({rms}, {clients})")
        spread = (rms, int(clients))
    return feedback, down, spread
