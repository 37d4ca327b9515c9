"""Ratings data: MovieLens loaders, generic files, splits and a synthetic generator.

Every loader returns a :class:`Dataset` whose users and items are dense
indices ``0..n-1`` with the original ids kept in ``user_ids`` / ``item_ids``.
Users and items that appear only in the test part are kept (they get an index
too): a test user never seen in training is a client with no training
ratings, a test item never seen in training keeps its initial factors; both
are predicted from the biases, and :meth:`Dataset.summary` counts them.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from securefedrec.errors import DataError

__all__ = [
    "DATASETS",
    "HEADER_NAMES",
    "ML100K_SPLITS",
    "ROLES",
    "Dataset",
    "RawRows",
    "Ratings",
    "check_columns",
    "holdout_split",
    "infer_step",
    "load_dataset",
    "load_ml1m",
    "load_ml100k",
    "load_ml_latest_small",
    "load_ratings_file",
    "parse_columns",
    "parse_rating_scale",
    "read_ml100k_udata",
    "read_ratings",
    "synthetic",
]

ML100K_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub", "holdout")
DATASETS = ("synthetic", "ml-100k", "ml-1m", "ml-latest-small", "file")
"""``file``: any ratings file (:func:`load_ratings_file`; CLI ``--dataset file --data-file PATH``)."""


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


# --------------------------------------------------------------------------- reading files
ROLES = ("user", "item", "rating", "timestamp")
"""What a column can hold; ``timestamp`` is optional (seconds since 1970, 0 when absent)."""

HEADER_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("userId", "user_id", "user"),
    "item": ("movieId", "movie_id", "itemId", "item_id", "item"),
    "rating": ("rating",),
    "timestamp": ("timestamp",),
}
"""Header names recognised without ``columns`` (compared without case): MovieLens's and common ones."""

ColumnSpec = Mapping[str, "str | int"]
"""Role -> column: a header name, or a 1-based column number (``user=1`` is the first field)."""


class RawRows(NamedTuple):
    """A ratings file as read: original ids (strings), ratings, timestamps (0 when absent)."""

    users: list[str]
    items: list[str]
    ratings: np.ndarray
    timestamps: np.ndarray


def parse_columns(text: str) -> dict[str, str | int]:
    """Parse ``user=userId,item=movieId,rating=rating[,timestamp=timestamp]``.

    A column is a header name or a 1-based column number (``user=1,item=2,rating=3``); give all
    by name (the file must have a header) or all by number.

    Raises:
        DataError: malformed text, an unknown or missing role, a column used twice.
    """
    spec: dict[str, str | int] = {}
    for part in text.split(","):
        role, eq, column = (s.strip() for s in part.partition("="))
        if not (eq and role and column):
            raise DataError(f"expected ROLE=COLUMN, got {part.strip()!r} "
                            "(e.g. user=userId,item=movieId,rating=rating or user=1,item=2,rating=3)")
        if role in spec:
            raise DataError(f"{role} is given twice")
        spec[role] = int(column) if column.isdigit() else column
    check_columns(spec)
    return spec


def check_columns(spec: ColumnSpec) -> None:
    """Check a column spec: roles from :data:`ROLES`, user/item/rating present, all names or all
    1-based numbers, no column twice.

    Raises:
        DataError: the spec is invalid (the message says how).
    """
    unknown = [r for r in spec if r not in ROLES]
    if unknown:
        raise DataError(f"unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}")
    missing = [r for r in ROLES[:3] if r not in spec]
    if missing:
        raise DataError(f"no {missing[0]} column; user, item and rating are needed")
    values = list(spec.values())
    numbers = [isinstance(v, int) and not isinstance(v, bool) for v in values]
    if any(numbers) and not all(numbers):
        raise DataError("give every column by header name or every column by number, not both")
    if all(numbers) and min(int(v) for v in values) < 1:
        raise DataError("column numbers start at 1")
    if not all(numbers) and not all(isinstance(v, str) and v for v in values):
        raise DataError("a column is a header name or a column number")
    if len(set(values)) < len(values):
        raise DataError("a column is used for two roles")


