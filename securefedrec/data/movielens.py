"""MovieLens: 100K (official splits u1..u5, ua, ub, or a hold-out or leave-one-out of the checked
``u.data``), 1M and latest-small (per-user hold-out or leave-one-out). The files are never shipped:
a loader names the page to download them from when they are missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from securefedrec.data.dataset import (
    LOO_SPLITS,
    SPLITS,
    Dataset,
    RawRows,
    build_dataset,
    holdout_split,
    loo_split,
)
from securefedrec.data.readers import read_ratings
from securefedrec.errors import DataError

__all__ = [
    "ML100K_MD5",
    "ML100K_SIZE",
    "ML100K_SPLITS",
    "load_ml1m",
    "load_ml100k",
    "load_ml_latest_small",
    "read_ml100k_udata",
]

ML100K_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub", *SPLITS)
"""ml-100k's official splits, then the splits of every data set (holdout, loo)."""
ML100K_SIZE = (100_000, 943, 1682)
"""Ratings, users, items of MovieLens 100K's ``u.data``."""
ML100K_MD5 = "6e47046882bad158b0efbb84cd5cb987"
_ML100K_URL = "https://grouplens.org/datasets/movielens/100k/"
_BY_NUMBER: dict[str, str | int] = {"user": 1, "item": 2, "rating": 3, "timestamp": 4}


def _need_file(path: Path, what: str, url: str, folder_option: str = "--data-dir") -> None:
    if not path.is_file():
        raise DataError(f"{path.parent}: no {what} here ({path.name} missing). Download it from {url} , "
                        f"unzip it and pass {folder_option} to its folder")


def _read_ml100k(path: Path) -> RawRows:
    return read_ratings(path, sep="\t", header=False, columns=_BY_NUMBER, scale=(1.0, 5.0), step=1.0,
                        scale_origin="of MovieLens 100K")


def read_ml100k_udata(data_dir: str | os.PathLike[str]) -> RawRows:
    """MovieLens 100K's whole ``u.data``, checked complete: 100,000 ratings by 943 users of
    1,682 items, 1..5 stars, no (user, item) pair twice.

    Raises:
        DataError: a missing, malformed (file and line named) or truncated file.
    """
    path = Path(data_dir) / "u.data"
    _need_file(path, "MovieLens 100K", _ML100K_URL)
    rows = _read_ml100k(path)
    size = (len(rows.users), len(set(rows.users)), len(set(rows.items)))
    pairs = len(set(zip(rows.users, rows.items, strict=True)))
    if size != ML100K_SIZE or pairs != size[0]:
        raise DataError(
            f"{path}: {size[0]:,} ratings ({pairs:,} distinct user-item pairs) by {size[1]:,} users of "
            f"{size[2]:,} items, where MovieLens 100K has {ML100K_SIZE[0]:,} ratings by {ML100K_SIZE[1]:,} "
            f"users of {ML100K_SIZE[2]:,} items (md5 {ML100K_MD5}): the file is truncated or damaged; "
            f"download ml-100k.zip again from {_ML100K_URL}")
    return rows


def load_ml100k(data_dir: str | os.PathLike[str], split: str = "u1", seed: int = 0) -> Dataset:
    """MovieLens 100K with an official split (u1..u5, ua, ub), a seeded per-user hold-out or a
    leave-one-out (:func:`~securefedrec.data.dataset.loo_masks`) of ``u.data``.

    Raises:
        DataError: unknown split or a missing/malformed file.
    """
    d = Path(data_dir)
    if split not in ML100K_SPLITS:
        raise DataError(f"unknown ml-100k split {split!r}; choose one of: {', '.join(ML100K_SPLITS)}")
    if split == "holdout":
        return holdout_split("ml-100k/holdout", read_ml100k_udata(d), (1.0, 5.0), seed=seed, step=1.0)
    if split in LOO_SPLITS:
        return loo_split("ml-100k", read_ml100k_udata(d), (1.0, 5.0), step=1.0, split=split)
    _need_file(d / f"{split}.base", "MovieLens 100K", _ML100K_URL)
    train = _read_ml100k(d / f"{split}.base")
    test = _read_ml100k(d / f"{split}.test")
    return build_dataset(f"ml-100k/{split}", train, test, (1.0, 5.0), 1.0)


def _split(name: str, rows: RawRows, split: str, scale: tuple[float, float], step: float,
           seed: int) -> Dataset:
    if split == "holdout":
        return holdout_split(name, rows, scale, seed=seed, step=step)
    if split in LOO_SPLITS:
        return loo_split(name, rows, scale, step=step, split=split)
    raise DataError(f"dataset {name} has no split {split!r}; choose one of: {', '.join(SPLITS)}")


def load_ml1m(data_dir: str | os.PathLike[str], seed: int = 0, split: str = "holdout") -> Dataset:
    """MovieLens 1M (``ratings.dat``, ``UserID::MovieID::Rating::Timestamp``), per-user hold-out or
    leave-one-out (``split``: holdout or loo)."""
    path = Path(data_dir) / "ratings.dat"
    _need_file(path, "MovieLens 1M", "https://grouplens.org/datasets/movielens/1m/")
    rows = read_ratings(path, sep="::", header=False, columns=_BY_NUMBER, scale=(1.0, 5.0), step=1.0,
                        scale_origin="of MovieLens 1M")
    return _split("ml-1m", rows, split, (1.0, 5.0), 1.0, seed)


def load_ml_latest_small(data_dir: str | os.PathLike[str], seed: int = 0, split: str = "holdout") -> Dataset:
    """MovieLens latest-small (``ratings.csv``: header ``userId,movieId,rating,timestamp``, half
    stars 0.5..5), per-user hold-out or leave-one-out (``split``: holdout or loo)."""
    path = Path(data_dir) / "ratings.csv"
    _need_file(path, "MovieLens latest-small", "https://grouplens.org/datasets/movielens/latest/")
    rows = read_ratings(path, sep=",", header=True,
                        columns={"user": "userId", "item": "movieId", "rating": "rating",
                                 "timestamp": "timestamp"},
                        scale=(0.5, 5.0), step=0.5, scale_origin="of MovieLens latest-small")
    return _split("ml-latest-small", rows, split, (0.5, 5.0), 0.5, seed)
