"""Loading a data set by name: :data:`DATASETS` and :func:`load_dataset` (what ``--dataset`` picks)."""

from __future__ import annotations

import os
from collections.abc import Callable

from securefedrec.data.dataset import FEEDBACK_KINDS, SPLITS, Dataset, binarize
from securefedrec.data.movielens import load_ml1m, load_ml100k, load_ml_latest_small
from securefedrec.data.readers import ColumnSpec, load_ratings_file, parse_rating_scale
from securefedrec.data.synthetic_data import synthetic
from securefedrec.errors import DataError

__all__ = ["DATASETS", "FOLDER_LOADERS", "load_dataset"]

FOLDER_LOADERS: dict[str, Callable[[str | os.PathLike[str], str, int], Dataset]] = {
    "ml-100k": load_ml100k,
    "ml-1m": lambda data_dir, split, seed: load_ml1m(data_dir, seed, split),
    "ml-latest-small": lambda data_dir, split, seed: load_ml_latest_small(data_dir, seed, split),
}
"""Registry: data sets read from a folder (``--data-dir``) -> loader ``(folder, split, seed)``. Only
ml-100k has official splits; every data set takes ``holdout``, ``loo`` and ``loo-full``
(:data:`~securefedrec.data.dataset.SPLITS`)."""

DATASETS = ("synthetic", *FOLDER_LOADERS, "file")
"""Every ``--dataset`` name. ``file``: any ratings file (:func:`~securefedrec.data.readers.load_ratings_file`;
CLI ``--dataset file --data-file PATH``)."""


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "holdout",
    seed: int = 0,
    *,
    data_file: str | os.PathLike[str] | None = None,
    columns: ColumnSpec | str | None = None,
    rating_scale: tuple[float, float] | str | None = None,
    feedback: str = "explicit",
    **synthetic_options: int,
) -> Dataset:
    """Load a data set by name (one of :data:`DATASETS`); ``file`` reads ``data_file`` with
    ``columns`` and ``rating_scale`` (``MIN:MAX`` or a pair; default inferred), see
    :func:`load_ratings_file`. ``feedback="implicit"`` turns every rating into an interaction
    (:func:`~securefedrec.data.dataset.binarize`; synthetic data is generated implicit).
    """
    if feedback not in FEEDBACK_KINDS:
        raise DataError(f"unknown feedback {feedback!r}; choose one of: {', '.join(FEEDBACK_KINDS)}")
    if name == "synthetic":
        return synthetic(seed=seed, split=split, feedback=feedback, **synthetic_options)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name != "ml-100k" and split not in SPLITS:
        raise DataError(f"dataset {name} has no official split {split!r}; use --split "
                        f"{' or '.join(SPLITS)}")
    if name == "file":
        if data_file is None:
            raise DataError("dataset file needs --data-file PATH (the ratings file)")
        scale = parse_rating_scale(rating_scale) if isinstance(rating_scale, str) else rating_scale
        data = load_ratings_file(data_file, columns=columns, scale=scale, seed=seed,
                                 scale_origin="given by --rating-scale", split=split)
    elif data_dir is None:
        raise DataError(f"dataset {name} needs --data-dir (the folder holding its files)")
    else:
        data = FOLDER_LOADERS[name](data_dir, split, seed)
    return binarize(data) if feedback == "implicit" else data
