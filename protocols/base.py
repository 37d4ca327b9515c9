"""The aggregator contract that every protocol implements.

One round: the caller hands over ``client id -> float vector`` (all of one
length L, every coordinate already inside ``[-clip_range, clip_range]``) -- or
``client id -> integer vector`` of fixed-point units that the caller quantized
itself (then ``RoundConfig.value_bits`` must be set; see
:mod:`protocols.encoding`: the integers enter the ring unchanged and the decoded
sum is their integer sum times the encoding's ``step``) -- the
round's :class:`RoundConfig`, and, for simulation, a :data:`DropoutPlan` that
says at which stage each vanishing client stops. The aggregator returns an
:class:`AggregationResult` holding the decoded sum of the survivors, the
survivor set, the bytes each party sent (measured on the real encoded
messages) and the seconds spent per role -- or raises
:class:`~protocols.errors.AggregationAborted` when fewer than ``threshold``
clients survive, having revealed nothing.

Weighting is the caller's business: scale the vector before handing it over
(and append a count coordinate if the weights must be summed too).
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, cast

import numpy as np

from protocols.encoding import FixedPoint, is_integer_input
from protocols.errors import AggregationAborted, ConfigError

__all__ = [
    "CAPABILITIES",
    "MIN_INPUTS",
    "AggregationResult",
    "Aggregator",
    "DropoutPlan",
    "RoundConfig",
    "SparseVector",
    "Stage",
    "abort_if_below_threshold",
    "check_inputs",
    "sample_dropouts",
]


MIN_INPUTS = 2
"""The fewest inputs a securely aggregated sum may hold: the sum of one input is that input.

A deployment's clients refuse a release threshold below it (the Flower node's policy), and
a server runs no secure round for fewer sampled clients."""


class Stage(enum.IntEnum):
    """Protocol stages in order. A client that drops *at* a stage sends nothing from it on."""

    ADVERTISE = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    CONSISTENCY = 3
    UNMASK = 4


DropoutPlan = Mapping[int, Stage]
"""client id -> the first stage whose message that client never sends."""


def sample_dropouts(
    client_ids: Iterable[int], probability: float, rng: np.random.Generator
) -> dict[int, Stage]:
    """Draw a dropout plan: at every stage each still-present client vanishes with ``probability``.

    Simulation only, so a seeded (non-cryptographic) generator is right here.
    """
    if not 0.0 <= probability < 1.0:
        raise ConfigError(f"dropout probability must be in [0, 1), got {probability}")
    plan: dict[int, Stage] = {}
    for cid in sorted(client_ids):
        for stage in Stage:
            if rng.random() < probability:
                plan[cid] = stage
                break
    return plan


@dataclass(frozen=True, kw_only=True)
class RoundConfig:
    """Settings of one aggregation round that every protocol understands.

    Attributes:
        round_id: number of the round (bound into masks and signatures).
        clip_range: every input coordinate lies in ``[-clip_range, clip_range]``;
            values outside are clipped by the encoder, so the ring cannot overflow.
        ring_bits: width b of the ring Z_{2^b} used by masking protocols (8..64).
        value_bits: bits of precision per encoded value (sign included); ``None``
            picks the largest that lets ``n`` values sum without overflow.
        threshold: the fewest surviving clients for which the sum is released.
        neighbors: SecAgg+ graph degree; ``None`` means the complete graph (SecAgg).
        wrap: modular clipping (:mod:`protocols.encoding`): values are not clipped
            but reduced modulo ``2^ring_bits``, the sum may wrap, and ``clip_range``
            is then the range of the *sum* (``+-clip_range`` decodes without
            wrapping). For callers that size the ring for the sum, e.g. after a
            random rotation. Masking protocols and the plaintext baseline only:
            Paillier slots must hold the exact sum and refuse it.
    """

    round_id: int = 0
    clip_range: float = 1.0
    ring_bits: int = 32
    value_bits: int | None = None
    threshold: int = 1
    neighbors: int | None = None
    wrap: bool = False

    def __post_init__(self) -> None:
        if self.round_id < 0:
            raise ConfigError(f"round_id must be >= 0, got {self.round_id}")
        if not (math.isfinite(self.clip_range) and self.clip_range > 0):
            raise ConfigError(f"clip_range must be a positive finite number, got {self.clip_range}")
        if not 8 <= self.ring_bits <= 64:
            raise ConfigError(f"ring_bits must be in [8, 64], got {self.ring_bits}")
        if self.value_bits is not None and not 2 <= self.value_bits <= min(self.ring_bits, 52):
            raise ConfigError(
                f"value_bits must be in [2, min(ring_bits, 52)] = [2, {min(self.ring_bits, 52)}], "
                f"got {self.value_bits}"
            )
        if self.threshold < 1:
            raise ConfigError(f"threshold must be >= 1, got {self.threshold}")
        if self.neighbors is not None and self.neighbors < 1:
            raise ConfigError(f"neighbors must be >= 1 or None, got {self.neighbors}")


@dataclass(frozen=True)
class SparseVector:
    """A vector of ``length`` that is zero except at ``indices`` (unique), where it holds ``values``.

    Only aggregators with ``accepts_sparse = True`` take it (the plaintext baseline,
    whose clients have no reason to send zeros); a secure protocol must hide which
    coordinates are non-zero, so it is always handed dense vectors.
    """

    indices: np.ndarray
    values: np.ndarray
    length: int

    def __post_init__(self) -> None:
        if self.indices.ndim != 1 or self.indices.shape != self.values.shape:
            raise ConfigError(
                f"sparse vector: indices {self.indices.shape} and values {self.values.shape} "
                "must be 1-D of the same length"
            )
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= self.length):
            raise ConfigError(f"sparse vector: an index lies outside [0, {self.length})")

    @property
    def shape(self) -> tuple[int]:
        """``(length,)``, like a dense vector's."""
        return (self.length,)

    def dense(self) -> np.ndarray:
        """The full float64 vector."""
        out = np.zeros(self.length, dtype=np.float64)
        out[self.indices] = self.values
        return out


