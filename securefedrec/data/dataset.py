"""The data model: :class:`Ratings`, :class:`Dataset` with dense ids, and the per-user hold-out split.

Users and items that appear only in the test part are kept (they get an index
too): a test user never seen in training is a client with no training ratings,
a test item never seen in training keeps its initial factors; both are
predicted from the biases, and :meth:`Dataset.summary` counts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from securefedrec.errors import DataError

__all__ = ["Dataset", "RawRows", "Ratings", "build_dataset", "holdout_mask", "holdout_split"]


@dataclass(frozen=True)
class Ratings:
    """Parallel arrays of (user index, item index, rating, timestamp)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.users)
        if not (len(self.items) == len(self.ratings) == len(self.timestamps) == n):
            raise DataError("ratings arrays must all have the same length")

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, mask: np.ndarray) -> Ratings:
        """The ratings where ``mask`` is true."""
        return Ratings(self.users[mask], self.items[mask], self.ratings[mask], self.timestamps[mask])


@dataclass(frozen=True)
class Dataset:
    """A train/test split of a ratings data set with dense ids."""

    name: str
    train: Ratings
    test: Ratings
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    scale: tuple[float, float]
    step: float | None = None
    """Ratings are multiples of this (1 = whole stars, 0.5 = half stars); ``None``: any value."""
    scale_inferred: bool = False
    """The scale was inferred from the file (its smallest and largest rating), not given."""

    @property
    def num_users(self) -> int:
        """Number of users (clients in the per-user setting)."""
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """Number of items."""
        return len(self.item_ids)

    def summary(self) -> dict[str, int | str | float | bool | None]:
        """Sizes, plus test users/items never seen in training."""
        seen_users = np.zeros(self.num_users, bool)
        seen_users[self.train.users] = True
        seen_items = np.zeros(self.num_items, bool)
        seen_items[self.train.items] = True
        return {
            "name": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "train_ratings": len(self.train),
            "test_ratings": len(self.test),
            "cold_test_users": len(np.unique(self.test.users[~seen_users[self.test.users]])),
            "cold_test_items": len(np.unique(self.test.items[~seen_items[self.test.items]])),
            "rating_min": self.scale[0],
            "rating_max": self.scale[1],
            "rating_step": self.step,
            "rating_scale_inferred": self.scale_inferred,
        }


class RawRows(NamedTuple):
    """A ratings file as read: original ids (strings), ratings, timestamps (0 when absent)."""

    users: list[str]
    items: list[str]
    ratings: np.ndarray
    timestamps: np.ndarray


def _index(ids: Sequence[str], known: dict[str, int]) -> np.ndarray:
    out = np.empty(len(ids), np.int64)
    for n, raw in enumerate(ids):
        idx = known.get(raw)
        if idx is None:
            idx = known[raw] = len(known)
        out[n] = idx
    return out


def build_dataset(
    name: str, train: RawRows, test: RawRows, scale: tuple[float, float], step: float | None = None,
    scale_inferred: bool = False,
) -> Dataset:
    """A :class:`Dataset` from raw rows: dense ids over train then test (so test-only users/items get
    the highest indices)."""
    umap: dict[str, int] = {}
    imap: dict[str, int] = {}
    tr = Ratings(_index(train[0], umap), _index(train[1], imap), train[2], train[3])
    te = Ratings(_index(test[0], umap), _index(test[1], imap), test[2], test[3])
    return Dataset(name, tr, te, tuple(umap), tuple(imap), scale, step, scale_inferred)


def _split_rows(rows: RawRows, mask: np.ndarray) -> tuple[RawRows, RawRows]:
    users, items, ratings, stamps = rows
    keep = np.flatnonzero(mask)
    drop = np.flatnonzero(~mask)
    return (
        RawRows([users[k] for k in keep], [items[k] for k in keep], ratings[keep], stamps[keep]),
        RawRows([users[k] for k in drop], [items[k] for k in drop], ratings[drop], stamps[drop]),
    )


def holdout_mask(users: Sequence[str] | np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Per-user hold-out: True = train. Each user with >= 2 ratings keeps at least one in training
    and holds out ``round(fraction * count)`` (at least one) at random, seeded."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"hold-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    codes = np.unique(np.asarray(users), return_inverse=True)[1]
    train = np.ones(len(codes), bool)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for group in np.split(order, bounds):
        if len(group) < 2:
            continue
        k = min(len(group) - 1, max(1, round(fraction * len(group))))
        train[rng.choice(group, size=k, replace=False)] = False
    return train


def holdout_split(
    name: str, rows: RawRows, scale: tuple[float, float], fraction: float = 0.2, seed: int = 0,
    *, step: float | None = None, scale_inferred: bool = False,
) -> Dataset:
    """Split rows into train/test by :func:`holdout_mask`."""
    train, test = _split_rows(rows, holdout_mask(rows[0], fraction, seed))
    return build_dataset(name, train, test, scale, step, scale_inferred)
