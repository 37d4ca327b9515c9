"""The data model: :class:`Ratings`, :class:`Dataset` with dense ids, and the per-user hold-out split.

Users and items that appear only in the test part are kept (they get an index
too): a test user never seen in training is a client with no training ratings,
a test item never seen in training keeps its initial factors; both are
predicted from the biases, and :meth:`Dataset.summary` counts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

from securefedrec.errors import DataError

__all__ = [
    "FEEDBACK_KINDS",
    "LOO_SPLITS",
    "SPLITS",
    "Dataset",
    "RawRows",
    "Ratings",
    "binarize",
    "build_dataset",
    "holdout_mask",
    "holdout_split",
    "loo_masks",
    "loo_split",
]

FEEDBACK_KINDS = ("explicit", "implicit")
"""``--feedback``: ``explicit`` ratings, or ``implicit`` interactions (every rating becomes a 1)."""
LOO_SPLITS = ("loo", "loo-full")
"""The leave-one-out splits (:func:`loo_masks`): ``loo`` holds out each user's latest interaction for
test and the second latest for validation (for tuning: no model trains on it); ``loo-full`` holds
out only the latest, every other interaction trains (no validation split): the protocol of the
papers' tables (NCF, PFedRec, GPFedRec), whose models train on everything but the test item."""
SPLITS = ("holdout", *LOO_SPLITS)
"""The splits every data set has: a seeded per-user hold-out, and leave-one-out (:data:`LOO_SPLITS`)."""


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

    @classmethod
    def empty(cls) -> Ratings:
        """No ratings."""
        none = np.zeros(0, np.int64)
        return cls(none, none, np.zeros(0, np.float32), none)

    @classmethod
    def concat(cls, parts: Sequence[Ratings]) -> Ratings:
        """The ratings of ``parts``, one after the other."""
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in ("users", "items", "ratings", "timestamps")))


@dataclass(frozen=True)
class Dataset:
    """A train/test (and, for leave-one-out, validation) split of a ratings data set with dense ids."""

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
    validation: Ratings = field(default_factory=Ratings.empty)
    """Held out for model selection (leave-one-out: each user's second-latest interaction); empty
    for the other splits. Never trained on, never a test target."""
    feedback: str = "explicit"
    """``explicit`` ratings, or ``implicit`` interactions (every value 1.0, scale 0..1; :func:`binarize`)."""

    def all_ratings(self) -> Ratings:
        """Train, validation and test together."""
        return Ratings.concat([self.train, self.validation, self.test])

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
            "feedback": self.feedback,
            "train_ratings": len(self.train),
            "validation_ratings": len(self.validation),
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


def binarize(dataset: Dataset) -> Dataset:
    """The implicit-feedback form of ``dataset``: every rating, of any value, becomes an interaction
    with value 1.0 (as FCF, FedMF, NCF and PFedRec do), on the scale 0..1 (0 = no interaction).

    Train, validation and test keep their rows; a pair rated twice stays twice (leave-one-out
    keeps each pair once, :func:`loo_masks`).
    """
    def ones(r: Ratings) -> Ratings:
        return Ratings(r.users, r.items, np.ones(len(r), np.float32), r.timestamps)

    return replace(dataset, train=ones(dataset.train), validation=ones(dataset.validation),
                   test=ones(dataset.test), scale=(0.0, 1.0), step=1.0, scale_inferred=False,
                   feedback="implicit")


def loo_masks(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, *, validation: bool = True,
) -> tuple[np.ndarray, ...]:
    """Leave-one-out by time: boolean (train, validation, test) masks over the rows, disjoint.

    Each (user, item) pair counts once: when a user rated an item more than once, only its
    latest row is kept (the others are in no part). The user's interactions are ordered by
    timestamp; rows with the same timestamp by their order in the arrays (a later row is later,
    so a file without timestamps is in time order line by line). Then:

    - 3 or more interactions: the latest is the test item, the second latest the validation
      item, the rest train;
    - 2 interactions: the latest is the test item, the other train (no validation item);
    - 1 interaction: it stays in train (no test item: the user is not evaluated).

    ``validation=False`` (split ``loo-full``): no validation item; the second latest trains too,
    so train is everything but each user's test item (and the earlier rows of a repeated pair).

    ``users`` and ``items`` are integer codes (any ids as long as equal ids are equal codes).
    """
    n = len(users)
    row = np.arange(n)
    train = np.zeros(n, bool)
    held = np.zeros(n, bool)  # the validation mask
    test = np.zeros(n, bool)
    if n == 0:
        return train, held, test
    # the latest row of each (user, item) pair
    order = np.lexsort((row, timestamps, items, users))
    u, i = users[order], items[order]
    last_of_pair = np.r_[(u[1:] != u[:-1]) | (i[1:] != i[:-1]), True]
    kept = order[last_of_pair]
    # each user's kept rows in time order; position from the end: 0 = latest
    kept = kept[np.lexsort((kept, timestamps[kept], users[kept]))]
    ku = users[kept]
    starts = np.flatnonzero(np.r_[True, ku[1:] != ku[:-1]])
    counts = np.diff(np.r_[starts, len(kept)])
    size = np.repeat(counts, counts)
    from_end = size - 1 - (np.arange(len(kept)) - np.repeat(starts, counts))
    test[kept[(from_end == 0) & (size >= 2)]] = True
    if validation:
        held[kept[(from_end == 1) & (size >= 3)]] = True
    train[kept[~(test[kept] | held[kept])]] = True
    return train, held, test


def loo_split(
    name: str, rows: RawRows, scale: tuple[float, float], *, step: float | None = None,
    scale_inferred: bool = False, split: str = "loo",
) -> Dataset:
    """Split rows by leave-one-out (:func:`loo_masks`; ``split``, one of :data:`LOO_SPLITS`: ``loo``
    with a validation item, ``loo-full`` without); dense ids in the order of first appearance.

    Raises:
        DataError: ``split`` is not a leave-one-out split.
    """
    if split not in LOO_SPLITS:
        raise DataError(f"{name}: {split!r} is not a leave-one-out split; choose one of: "
                        f"{', '.join(LOO_SPLITS)}")
    umap: dict[str, int] = {}
    imap: dict[str, int] = {}
    users, items = _index(rows.users, umap), _index(rows.items, imap)
    full = Ratings(users, items, rows.ratings, rows.timestamps)
    train, validation, test = loo_masks(users, items, rows.timestamps, validation=split == "loo")
    return Dataset(f"{name}/{split}", full.subset(train), full.subset(test), tuple(umap), tuple(imap), scale,
                   step, scale_inferred, validation=full.subset(validation))
