"""Evaluation negatives: never interacted with, seeded by the data set and the run seed only."""

from __future__ import annotations

import numpy as np
import pytest

from securefedrec.data import sample_negatives, synthetic
from securefedrec.errors import DataError


def test_negatives_are_distinct_unseen_items_seeded_and_short_rows_are_padded() -> None:
    data = synthetic(120, 60, 25, seed=2, split="loo", feedback="implicit")
    neg = sample_negatives(data, 30, seed=9)
    assert neg.shape == (120, 30)
    every = data.all_ratings()
    seen = np.zeros((120, 60), bool)
    seen[every.users, every.items] = True
    for u in range(120):
        row = neg[u][neg[u] >= 0]
        assert len(set(row.tolist())) == len(row) and not seen[u, row].any()
        assert len(row) == min(30, int((~seen[u]).sum()))  # a user with fewer unseen items gets them all
    assert (neg < 0).any()  # some users of this small catalogue have < 30 unseen items
    np.testing.assert_array_equal(neg, sample_negatives(data, 30, seed=9))
    assert not np.array_equal(neg, sample_negatives(data, 30, seed=10))
    with pytest.raises(DataError, match="eval_negatives"):
        sample_negatives(data, 0, seed=0)


def test_negatives_are_uniform_over_the_unseen_items() -> None:
    data = synthetic(2000, 12, 2, seed=0, split="loo")
    neg = sample_negatives(data, 3, seed=1)
    every = data.all_ratings()
    only = np.bincount(every.users, minlength=2000) == 2  # users that saw exactly 2 items
    seen = np.zeros((2000, 12), bool)
    seen[every.users, every.items] = True
    # each unseen item of such a user is drawn with probability 3 / 10
    drawn = np.zeros((2000, 12), bool)
    rows = np.repeat(np.arange(2000), 3)
    drawn[rows[neg.ravel() >= 0], neg.ravel()[neg.ravel() >= 0]] = True
    share = drawn[only][~seen[only]].mean()
    assert abs(share - 0.3) < 0.02