def parse_rating_scale(text: str) -> tuple[float, float]:
    """Parse ``MIN:MAX`` (e.g. ``1:5``, ``0.5:5``).

    Raises:
        DataError: not two finite numbers with MIN < MAX.
    """
    low, colon, high = text.partition(":")
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        lo = hi = math.nan
    if not (colon and math.isfinite(lo) and math.isfinite(hi)):
        raise DataError(f"expected MIN:MAX (e.g. 1:5 or 0.5:5), got {text!r}")
    if lo >= hi:
        raise DataError(f"MIN must be below MAX, got {text!r}")
    return lo, hi


def infer_step(ratings: np.ndarray) -> float | None:
    """1 for whole stars, 0.5 for half stars, ``None`` for any other values."""
    for step in (1.0, 0.5):
        if np.all(np.abs(ratings / step - np.rint(ratings / step)) < 1e-6):
            return step
    return None


def _detect_sep(line: str) -> str | None:
    for sep in ("::", "\t", ","):
        if sep in line:
            return sep
    return None


def _fields(lines: list[str], sep: str | None) -> list[tuple[int, list[str]]]:
    """(1-based line number, stripped fields) of every non-blank line."""
    if sep == ",":  # the csv module, for quoted fields
        reader = csv.reader(lines)
        return [(reader.line_num, [f.strip() for f in row]) for row in reader if any(f.strip() for f in row)]
    numbered = [(n, line.strip()) for n, line in enumerate(lines, start=1)]
    numbered = [(n, line) for n, line in numbered if line]
    if sep is None:
        return [(n, line.split()) for n, line in numbered]
    return [(n, [f.strip() for f in line.split(sep)] if " " in line or (sep != "\t" and "\t" in line)
             else line.split(sep))  # blanks around the separators are stripped
            for n, line in numbered]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _sep_name(sep: str | None) -> str:
    return {None: "whitespace", "\t": "tabs", ",": "commas", "::": "'::'"}.get(sep, repr(sep))


def _resolve_columns(
    where: str, lineno: int, fields: list[str], spec: ColumnSpec | None, header: bool | None
) -> tuple[dict[str, int], dict[str, str], bool]:
    """From the first line: role -> 0-based index, role -> label for errors, whether it is a header."""
    lowered = [f.lower() for f in fields]
    known = {role: next((n for n, f in enumerate(lowered) if f in {m.lower() for m in names}), None)
             for role, names in HEADER_NAMES.items()}
    if header is None:  # a header holds a known name, or no number at all
        header = any(v is not None for v in known.values()) or not any(_is_number(f) for f in fields)
    if spec is None:
        if header:
            missing = [r for r in ROLES[:3] if known[r] is None]
            if missing:
                raise DataError(
                    f"{where}, line {lineno}: the header ({', '.join(fields)}) has no {missing[0]} column "
                    f"that is recognised (names: {', '.join(HEADER_NAMES[missing[0]])}); name the columns, "
                    "e.g. --columns user=NAME,item=NAME,rating=NAME[,timestamp=NAME]")
            spec = {r: fields[i] for r, i in known.items() if i is not None}
        else:
            spec = {"user": 1, "item": 2, "rating": 3, **({"timestamp": 4} if len(fields) >= 4 else {})}
    if all(isinstance(v, str) for v in spec.values()):
        if header is False:
            raise DataError(f"{where}: columns given by name need a header line; give column numbers "
                            "(user=1,item=2,rating=3) for a file without one")
        index: dict[str, int] = {}
        for role, name in spec.items():
            hits = [n for n, f in enumerate(fields) if f == name] or \
                   [n for n, f in enumerate(lowered) if f == str(name).lower()]
            if not hits:
                raise DataError(f"{where}, line {lineno}: no column {name!r} in the header "
                                f"({', '.join(fields)})")
            index[role] = hits[0]
        return index, {r: repr(fields[i]) for r, i in index.items()}, True
    index = {role: int(n) - 1 for role, n in spec.items()}
    labels = {r: f"{i + 1} ({fields[i]!r})" if header and i < len(fields) else f"{i + 1} ({r})"
              for r, i in index.items()}
    return index, labels, header


