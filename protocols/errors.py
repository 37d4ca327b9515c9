"""One exception hierarchy for the whole project.

It lives here, in the dependency-free ``protocols`` package, so that the
secure-aggregation code can raise it without importing ``securefedrec``;
``securefedrec.errors`` re-exports every class.
"""

from __future__ import annotations

__all__ = [
    "AggregationAborted",
    "ConfigError",
    "DecodeError",
    "IntegrityError",
    "ProtocolError",
    "SecureFedRecError",
    "StageError",
]


class SecureFedRecError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(SecureFedRecError, ValueError):
    """A configuration value is invalid; the message names the field."""


class ProtocolError(SecureFedRecError):
    """A secure-aggregation protocol could not proceed."""


class StageError(ProtocolError):
    """A party was asked to run a stage out of order."""


class DecodeError(ProtocolError, ValueError):
    """A protocol message is malformed (wrong version, length or content)."""


class IntegrityError(ProtocolError):
    """A message failed authentication or a consistency check.

    The message is deliberately opaque: it never says *which* check failed
    beyond the stage and the peer, so it cannot be used as an oracle.
    """


class AggregationAborted(ProtocolError):
    """Too few clients survived a round; nothing about any input was revealed."""

    def __init__(self, message: str, *, survivors: int, threshold: int, round_id: int) -> None:
        super().__init__(message)
        self.survivors = survivors
        self.threshold = threshold
        self.round_id = round_id
