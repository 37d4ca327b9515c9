"""Evaluation, computed by each client on its own device and then averaged.

- RMSE / MAE over every held-out rating (predictions clamped to the scale); explicit data only.
  ``cold_rmse``: the RMSE over the held-out ratings of *cold* items, those with no training
  rating at all (ml-100k u1 has 32 such items), ``None`` when there are none.
- HR@10 / NDCG@10 with sampled negatives, the protocol of NCF, FCF, FedMF, PFedRec and
  GPFedRec: each user with a *target* ranks it among itself and ``eval_negatives`` (99) items it
  never interacted with (:func:`~securefedrec.data.negatives.sample_negatives`, drawn once per
  data set and seed, so every method of a run ranks the same candidates). The target is the
  user's latest held-out interaction (latest timestamp, then highest item index); on explicit
  data only a held-out rating >= 4 (:data:`RELEVANT`) can be a target, so HR@10 there asks
  "is the latest liked held-out movie in the top 10 of 100?". With ``--split loo`` that is the
  user's single test item (explicit: when rated >= 4).
- Recall@20 / NDCG@20 over the full catalogue: each user ranks every item except its training
  and validation items; relevant = its held-out test items (explicit: those rated >= 4).
  Recall = relevant items in the top 20 / relevant items; NDCG = DCG / ideal DCG.

Ranks count the candidates with a strictly higher score; **ties** are broken uniformly at random,
in expectation, computed exactly: an item with ``g`` candidates above it and ``t`` tied with it is
at each rank ``g .. g + t`` with probability ``1 / (t + 1)``. Ties therefore never flatter a
model: a constant scorer gets HR@10 = 10 / 100 exactly. Every ranking metric is the mean over the
users it applies to (users without a target / relevant item are left out; ``None`` when none).

In a deployment each client would send its error sums through secure
aggregation; the simulator adds them directly (they are not part of the
training protocol and carry no item information).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from securefedrec.data import Dataset, Ratings, sample_negatives
from securefedrec.models.base import CHUNK, LocalPart, Model, RatingsByUser

__all__ = ["RELEVANT", "Evaluation", "RankingTask", "evaluate", "expected_hits", "leave_one_out_targets"]

RELEVANT = 4.0
"""On explicit data, a held-out rating this high or higher is relevant (a ranking target)."""


@dataclass(frozen=True)
class Evaluation:
    """Aggregated metrics; a metric that was not computed (or has no user to average over) is ``None``."""

    rmse: float | None
    mae: float | None
    hr: float | None
    """HR@k among the target and its sampled negatives."""
    ndcg: float | None
    """NDCG@k among the target and its sampled negatives."""
    recall: float | None = None
    """Recall@k_full over the full catalogue."""
    ndcg_full: float | None = None
    """NDCG@k_full over the full catalogue."""
    k: int = 10
    k_full: int = 20
    ranked_users: int = 0
    """Users with a target (the users HR@k and NDCG@k average over)."""
    cold_rmse: float | None = None
    """RMSE over the held-out ratings of items without any training rating (explicit data)."""
    cold_ratings: int = 0
    """The number of those ratings."""

    def as_dict(self) -> dict[str, float | None]:
        """Report keys: rmse, mae, hr@K, ndcg@K, recall@K', ndcg@K', ranked_users, cold_rmse, cold_ratings."""
        return {"rmse": self.rmse, "mae": self.mae, f"hr@{self.k}": self.hr, f"ndcg@{self.k}": self.ndcg,
                f"recall@{self.k_full}": self.recall, f"ndcg@{self.k_full}": self.ndcg_full,
                "ranked_users": self.ranked_users, "cold_rmse": self.cold_rmse,
                "cold_ratings": self.cold_ratings}


def leave_one_out_targets(test: Ratings, num_users: int, relevant: float | None = RELEVANT) -> np.ndarray:
    """Per user: the target item index (or -1), its latest held-out rating >= ``relevant``
    (latest timestamp, then highest item index); ``relevant=None``: its latest held-out interaction."""
    target = np.full(num_users, -1, np.int64)
    keep = test.ratings >= relevant if relevant is not None else np.ones(len(test), bool)
    u, i, t = test.users[keep], test.items[keep], test.timestamps[keep]
    order = np.lexsort((i, t, u))
    u, i = u[order], i[order]
    last = np.flatnonzero(np.r_[u[1:] != u[:-1], True]) if len(u) else np.zeros(0, np.int64)
    target[u[last]] = i[last]
    return target


@dataclass(frozen=True)
class RankingTask:
    """What the ranking metrics need, built once per data set and seed (never per round).

    Attributes:
        targets: (users,) each user's target item, -1 for none.
        negatives: (users, n) its sampled negatives, sorted, -1-padded.
        relevant: each user's relevant held-out items (full ranking).
        validation: each user's validation items (left out of the full ranking, like training).
    """

    targets: np.ndarray
    negatives: np.ndarray
    relevant: RatingsByUser
    validation: RatingsByUser

    @classmethod
    def build(cls, dataset: Dataset, negatives: int = 99, seed: int = 0) -> RankingTask:
        """The task of ``dataset``: targets and relevant items by the rule of its feedback kind
        (implicit: every held-out interaction; explicit: ratings >= :data:`RELEVANT`), and
        ``negatives`` sampled negatives per user drawn with ``seed``."""
        relevant = None if dataset.feedback == "implicit" else RELEVANT
        test = dataset.test
        liked = test if relevant is None else test.subset(test.ratings >= relevant)
        return cls(
            targets=leave_one_out_targets(test, dataset.num_users, relevant),
            negatives=sample_negatives(dataset, negatives, seed),
            relevant=RatingsByUser(liked, dataset.num_users),
            validation=RatingsByUser(dataset.validation, dataset.num_users),
        )


def _discounts(k: int, device: torch.device) -> torch.Tensor:
    """``D[m] = sum_{r < m} 1 / log2(r + 2)`` for m = 0..k: the DCG of hits at ranks 0..m-1."""
    gains = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64, device=device) + 2)
    return torch.cat([torch.zeros(1, dtype=torch.float64, device=device), gains.cumsum(0)])


def expected_hits(above: torch.Tensor, tied: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected (hit@k, DCG@k) of items with ``above`` candidates scored strictly higher and ``tied``
    other candidates scored equal, the ties broken uniformly at random (exact expectation)."""
    d = _discounts(k, above.device)
    g = above.to(torch.int64)
    width = tied.to(torch.float64) + 1
    hit = (k - g).clamp(min=0).minimum(tied.to(torch.int64) + 1).to(torch.float64) / width
    dcg = (d[(g + tied.to(torch.int64) + 1).clamp(max=k)] - d[g.clamp(max=k)]) / width
    return hit, dcg


