"""The insecure baseline: every client sends its vector in the clear.

The server sees each individual update. It exists to measure what the secure
protocols cost and to give the attack harness an undefended system.

With ``RoundConfig.value_bits`` set, each client sends its vector quantized by
the same stochastic :class:`~protocols.encoding.FixedPoint` as the other
protocols, as signed integers of the smallest of 1, 2, 4, 8 bytes that holds
``value_bits`` (q8 -> int8, q16 -> int16); otherwise float64 values.
Integer inputs (fixed-point units the caller quantized itself, see
:mod:`protocols.encoding`) need ``value_bits`` and are sent as they are.
With ``RoundConfig.wrap`` values are reduced modulo ``2^ring_bits`` (int of
``ring_bits`` bits) and the sum is taken modulo ``2^ring_bits``, exactly as
the masking protocols compute it.
A :class:`~protocols.base.SparseVector` input travels as its non-zero
coordinates only (uint32 indices, then float64 values), as an insecure client
would send it; quantized rounds send it densified.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from protocols.base import (
    AggregationResult,
    Aggregator,
    RoundConfig,
    SparseVector,
    Stage,
    abort_if_below_threshold,
)
from protocols.encoding import FixedPoint
from protocols.errors import DecodeError
from protocols.wire import frame, kind_of, pack_array, unframe, unpack_array

__all__ = ["PlaintextAggregator"]

_KIND_VECTOR = 1
_KIND_QUANTIZED = 2
_KIND_SPARSE = 3


def _pack_sparse(v: SparseVector) -> bytes:
    return frame(_KIND_SPARSE, pack_array(v.indices, "<u4") + pack_array(v.values, "<f8"))


def _unpack_sparse(message: bytes, length: int) -> SparseVector:
    payload = unframe(message, _KIND_SPARSE)
    if len(payload) % 12:
        raise DecodeError(f"sparse payload of {len(payload)} bytes is not a whole number of 12-byte entries")
    n = len(payload) // 12
    indices = unpack_array(payload[: 4 * n], "<u4").astype(np.int64)
    return SparseVector(indices, unpack_array(payload[4 * n :], "<f8"), length)


def _int_dtype(value_bits: int) -> str:
    """Little-endian signed dtype of the smallest of 1, 2, 4, 8 bytes holding ``value_bits`` bits."""
    width = next(w for w in (1, 2, 4, 8) if value_bits <= 8 * w)
    return f"<i{width}"


def _width(fp: FixedPoint) -> str:
    """The dtype of one quantized value: ``value_bits``, or ``ring_bits`` when values wrap."""
    return _int_dtype(fp.ring_bits if fp.wrap else fp.value_bits)


class PlaintextAggregator(Aggregator):
    """Sum vectors sent in the clear (no privacy; the baseline).

    Args:
        rng: generator for stochastic rounding when ``RoundConfig.value_bits`` is
            set; default a fresh ``np.random.default_rng()``.
    """

    name: ClassVar[str] = "plaintext"
    secure: ClassVar[bool] = False
    accepts_sparse: ClassVar[bool] = True
    supports_wrap: ClassVar[bool] = True

    def __init__(self, *, rng: np.random.Generator | None = None) -> None:
        self.rng = rng if rng is not None else np.random.default_rng()
        self.last_messages: dict[int, np.ndarray | SparseVector] = {}
        """The individual vectors the server received last round (what an attacker sees)."""

    def _aggregate(
        self,
        inputs: Mapping[int, np.ndarray] | Mapping[int, np.ndarray | SparseVector],
        config: RoundConfig,
        dropout: dict[int, Stage],
        length: int,
    ) -> AggregationResult:
        """Sum the vectors of the clients that reach the masked-input stage."""
        fp: FixedPoint | None = None
        if config.wrap:
            fp = FixedPoint.for_sum(len(inputs), config.clip_range, config.ring_bits,
                                    config.value_bits, wrap=True)
        elif config.value_bits is not None:
            fp = FixedPoint(clip_range=config.clip_range, value_bits=config.value_bits,
                            ring_bits=config.ring_bits)
        t0 = time.perf_counter()
        messages = {
            cid: self._encode(v, fp)
            for cid, v in inputs.items()
            if dropout.get(cid, Stage.UNMASK + 1) > Stage.MASKED_INPUT
        }
        t1 = time.perf_counter()
        abort_if_below_threshold(len(messages), config, Stage.MASKED_INPUT)
        received: dict[int, np.ndarray | SparseVector]
        if fp is not None and (fp.wrap or len(messages) * fp.max_units <= np.iinfo(np.int64).max):
            # sum the integers exactly (wrap: modulo 2^64, then 2^b), then scale once -- bit-identical
            # to the ring protocols' decode
            units = {cid: self._decode_units(m, fp, length) for cid, m in messages.items()}
            int_total = np.zeros(length, dtype=np.int64)
            for cid in sorted(units):
                int_total += units[cid]
            if fp.wrap:  # the ring protocols' sum: the signed representative modulo 2^b
                int_total = fp.to_signed(int_total.view(np.uint64))
            total = int_total * fp.step
            received = {cid: u * fp.step for cid, u in units.items()}
        else:
            received = {cid: self._decode(m, fp, length) for cid, m in messages.items()}
            total = np.zeros(length, dtype=np.float64)
            for cid in sorted(received):
                v = received[cid]
                if isinstance(v, SparseVector):
                    total[v.indices] += v.values  # indices are unique within one vector
                else:
                    total += v
        t2 = time.perf_counter()
        self.last_messages = received
        return AggregationResult(
            total=total,
            survivors=frozenset(received),
            bytes_up={cid: len(m) for cid, m in messages.items()},
            bytes_down={},
            seconds_clients=t1 - t0,
            seconds_server=t2 - t1,
        )

    def _encode(self, v: np.ndarray | SparseVector, fp: FixedPoint | None) -> bytes:
        if fp is not None:
            dense = v.dense() if isinstance(v, SparseVector) else v
            return frame(_KIND_QUANTIZED, pack_array(fp.quantize(dense, self.rng), _width(fp)))
        if isinstance(v, SparseVector):
            return _pack_sparse(v)
        return frame(_KIND_VECTOR, pack_array(v, "<f8"))

    @staticmethod
    def _decode_units(message: bytes, fp: FixedPoint, length: int) -> np.ndarray:
        ints = unpack_array(unframe(message, _KIND_QUANTIZED), _width(fp), length)
        return ints.astype(np.int64)

    @staticmethod
    def _decode(message: bytes, fp: FixedPoint | None, length: int) -> np.ndarray | SparseVector:
        if fp is not None:
            scaled: np.ndarray = PlaintextAggregator._decode_units(message, fp, length) * fp.step
            return scaled
        if kind_of(message) == _KIND_SPARSE:
            return _unpack_sparse(message, length)
        return unpack_array(unframe(message, _KIND_VECTOR), "<f8", length)
