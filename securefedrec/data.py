"""Ratings data: MovieLens loaders, generic files, splits and a synthetic generator.

Every loader returns a :class:`Dataset` whose users and items are dense
indices ``0..n-1`` with the original ids kept in ``user_ids`` / ``item_ids``.
Users and items that appear only in the test part are kept (they get an index
too): a test user never seen in training is a client with no training
ratings, a test item never seen in training keeps its initial factors; both
are predicted from the biases, and :meth:`Dataset.summary` counts them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securefedrec.errors import DataError

__all__ = [
    "DATASETS",
    "ML100K_SPLITS",
    "Dataset",
    "Ratings",
    "holdout_split",
    "load_dataset",
    "load_ml1m",
    "load_ml100k",
    "load_ml_latest_small",
    "load_ratings_file",
    "read_ratings",
    "synthetic",
]

ML100K_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub", "holdout")
DATASETS = ("synthetic", "ml-100k", "ml-1m", "ml-latest-small")


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

    @property
    def num_users(self) -> int:
        """Number of users (clients in the per-user setting)."""
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """Number of items."""
        return len(self.item_ids)

    def summary(self) -> dict[str, int | str | float]:
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
        }


# --------------------------------------------------------------------------- reading files
RawRows = tuple[list[str], list[str], np.ndarray, np.ndarray]


def read_ratings(
    path: str | os.PathLike[str],
    *,
    sep: str | None,
    header: bool = False,
    scale: tuple[float, float] = (1.0, 5.0),
    step: float | None = 1.0,
) -> RawRows:
    """Read ``user, item, rating[, timestamp]`` rows from a text file.

    Args:
        path: the file.
        sep: column separator (``None`` = any whitespace, ``"::"`` for ml-1m, ``","`` for CSV).
        header: skip the first line.
        scale: inclusive rating range; a rating outside it is an error.
        step: ratings must be multiples of ``step`` (1 for stars, 0.5 for half stars); ``None`` = any.

    Raises:
        DataError: missing or empty file, or a malformed line (the message names file and line).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: ratings file not found")
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[int] = []
    lo, hi = scale
    with p.open(encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if header and lineno == 1:
                continue
            line = line.strip()
            if not line:
                continue
            parts = line.split(sep) if sep is not None else line.split()
            if len(parts) < 3:
                raise DataError(
                    f"{p}:{lineno}: expected user, item, rating[, timestamp] separated by "
                    f"{sep or 'whitespace'!r}, got {line[:80]!r}"
                )
            try:
                rating = float(parts[2])
            except ValueError:
                raise DataError(f"{p}:{lineno}: rating {parts[2]!r} is not a number") from None
            if not (math.isfinite(rating) and lo <= rating <= hi):
                raise DataError(f"{p}:{lineno}: rating {parts[2]} is outside the scale [{lo:g}, {hi:g}]")
            if step is not None and abs(rating / step - round(rating / step)) > 1e-9:
                raise DataError(f"{p}:{lineno}: rating {parts[2]} is not a multiple of {step:g}")
            stamp = 0
            if len(parts) > 3 and parts[3].strip():
                try:
                    stamp = int(float(parts[3]))
                except ValueError:
                    raise DataError(f"{p}:{lineno}: timestamp {parts[3]!r} is not a number") from None
            users.append(parts[0].strip())
            items.append(parts[1].strip())
            ratings.append(rating)
            stamps.append(stamp)
    if not users:
        raise DataError(f"{p}: no ratings in file")
    return users, items, np.asarray(ratings, np.float32), np.asarray(stamps, np.int64)


def _index(ids: Sequence[str], known: dict[str, int]) -> np.ndarray:
    out = np.empty(len(ids), np.int64)
    for n, raw in enumerate(ids):
        idx = known.get(raw)
        if idx is None:
            idx = known[raw] = len(known)
        out[n] = idx
    return out


def _build(name: str, train: RawRows, test: RawRows, scale: tuple[float, float]) -> Dataset:
    """Dense ids over train then test (so test-only users/items get the highest indices)."""
    umap: dict[str, int] = {}
    imap: dict[str, int] = {}
    tr = Ratings(_index(train[0], umap), _index(train[1], imap), train[2], train[3])
    te = Ratings(_index(test[0], umap), _index(test[1], imap), test[2], test[3])
    return Dataset(name, tr, te, tuple(umap), tuple(imap), scale)


def _split_rows(rows: RawRows, mask: np.ndarray) -> tuple[RawRows, RawRows]:
    users, items, ratings, stamps = rows
    keep = np.flatnonzero(mask)
    drop = np.flatnonzero(~mask)
    return (
        ([users[k] for k in keep], [items[k] for k in keep], ratings[keep], stamps[keep]),
        ([users[k] for k in drop], [items[k] for k in drop], ratings[drop], stamps[drop]),
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
    name: str, rows: RawRows, scale: tuple[float, float], fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """Split rows into train/test by :func:`holdout_mask`."""
    train, test = _split_rows(rows, holdout_mask(rows[0], fraction, seed))
    return _build(name, train, test, scale)


def load_ratings_file(
    path: str | os.PathLike[str],
    *,
    sep: str | None = ",",
    header: bool = False,
    scale: tuple[float, float] = (1.0, 5.0),
    step: float | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Any file with user, item, rating columns, split per user (seeded)."""
    rows = read_ratings(path, sep=sep, header=header, scale=scale, step=step)
    return holdout_split(Path(path).name, rows, scale, test_fraction, seed)


def load_ml100k(data_dir: str | os.PathLike[str], split: str = "u1", seed: int = 0) -> Dataset:
    """MovieLens 100K with an official split (u1..u5, ua, ub) or a seeded per-user hold-out.

    Raises:
        DataError: unknown split or a missing/malformed file.
    """
    d = Path(data_dir)
    if split not in ML100K_SPLITS:
        raise DataError(f"unknown ml-100k split {split!r}; choose one of: {', '.join(ML100K_SPLITS)}")
    if not (d / "u1.base").is_file():
        raise DataError(
            f"{d}: no MovieLens 100K here (u1.base missing). Download ml-100k.zip from "
            "https://grouplens.org/datasets/movielens/100k/ , unzip it and pass --data-dir to its folder"
        )
    if split == "holdout":
        # u1.base + u1.test is the whole data set (the five folds partition u.data), and the
        # fold files are the ones the benchmarks check, so the hold-out split is built from them.
        base = read_ratings(d / "u1.base", sep=None)
        test = read_ratings(d / "u1.test", sep=None)
        rows: RawRows = (base[0] + test[0], base[1] + test[1],
                         np.concatenate([base[2], test[2]]), np.concatenate([base[3], test[3]]))
        return holdout_split("ml-100k/holdout", rows, (1.0, 5.0), seed=seed)
    train = read_ratings(d / f"{split}.base", sep=None)
    test = read_ratings(d / f"{split}.test", sep=None)
    return _build(f"ml-100k/{split}", train, test, (1.0, 5.0))


def load_ml1m(data_dir: str | os.PathLike[str], seed: int = 0) -> Dataset:
    """MovieLens 1M (``ratings.dat``, ``::``-separated), per-user hold-out."""
    rows = read_ratings(Path(data_dir) / "ratings.dat", sep="::")
    return holdout_split("ml-1m", rows, (1.0, 5.0), seed=seed)


def load_ml_latest_small(data_dir: str | os.PathLike[str], seed: int = 0) -> Dataset:
    """MovieLens latest-small (``ratings.csv`` with header, half-star ratings 0.5..5), per-user hold-out."""
    rows = read_ratings(Path(data_dir) / "ratings.csv", sep=",", header=True, scale=(0.5, 5.0), step=0.5)
    return holdout_split("ml-latest-small", rows, (0.5, 5.0), seed=seed)


# --------------------------------------------------------------------------- synthetic
def synthetic(
    num_users: int = 1000,
    num_items: int = 500,
    ratings_per_user: int = 40,
    rank: int = 8,
    noise: float = 0.5,
    popularity_exponent: float = 1.0,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Low-rank ratings on a 1..5 star scale with a long-tail item popularity.

    Item popularity follows a Zipf law (probability of item of rank r ~ r^-a);
    user activity is log-normal around ``ratings_per_user``. True rating =
    3.5 + user bias + item bias + <u, v> + Gaussian noise, rounded and clipped
    to 1..5. Split per user with :func:`holdout_mask`.
    """
    if min(num_users, num_items, ratings_per_user, rank) < 1:
        raise DataError("synthetic data needs num_users, num_items, ratings_per_user and rank >= 1")
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
    for u, c in enumerate(counts):
        # Gumbel top-k: c distinct items drawn with probability ~ popularity, vectorised
        keys = np.log(pop) - np.log(-np.log(rng.random(num_items)))
        items_l.append(np.argpartition(-keys, c - 1)[:c])
        users_l.append(np.full(c, u))
    users = np.concatenate(users_l)
    items = np.concatenate(items_l)
    raw = 3.5 + bu[users] + bi[items] + np.einsum("nk,nk->n", U[users], V[items]) * 1.5
    ratings = np.clip(np.rint(raw + rng.normal(0, noise, len(users))), 1, 5).astype(np.float32)
    train = holdout_mask(users, test_fraction, seed)
    stamps = np.zeros(len(users), np.int64)
    uid = tuple(str(u) for u in range(num_users))
    iid = tuple(str(i) for i in range(num_items))
    full = Ratings(users.astype(np.int64), items.astype(np.int64), ratings, stamps)
    return Dataset(
        f"synthetic-{num_users}x{num_items}", full.subset(train), full.subset(~train), uid, iid, (1.0, 5.0)
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "holdout",
    seed: int = 0,
    **synthetic_options: int,
) -> Dataset:
    """Load a data set by name (one of :data:`DATASETS`)."""
    if name == "synthetic":
        return synthetic(seed=seed, **synthetic_options)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if data_dir is None:
        raise DataError(f"dataset {name} needs --data-dir (the folder holding its files)")
    if name == "ml-100k":
        return load_ml100k(data_dir, split, seed)
    if split != "holdout":
        raise DataError(f"dataset {name} has no official split {split!r}; use --split holdout")
    if name == "ml-1m":
        return load_ml1m(data_dir, seed)
    return load_ml_latest_small(data_dir, seed)