def _finite(scores: torch.Tensor) -> torch.Tensor:
    """Scores with NaN as the lowest and +-inf as the largest finite values (so -inf marks exclusion)."""
    big = torch.finfo(scores.dtype).max
    return torch.nan_to_num(scores, nan=-big, posinf=big, neginf=-big)


def evaluate(
    global_vec: torch.Tensor,
    model: Model,
    train: RatingsByUser,
    test: Ratings,
    scale: tuple[float, float],
    *,
    task: RankingTask | None = None,
    errors: bool = True,
    full_ranking: bool = True,
    k: int = 10,
    k_full: int = 20,
    device: torch.device | None = None,
    local: LocalPart | None = None,
) -> Evaluation:
    """Every user fits its local part to the current global model on its device, then predicts locally.

    Args:
        errors: compute RMSE / MAE (explicit data).
        task: compute HR@k / NDCG@k on the task's targets and negatives (and, with
            ``full_ranking``, Recall@k_full / NDCG@k_full); ``None``: no ranking metric.
        local: every user's kept local part (first axis = user id); default: the model's
            initial one (seeded 0).
    """
    device = device or torch.device("cpu")
    num_users = len(train.counts)
    g = global_vec.to(device=device, dtype=torch.float32)
    test_by_user = RatingsByUser(test, num_users)
    if local is None:
        local = model.init_local(num_users, torch.float32, torch.Generator().manual_seed(0))
    sq = ab = sq_cold = 0.0
    n_cold = 0
    # cold items: no training rating at all (their parameters are whatever training never touched)
    trained = np.zeros(int(max(train.items.max(initial=0), test.items.max(initial=0))) + 1, bool)
    trained[train.items] = True
    trained_on = torch.as_tensor(trained, device=device)
    hits = ndcg = 0.0
    n_targets = 0
    recall = ndcg_full = 0.0
    n_relevant_users = 0
    users = np.arange(num_users)
    for start in range(0, num_users, CHUNK):
        chunk = users[start : start + CHUNK]
        batch = train.padded(chunk, device, torch.float32)
        kept = {name: value[torch.as_tensor(chunk)].to(device=device, dtype=torch.float32)
                for name, value in local.items()}
        fitted = model.fit_local(g, batch, kept)
        if errors:
            tb = test_by_user.padded(chunk, device, torch.float32)
            pred = model.predict(g, fitted, tb.items, scale)
            err = (pred - tb.ratings) * tb.mask
            sq += float((err**2).sum())
            ab += float(err.abs().sum())
            cold = (tb.mask > 0) & ~trained_on[tb.items]
            sq_cold += float((err[cold] ** 2).sum())
            n_cold += int(cold.sum())
        if task is None:
            continue
        h, n, c = _sampled(model, g, fitted, task, chunk, k, device)
        hits, ndcg, n_targets = hits + h, ndcg + n, n_targets + c
        if full_ranking:
            r, n, c = _full(model, g, fitted, task, batch.items, batch.mask, chunk, k_full, device)
            recall, ndcg_full, n_relevant_users = recall + r, ndcg_full + n, n_relevant_users + c
    n_test = max(len(test), 1)
    ranked = task is not None
    return Evaluation(
        rmse=float(np.sqrt(sq / n_test)) if errors else None,
        mae=ab / n_test if errors else None,
        hr=hits / n_targets if ranked and n_targets else None,
        ndcg=ndcg / n_targets if ranked and n_targets else None,
        recall=recall / n_relevant_users if ranked and full_ranking and n_relevant_users else None,
        ndcg_full=ndcg_full / n_relevant_users if ranked and full_ranking and n_relevant_users else None,
        k=k,
        k_full=k_full,
        ranked_users=n_targets,
        cold_rmse=float(np.sqrt(sq_cold / n_cold)) if errors and n_cold else None,
        cold_ratings=n_cold if errors else 0,
    )


