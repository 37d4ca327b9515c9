"""What user-level DP asks of a noise mechanism (:class:`NoiseMechanism`).

A mechanism clips one client's delta and adds that client's share of the
noise; :class:`~securefedrec.privacy.user.AccountedUserPrivacy` calls it once
per sampled client and round. A new mechanism implements this protocol, gets
an accountant in :mod:`securefedrec.privacy.accountants`, a user-level mode in
:mod:`securefedrec.privacy.user` and a name in
:data:`securefedrec.privacy.registry.MECHANISMS`.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np

__all__ = ["NoiseMechanism"]


class NoiseMechanism(Protocol):
    """Clipping to L2 ``clip`` and one client's noise share, sized for the protocol's threshold."""

    output_dtype: ClassVar[type[np.generic]]
    """dtype of :meth:`privatize`'s output: float64 noisy values, or int64 integer units."""

    @property
    def clip(self) -> float:
        """L2 bound ``C`` of a delta."""
        ...

    @property
    def noise_multiplier(self) -> float:
        """Noise std of every released sum over its L2 sensitivity (the Gaussian-equivalent sigma)."""
        ...

    def privatize(
        self, delta: np.ndarray, threshold: int, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """The update ``delta`` (L,) or rows of them (n, L), clipped and with one noise share per row.

        The share is sized so that any sum of ``threshold`` shares carries the mechanism's noise;
        ``rng`` draws it (``None``: a fresh generator seeded from the OS CSPRNG).
        """
        ...
