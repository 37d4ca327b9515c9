"""Evaluation, computed by each client on its own device and then averaged.

- RMSE / MAE over every held-out rating (predictions clamped to the scale).
- HR@K / NDCG@K, leave-one-out style: each user with at least one held-out
  rating >= ``relevant`` (4 stars by default) takes as its target the most
  recent such rating (latest timestamp, then highest item index). The user
  ranks every item it has *not* rated in training, except its other held-out
  items (their labels are unknown to the protocol), and scores a hit when the
  target is in its top K; NDCG@K = 1 / log2(rank + 2) for a hit at 0-based
  rank, else 0. Both are averaged over users with a target.

In a deployment each client would send its error sums through secure
aggregation; the simulator adds them directly (they are not part of the
training protocol and carry no item information).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from securefedrec.data import Ratings
from securefedrec.models.base import CHUNK, LocalPart, Model, RatingsByUser

__all__ = ["Evaluation", "evaluate", "leave_one_out_targets"]


@dataclass(frozen=True)
class Evaluation:
    """Aggregated metrics."""

    rmse: float
    mae: float
    hr: float
    ndcg: float
    k: int

    def as_dict(self) -> dict[str, float]:
        """Report keys: rmse, mae, hr@K, ndcg@K."""
        return {"rmse": self.rmse, "mae": self.mae, f"hr@{self.k}": self.hr, f"ndcg@{self.k}": self.ndcg}


def leave_one_out_targets(test: Ratings, num_users: int, relevant: float = 4.0) -> np.ndarray:
    """Per user: the target item index (or -1), the latest held-out rating >= ``relevant``."""
    target = np.full(num_users, -1, np.int64)
    keep = test.ratings >= relevant
    u, i, t = test.users[keep], test.items[keep], test.timestamps[keep]
    order = np.lexsort((i, t, u))
    u, i = u[order], i[order]
    last = np.flatnonzero(np.r_[u[1:] != u[:-1], True]) if len(u) else np.zeros(0, np.int64)
    target[u[last]] = i[last]
    return target


def evaluate(
    global_vec: torch.Tensor,
    model: Model,
    train: RatingsByUser,
    test: Ratings,
    scale: tuple[float, float],
    *,
    k: int = 10,
    ranking: bool = True,
    device: torch.device | None = None,
    local: LocalPart | None = None,
) -> Evaluation:
    """Every user fits its local part to the current global model on its device, then predicts locally.

    ``local`` is every user's kept local part (first axis = user id); default: the model's
    initial one (seeded 0).
    """
    device = device or torch.device("cpu")
    num_users = len(train.counts)
    g = global_vec.to(device=device, dtype=torch.float32)
    test_by_user = RatingsByUser(test, num_users)
    if local is None:
        local = model.init_local(num_users, torch.float32, torch.Generator().manual_seed(0))
    targets = leave_one_out_targets(test, num_users) if ranking else np.full(num_users, -1)
    sq = ab = 0.0
    hits = ndcg = 0.0
    n_targets = 0
    users = np.arange(num_users)
    for start in range(0, num_users, CHUNK):
        chunk = users[start : start + CHUNK]
        batch = train.padded(chunk, device, torch.float32)
        kept = {name: value[torch.as_tensor(chunk)].to(device=device, dtype=torch.float32)
                for name, value in local.items()}
        fitted = model.fit_local(g, batch, kept)
        tb = test_by_user.padded(chunk, device, torch.float32)
        pred = model.predict(g, fitted, tb.items, scale)
        err = (pred - tb.ratings) * tb.mask
        sq += float((err**2).sum())
        ab += float(err.abs().sum())
        if not ranking:
            continue
        tgt = torch.as_tensor(targets[chunk], device=device)
        has = tgt >= 0
        if not bool(has.any()):
            continue
        scores = model.scores(g, fitted)
        # exclude training items and the other held-out items; keep the target
        exclude = torch.zeros_like(scores, dtype=torch.bool)
        rows = torch.arange(len(chunk), device=device)[:, None]
        exclude[rows.expand_as(batch.items)[batch.mask > 0], batch.items[batch.mask > 0]] = True
        exclude[rows.expand_as(tb.items)[tb.mask > 0], tb.items[tb.mask > 0]] = True
        tgt_c = tgt.clamp(min=0)
        exclude[torch.arange(len(chunk), device=device), tgt_c] = False
        scores = scores.masked_fill(exclude, float("-inf"))
        target_score = scores.gather(1, tgt_c[:, None])
        rank = (scores > target_score).sum(1)
        hit = (rank < k) & has
        hits += float(hit.sum())
        ndcg += float((hit / torch.log2(rank.to(torch.float32) + 2)).sum())
        n_targets += int(has.sum())
    n = max(len(test), 1)
    return Evaluation(
        rmse=float(np.sqrt(sq / n)),
        mae=ab / n,
        hr=hits / max(n_targets, 1),
        ndcg=ndcg / max(n_targets, 1),
        k=k,
    )
