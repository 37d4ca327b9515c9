"""Evaluation negatives: for each user, items it never interacted with, drawn once per data set and seed.

The sampled-negative protocol of NCF, FCF, FedMF, PFedRec and GPFedRec ranks each user's
held-out item among ``n`` (99) items the user never interacted with. The draw depends only on
the data set and the run's seed (stream ``[seed, EVAL_NEGATIVES]``), never on the model, the
protocol or the round: every method of a run ranks the same candidates.
"""

from __future__ import annotations

import numpy as np

from securefedrec import streams
from securefedrec.data.dataset import Dataset
from securefedrec.errors import DataError

__all__ = ["USER_CHUNK", "sample_negatives"]

USER_CHUNK = 1024
"""Users per step of the draw: bounds memory at USER_CHUNK * items floats."""


def sample_negatives(dataset: Dataset, n: int, seed: int) -> np.ndarray:
    """``(num_users, n)`` int64: each user's ``n`` evaluation negatives, sorted, ``-1``-padded.

    A user's negatives are ``n`` distinct items drawn uniformly, without replacement, among the
    items it never interacted with in train, validation or test. A user with fewer than ``n``
    such items gets all of them (the rest of its row is ``-1``) and is ranked among fewer
    candidates; the caller may count those users (``(row < 0).any()``).

    The draw is vectorised: each user gives every item a uniform key, interacted items get
    the key 2, and the ``n`` smallest keys are the sample.

    Raises:
        DataError: ``n`` < 1.
    """
    if n < 1:
        raise DataError(f"eval_negatives: needs at least 1 negative per user, got {n}")
    num_users, num_items = dataset.num_users, dataset.num_items
    every = dataset.all_ratings()
    rng = np.random.default_rng([seed, streams.EVAL_NEGATIVES])
    out = np.full((num_users, n), -1, np.int64)
    take = min(n, num_items)
    for start in range(0, num_users, USER_CHUNK):
        stop = min(start + USER_CHUNK, num_users)
        keys = rng.random((stop - start, num_items))
        mine = (every.users >= start) & (every.users < stop)
        keys[every.users[mine] - start, every.items[mine]] = 2.0
        pick = np.argpartition(keys, take - 1, axis=1)[:, :take] if take < num_items else (
            np.broadcast_to(np.arange(num_items), (stop - start, num_items)))
        free = np.take_along_axis(keys, pick, axis=1) < 2.0
        chosen = np.where(free, pick, num_items)  # interacted -> past the end, sorted last
        chosen.sort(axis=1)
        out[start:stop, :take] = np.where(chosen < num_items, chosen, -1)
    return out
