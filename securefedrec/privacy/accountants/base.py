"""The budget accountant that every user-level noise mechanism's accountant extends.

A history of ``(noise, sample_rate, steps)`` entries, the epsilon it spends,
a budget that stops a step before it would overspend
(:class:`~securefedrec.errors.PrivacyBudgetExhausted`, nothing changes), and
the epsilon against the aggregation server, which knows who was sampled
(:mod:`securefedrec.privacy.user` says why that differs).
"""

from __future__ import annotations

from securefedrec.errors import ConfigError, PrivacyBudgetExhausted

__all__ = ["BudgetAccountant"]


class BudgetAccountant:
    """A history of ``(noise, sample_rate, steps)`` with a budget stop; subclasses give its epsilon.

    Shared by the Gaussian accountant
    (:class:`~securefedrec.privacy.accountants.gaussian.PrivacyAccountant`) and the Skellam one
    (:class:`~securefedrec.privacy.accountants.skellam.SkellamAccountant`): ``noise`` is sigma
    or mu, :meth:`_epsilon_of` turns a history into epsilon at :attr:`delta`.
    """

    name: str
    """The accounting method, for the report."""

    def __init__(self, *, sample_rate: float, delta: float, budget: float | None) -> None:
        if not 0 < sample_rate <= 1:
            raise ConfigError(f"sample_rate: must be in (0, 1], got {sample_rate!r}")
        if not 0 < delta < 1:
            raise ConfigError(f"delta: must be in (0, 1), got {delta!r}")
        self.sample_rate = sample_rate
        self.delta = delta
        self.budget = budget
        self.history: list[tuple[float, float, int]] = []

    @property
    def noise(self) -> float:
        """The noise parameter of the steps to come."""
        raise NotImplementedError

    def _epsilon_of(self, history: list[tuple[float, float, int]]) -> float:
        raise NotImplementedError

    @property
    def steps(self) -> int:
        """Steps (rounds) counted so far."""
        return sum(h[2] for h in self.history)

    def _with(self, extra: int) -> list[tuple[float, float, int]]:
        history = list(self.history)
        if extra:
            if history and history[-1][:2] == (self.noise, self.sample_rate):
                history[-1] = (self.noise, self.sample_rate, history[-1][2] + extra)
            else:
                history.append((self.noise, self.sample_rate, extra))
        return history

    def epsilon(self, extra_steps: int = 0) -> float:
        """Epsilon at :attr:`delta` after the steps taken plus ``extra_steps`` more."""
        return self._epsilon_of([h for h in self._with(extra_steps) if h[2] > 0])

    def check_step(self, what: str | None = None) -> float:
        """Epsilon after one more step; raise if that exceeds the budget (nothing changes)."""
        eps = self.epsilon(1)
        if self.budget is not None and eps > self.budget:
            what = what or f"step {self.steps + 1}"
            raise PrivacyBudgetExhausted(
                f"{what} would spend epsilon {eps:.4g} > budget {self.budget:.4g} "
                f"(delta {self.delta:.3g}); stopped after {self.steps} steps at epsilon "
                f"{self.epsilon():.4g}"
            )
        return eps

    def step(self) -> float:
        """Count one step (after :meth:`check_step`); return the new epsilon."""
        eps = self.check_step()
        self.history = self._with(1)
        return eps

    def server_history(self, participations: int) -> list[tuple[float, float, int]]:
        """The history as the aggregation server sees a user who took part in ``participations`` steps.

        Each ``(noise, q, steps)`` becomes ``(noise, 1.0, min(steps, participations))``: no
        amplification (the server knows who was sampled), and the user's steps counted in every
        segment where it could have fallen -- exact for a run with one noise level, an upper bound
        when the noise changed (a resumed run).
        """
        if participations < 0:
            raise ConfigError(f"participations: must be >= 0, got {participations}")
        return [(noise, 1.0, min(steps, participations)) for noise, _, steps in self.history
                if min(steps, participations) > 0]

    def server_epsilon(self, participations: int) -> float:
        """Epsilon against the aggregation server for a user sampled in ``participations`` steps."""
        return self._epsilon_of(self.server_history(participations))

