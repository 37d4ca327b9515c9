"""Item side information (features) for content models: MovieLens files, any item-feature file, synthetic.

Readers return *raw features*: item id (as the ratings files spell it) -> ``{feature name: value}``.
Feature names carry a group prefix (``genre:Drama``, ``word:star``, ``year:1990-1994``); a name
without ``:`` is in the group ``""``. :func:`feature_matrix` turns raw features into the
``(items, features)`` matrix of a data set, rows in the data set's dense item order
(:attr:`~securefedrec.data.Dataset.item_ids`):

- the vocabulary is every feature that at least ``min_count`` (default 2) of the data set's items
  carry (a feature of one item only says nothing about any other item, cold ones included),
  sorted by name;
- each row is L2-normalised within each group, then divided by the square root of the number of
  groups the item has, so every item with a feature has a row of norm 1 and each group weighs
  the same (a title of six words does not outweigh its two genres);
- an item that has no feature (absent from the file, or only rare features) has a zero row.

Sources (:func:`item_features`, which ``--model content`` calls):

- ml-100k ``u.item`` (:func:`read_ml100k_items`): the 19 genre flags, title words, and the
  release year in five-year buckets;
- ml-latest-small ``movies.csv`` (:func:`read_movies_csv`): genres, title words, year bucket
  (from the title's ``(1995)``);
- any item-feature file (``--item-features FILE``, :func:`read_item_feature_file`): CSV lines
  ``item_id,feature[,value]`` (value default 1; an optional header line
  ``item_id,feature[,value]``; ``#`` starts a comment line); ``item_id`` as in the ratings file;
- synthetic data (:func:`synthetic_features`): noisy copies of the generator's own item latent
  factors and item bias, so a content model has something real to learn.

Errors are :class:`~securefedrec.errors.DataError` naming the file, line and field.
This module needs no torch.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from securefedrec.data.loader import load_dataset
from securefedrec.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = [
    "ML100K_GENRES",
    "ItemFeatures",
    "RawFeatures",
    "configured_item_ids",
    "feature_matrix",
    "item_features",
    "read_item_feature_file",
    "read_ml100k_items",
    "read_movies_csv",
    "synthetic_features",
    "title_words",
    "year_bucket",
]

RawFeatures = dict[str, dict[str, float]]
"""Item id -> feature name -> value."""

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
"""The genre flags of ml-100k's ``u.item``, in column order (``u.genre``)."""

_STOP_WORDS = frozenset({"the", "a", "an", "of", "and", "in", "on", "to", "for", "la", "le", "les", "de",
                         "il", "el", "l", "s", "t", "ii", "iii", "2", "3"})
_WORD = re.compile(r"[a-z0-9]+")
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


@dataclass(frozen=True)
class ItemFeatures:
    """The feature matrix of a data set's items.

    Attributes:
        names: the F feature names (the matrix's columns).
        matrix: (items, F) float32, rows in the data set's dense item order (see module docstring).
        source: where the features came from (a file, or ``synthetic``).
    """

    names: tuple[str, ...]
    matrix: np.ndarray
    source: str

    @property
    def num_features(self) -> int:
        """F."""
        return len(self.names)

    def without_features(self) -> np.ndarray:
        """The item indices whose row is zero (no known feature)."""
        return np.flatnonzero(~self.matrix.any(axis=1))


def title_words(title: str) -> list[str]:
    """Lower-cased words of a movie title, its ``(year)`` and common stop words left out."""
    title = _YEAR_IN_TITLE.sub("", title)
    return [w for w in _WORD.findall(title.lower()) if w not in _STOP_WORDS]


def year_bucket(year: int) -> str:
    """``year:1990-1994``: five-year buckets (ml-100k's films are mostly from the 1990s)."""
    start = year - year % 5
    return f"year:{start}-{start + 4}"


