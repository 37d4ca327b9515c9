"""Secure aggregation for securefedrec: sans-IO protocol state machines.

Depends on numpy, cryptography and PyNaCl (libsodium's Ed25519 verification) only
(plus phe/gmpy2 for Paillier); never on torch or securefedrec. Start with :func:`get_aggregator`.
"""

from protocols.base import (
    MIN_INPUTS,
    AggregationResult,
    Aggregator,
    DropoutPlan,
    RoundConfig,
    SparseVector,
    Stage,
    sample_dropouts,
)
from protocols.encoding import FixedPoint
from protocols.errors import (
    AggregationAborted,
    ConfigError,
    DecodeError,
    IntegrityError,
    ProtocolError,
    SecureFedRecError,
    StageError,
)
from protocols.plaintext import PlaintextAggregator
from protocols.registry import PROTOCOLS, aggregator_class, get_aggregator, protocols_where

__all__ = [
    "MIN_INPUTS",
    "PROTOCOLS",
    "AggregationAborted",
    "AggregationResult",
    "Aggregator",
    "ConfigError",
    "DecodeError",
    "DropoutPlan",
    "FixedPoint",
    "IntegrityError",
    "PlaintextAggregator",
    "ProtocolError",
    "RoundConfig",
    "SecureFedRecError",
    "SparseVector",
    "Stage",
    "StageError",
    "aggregator_class",
    "get_aggregator",
    "protocols_where",
    "sample_dropouts",
]
