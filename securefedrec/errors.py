"""The project's exception hierarchy (defined in :mod:`protocols.errors`, re-exported here)."""

from __future__ import annotations

from typing import Any

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
    "RunInterrupted",
    "SecureFedRecError",
    "StageError",
]


class DataError(SecureFedRecError, ValueError):
    """A ratings file is missing or malformed; the message names the file and line."""


class CheckpointError(SecureFedRecError):
    """A checkpoint cannot be read or does not match the run's configuration."""


class PrivacyBudgetExhausted(SecureFedRecError):
    """Another round would exceed the privacy budget (epsilon, delta)."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (KeyboardInterrupt) between or inside rounds.

    The round in progress was abandoned: the simulation is as after the last completed
    round (and its checkpoint, if any, was written). :attr:`report` is the partial report,
    with ``stopped == "interrupted"``. A :class:`KeyboardInterrupt`, so code that does not
    look for it still stops.
    """

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__("interrupted")
        self.report = report
