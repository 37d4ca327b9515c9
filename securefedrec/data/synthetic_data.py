"""Synthetic low-rank ratings (or implicit interactions) of any size with a long-tail item popularity,
timestamped (the embedded default data set)."""

from __future__ import annotations

import numpy as np

from securefedrec.data.dataset import (
    FEEDBACK_KINDS,
    LOO_SPLITS,
    SPLITS,
    Dataset,
    Ratings,
    binarize,
    holdout_mask,
    loo_masks,
)
from securefedrec.errors import DataError

__all__ = ["synthetic"]


def synthetic(
    num_users: int = 1000,
    num_items: int = 500,
    ratings_per_user: int = 40,
    rank: int = 8,
    noise: float = 0.5,
    popularity_exponent: float = 1.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    *,
    split: str = "holdout",
    feedback: str = "explicit",
) -> Dataset:
    """Low-rank ratings on a 1..5 star scale with a long-tail item popularity, or implicit interactions.

    Item popularity follows a Zipf law (probability of item of rank r ~ r^-a);
    user activity is log-normal around ``ratings_per_user``. True rating =
    3.5 + user bias + item bias + <u, v> + Gaussian noise, rounded and clipped
    to 1..5. Each rating gets a timestamp: a random order of all ratings, seeded
    (``[seed, 1]``, drawn after everything else, so the ratings do not depend on it).

    ``feedback="implicit"``: which items a user interacts with depends on taste, not only on
    popularity: user u picks its items with probability ~ popularity * exp(1.5 <u, v>) (the
    same factors as the ratings), and every interaction has value 1.0 (:func:`binarize`). An
    implicit model can therefore beat item popularity on it. ``explicit`` data (the default)
    picks items by popularity alone, as before.

    ``split``: ``holdout`` (per user, :func:`holdout_mask` with ``test_fraction``) or ``loo``
    (each user's latest interaction is the test item, the second latest validation,
    :func:`loo_masks`).
    """
    if min(num_users, num_items, ratings_per_user, rank) < 1:
        raise DataError("synthetic data needs num_users, num_items, ratings_per_user and rank >= 1")
    if split not in SPLITS:
        raise DataError(f"synthetic data has no split {split!r}; choose one of: {', '.join(SPLITS)}")
    if feedback not in FEEDBACK_KINDS:
        raise DataError(f"unknown feedback {feedback!r}; choose one of: {', '.join(FEEDBACK_KINDS)}")
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, num_items + 1) ** popularity_exponent
    pop = pop[rng.permutation(num_items)]
    pop /= pop.sum()
    counts = np.clip(rng.lognormal(np.log(ratings_per_user), 0.6, num_users).astype(int), 2, num_items)
    U = rng.normal(0, 1 / np.sqrt(rank), (num_users, rank))
    V = rng.normal(0, 1 / np.sqrt(rank), (num_items, rank)) * 1.2
    bu = rng.normal(0, 0.4, num_users)
    bi = rng.normal(0, 0.5, num_items)
    users_l, items_l = [], []
    taste = feedback == "implicit"
    for u, c in enumerate(counts):
        # Gumbel top-k: c distinct items drawn with probability ~ popularity (implicit: times
        # exp(1.5 <u, v>)), vectorised
        keys = np.log(pop) - np.log(-np.log(rng.random(num_items)))
        if taste:
            keys += 1.5 * (V @ U[u])
        items_l.append(np.argpartition(-keys, c - 1)[:c])
        users_l.append(np.full(c, u))
    users = np.concatenate(users_l)
    items = np.concatenate(items_l)
    raw = 3.5 + bu[users] + bi[items] + np.einsum("nk,nk->n", U[users], V[items]) * 1.5
    ratings = np.clip(np.rint(raw + rng.normal(0, noise, len(users))), 1, 5).astype(np.float32)
    train = holdout_mask(users, test_fraction, seed)
    stamps = np.random.default_rng([seed, 1]).permutation(len(users)).astype(np.int64)
    uid = tuple(str(u) for u in range(num_users))
    iid = tuple(str(i) for i in range(num_items))
    full = Ratings(users.astype(np.int64), items.astype(np.int64), ratings, stamps)
    name = f"synthetic-{num_users}x{num_items}"
    if split in LOO_SPLITS:
        train, validation, test = loo_masks(full.users, full.items, stamps, validation=split == "loo")
        data = Dataset(f"{name}/{split}", full.subset(train), full.subset(test), uid, iid, (1.0, 5.0), 1.0,
                       validation=full.subset(validation))
    else:
        data = Dataset(name, full.subset(train), full.subset(~train), uid, iid, (1.0, 5.0), 1.0)
    return binarize(data) if taste else data