def read_ratings(
    path: str | os.PathLike[str],
    *,
    sep: str | None = None,
    header: bool | None = None,
    columns: ColumnSpec | str | None = None,
    scale: tuple[float, float] | None = None,
    step: float | None = None,
    scale_origin: str = "given by scale=",
) -> RawRows:
    """Read (user, item, rating[, timestamp]) rows from a CSV, TSV, ``::`` or whitespace file.

    Args:
        path: the file (UTF-8; a byte-order mark is skipped; blank lines are ignored).
        sep: column separator; ``None`` = detected from the first line (``::``, then a tab,
            then a comma, else any whitespace).
        header: whether the first line is a header; ``None`` = detected: it is one when it holds a
            name of :data:`HEADER_NAMES` or no field that is a number.
        columns: which column holds what (:func:`parse_columns`'s text or a mapping): header names,
            or 1-based column numbers. ``None``: a header's names are recognised from
            :data:`HEADER_NAMES` (any order, other columns ignored); without a header the
            columns are user, item, rating[, timestamp].
        scale: inclusive rating range; a rating outside it is an error. ``None``: not checked.
        step: ratings must be multiples of ``step`` (1 for stars, 0.5 for half stars); ``None`` = any.
        scale_origin: where ``scale`` came from, for error messages.

    Ids are kept as strings (a file may use any ids); the loaders map them to dense indices.

    Raises:
        DataError: a missing or empty file, a bad header, a malformed value; the message names the
            file, the line and the column.
    """
    p = Path(path)
    where = str(path)
    if not p.is_file():
        raise DataError(f"{where}: ratings file not found")
    try:
        spec = parse_columns(columns) if isinstance(columns, str) else columns
        if spec is not None:
            check_columns(spec)
    except DataError as exc:
        raise DataError(f"{where}: columns {columns!r}: {exc}") from None
    try:
        lines = p.read_text(encoding="utf-8-sig", errors="replace").split("\n")
    except OSError as exc:
        raise DataError(f"{where}: cannot read: {exc.strerror}") from None
    first_line = next((line for line in lines if line.strip()), None)
    if first_line is None:
        raise DataError(f"{where}: no ratings in file (it is empty)")
    if sep is None:
        sep = _detect_sep(first_line)
    records = _fields(lines, sep)
    index, labels, is_header = _resolve_columns(where, records[0][0], records[0][1], spec, header)
    if is_header:
        records = records[1:]
    if not records:
        raise DataError(f"{where}: no ratings in file (only a header)")
    need = max(index.values()) + 1
    lo, hi = scale if scale is not None else (-math.inf, math.inf)

    def bad(k: int, role: str, what: str) -> DataError:
        return DataError(f"{where}, line {records[k][0]}, column {labels[role]}: {what}")

    short = next((k for k, (_, f) in enumerate(records) if len(f) < need), None)
    if short is not None:
        f = records[short][1]
        raise bad(short, next(r for r, i in index.items() if i >= len(f)),
                  f"missing: the line has {len(f)} fields separated by {_sep_name(sep)}, {need} are needed")
    text = {role: [f[i] for _, f in records] for role, i in index.items()}
    for role, values in text.items():
        if "" in values:
            raise bad(values.index(""), role, "empty value")
    ratings = _numbers(text["rating"], np.float64, lambda k, t: bad(k, "rating", f"{t!r} is not a number"))
    checks = [
        (~np.isfinite(ratings), "{t!r} is not a finite number"),
        ((ratings < lo) | (ratings > hi), f"rating {{t}} is outside the scale {lo:g}..{hi:g} {scale_origin}"),
    ]
    if step is not None:
        with np.errstate(invalid="ignore"):  # inf and nan fail the finite check
            off_step = np.abs(ratings / step - np.rint(ratings / step)) > 1e-9
        of_scale = f" (the scale {lo:g}..{hi:g} {scale_origin} has steps of {step:g})" if scale else ""
        checks.append((off_step, f"rating {{t}} is not a multiple of {step:g}{of_scale}"))
    first = [(int(np.argmax(failed)), what) for failed, what in checks if failed.any()]
    if first:  # the earliest line that fails a check
        k, what = min(first, key=lambda hit: hit[0])
        raise bad(k, "rating", what.format(t=text["rating"][k]))
    stamps = np.zeros(len(records), np.int64)
    if "timestamp" in text:
        stamps = _numbers(text["timestamp"], np.int64, lambda k, t: bad(
            k, "timestamp", f"{t!r} is not a number (seconds since 1970)"))
    return RawRows(text["user"], text["item"], ratings.astype(np.float32), stamps)


