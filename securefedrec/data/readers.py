"""Reading ratings files: CSV, TSV, ``::`` or whitespace; header detection, columns by name or number,
rating scale given or inferred. Every error names the file, the line and the column at fault.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from securefedrec.data.dataset import LOO_SPLITS, SPLITS, Dataset, RawRows, holdout_split, loo_split
from securefedrec.errors import DataError

__all__ = [
    "HEADER_NAMES",
    "ROLES",
    "ColumnSpec",
    "check_columns",
    "infer_step",
    "load_ratings_file",
    "parse_columns",
    "parse_rating_scale",
    "read_ratings",
]

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
    split: str = "holdout",
) -> Dataset:
    """Any ratings file (see :func:`read_ratings`), split per user: ``split`` ``holdout`` (seeded,
    :func:`holdout_mask`) or ``loo`` (leave-one-out by timestamp, :func:`loo_masks`; without a
    timestamp column the file's line order is the time order).

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
    if split not in SPLITS:
        raise DataError(f"{path}: a ratings file has no split {split!r}; choose one of: {', '.join(SPLITS)}")
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
    if split in LOO_SPLITS:
        return loo_split(Path(path).name, rows, (float(scale[0]), float(scale[1])), step=step,
                         scale_inferred=inferred, split=split)
    return holdout_split(Path(path).name, rows, (float(scale[0]), float(scale[1])), test_fraction, seed,
                         step=step, scale_inferred=inferred)
