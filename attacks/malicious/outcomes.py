"""What a malicious-server scenario achieved, and the scenario names of every family.

Shared by the scenario families (:mod:`.secagg`, :mod:`.secagg_lies`, :mod:`.paillier`)
and by :class:`~attacks.malicious.attack.MaliciousServerAttack`, which sums their
outcomes into one report. This module imports neither family, so naming a
scenario never loads a protocol (Paillier needs the optional extras).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from securefedrec.errors import ConfigError

__all__ = [
    "PAILLIER_LIES",
    "PAILLIER_SCENARIOS",
    "SECAGG_LIES",
    "SECAGG_SCENARIOS",
    "ScenarioOutcome",
    "Summary",
    "check_scenario",
    "summarize",
]

SECAGG_SCENARIOS = ("drop-claim", "key-substitution", "share-tampering", "split-view", "split-view-colluder")
"""SecAgg / SecAgg+ deviations (:mod:`attacks.malicious.secagg`)."""
SECAGG_LIES = (
    "split-view-low-threshold", "threshold", "share-threshold", "degree", "graph-seed", "ring-bits",
    "clip-range", "round-id", "survivor-list", "dropout-list", "replayed-stage", "reordered-stage",
)
"""SecAgg lies, one per field the server sends (:mod:`attacks.malicious.secagg_lies`)."""
PAILLIER_SCENARIOS = ("single-ciphertext", "under-threshold", "split-view", "key-substitution",
                      "bundle-tampering", "ciphertext-replay")
"""Packed-Paillier deviations (:mod:`attacks.malicious.paillier`)."""
PAILLIER_LIES = ("threshold-lie", "sybil-key-holder", "weak-key", "layout-lie", "round-id-lie")
"""Packed-Paillier lies about a parameter a client takes from its own configuration."""


@dataclass
class ScenarioOutcome:
    """What one malicious-server scenario achieved against one threat model."""

    scenario: str
    malicious: bool
    revealed: int = 0
    """Clients whose input the server unmasked (verified against the true input)."""
    aborted: list[int] = field(default_factory=list)
    """Honest clients that raised an error and stopped."""
    errors: list[str] = field(default_factory=list)
    """Their error messages (first few)."""
    notes: list[str] = field(default_factory=list)
    honest_model: str = "semi-honest"
    """What the baseline (``malicious=False``) model is called for this protocol."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"scenario": self.scenario, "model": "malicious" if self.malicious else self.honest_model,
                "revealed": self.revealed, "clients_aborted": len(self.aborted),
                "errors": self.errors[:3], "notes": self.notes}


@dataclass(frozen=True)
class Summary:
    """Outcomes of several scenarios, each run against the defence and against its baseline."""

    value: int
    """Inputs revealed against the defence (``malicious=True`` outcomes)."""
    baseline: int
    """Inputs revealed against the baseline (``malicious=False`` outcomes)."""
    details: dict[str, Any]
    """``scenarios`` and ``semi_honest`` (scenario -> :meth:`ScenarioOutcome.as_dict`) and
    ``inputs_revealed`` (scenario -> inputs revealed against the defence)."""


def summarize(outcomes: Iterable[ScenarioOutcome]) -> Summary:
    """Sum the inputs revealed per model and list each scenario (later outcomes of a name win)."""
    runs = list(outcomes)
    defended = [o for o in runs if o.malicious]
    baseline = [o for o in runs if not o.malicious]
    return Summary(
        value=sum(o.revealed for o in defended),
        baseline=sum(o.revealed for o in baseline),
        details={"scenarios": {o.scenario: o.as_dict() for o in defended},
                 "semi_honest": {o.scenario: o.as_dict() for o in baseline},
                 "inputs_revealed": {o.scenario: o.revealed for o in defended}},
    )


def check_scenario(scenario: str, known: tuple[str, ...], clients: int, minimum: int, needs: str,
                   what: str = "scenario") -> None:
    """Refuse an unknown ``scenario`` or fewer than ``minimum`` clients, before any round starts.

    Raises:
        ConfigError: ``unknown <what> ...; choose one of: <known>`` or ``<needs> >= <minimum> clients``.
    """
    if scenario not in known:
        raise ConfigError(f"unknown {what} {scenario!r}; choose one of: {', '.join(known)}")
    if clients < minimum:
        raise ConfigError(f"{needs} >= {minimum} clients, got {clients}")
