"""The codecs behind ``--compression``: each one owns how it encodes, which ring it asks for and
which protocols it refuses (the package docstring of :mod:`securefedrec.compression` explains each;
docs/ARCHITECTURE.md, step 5 of a round).

Adding a codec touches only this module (and its tests): subclass :class:`Compressor`, set the
class flags, implement :meth:`~Compressor.encode` / :meth:`~Compressor.decode` (and
:meth:`~Compressor.parse` when it takes an argument), and register it in :data:`COMPRESSORS`.
:class:`~securefedrec.compression.links.Uplink` and every other caller ask the codec, never its class.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import struct
from typing import ClassVar

import numpy as np
import scipy.fft

from protocols import RoundConfig
from protocols.encoding import FixedPoint, stochastic_round
from protocols.wire import frame, pack_array, pack_uints, unframe, unpack_array, unpack_uints
from securefedrec import streams
from securefedrec.errors import ConfigError, DecodeError

__all__ = [
    "COMPRESSORS",
    "STREAM_DOWNLINK",
    "STREAM_ROTATE",
    "STREAM_SELECT",
    "Spread",
    "Compressor",
    "ModularQuantizer",
    "NoCompression",
    "Q8",
    "Q16",
    "Quantizer",
    "RandomK",
    "TopK",
    "parse_compression",
    "rotate",
    "rotation_signs",
    "snapshot_bytes",
    "unrotate",
]

STREAM_SELECT = streams.SELECT
"""Random stream (``default_rng([seed, round, STREAM_SELECT])``) of the public random-k selection."""
STREAM_DOWNLINK = streams.DOWNLINK
"""Random stream of the downlink's stochastic rounding."""
STREAM_ROTATE = streams.ROTATE
"""Random stream (``default_rng([seed, round, STREAM_ROTATE])``) of ``mod:B``'s public signs."""

Spread = tuple[float, int]
"""``mod:B``, server state: (RMS of the last released rotated sum's coordinates, clients in it)."""

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


def _max_abs(v: np.ndarray) -> float:
    return float(np.max(np.abs(v))) if v.size else 0.0


