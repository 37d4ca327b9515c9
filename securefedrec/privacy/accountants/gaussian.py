"""Accounting of the distributed Gaussian mechanism with an Opacus accountant.

One Opacus accountant (RDP by default, PRV on request; registry
:data:`~securefedrec.privacy.accountants.registry.ACCOUNTANTS`) stepped once
per round with ``(noise_multiplier=sigma, sample_rate=q)`` -- the sampled
Gaussian mechanism. Every round is counted,
also one with no sampled clients or one that aborted (conservative: an aborted
round reveals nothing, but the sampling already happened). With a budget
``(epsilon, delta)`` and no explicit ``sigma``, :func:`calibrate_noise_multiplier`
picks the smallest sigma (Opacus ``get_noise_multiplier``) that fits the
planned rounds; :meth:`PrivacyAccountant.check_step` refuses a round that
would exceed the budget before anything changes
(:class:`~securefedrec.errors.PrivacyBudgetExhausted`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from opacus.accountants import IAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from securefedrec.errors import ConfigError
from securefedrec.privacy.accountants.base import BudgetAccountant
from securefedrec.privacy.accountants.registry import make_accountant

__all__ = ["PrivacyAccountant", "calibrate_noise_multiplier"]


@functools.lru_cache(maxsize=64)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one sampled Gaussian step at Opacus' default orders (cached: rounds repeat it)."""
    rdp: np.ndarray = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                               orders=RDPAccountant.DEFAULT_ALPHAS)
    rdp.setflags(write=False)
    return rdp


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Exactly ``RDPAccountant.get_epsilon`` (same orders, same sums), with the per-step RDP cached."""
    rdp = sum([_rdp_one_step(sigma, q) * steps for sigma, q, steps in history])
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=64)
def calibrate_noise_multiplier(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The noise multiplier that spends at most ``(epsilon, delta)`` in ``steps`` steps at rate ``q``.

    Opacus ``get_noise_multiplier`` (binary search to within 0.01 of epsilon); cached.

    Raises:
        ConfigError: the budget cannot be met with any sigma <= 1e6.
    """
    make_accountant(accountant)
    try:
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant=accountant))
    except ValueError as exc:
        raise ConfigError(f"epsilon: budget ({epsilon}, {delta}) cannot be met over {steps} steps "
                          f"at sample rate {sample_rate}: {exc}") from None


class PrivacyAccountant(BudgetAccountant):
    """Counts sampled-Gaussian steps with an Opacus accountant and enforces a budget.

    The history is a list of ``(noise_multiplier, sample_rate, steps)`` as in
    Opacus, so a run resumed with another sigma is still accounted exactly.

    Args:
        noise_multiplier: sigma of the steps to come.
        sample_rate: Poisson sampling rate q of the steps to come.
        delta: the delta at which epsilon is reported.
        accountant: ``rdp`` or ``prv`` (:data:`~securefedrec.privacy.accountants.registry.ACCOUNTANTS`).
        budget: stop before epsilon would exceed this; ``None`` = no limit.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        delta: float,
        accountant: str = "rdp",
        budget: float | None = None,
    ) -> None:
        make_accountant(accountant)
        super().__init__(sample_rate=sample_rate, delta=delta, budget=budget)
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ConfigError(f"noise_multiplier: must be >= 0, got {noise_multiplier!r}")
        self.noise_multiplier = noise_multiplier
        self.name = accountant

    @property
    def noise(self) -> float:
        """Sigma of the steps to come."""
        return self.noise_multiplier

    def _epsilon_of(self, history: list[tuple[float, float, int]]) -> float:
        history = [h for h in history if h[2] > 0]
        if not history:
            return 0.0
        if any(h[0] == 0 for h in history):
            return math.inf
        if self.name == "rdp":
            return _rdp_epsilon(history, self.delta)
        acc = make_accountant(self.name)
        acc.history = history
        with np.errstate(divide="ignore"):  # PRV at q = 1 (server_epsilon): log(1 - q) = -inf, harmless
            return float(acc.get_epsilon(delta=self.delta))

    def opacus(self) -> IAccountant:
        """An Opacus accountant holding the same history (for cross-checks)."""
        acc = make_accountant(self.name)
        acc.history = list(self.history)
        return acc