@dataclass(frozen=True)
class AggregationResult:
    """What a round of aggregation returns to the server loop."""

    total: np.ndarray
    """Decoded sum of the survivors' vectors (float64, length L)."""
    survivors: frozenset[int]
    """Clients whose input is inside ``total``."""
    bytes_up: dict[int, int] = field(default_factory=dict)
    """Bytes each client sent (client -> server), from the encoded messages."""
    bytes_down: dict[int, int] = field(default_factory=dict)
    """Bytes the server sent to each client."""
    seconds_clients: float = 0.0
    """Wall seconds spent in client code, summed over clients."""
    seconds_server: float = 0.0
    """Wall seconds spent in server code."""
    offline_seconds: float = 0.0
    """Seconds of work that can be done before the round (e.g. Paillier randomness)."""

    @property
    def total_bytes_up(self) -> int:
        """Bytes sent by all clients together."""
        return sum(self.bytes_up.values())

    @property
    def total_bytes_down(self) -> int:
        """Bytes sent by the server to all clients together."""
        return sum(self.bytes_down.values())


def check_inputs(
    inputs: Mapping[int, np.ndarray] | Mapping[int, np.ndarray | SparseVector], config: RoundConfig
) -> int:
    """Validate a round's inputs before any state changes; return the vector length.

    Integer vectors (fixed-point units, :mod:`protocols.encoding`) are checked
    here, naming the client: every input must then be integer, ``value_bits`` must
    be set, and every value must fit ``+-(2^(value_bits-1) - 1)``.

    Raises:
        ConfigError: no inputs, vectors of different lengths or non-finite values,
            a threshold above the number of clients, or integer inputs that are
            mixed with floats, lack ``value_bits`` or exceed its range.
    """
    if not inputs:
        raise ConfigError(f"round {config.round_id}: no client inputs")
    lengths = {cid: v.shape if isinstance(v, SparseVector) else np.shape(v) for cid, v in inputs.items()}
    first_cid, first_shape = next(iter(lengths.items()))
    if len(first_shape) != 1:
        raise ConfigError(
            f"round {config.round_id}: client {first_cid} sent an array of shape {first_shape}, "
            "expected a 1-D vector"
        )
    for cid, shape in lengths.items():
        if shape != first_shape:
            raise ConfigError(
                f"round {config.round_id}: client {cid} sent length {shape}, "
                f"client {first_cid} sent {first_shape}"
            )
    for cid, v in inputs.items():
        if not np.all(np.isfinite(v.values if isinstance(v, SparseVector) else v)):
            raise ConfigError(f"round {config.round_id}: client {cid} sent a non-finite value")
    if config.threshold > len(inputs):
        raise ConfigError(
            f"round {config.round_id}: threshold {config.threshold} exceeds the "
            f"{len(inputs)} participating clients"
        )
    _check_integer_inputs(inputs, config)
    return int(first_shape[0])


def _check_integer_inputs(
    inputs: Mapping[int, np.ndarray] | Mapping[int, np.ndarray | SparseVector], config: RoundConfig
) -> None:
    units = {cid: v for cid, v in inputs.items() if not isinstance(v, SparseVector) and is_integer_input(v)}
    ints = sorted(units)
    if not ints:
        return
    rid = config.round_id
    floats = sorted(set(inputs) - set(ints))
    if floats:
        raise ConfigError(
            f"round {rid}: client {ints[0]} sent integer units but client {floats[0]} sent floats; "
            "one round takes one kind of input"
        )
    if config.value_bits is None:
        raise ConfigError(
            f"round {rid}: client {ints[0]} sent integer units, which need RoundConfig.value_bits "
            "(the encoding they are units of)"
        )
    fp = FixedPoint(clip_range=config.clip_range, value_bits=config.value_bits, ring_bits=config.ring_bits,
                    wrap=config.wrap)
    for cid in ints:
        fp.units(units[cid], who=f"round {rid}: client {cid}")