def _scale(payload: bytes, what: str, bits: int, offset: int) -> float:
    """The float64 scale at ``offset`` of a quantized payload whose first byte is its bit count."""
    if len(payload) < offset + _F8.size or payload[0] != bits:
        raise DecodeError(f"{what} message: expected {bits}-bit values")
    (scale,) = _F8.unpack_from(payload, offset)
    if not (math.isfinite(scale) and scale >= 0):
        raise DecodeError(f"{what} message: bad scale {scale}")
    return float(scale)


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

    Every caller asks the codec what it needs through these flags and methods, never
    for its class.

    Attributes:
        secure_ok: whether it composes with secure aggregation (the coordinates sent
            do not depend on the client's data).
        value_bits: bits per value the protocol should encode with (``None``: its default).
        feedback: whether clients send a subset of the coordinates and keep an
            error-feedback residual of the rest (the sparsifiers).
        downlink_bits: bits per value of the compressed broadcast (``None``: full float32).
        wraps: whether the protocol's sum may wrap (``mod:B``: rotation + modular clipping).
        rotates: whether the protocol carries the vector after the round's public
            rotation (:func:`rotate`), which the server undoes on the sum.
    """

    name: ClassVar[str]
    usage: ClassVar[str] = ""
    """How ``--compression`` names it, with its argument (empty: just :attr:`name`)."""
    secure_ok: ClassVar[bool] = True
    value_bits: int | None = None
    feedback: bool = False
    downlink_bits: int | None = 8
    wraps: ClassVar[bool] = False
    rotates: ClassVar[bool] = False

    @classmethod
    def parse(cls, arg: str | None, spec: str) -> Compressor:
        """Build from the text after ``NAME:`` of ``spec`` (``None``: there is no colon).

        Raises:
            ConfigError: a bad argument (here: any argument; codecs that take one override this).
        """
        if arg is not None:
            raise ConfigError(f"compression: {cls.name} takes no argument, got {spec!r}")
        return cls()

    @property
    def spec(self) -> str:
        """The ``--compression`` string that builds this compressor."""
        return self.name

    def refused_by(self, protocol: object) -> str | None:
        """Why this codec cannot run with ``protocol`` (an aggregator or its class); ``None`` if it can.

        Asks the protocol's capabilities, never its name: ``secure`` (a secure protocol needs
        every client to send the same coordinates, :attr:`secure_ok`) and ``supports_wrap``
        (a sum that may wrap, :attr:`wraps`; a protocol without that flag is taken to carry it).
        """
        if not self.secure_ok and getattr(protocol, "secure", True):
            return ("top-k sends each client's own indices, which reveal the items its user rated, and "
                    "secure aggregation needs every client to send the same coordinates; use randk:F "
                    "(coordinates from a public per-round seed) or --protocol plaintext")
        if self.wraps and not getattr(protocol, "supports_wrap", True):
            return ("it lets the sum wrap around a small ring, which this protocol cannot carry (a "
                    "Paillier slot that overflows carries into its neighbour); use q8 or q16, which "
                    "narrow the ring exactly")
        return None

    def ring_bits(self, n: int) -> int | None:
        """The exact ring for a sum of ``n`` clients' values: ``value_bits + ceil(log2 n)`` bits (at
        least 8); ``None``: the protocol's default."""
        if self.value_bits is None:
            return None
        return max(8, self.value_bits + max(0, math.ceil(math.log2(max(n, 1)))))

    def round_config(self, config: RoundConfig, n: int, spread: Spread | None = None) -> RoundConfig:
        """``config`` with the ring narrowed for this codec and ``n`` clients (exact: :meth:`ring_bits`).

        ``spread`` is the server's record of the last released sum (used by codecs whose ring is
        sized for the sum, ``mod:B``); unchanged ``config`` when the codec does not quantize.
        """
        ring = self.ring_bits(n)
        if ring is None:
            return config
        return dataclasses.replace(config, value_bits=self.value_bits, ring_bits=ring)

    def kept(self, length: int) -> int:
        """How many coordinates the protocol carries for a vector of ``length``."""
        return length

    def select(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Coordinates to send (sorted int64), or ``None`` for all. ``rng`` is the round's public seed."""
        return None

    def public_coords(self, length: int, seed: int, round_id: int) -> np.ndarray | None:
        """The coordinates every client sends in round ``round_id`` of a run seeded ``seed`` (sorted
        int64), drawn from the public stream ``default_rng([seed, round_id, STREAM_SELECT])``.

        ``None``: all coordinates, or a codec whose coordinates are not public (they depend on the
        client's data: top-k).
        """
        if not (self.feedback and self.secure_ok):
            return None
        return self.select(np.zeros(length), np.random.default_rng([seed, round_id, STREAM_SELECT]))

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
        scale = _max_abs(v)
        q = (stochastic_round(v * (self.levels / scale), rng) if scale > 0 else np.zeros_like(v))
        q = np.clip(q, -self.levels, self.levels)
        return frame(_KIND_QUANT, bytes([self.bits]) + _F8.pack(scale) + pack_array(q, _int_dtype(self.bits)))

    def decode(self, message: bytes, length: int) -> np.ndarray:
        """Integers times ``scale / levels``."""
        payload = unframe(message, _KIND_QUANT)
        scale = _scale(payload, "quantized", self.bits, 1)
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
    """``mod:B``: random rotation, then a ``B``-bit ring sized for the sum (package Notes).

    The standalone codec rotates with signs from a seed it sends (uint64), scales
    by the rotated vector's largest magnitude (float64) like :class:`Quantizer`,
    and packs ``B``-bit values bit-exactly; one vector never wraps. Through a
    protocol, :meth:`round_config` chooses the common scale and lets sums wrap.
    """

    name: ClassVar[str] = "mod"
    usage: ClassVar[str] = "mod:B (8 <= B <= 32)"
    wraps: ClassVar[bool] = True
    rotates: ClassVar[bool] = True
    margin: ClassVar[float] = 4.5
    """The ring holds ``+-margin`` times the predicted RMS of the rotated sum's coordinates."""

    def __init__(self, bits: int) -> None:
        if not 8 <= bits <= 32:
            raise ConfigError(f"compression: mod ring bits must be in [8, 32], got {bits}")
        self.bits = bits
        self.value_bits = bits
        self.downlink_bits = 8 if bits < 16 else 16

    @classmethod
    def parse(cls, arg: str | None, spec: str) -> Compressor:
        """``mod:B``: the ring bits ``B``."""
        if arg is None or not arg.isdigit():
            raise ConfigError(f"compression: mod needs ring bits, e.g. mod:8, got {spec!r}")
        return cls(int(arg))

    @property
    def spec(self) -> str:
        """``mod:B``."""
        return f"mod:{self.bits}"

    def round_config(self, config: RoundConfig, n: int, spread: Spread | None = None) -> RoundConfig:
        """Before any sum was released (``spread`` is ``None``): the exact ring, as for ``qB``.

        After: ``b = B`` with wrap-around, and ``clip_range`` is the range of the sum, ``margin``
        times the last sum's RMS times ``n`` over its clients (package Notes).
        """
        if spread is None:
            return super().round_config(config, n)
        rms, clients = spread
        return dataclasses.replace(config, value_bits=self.bits, ring_bits=self.bits, wrap=True,
                                   clip_range=self.margin * rms * max(n, 1) / clients)

    def _encoding(self, scale: float) -> FixedPoint:
        return FixedPoint(clip_range=scale if scale > 0 else 1.0, value_bits=self.bits, ring_bits=self.bits)

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> bytes:
        """Rotation seed (uint64), scale (float64), then ``B``-bit rotated values, stochastically rounded."""
        v = _check_vector(x)
        seed = int(rng.integers(0, 2**63))
        y = rotate(v, rotation_signs(v.shape[0], np.random.default_rng(seed)))
        scale = _max_abs(y)
        fp = self._encoding(scale)
        return frame(_KIND_MOD, bytes([self.bits]) + _U64.pack(seed) + _F8.pack(scale)
                     + pack_uints(fp.encode(y, rng), self.bits))

    def decode(self, message: bytes, length: int) -> np.ndarray:
        """Decode the values and undo the rotation."""
        payload = unframe(message, _KIND_MOD)
        scale = _scale(payload, "mod", self.bits, 1 + _U64.size)
        (seed,) = _U64.unpack_from(payload, 1)
        y = self._encoding(scale).decode(unpack_uints(payload[1 + _U64.size + _F8.size :], self.bits, length))
        return unrotate(y, rotation_signs(length, np.random.default_rng(seed)))


class _Fraction(Compressor):
    """Common part of the sparsifiers: a fraction F of the coordinates, error feedback."""

    feedback = True

    def __init__(self, fraction: float) -> None:
        if not (math.isfinite(fraction) and 0 < fraction <= 1):
            raise ConfigError(f"compression: {self.name} fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    @classmethod
    def parse(cls, arg: str | None, spec: str) -> Compressor:
        """``NAME:F``: the fraction ``F``."""
        try:
            fraction = float(arg or "")
        except ValueError:
            raise ConfigError(
                f"compression: {cls.name} needs a fraction, e.g. {cls.name}:0.1, got {spec!r}"
            ) from None
        return cls(fraction)

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
    usage: ClassVar[str] = "randk:F (0 < F <= 1)"

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

    Plaintext only: the indices depend on the client's data (package Notes).
    """

    name: ClassVar[str] = "topk"
    usage: ClassVar[str] = "topk:F (0 < F <= 1)"
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

def parse_compression(spec: str) -> Compressor:
    """Build the compressor named by ``spec`` (``"none"``, ``"q8"``, ``"randk:0.1"``, ...).

    Raises:
        ConfigError: unknown name or bad argument; the message lists the registry.
    """
    name, sep, arg = spec.strip().partition(":")
    cls = COMPRESSORS.get(name)
    if cls is None:
        valid = ", ".join(c.usage or n for n, c in COMPRESSORS.items())
        raise ConfigError(f"compression: unknown {spec!r}; valid: {valid}")
    return cls.parse(arg if sep else None, spec)


def snapshot_bytes(length: int) -> int:
    """Size of a framed float32 vector of ``length`` (the downlink's full snapshot)."""
    return len(frame(_KIND_FLOAT, b"")) + 4 * int(length)
