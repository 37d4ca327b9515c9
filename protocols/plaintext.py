"""The insecure baseline: every client sends its vector in the clear.

The server sees each individual update. It exists to measure what the secure
protocols cost and to give the attack harness an undefended system.

With ``RoundConfig.value_bits`` set, each client sends its vector quantized by
the same stochastic :class:`~protocols.encoding.FixedPoint` as the other
protocols, as signed integers of the smallest of 1, 2, 4, 8 bytes that holds
``value_bits`` (q8 -> int8, q16 -> int16); otherwise float64 values.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from protocols.base import (
    AggregationResult,
    Aggregator,
    DropoutPlan,
    RoundConfig,
    Stage,
    abort_if_below_threshold,
    check_inputs,
)
from protocols.encoding import FixedPoint
from protocols.wire import frame, pack_array, unframe, unpack_array

__all__ = ["PlaintextAggregator"]

_KIND_VECTOR = 1
_KIND_QUANTIZED = 2


def _int_dtype(value_bits: int) -> str:
    """Little-endian signed dtype of the smallest of 1, 2, 4, 8 bytes holding ``value_bits`` bits."""
    width = next(w for w in (1, 2, 4, 8) if value_bits <= 8 * w)
    return f"<i{width}"


class PlaintextAggregator(Aggregator):
    """Sum vectors sent in the clear (no privacy; the baseline).

    Args:
        rng: generator for stochastic rounding when ``RoundConfig.value_bits`` is
            set; default a fresh ``np.random.default_rng()``.
    """

    name: ClassVar[str] = "plaintext"
    secure: ClassVar[bool] = False

    def __init__(self, *, rng: np.random.Generator | None = None) -> None:
        self.rng = rng if rng is not None else np.random.default_rng()
        self.last_messages: dict[int, np.ndarray] = {}
        """The individual vectors the server received last round (what an attacker sees)."""

    def aggregate(
        self,
        inputs: Mapping[int, np.ndarray],
        config: RoundConfig,
        dropout: DropoutPlan | None = None,
    ) -> AggregationResult:
        """Sum the vectors of the clients that reach the masked-input stage."""
        length = check_inputs(inputs, config)
        dropout = dropout or {}
        fp = (None if config.value_bits is None else
              FixedPoint(clip_range=config.clip_range, value_bits=config.value_bits,
                         ring_bits=config.ring_bits))
        kind, dtype = (_KIND_VECTOR, "<f8") if fp is None else (_KIND_QUANTIZED, _int_dtype(fp.value_bits))
        t0 = time.perf_counter()
        messages = {
            cid: frame(kind, pack_array(v if fp is None else fp.quantize(v, self.rng), dtype))
            for cid, v in inputs.items()
            if dropout.get(cid, Stage.UNMASK + 1) > Stage.MASKED_INPUT
        }
        t1 = time.perf_counter()
        abort_if_below_threshold(len(messages), config, Stage.MASKED_INPUT)
        received = {
            cid: unpack_array(unframe(m, kind), dtype, length).astype(np.float64)
            * (1.0 if fp is None else fp.step)
            for cid, m in messages.items()
        }
        total = np.zeros(length, dtype=np.float64)
        for cid in sorted(received):
            total += received[cid]
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