def abort_if_below_threshold(survivors: int, config: RoundConfig, stage: Stage) -> None:
    """Raise :class:`AggregationAborted` when fewer than ``threshold`` clients remain."""
    if survivors < config.threshold:
        raise AggregationAborted(
            f"round {config.round_id}: only {survivors} clients left at stage {stage.name}, "
            f"threshold is {config.threshold}; round aborted, nothing revealed",
            survivors=survivors,
            threshold=config.threshold,
            round_id=config.round_id,
        )


CAPABILITIES = ("secure", "accepts_sparse", "supports_wrap", "threat_models", "parallel_clients",
                "pairwise_masks", "sparse_graph", "homomorphic")
"""The capability class variables every :class:`Aggregator` declares (docs/ARCHITECTURE.md)."""


class Aggregator(abc.ABC):
    """A protocol that turns per-client vectors into their sum.

    Subclasses set ``name`` (the registry key) and declare their capabilities as
    class variables (:data:`CAPABILITIES`; each defaults to "no", so a protocol sets those it
    has). Callers ask for a capability through
    :func:`protocols.registry.aggregator_class`, never for a protocol's name, so a
    new protocol that declares the same capabilities is handled the same way.
    Inputs are dense float vectors, or :class:`SparseVector` where ``accepts_sparse``
    is true. Subclasses implement :meth:`_aggregate`; :meth:`aggregate` runs the check
    every protocol shares first.
    """

    name: ClassVar[str]
    secure: ClassVar[bool]
    """Whether the server sees only the survivors' sum (else every client's own vector)."""
    accepts_sparse: ClassVar[bool] = False
    """Whether ``aggregate`` takes :class:`SparseVector` inputs (only protocols that may reveal them)."""
    supports_wrap: ClassVar[bool] = False
    """Whether ``RoundConfig.wrap`` (a sum modulo the ring) is allowed; else ``aggregate`` refuses it."""
    threat_models: ClassVar[frozenset[str]] = frozenset()
    """The server threat models the constructor can be set to (``malicious=``): a subset of
    ``{"semi-honest", "malicious"}``; empty when there is nothing to choose."""
    parallel_clients: ClassVar[bool] = False
    """Whether the constructor takes ``workers=`` to simulate the clients on that many processes."""
    pairwise_masks: ClassVar[bool] = False
    """Whether inputs are hidden by pairwise masks over a neighbour graph (``RoundConfig.neighbors``
    and the constructor's ``neighbors=`` apply)."""
    sparse_graph: ClassVar[bool] = False
    """Whether that graph is sparse, its degree chosen per round for the dropout rate the
    constructor takes (``dropout_rate=``); else it is complete."""
    homomorphic: ClassVar[bool] = False
    """Whether inputs are encrypted under an additively homomorphic key that a key holder
    distributes to every client (which therefore needs an identity key in every threat
    model); the constructor takes ``key_bits=``."""

    def aggregate(
        self,
        inputs: Mapping[int, np.ndarray] | Mapping[int, np.ndarray | SparseVector],
        config: RoundConfig,
        dropout: DropoutPlan | None = None,
    ) -> AggregationResult:
        """Run one round; return the survivors' sum or raise ``AggregationAborted``.

        The check every protocol shares runs here, before anything is sent: the inputs
        against ``config`` (:func:`check_inputs`) and against ``accepts_sparse``. Then
        :meth:`_aggregate` runs the protocol.

        Raises:
            ConfigError: inputs that fail the check (the message names the client and round).
            AggregationAborted: fewer than ``threshold`` clients survived.
        """
        length = check_inputs(inputs, config)
        if not type(self).accepts_sparse:
            sparse = next((c for c, v in inputs.items() if isinstance(v, SparseVector)), None)
            if sparse is not None:
                raise ConfigError(f"round {config.round_id}: client {sparse} sent a SparseVector; protocol "
                                  f"{type(self).name} takes dense vectors only (accepts_sparse is False)")
        # checked: only a protocol that declares accepts_sparse is handed SparseVector inputs
        return self._aggregate(cast("Mapping[int, np.ndarray]", inputs), config, dict(dropout or {}), length)

    @abc.abstractmethod
    def _aggregate(
        self, inputs: Mapping[int, np.ndarray], config: RoundConfig, dropout: dict[int, Stage], length: int
    ) -> AggregationResult:
        """The protocol's round on checked inputs of ``length`` each; ``dropout`` is the plan (or empty)."""