def _title_features(title: str) -> dict[str, float]:
    out = {f"word:{w}": 1.0 for w in title_words(title)}
    match = _YEAR_IN_TITLE.search(title.strip())
    if match:
        out[year_bucket(int(match.group(1)))] = 1.0
    return out


def read_ml100k_items(path: str | os.PathLike[str]) -> RawFeatures:
    """ml-100k's ``u.item``: ``id|title|release date|video date|url|19 genre flags`` (latin-1).

    Features: ``genre:NAME`` for each set flag, ``word:W`` for each title word, and
    ``year:Y0-Y4`` from the release date (``01-Jan-1995``; the title's year when the date is empty).

    Raises:
        DataError: naming the file, the line and the field (a missing file; a line without 24
            fields; a flag not 0/1; an unreadable date).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (ml-100k's item list u.item)")
    out: RawFeatures = {}
    with path.open(encoding="latin-1") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.rstrip("\r\n").split("|")
            where = f"{path}, line {line_no}"
            if len(fields) != 5 + len(ML100K_GENRES):
                raise DataError(f"{where}: expected {5 + len(ML100K_GENRES)} '|'-separated fields "
                                f"(id|title|release date|video date|url|19 genre flags), got {len(fields)}")
            item, title, date = fields[0].strip(), fields[1], fields[2].strip()
            if not item:
                raise DataError(f"{where}, field 1 (movie id): empty")
            if item in out:
                raise DataError(f"{where}, field 1 (movie id): movie {item} is listed twice")
            feats = _title_features(title)
            if date:
                try:
                    year = int(date.rsplit("-", 1)[-1])
                except ValueError:
                    raise DataError(f"{where}, field 3 (release date): expected DD-Mon-YYYY, "
                                    f"got {date!r}") from None
                feats = {k: v for k, v in feats.items() if not k.startswith("year:")}
                feats[year_bucket(year)] = 1.0
            for col, genre in enumerate(ML100K_GENRES):
                flag = fields[5 + col].strip()
                if flag not in ("0", "1"):
                    raise DataError(f"{where}, field {6 + col} (genre {genre}): expected 0 or 1, "
                                    f"got {flag!r}")
                if flag == "1":
                    feats[f"genre:{genre}"] = 1.0
            out[item] = feats
    return out


def read_movies_csv(path: str | os.PathLike[str]) -> RawFeatures:
    """MovieLens latest's ``movies.csv``: header ``movieId,title,genres``, genres ``|``-separated.

    Features: ``genre:NAME`` (none for ``(no genres listed)``), ``word:W`` for each title word,
    ``year:Y0-Y4`` from the title's ``(1995)``.

    Raises:
        DataError: naming the file, the line and the column at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (MovieLens movies.csv)")
    out: RawFeatures = {}
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:3]] != ["movieId", "title", "genres"]:
            raise DataError(f"{path}, line 1: expected the header movieId,title,genres, got {header!r}")
        for row in rows:
            where = f"{path}, line {rows.line_num}"
            if not row:
                continue
            if len(row) != 3:
                raise DataError(f"{where}: expected 3 columns (movieId,title,genres), got {len(row)}")
            item, title, genres = row[0].strip(), row[1], row[2].strip()
            if not item:
                raise DataError(f"{where}, column movieId: empty")
            if item in out:
                raise DataError(f"{where}, column movieId: movie {item} is listed twice")
            feats = _title_features(title)
            if genres and genres != "(no genres listed)":
                feats.update({f"genre:{g.strip()}": 1.0 for g in genres.split("|") if g.strip()})
            out[item] = feats
    return out


