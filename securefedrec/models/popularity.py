"""Item popularity (and item mean rating), computed from the secure aggregate of the clients' counts.

The baseline every recommender is measured against, made private: the server never sees a
client's items, only the protocol's sum of every client's *indicator* of the items it
interacted with.

- Global part (aggregated): one row per item, ``(f_i,)`` on implicit data and ``(f_i, s_i)``
  on explicit data: ``f_i`` the share of clients that interacted with item ``i`` and ``s_i``
  the mean over clients of ``1[u rated i] * z(r_ui)``, the rating scaled to [-1, 1] by the
  public scale (``z(r) = (r - centre) / half-width``).
- Local part (never leaves the device): the user's rating offset ``b_u`` (explicit data), the
  shrunk mean of its residuals to the item means, re-solved from its ratings.

A client's delta is ``Ind_c - n_c * g`` with ``Ind_c`` the sum of its users' indicators (rows
``(1, z(r))``) and ``n_c`` its number of users: the server's mean delta is then
``mean indicator - g``, so one FedAvg step of size 1 with every client sampled sets ``g`` to
the population's means, and any other step size, sampling rate or optimizer moves ``g`` toward
them (the fixed point of every server optimizer). The delta is **dense**: an item a client
never touched has the row ``-g_i`` (public), not zero; the items it touched are still exactly
the rows that differ from ``-g`` (a plaintext observer reads them; under secure aggregation
nobody sees a single delta). No zero-row form exists: a delta zero on untouched items can only
*accumulate* counts, and an adaptive server optimizer (FedAdam, the default) steps every
coordinate it sees move by the same ``lr`` whatever the count, erasing the popularity.

Prediction:

- ``scores`` (ranking): ``f_i``, the same for every user;
- ``predict`` (explicit): ``m_i + b_u`` clamped to the scale, ``m_i`` the item's mean rating
  shrunk toward the global mean by :data:`SHRINK` times the average item count
  (``m_i = centre + half * (s_i + k * sbar) / (f_i + k)`` with ``k = SHRINK * mean_i f_i``,
  ``sbar`` the global mean's scaled value): scale-free in the number of clients, which the
  model never learns. An item nobody rated (``f_i <= 0``: a *cold* item) gets the mean of the
  rated items' means, each item once (:meth:`Popularity.item_means`), not the global mean of the ratings:
  the ratings are mostly of popular items, which are rated higher than rare ones, and an item
  nobody rated is a rare one (ML-100K u1..u5: cold test ratings average 2.3 stars, all ratings
  3.5, the items' means 3.1; cold RMSE with ``b_u``: 1.151 from the global mean, 1.048 from the
  items' mean). Under DP noise a cold item's ``f_i`` is noise, and about half of them are read
  as rated (then their shrunk mean is near the global mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from securefedrec.models.base import CHUNK, LocalPart, Model, PaddedRatings, RatingsByUser, Trained

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = ["SHRINK", "USER_SHRINK", "Popularity"]

SHRINK = 0.1
"""An item's mean rating counts as many pseudo-ratings at the global mean as this share of the
average item count (ML-100K: about 6 of 59 ratings)."""
USER_SHRINK = 5.0
"""The user's offset counts this many pseudo-residuals of zero (a user with few ratings stays near 0)."""


