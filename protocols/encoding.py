"""Fixed-point encoding of float vectors into the ring Z_{2^b}.

A value x in [-c, c] becomes the integer round_s(x * scale) with stochastic
rounding (unbiased: E[round_s(y)] = y), stored in two's complement modulo 2^b.
``scale = (2^(v-1) - 1) / c`` for ``v`` value bits, so one value uses at most
v bits including its sign, and a sum of n values stays inside the signed
range of the ring as long as ``n * (2^(v-1) - 1) <= 2^(b-1) - 1``.
:meth:`FixedPoint.for_sum` checks exactly that and refuses, naming the bound
to change, when it fails -- overflow is impossible by construction.

Unless the caller asks for wrap-around (``wrap=True``, modular clipping): then
each value is scaled and stochastically rounded *without* clipping and reduced
modulo 2^b, and the decoded sum is the signed representative, modulo 2^b, of
the exact integer sum -- a sum beyond ``+-2^(b-1)`` units wraps. That is what
a caller wants who sizes the ring for the *sum* rather than for every
client's worst case (after a random rotation that makes the sum's coordinates
concentrate; Kairouz, Liu, Steinke, ICML 2021, Sec. 4). Reducing what each
client sends modulo 2^b is a function of the sum alone, so it is
post-processing: it can never remove differential-privacy noise, whatever
``clip_range`` the server chose -- which a clip could.

Inputs outside [-c, c] are clipped before scaling (the caller's clipping is
trusted for privacy; this clip is only the overflow guarantee).

Integer inputs are *units already*: an array of integer dtype is taken as the
integers ``round_s(x * scale)`` that the caller computed itself (e.g. a client
that quantized its update and added integer DP noise, as in the distributed
Skellam mechanism), and goes into the ring unchanged -- no scaling, no rounding, so quantization and
noise compose exactly with the ring sum. The decoded sum is then the integer sum
times :attr:`FixedPoint.step`. An integer outside ``[-(2^(v-1)-1), 2^(v-1)-1]``
is refused (:meth:`FixedPoint.units` raises, naming the party), not clipped: a
clip would silently change the caller's noise, and the caller is the one who
sized the range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protocols.errors import ConfigError

__all__ = ["MAX_VALUE_BITS", "FixedPoint", "is_integer_input", "stochastic_round"]

MAX_VALUE_BITS = 52
"""float64 represents every integer below 2^53 exactly; wider values would round."""


def is_integer_input(x: np.ndarray) -> bool:
    """Whether ``x`` holds integer fixed-point units (integer dtype) rather than float values."""
    return bool(np.issubdtype(np.asarray(x).dtype, np.integer))


def stochastic_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round each element to floor(x) or floor(x)+1, unbiased, using ``rng``."""
    floor = np.floor(x)
    rounded: np.ndarray = floor + (rng.random(x.shape) < (x - floor))
    return rounded