def _numbers(values: list[str], dtype: type[np.float64] | type[np.int64],
             error: Callable[[int, str], DataError]) -> np.ndarray:
    """Parse ``values`` at once; on failure, ``error(index, text)`` of the first bad one."""
    try:
        return np.array(values, dtype=dtype)
    except (ValueError, OverflowError):
        pass
    out = np.empty(len(values), dtype)
    for k, t in enumerate(values):
        try:
            out[k] = float(t) if dtype is np.float64 else int(float(t))
        except (ValueError, OverflowError):
            raise error(k, t) from None
    return out


def _index(ids: Sequence[str], known: dict[str, int]) -> np.ndarray:
    out = np.empty(len(ids), np.int64)
    for n, raw in enumerate(ids):
        idx = known.get(raw)
        if idx is None:
            idx = known[raw] = len(known)
        out[n] = idx
    return out


def _build(
    name: str, train: RawRows, test: RawRows, scale: tuple[float, float], step: float | None = None,
    scale_inferred: bool = False,
) -> Dataset:
    """Dense ids over train then test (so test-only users/items get the highest indices)."""
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
    return _build(name, train, test, scale, step, scale_inferred)


def load_ratings_file(
    path: str | os.PathLike[str],
    *,
    columns: ColumnSpec | str | None = None,
    scale: tuple[float, float] | None = None,
    sep: str | None = None,
    header: bool | None = None,
    step: float | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    scale_origin: str = "given by scale=",
) -> Dataset:
    """Any ratings file (see :func:`read_ratings`), split per user (seeded, :func:`holdout_mask`).

    String ids are mapped to dense indices (the originals are kept in ``user_ids`` /
    ``item_ids``). Without ``scale`` the rating scale is inferred: the smallest and largest
    rating in the file, with a step of 1, 0.5 (half stars) or none
    (:func:`infer_step`); ``Dataset.summary()`` reports it.

    Example:
        >>> ds = load_ratings_file("ratings.csv")                               # doctest: +SKIP
        >>> ds = load_ratings_file("r.tsv", columns="user=1,item=2,rating=3",   # doctest: +SKIP
        ...                        scale=(1, 10))

    Raises:
        DataError: see :func:`read_ratings`; also when every rating is the same value and no
            ``scale`` is given (the scale cannot be inferred).
    """
    rows = read_ratings(path, sep=sep, header=header, columns=columns, scale=scale, step=step,
                        scale_origin=scale_origin)
    inferred = scale is None
    if scale is None:
        lo, hi = float(rows.ratings.min()), float(rows.ratings.max())
        if lo == hi:
            raise DataError(f"{path}: every rating is {lo:g}, so the rating scale cannot be inferred; "
                            "give it (--rating-scale MIN:MAX, or scale=)")
        scale = (lo, hi)
    step = step if step is not None else infer_step(rows.ratings)
    return holdout_split(Path(path).name, rows, (float(scale[0]), float(scale[1])), test_fraction, seed,
                         step=step, scale_inferred=inferred)


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
    """MovieLens 100K with an official split (u1..u5, ua, ub) or a seeded per-user hold-out of ``u.data``.

    Raises:
        DataError: unknown split or a missing/malformed file.
    """
    d = Path(data_dir)
    if split not in ML100K_SPLITS:
        raise DataError(f"unknown ml-100k split {split!r}; choose one of: {', '.join(ML100K_SPLITS)}")
    if split == "holdout":
        return holdout_split("ml-100k/holdout", read_ml100k_udata(d), (1.0, 5.0), seed=seed, step=1.0)
    _need_file(d / f"{split}.base", "MovieLens 100K", _ML100K_URL)
    train = _read_ml100k(d / f"{split}.base")
    test = _read_ml100k(d / f"{split}.test")
    return _build(f"ml-100k/{split}", train, test, (1.0, 5.0), 1.0)