class Popularity(Model):
    """Item popularity and item means behind the :class:`~securefedrec.models.base.Model` interface.

    Args:
        num_items: the catalogue size.
        explicit: whether the rows carry the rating sums (``(f_i, s_i)``) or the counts only.
    """

    name: ClassVar[str] = "popularity"
    feedback: ClassVar[tuple[str, ...]] = ("explicit", "implicit")
    sparse_updates: ClassVar[bool] = False

    def __init__(self, num_items: int, *, explicit: bool) -> None:
        self.num_items = num_items
        self.width = 2 if explicit else 1

    @classmethod
    def from_config(cls, config: ExperimentConfig, num_items: int) -> Popularity:
        """Rating sums on explicit data (``--feedback explicit``), counts only on implicit data."""
        return cls(num_items, explicit=config.data.feedback == "explicit")

    # ---- the global part
    @property
    def length(self) -> int:
        """L = items * width (1: counts; 2: counts and scaled rating sums)."""
        return self.num_items * self.width

    @property
    def decay_span(self) -> int:
        """Nothing: a server weight decay would bias the counts."""
        return 0

    def init_global(self, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """Zeros: nothing is popular before any client reported. Keeps the public ``scale``
        (:meth:`use_scale`)."""
        self.use_scale(scale)
        return torch.zeros(self.length, dtype=torch.float64)

    def item_rows(self, vec: np.ndarray) -> np.ndarray:
        """Item ``i``'s row ``(f_i[, s_i])``: a view (items, width). A delta's row is ``-g_i`` where the
        client did not touch the item (module docstring)."""
        return vec.reshape(self.num_items, self.width)

    # ---- the local part
    def local_shapes(self) -> dict[str, tuple[int, ...]]:
        """The user's rating offset () (zero on implicit data)."""
        return {"user_offset": ()}

    def train(
        self,
        global_vec: torch.Tensor,
        data: RatingsByUser,
        client_users: Sequence[np.ndarray],
        epochs: int,
        lr: float,
        device: torch.device,
        dtype: torch.dtype,
        *,
        local: LocalPart,
        generator: torch.Generator,
    ) -> Trained[torch.Tensor]:
        """Each client's ``Ind_c - n_c * g`` (float64); ``epochs`` and ``lr`` do not apply (the delta is
        the client's report, not a gradient step), nor does ``generator``."""
        C, width, m = len(client_users), self.width, self.num_items
        users = (np.concatenate([np.asarray(u, np.int64) for u in client_users]) if C
                 else np.zeros(0, np.int64))
        owner = (np.concatenate([np.full(len(u), c) for c, u in enumerate(client_users)]) if C
                 else users)
        g = global_vec.to(device=device, dtype=torch.float64).view(m, width)
        delta = torch.zeros(C, m, width, device=device, dtype=torch.float64)
        per_client = torch.as_tensor(np.bincount(owner, minlength=C), device=device, dtype=torch.float64)
        delta -= per_client[:, None, None] * g
        flat = delta.view(-1)
        centre, half = self.scale
        offsets = torch.zeros(len(users), dtype=dtype)
        for start in range(0, len(users), CHUNK):
            chunk = users[start : start + CHUNK]
            batch = data.padded(chunk, device, torch.float64)
            own = torch.as_tensor(owner[start : start + CHUNK], device=device)
            real = batch.mask > 0
            rows = (own[:, None] * m + batch.items)[real]
            flat.index_add_(0, rows * width, torch.ones(len(rows), device=device, dtype=torch.float64))
            if width == 2:
                z = (batch.ratings[real] - centre) / half if half > 0 else batch.ratings[real] * 0
                flat.index_add_(0, rows * width + 1, z)
                offsets[start : start + len(chunk)] = self._offsets(global_vec.to(device), batch).cpu()
        return Trained(delta.view(C, m * width), users, {"user_offset": offsets})

    # ---- prediction
    scale: tuple[float, float] = (3.0, 2.0)
    """``(centre, half-width)`` of the public rating scale; :meth:`use_scale` sets it (1-5 stars
    until then)."""

    def use_scale(self, scale: tuple[float, float]) -> None:
        """Take the data set's public rating scale ``(low, high)``."""
        lo, hi = scale
        self.scale = ((lo + hi) / 2, (hi - lo) / 2)

    def item_means(self, global_vec: torch.Tensor) -> torch.Tensor:
        """Each item's shrunk mean rating (items,) (module docstring); where nobody rated, the mean of the
        rated items' means (the scale's centre before anyone reported)."""
        rows = global_vec.view(self.num_items, self.width)
        f, s = rows[:, 0].clamp(min=0), rows[:, 1]
        centre, half = self.scale
        total = f.sum()
        sbar = s.sum() / total if float(total) > 0 else s.sum() * 0
        k = SHRINK * total / self.num_items
        mean_z = ((s + k * sbar) / (f + k) if float(total) > 0 else s * 0).clamp(-1, 1)
        rated = rows[:, 0] > 0
        if bool(rated.any()):
            mean_z = torch.where(rated, mean_z, mean_z[rated].mean())
        result: torch.Tensor = centre + half * mean_z
        return result

    def unrated(self, global_vec: torch.Tensor) -> torch.Tensor:
        """Whether nobody interacted with each item (items,) bool: ``f_i <= 0`` (module docstring)."""
        return global_vec.view(self.num_items, self.width)[:, 0] <= 0

    def _offsets(self, global_vec: torch.Tensor, batch: PaddedRatings) -> torch.Tensor:
        """Each user's shrunk mean residual to the item means (B,)."""
        means = self.item_means(global_vec.to(batch.ratings.dtype))
        resid = (batch.ratings - means[batch.items]) * batch.mask
        offsets: torch.Tensor = resid.sum(1) / (batch.counts + USER_SHRINK)
        return offsets

    def fit_local(self, global_vec: torch.Tensor, batch: PaddedRatings, local: LocalPart) -> LocalPart:
        """Explicit data: each user's offset re-solved from its ratings; implicit: the kept zeros."""
        if self.width == 1:
            return local
        return {"user_offset": self._offsets(global_vec, batch).to(local["user_offset"].dtype)}

    def predict(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor, scale: tuple[float, float]
    ) -> torch.Tensor:
        """Explicit: ``m_i + b_u`` clamped to ``scale``; implicit: the popularity ``f_i`` (in [0, 1])."""
        if self.width == 1:
            return global_vec.view(self.num_items)[items].clamp(0, 1)
        means = self.item_means(global_vec)
        pred: torch.Tensor = (means[items] + local["user_offset"][:, None]).clamp(scale[0], scale[1])
        return pred

    def scores(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The item's popularity ``f_i`` for every user: (B, items), or (B, n) on ``items``."""
        f = global_vec.view(self.num_items, self.width)[:, 0]
        B = next(iter(local.values())).shape[0]
        if items is None:
            return f.expand(B, self.num_items)
        return f[items]