def _sampled(model: Model, g: torch.Tensor, fitted: LocalPart, task: RankingTask, chunk: np.ndarray,
             k: int, device: torch.device) -> tuple[float, float, int]:
    """Sums of HR@k and NDCG@k over the chunk's users with a target, and their number."""
    target = task.targets[chunk]
    has = target >= 0
    if not has.any():
        return 0.0, 0.0, 0
    negatives = task.negatives[chunk]
    items = torch.as_tensor(np.concatenate([target[:, None], negatives], axis=1).clip(min=0), device=device)
    valid = torch.as_tensor(negatives >= 0, device=device)
    scores = _finite(model.scores(g, fitted, items))
    mine, others = scores[:, :1], scores[:, 1:]
    above = ((others > mine) & valid).sum(1)
    tied = ((others == mine) & valid).sum(1)
    hit, dcg = expected_hits(above, tied, k)
    rows = torch.as_tensor(has, device=device)
    return float(hit[rows].sum()), float(dcg[rows].sum()), int(has.sum())


def _full(
    model: Model, g: torch.Tensor, fitted: LocalPart, task: RankingTask, train_items: torch.Tensor,
    train_mask: torch.Tensor, chunk: np.ndarray, k: int, device: torch.device,
) -> tuple[float, float, int]:
    """Sums of Recall@k and NDCG@k over the full catalogue for the chunk's users with a relevant item."""
    rel = task.relevant.padded(chunk, device, torch.float32)
    n_rel = rel.mask.sum(1)
    has = n_rel > 0
    if not bool(has.any()):
        return 0.0, 0.0, 0
    scores = _finite(model.scores(g, fitted))
    b = len(chunk)
    rows = torch.arange(b, device=device)[:, None]
    exclude = torch.zeros_like(scores, dtype=torch.bool)
    exclude[rows.expand_as(train_items)[train_mask > 0], train_items[train_mask > 0]] = True
    val = task.validation.padded(chunk, device, torch.float32)
    exclude[rows.expand_as(val.items)[val.mask > 0], val.items[val.mask > 0]] = True
    on = rel.mask > 0
    exclude[rows.expand_as(rel.items)[on], rel.items[on]] = False  # a relevant item is always ranked
    scores = scores.masked_fill(exclude, float("-inf"))
    ranked = scores.sort(dim=1).values.contiguous()  # ascending
    mine = scores.gather(1, rel.items).contiguous()
    n = scores.shape[1]
    above = n - torch.searchsorted(ranked, mine, right=True)
    tied = torch.searchsorted(ranked, mine, right=True) - torch.searchsorted(ranked, mine, right=False) - 1
    hit, dcg = expected_hits(above, tied, k)
    hit, dcg = hit * on, dcg * on
    ideal = _discounts(k, device)[n_rel.to(torch.int64).clamp(max=k)]
    recall = hit.sum(1) / n_rel.to(torch.float64).clamp(min=1)
    ndcg = dcg.sum(1) / ideal.clamp(min=1e-12)
    return float(recall[has].sum()), float(ndcg[has].sum()), int(has.sum())
