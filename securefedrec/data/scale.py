"""A synthetic catalogue at scale, generated lazily per client from a seed.

Up to millions of users and hundreds of thousands of items, never materialized:
:meth:`ScaleCatalog.history` draws one user's items and ratings from
``numpy.random.default_rng([seed, HISTORY, user])`` when that user is sampled,
so a round costs memory for its own clients only, and the same user always has
the same history.

* Item popularity is Zipf: item i (ranked by id) is drawn with probability
  proportional to ``(i + 1)^-zipf`` (``zipf`` = 1: the head-heavy shape of
  MovieLens, Netflix and e-commerce logs).
* History lengths are long-tailed: log-normal with median ``history_median`` and
  log-scale ``history_sigma``, at least 1 and at most ``max_history``.
* Ratings come from a hidden low-rank model: ``3.5 + <u, v_i> + noise``, clipped to
  ``[1, 5]``; the item factors ``v`` (``items x rank``) are the one array held per
  catalogue (drawn from the seed once, 3.2 MB for 100K items at rank 8).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from securefedrec.errors import ConfigError

__all__ = ["History", "ScaleCatalog"]

_TRUTH, _HISTORY, _SAMPLE = 1, 2, 3  # stream ids under the catalogue's seed


@dataclass(frozen=True)
class History:
    """One user's training data: item ids (unique, ascending) and their ratings."""

    items: np.ndarray
    ratings: np.ndarray


@dataclass(frozen=True, kw_only=True)
class ScaleCatalog:
    """A lazily generated catalogue (see the module docstring).

    Raises:
        ConfigError: a non-positive size, rank or history parameter, or ``zipf`` < 0.
    """

    users: int
    items: int
    seed: int = 0
    zipf: float = 1.0
    history_median: float = 50.0
    history_sigma: float = 1.0
    max_history: int = 2000
    rank: int = 8
    noise: float = 0.5

    def __post_init__(self) -> None:
        for name in ("users", "items", "max_history", "rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ScaleCatalog.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.zipf) and self.zipf >= 0):
            raise ConfigError(f"ScaleCatalog.zipf must be >= 0, got {self.zipf}")
        if not self.history_median >= 1 or not self.history_sigma >= 0 or not self.noise >= 0:
            raise ConfigError("ScaleCatalog: history_median must be >= 1, history_sigma and noise >= 0")

    @functools.cached_property
    def _cdf(self) -> np.ndarray:
        weights = np.arange(1, self.items + 1, dtype=np.float64) ** -self.zipf
        cdf: np.ndarray = np.cumsum(weights)
        cdf /= cdf[-1]
        return cdf

    @functools.cached_property
    def item_truth(self) -> np.ndarray:
        """The hidden item factors (items, rank), float32."""
        rng = np.random.default_rng([self.seed, _TRUTH])
        return (rng.standard_normal((self.items, self.rank)) / math.sqrt(self.rank)).astype(np.float32)

    def popularity(self) -> np.ndarray:
        """Each item's probability of one draw."""
        return np.diff(self._cdf, prepend=0.0)

    def history_length(self, rng: np.random.Generator) -> int:
        """One draw of the long-tailed history length."""
        raw = rng.lognormal(math.log(self.history_median), self.history_sigma)
        return int(min(max(1, round(raw)), self.max_history, self.items))

    def history(self, user: int) -> History:
        """User ``user``'s items (distinct, Zipf-popular) and ratings, the same at every call."""
        if not 0 <= user < self.users:
            raise ConfigError(f"user {user} outside the catalogue's {self.users} users")
        rng = np.random.default_rng([self.seed, _HISTORY, user])
        m = self.history_length(rng)
        chosen = np.zeros(0, dtype=np.int64)
        while chosen.size < m:  # distinct draws from the popularity law (the head repeats)
            draws = np.searchsorted(self._cdf, rng.random(2 * (m - chosen.size) + 8), side="right")
            draws = np.minimum(draws, self.items - 1)
            merged = np.concatenate([chosen, draws])
            _, first = np.unique(merged, return_index=True)
            chosen = merged[np.sort(first)][:m]
        items = np.sort(chosen)
        user_vec = rng.standard_normal(self.rank).astype(np.float32)
        scores = 3.5 + self.item_truth[items] @ user_vec + self.noise * rng.standard_normal(items.size)
        return History(items, np.clip(scores, 1.0, 5.0).astype(np.float32))

    def sample(self, round_id: int, rate: float) -> np.ndarray:
        """Poisson sampling: every user joins round ``round_id`` with probability ``rate`` (sorted ids).

        Drawn as the binomial count and a uniform subset of that size (the same law as
        one coin per user) in time that follows the round, not the population.
        """
        if not 0 < rate <= 1:
            raise ConfigError(f"sample rate must be in (0, 1], got {rate}")
        rng = np.random.default_rng([self.seed, _SAMPLE, round_id])
        count = int(rng.binomial(self.users, rate))
        return np.sort(rng.choice(self.users, size=count, replace=False))