def load_ml1m(data_dir: str | os.PathLike[str], seed: int = 0) -> Dataset:
    """MovieLens 1M (``ratings.dat``, ``UserID::MovieID::Rating::Timestamp``), per-user hold-out."""
    path = Path(data_dir) / "ratings.dat"
    _need_file(path, "MovieLens 1M", "https://grouplens.org/datasets/movielens/1m/")
    rows = read_ratings(path, sep="::", header=False, columns=_BY_NUMBER, scale=(1.0, 5.0), step=1.0,
                        scale_origin="of MovieLens 1M")
    return holdout_split("ml-1m", rows, (1.0, 5.0), seed=seed, step=1.0)


def load_ml_latest_small(data_dir: str | os.PathLike[str], seed: int = 0) -> Dataset:
    """MovieLens latest-small (``ratings.csv``: header ``userId,movieId,rating,timestamp``, half
    stars 0.5..5), per-user hold-out."""
    path = Path(data_dir) / "ratings.csv"
    _need_file(path, "MovieLens latest-small", "https://grouplens.org/datasets/movielens/latest/")
    rows = read_ratings(path, sep=",", header=True,
                        columns={"user": "userId", "item": "movieId", "rating": "rating",
                                 "timestamp": "timestamp"},
                        scale=(0.5, 5.0), step=0.5, scale_origin="of MovieLens latest-small")
    return holdout_split("ml-latest-small", rows, (0.5, 5.0), seed=seed, step=0.5)


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
        f"synthetic-{num_users}x{num_items}", full.subset(train), full.subset(~train), uid, iid,
        (1.0, 5.0), 1.0,
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "holdout",
    seed: int = 0,
    *,
    data_file: str | os.PathLike[str] | None = None,
    columns: ColumnSpec | str | None = None,
    rating_scale: tuple[float, float] | str | None = None,
    **synthetic_options: int,
) -> Dataset:
    """Load a data set by name (one of :data:`DATASETS`); ``file`` reads ``data_file`` with
    ``columns`` and ``rating_scale`` (``MIN:MAX`` or a pair; default inferred), see
    :func:`load_ratings_file`."""
    if name == "synthetic":
        return synthetic(seed=seed, **synthetic_options)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name != "ml-100k" and split != "holdout":
        raise DataError(f"dataset {name} has no official split {split!r}; use --split holdout")
    if name == "file":
        if data_file is None:
            raise DataError("dataset file needs --data-file PATH (the ratings file)")
        scale = parse_rating_scale(rating_scale) if isinstance(rating_scale, str) else rating_scale
        return load_ratings_file(data_file, columns=columns, scale=scale, seed=seed,
                                 scale_origin="given by --rating-scale")
    if data_dir is None:
        raise DataError(f"dataset {name} needs --data-dir (the folder holding its files)")
    if name == "ml-100k":
        return load_ml100k(data_dir, split, seed)
    if name == "ml-1m":
        return load_ml1m(data_dir, seed)
    return load_ml_latest_small(data_dir, seed)
