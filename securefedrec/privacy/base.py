"""What the simulator asks of a differential-privacy mode each round: :class:`RoundPrivacy`.

Implemented by user-level DP (:mod:`securefedrec.privacy.user`) and
record-level DP-SGD in silos (:mod:`securefedrec.privacy.dpsgd`); the
registry (:mod:`securefedrec.privacy.registry`) picks one by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = ["RoundPrivacy"]


class RoundPrivacy:
    """What the simulator asks of a DP mode each round (user-level or record-level).

    ``check_round`` runs before anything changes and raises
    :class:`~securefedrec.errors.PrivacyBudgetExhausted` when the round would
    overspend; ``commit_round`` counts the round and returns epsilon so far.
    """

    mode: str = "none"

    @classmethod
    def build(cls, config: ExperimentConfig, pool: Any, model: Any) -> RoundPrivacy:
        """This mode for a run (what :func:`~securefedrec.privacy.registry.build_privacy` calls).

        Args:
            config: the :class:`~securefedrec.config.ExperimentConfig`.
            pool: the simulator's clients (their number; for DP-SGD their data and silos).
            model: the model (:class:`~securefedrec.models.base.Model`; its length is a delta's).
        """
        raise NotImplementedError

    def check_round(self, round_id: int) -> float:
        """Epsilon after this round; raise if over budget."""
        raise NotImplementedError

    def commit_round(self, round_id: int) -> float:
        """Count the round; return epsilon so far."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """JSON-able accounting state for checkpoints."""
        raise NotImplementedError

    def restore(self, rounds_done: int, state: dict[str, Any] | None) -> None:
        """Resume the accounting after ``rounds_done`` rounds from :meth:`state` (checkpoints)."""
        raise NotImplementedError

    def epsilon(self) -> float:
        """Epsilon spent so far, against an observer of the released models.

        :mod:`securefedrec.privacy.user` explains the two epsilons (this one and :meth:`server_epsilon`).
        """
        raise NotImplementedError

    def count_participants(self, clients: Sequence[int]) -> None:
        """Note the clients sampled in the round about to be committed (for :meth:`server_epsilon`)."""

    def server_epsilon(self) -> float:
        """Epsilon spent so far against the aggregation server, which knows who was sampled.

        This default returns :meth:`epsilon`: right for a mode whose amplification happens where
        the server cannot see it (DP-SGD's Poisson batches inside a silo); user-level DP overrides it.
        """
        return self.epsilon()

    @property
    def delta(self) -> float:
        """The delta that epsilon refers to."""
        raise NotImplementedError

    def encoding_range(self, threshold: int, update_clip: float) -> float:
        """Per-coordinate range that the protocol must encode."""
        return update_clip

    def train(self, clients: Sequence[int], global_vec: torch.Tensor, round_id: int) -> torch.Tensor | None:
        """Deltas (n, L) when this mode trains the clients itself, else ``None``."""
        return None

    def privatize(
        self, deltas: np.ndarray, clients: Sequence[int], threshold: int, round_id: int
    ) -> np.ndarray:
        """The rows the clients hand to the protocol."""
        return deltas

    def realized_std(self, survivors: int, threshold: int) -> float | None:
        """Per-coordinate noise std of a released sum, when the mode adds noise to the sum."""
        return None

    def summary(self) -> dict[str, Any]:
        """Report entry."""
        raise NotImplementedError