def _stochastic_round_inplace(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:func:`stochastic_round` of a float64 array ``x`` that it overwrites: same values, fewer copies."""
    rounded: np.ndarray = np.floor(x)
    np.subtract(x, rounded, out=x)  # the fraction, the same float as x - floor(x)
    up = rng.random(x.shape) < x
    np.add(rounded, up, out=rounded)
    return rounded


@dataclass(frozen=True)
class FixedPoint:
    """An encoding of values in [-clip_range, clip_range] with ``value_bits`` bits into Z_{2^ring_bits}."""

    clip_range: float
    value_bits: int
    ring_bits: int
    wrap: bool = False
    """Modular clipping (module docstring): no clip, values reduced modulo 2^b, sums may wrap."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise ConfigError(f"clip_range must be a positive finite number, got {self.clip_range}")
        if not 8 <= self.ring_bits <= 64:
            raise ConfigError(f"ring_bits must be in [8, 64], got {self.ring_bits}")
        if not 2 <= self.value_bits <= min(self.ring_bits, MAX_VALUE_BITS):
            raise ConfigError(
                f"value_bits must be in [2, {min(self.ring_bits, MAX_VALUE_BITS)}], got {self.value_bits}"
            )

    @classmethod
    def for_sum(
        cls, n: int, clip_range: float, ring_bits: int, value_bits: int | None = None, wrap: bool = False
    ) -> FixedPoint:
        """The encoding for summing ``n`` vectors; ``value_bits=None`` takes the most that fits.

        With ``wrap`` the sum may wrap by design (module docstring): nothing is
        checked against ``n``, and ``value_bits=None`` takes ``min(ring_bits, 52)``.

        Raises:
            ConfigError: the sum of ``n`` values of ``value_bits`` bits cannot fit in
                ``ring_bits``; the message says which bound to change.
        """
        if n < 1:
            raise ConfigError(f"number of clients must be >= 1, got {n}")
        if wrap:
            bits = min(ring_bits, MAX_VALUE_BITS) if value_bits is None else value_bits
            return cls(clip_range=float(clip_range), value_bits=bits, ring_bits=ring_bits, wrap=True)
        headroom = max(0, math.ceil(math.log2(n)))
        if value_bits is None:
            value_bits = min(ring_bits - headroom, MAX_VALUE_BITS)
            if value_bits < 2:
                raise ConfigError(
                    f"ring_bits={ring_bits} leaves no precision for the sum of {n} clients "
                    f"(needs ceil(log2 n) = {headroom} bits of headroom); raise ring_bits to at "
                    f"least {headroom + 2} or use fewer clients per round"
                )
        if n * (2 ** (value_bits - 1) - 1) > 2 ** (ring_bits - 1) - 1:
            most_clients = (2 ** (ring_bits - 1) - 1) // (2 ** (value_bits - 1) - 1)
            raise ConfigError(
                f"the sum of {n} clients at value_bits={value_bits} overflows ring_bits={ring_bits}: "
                f"raise ring_bits to at least {value_bits + headroom}, lower value_bits to at most "
                f"{ring_bits - headroom}, or use at most {most_clients} clients per round"
            )
        return cls(clip_range=float(clip_range), value_bits=value_bits, ring_bits=ring_bits)

    @property
    def scale(self) -> float:
        """Integer units per 1.0."""
        return float((1 << (self.value_bits - 1)) - 1) / self.clip_range

    @property
    def step(self) -> float:
        """Quantization step: the float value of one integer unit."""
        return 1.0 / self.scale

    @property
    def modulus_mask(self) -> np.uint64:
        """2^b - 1 as a uint64, for reducing modulo the ring."""
        return np.uint64((1 << self.ring_bits) - 1)

    @property
    def max_units(self) -> int:
        """The largest magnitude of one encoded value in integer units: 2^(v-1) - 1."""
        return (1 << (self.value_bits - 1)) - 1

    def units(self, q: np.ndarray, who: str = "input") -> np.ndarray:
        """Integer units handed in by the caller, checked against :attr:`max_units`, as int64.

        Args:
            q: an array of integer dtype (already quantized by the caller).
            who: names the party in the error (e.g. ``"round 3: client 17"``).

        Raises:
            ConfigError: ``q`` is not of integer dtype, or a value lies outside
                ``[-max_units, max_units]`` (refused, never clipped).
        """
        a = np.asarray(q)
        if not is_integer_input(a):
            raise ConfigError(f"{who}: integer units expected, got an array of dtype {a.dtype}")
        if self.wrap:  # reduced modulo 2^b, like every value of a wrapping encoding
            return self.to_signed(a.astype(np.int64).view(np.uint64))
        limit = self.max_units
        signed = np.issubdtype(a.dtype, np.signedinteger)
        bad = np.flatnonzero((a > limit) | (a < -limit)) if signed else np.flatnonzero(a > limit)
        if bad.size:
            i = int(bad[0])
            raise ConfigError(
                f"{who}: integer value {int(a.flat[i])} at index {i} lies outside +-{limit} "
                f"(value_bits={self.value_bits}); integer inputs are not clipped -- size the range "
                f"(value_bits, or clip_range and ring_bits) to hold them"
            )
        return a.astype(np.int64)

    def quantize(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Clip, scale and stochastically round: signed int64 in [-(2^(v-1)-1), 2^(v-1)-1].

        An integer array is taken as units already (module docstring): checked by
        :meth:`units` and returned as int64, without scaling or rounding. With
        :attr:`wrap` nothing is clipped: the rounded values are returned reduced
        to the ring's signed range ``[-2^(b-1), 2^(b-1))``.

        Raises:
            ConfigError: with :attr:`wrap`, a scaled value is not finite.
        """
        if is_integer_input(x):
            return self.units(x)
        if self.wrap:
            y = np.asarray(x, dtype=np.float64) * self.scale
            if not np.all(np.isfinite(y)):
                raise ConfigError(f"a value times the scale {self.scale!r} is not finite")
            # reduce before rounding, into [-m/2, m/2): fmod is exact and so are the shifts by m
            # (Sterbenz), so the fraction that stochastic rounding sees is kept
            m = float(1 << self.ring_bits)
            z = np.fmod(y, m)
            z = np.where(z >= m / 2, z - m, np.where(z < -m / 2, z + m, z))
            z = stochastic_round(z, rng)
            wrapped: np.ndarray = np.where(z >= m / 2, z - m, z).astype(np.int64)
            return wrapped
        limit = self.max_units
        y = np.clip(np.asarray(x, dtype=np.float64), -self.clip_range, self.clip_range)  # a new array
        np.multiply(y, self.scale, out=y)
        q = _stochastic_round_inplace(y, rng)
        np.clip(q, -limit, limit, out=q)
        quantized: np.ndarray = q.astype(np.int64)
        return quantized

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Quantize (integer input: take as units) and map into the ring: uint64 elements in [0, 2^b)."""
        ring: np.ndarray = self.quantize(x, rng).view(np.uint64) & self.modulus_mask
        return ring

    def to_signed(self, ring_values: np.ndarray) -> np.ndarray:
        """Interpret ring elements in [0, 2^b) as signed integers (int64)."""
        r = np.asarray(ring_values, dtype=np.uint64) & self.modulus_mask
        if self.ring_bits == 64:
            return r.view(np.int64)
        half = np.uint64(1 << (self.ring_bits - 1))
        signed = r.astype(np.int64)
        return np.where(r >= half, signed - (1 << self.ring_bits), signed)

    def decode(self, ring_values: np.ndarray) -> np.ndarray:
        """Decode a ring element (one value or a sum of values) back to float64."""
        return self.to_signed(ring_values).astype(np.float64) * self.step
