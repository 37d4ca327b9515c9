"""The project's exception hierarchy (defined in :mod:`protocols.errors`, re-exported here)."""

from __future__ import annotations

from protocols.errors import (
    AggregationAborted,
    ConfigError,
    DecodeError,
    IntegrityError,
    ProtocolError,
    SecureFedRecError,
    StageError,
)

__all__ = [
    "AggregationAborted",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DecodeError",
    "IntegrityError",
    "PrivacyBudgetExhausted",
    "ProtocolError",
    "SecureFedRecError",
    "StageError",
]


class DataError(SecureFedRecError, ValueError):
    """A ratings file is missing or malformed; the message names the file and line."""


class CheckpointError(SecureFedRecError):
    """A checkpoint cannot be read or does not match the run's configuration."""


class PrivacyBudgetExhausted(SecureFedRecError):
    """Another round would exceed the privacy budget (epsilon, delta)."""