def read_item_feature_file(path: str | os.PathLike[str]) -> RawFeatures:
    """A generic item-feature file (``--item-features``): CSV lines ``item_id,feature[,value]``.

    - ``item_id``: the item as the ratings file names it; ``feature``: any non-empty name (a
      ``group:`` prefix groups features for the normalisation of :func:`feature_matrix`);
      ``value``: a finite number, 1 when left out (so a file of ``item,tag`` lines is a tag list);
    - an optional first line ``item_id,feature`` or ``item_id,feature,value`` is a header;
      empty lines and lines starting with ``#`` are skipped;
    - an (item, feature) pair may appear once.

    Raises:
        DataError: naming the file, the line and the column at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such item-feature file (--item-features)")
    out: RawFeatures = {}
    first_seen: dict[tuple[str, str], int] = {}
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        for row in rows:
            line_no = rows.line_num
            where = f"{path}, line {line_no}"
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            cells = [c.strip() for c in row]
            if line_no == 1 and cells[:2] == ["item_id", "feature"]:
                continue
            if len(cells) not in (2, 3):
                raise DataError(f"{where}: expected item_id,feature[,value] (2 or 3 columns), "
                                f"got {len(cells)}")
            item, feature = cells[0], cells[1]
            if not item:
                raise DataError(f"{where}, column 1 (item_id): empty")
            if not feature:
                raise DataError(f"{where}, column 2 (feature): empty")
            value = 1.0
            if len(cells) == 3:
                try:
                    value = float(cells[2])
                except ValueError:
                    raise DataError(f"{where}, column 3 (value): not a number: {cells[2]!r}") from None
                if not math.isfinite(value):
                    raise DataError(f"{where}, column 3 (value): must be finite, got {cells[2]!r}")
            if (item, feature) in first_seen:
                raise DataError(f"{where}: item {item!r} has feature {feature!r} twice "
                                f"(first on line {first_seen[item, feature]})")
            first_seen[item, feature] = line_no
            out.setdefault(item, {})[feature] = value
    if not out:
        raise DataError(f"{path}: no item_id,feature[,value] line")
    return out


def _group(name: str) -> str:
    return name.split(":", 1)[0] if ":" in name else ""


def feature_matrix(raw: Mapping[str, Mapping[str, float]], item_ids: Sequence[str], *, min_count: int = 2,
                   source: str = "") -> ItemFeatures:
    """The (items, F) matrix of ``raw`` on the items ``item_ids`` (a data set's dense order).

    See the module docstring for the vocabulary (``min_count``) and the normalisation.

    Raises:
        DataError: no feature is carried by ``min_count`` of the data set's items, or no item of
            the data set is in ``raw`` (the ids do not match: the wrong file?).
    """
    if min_count < 1:
        raise DataError(f"min_count must be >= 1, got {min_count}")
    known = [raw.get(str(i), {}) for i in item_ids]
    if item_ids and not any(known):
        raise DataError(f"{source or 'item features'}: none of the data set's {len(item_ids)} item ids "
                        f"(e.g. {item_ids[0]!r}) has a feature; do the ids match the ratings file's?")
    counts: dict[str, int] = {}
    for feats in known:
        for name, value in feats.items():
            if value != 0:
                counts[name] = counts.get(name, 0) + 1
    names = tuple(sorted(name for name, n in counts.items() if n >= min_count))
    if not names:
        raise DataError(f"{source or 'item features'}: no feature is shared by {min_count} or more of the "
                        f"data set's items")
    column = {name: j for j, name in enumerate(names)}
    groups = sorted({_group(n) for n in names})
    group_of = np.array([groups.index(_group(n)) for n in names])
    matrix = np.zeros((len(item_ids), len(names)), np.float64)
    for row, feats in enumerate(known):
        for name, value in feats.items():
            j = column.get(name)
            if j is not None:
                matrix[row, j] = value
    # per group: L2-normalise, then 1/sqrt(number of groups present) so the row has norm 1
    norms = np.zeros((len(item_ids), len(groups)))
    for g in range(len(groups)):
        norms[:, g] = np.linalg.norm(matrix[:, group_of == g], axis=1)
    present = (norms > 0).sum(1)
    scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
    scale /= np.sqrt(np.maximum(present, 1))[:, None]
    matrix *= scale[:, group_of]
    return ItemFeatures(names, matrix.astype(np.float32), source)


def synthetic_features(num_users: int = 1000, num_items: int = 500, ratings_per_user: int = 40,
                       rank: int = 8, seed: int = 0, noise: float = 0.5) -> ItemFeatures:
    """Features of :func:`~securefedrec.data.synthetic` items: noisy copies of their latent factors.

    Replays the generator's draws (same arguments, same seed) up to the item factors ``V`` and
    biases ``b_i``, then, from its own stream ``[seed, 2]``, adds Gaussian noise of ``noise``
    times each column's standard deviation: columns ``latent:0..rank-1`` (``V``) and
    ``bias:item`` (``b_i``). Items are in the generator's order (its ids are ``0..n-1``).
    """
    rng = np.random.default_rng(seed)
    rng.permutation(num_items)  # the popularity order
    rng.lognormal(np.log(ratings_per_user), 0.6, num_users)
    rng.normal(0, 1 / np.sqrt(rank), (num_users, rank))
    V = rng.normal(0, 1 / np.sqrt(rank), (num_items, rank)) * 1.2
    rng.normal(0, 0.4, num_users)
    bi = rng.normal(0, 0.5, num_items)
    clean = np.concatenate([V * math.sqrt(rank), bi[:, None] * 2.0], axis=1)
    own = np.random.default_rng([seed, 2])
    noisy = clean + own.normal(0, noise, clean.shape)
    names = (*(f"latent:{d}" for d in range(rank)), "bias:item")
    return ItemFeatures(names, noisy.astype(np.float32), "synthetic")


def configured_item_ids(config: ExperimentConfig) -> tuple[str, ...]:
    """The dense item ids of the data set ``config.data`` names (loaded, unless synthetic: ``0..n-1``)."""
    data = config.data
    if data.dataset == "synthetic":
        return tuple(str(i) for i in range(data.synthetic_items))
    return load_dataset(data.dataset, data.data_dir, data.split, config.run.seed, data_file=data.data_file,
                        columns=data.columns, rating_scale=data.rating_scale, feedback=data.feedback).item_ids


def item_features(config: ExperimentConfig, item_ids: Sequence[str]) -> ItemFeatures:
    """The features ``config`` names for the data set whose dense item ids are ``item_ids``.

    ``--item-features FILE`` if given; else the data set's own: ml-100k ``u.item``,
    ml-latest-small ``movies.csv`` (in ``--data-dir``), synthetic items' latent factors (of the data
    set the ``--synthetic-*`` flags and ``--seed`` generate: the caller checks it is that one).

    Raises:
        ConfigError: a data set without side information and no ``--item-features``.
        DataError: an unreadable or malformed file (file, line, field named).
    """
    data = config.data
    if data.item_features is not None:
        path = Path(data.item_features)
        return feature_matrix(read_item_feature_file(path), item_ids, source=str(path))
    if data.dataset == "synthetic":
        feats = synthetic_features(data.synthetic_users, data.synthetic_items,
                                   data.synthetic_ratings_per_user, seed=config.run.seed)
        if len(item_ids) != feats.matrix.shape[0]:
            raise ConfigError(f"synthetic features of {feats.matrix.shape[0]} items for a data set of "
                              f"{len(item_ids)} items: the data set is not the one --synthetic-* describes")
        return feats
    readers = {"ml-100k": ("u.item", read_ml100k_items), "ml-latest-small": ("movies.csv", read_movies_csv)}
    if data.dataset not in readers or data.data_dir is None:
        raise ConfigError(f"--dataset {data.dataset} has no item features this package reads; give "
                          f"--item-features FILE (CSV lines item_id,feature[,value])")
    name, read = readers[data.dataset]
    path = Path(data.data_dir) / name
    return feature_matrix(read(path), item_ids, source=str(path))
