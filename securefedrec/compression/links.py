"""Compressed links: :class:`Uplink` (client deltas -> aggregator, with error feedback) and
:class:`Downlink` (the broadcast of the global vector), and their checkpoint state
(docs/ARCHITECTURE.md, step 5 of a round).

Both ask the codec (:mod:`securefedrec.compression.codecs`) what to do, never its class.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np

from protocols import AggregationAborted, AggregationResult, Aggregator, DropoutPlan, RoundConfig, Stage
from protocols.base import abort_if_below_threshold, check_inputs
from securefedrec.compression.codecs import (
    STREAM_ROTATE,
    Compressor,
    Quantizer,
    Spread,
    rotate,
    rotation_signs,
    snapshot_bytes,
    unrotate,
)
from securefedrec.compression.feedback import ErrorFeedback
from securefedrec.errors import CheckpointError, ConfigError

__all__ = ["Downlink", "Uplink", "load_state", "state_arrays"]


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
        self.spread: Spread | None = None
        """``mod:B``: (RMS of the last released rotated sum's coordinates, clients in it); server state."""

    def round_config(self, config: RoundConfig, n: int) -> RoundConfig:
        """``config`` with the ring narrowed for quantization (:meth:`Compressor.round_config`).

        ``qB``, and ``mod:B`` before any sum was released: ``b = B + ceil(log2 n)``,
        exact. ``mod:B`` after: ``b = B`` with wrap-around, the range sized from
        :attr:`spread` (package Notes).
        """
        return self.compressor.round_config(config, n, self.spread)

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
        refusal = comp.refused_by(aggregator)
        if refusal is not None:
            raise ConfigError(f"compression {comp.spec} cannot be used with protocol {aggregator.name}: "
                              f"{refusal}")
        if comp.rotates:
            return self._rotated(aggregator, inputs, config, dropout)
        if not comp.feedback:
            return aggregator.aggregate(inputs, config, dropout)
        length = check_inputs(inputs, config)
        full = {cid: self.feedback.begin(cid, v) for cid, v in inputs.items()}
        if not comp.secure_ok:
            return self._sparse_plaintext(aggregator, full, length, config, dropout or {})
        clip = config.clip_range
        idx = comp.public_coords(length, self.seed, config.round_id)
        if idx is None:
            idx = np.arange(length)
        else:
            self.last_coords = idx
        sent = {cid: np.clip(v[idx], -clip, clip) for cid, v in full.items()}
        try:
            result = aggregator.aggregate(sent, config, dropout)
        except AggregationAborted:
            self.feedback.keep_all(full)
            raise
        total = np.zeros(length, dtype=np.float64)
        total[idx] = result.total
        for cid, v in full.items():
            dense = np.zeros(length, dtype=np.float64)
            if cid in result.survivors:
                dense[idx] = sent[cid]
            self.feedback.commit(cid, v, dense)
        return dataclasses.replace(result, total=total)

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
            self.feedback.keep_all(full)
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
        return snapshot_bytes(self.view.shape[0])

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
) -> tuple[ErrorFeedback, Downlink, Spread | None]:
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
