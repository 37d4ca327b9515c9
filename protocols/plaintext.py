"""The insecure baseline: every client sends its vector in the clear.

The server sees each individual update. It exists to measure what the secure
protocols cost and to give the attack harness an undefended system.
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
from protocols.wire import frame, pack_array, unframe, unpack_array

__all__ = ["PlaintextAggregator"]

_KIND_VECTOR = 1


class PlaintextAggregator(Aggregator):
    """Sum float64 vectors sent in the clear (no privacy; the baseline)."""

    name: ClassVar[str] = "plaintext"
    secure: ClassVar[bool] = False

    def __init__(self) -> None:
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
        t0 = time.perf_counter()
        messages = {
            cid: frame(_KIND_VECTOR, pack_array(v, "<f8"))
            for cid, v in inputs.items()
            if dropout.get(cid, Stage.UNMASK + 1) > Stage.MASKED_INPUT
        }
        t1 = time.perf_counter()
        abort_if_below_threshold(len(messages), config, Stage.MASKED_INPUT)
        received = {
            cid: unpack_array(unframe(m, _KIND_VECTOR), "<f8", length) for cid, m in messages.items()
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
