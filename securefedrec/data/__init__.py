"""Ratings data: MovieLens loaders, generic files, splits and a synthetic generator.

Every loader returns a :class:`Dataset` whose users and items are dense
indices ``0..n-1`` with the original ids kept in ``user_ids`` / ``item_ids``.
Users and items that appear only in the test part are kept (they get an index
too): a test user never seen in training is a client with no training
ratings, a test item never seen in training keeps its initial factors; both
are predicted from the biases, and :meth:`Dataset.summary` counts them.

Splits: ml-100k's official folds, a seeded per-user hold-out, and leave-one-out by time
(``loo``: each user's latest interaction is the test item, the second latest the validation
item; ``loo-full``: only the test item held out, as in the papers' tables;
:func:`~securefedrec.data.dataset.loo_masks`). ``feedback="implicit"`` turns every
rating into an interaction of value 1 (:func:`~securefedrec.data.dataset.binarize`).
:func:`~securefedrec.data.negatives.sample_negatives` draws the evaluation negatives.

Layout: :mod:`~securefedrec.data.dataset` (the data model, the hold-out and leave-one-out splits),
:mod:`~securefedrec.data.readers` (any ratings file), :mod:`~securefedrec.data.movielens`,
:mod:`~securefedrec.data.synthetic_data`, :mod:`~securefedrec.data.loader` (by name). A new data set
read from a folder is a loader module plus one entry in
:data:`~securefedrec.data.loader.FOLDER_LOADERS`.
"""

from securefedrec.data.dataset import (
    FEEDBACK_KINDS,
    LOO_SPLITS,
    SPLITS,
    Dataset,
    Ratings,
    RawRows,
    binarize,
    holdout_mask,
    holdout_split,
    loo_masks,
    loo_split,
)
from securefedrec.data.loader import DATASETS, load_dataset
from securefedrec.data.movielens import (
    ML100K_MD5,
    ML100K_SIZE,
    ML100K_SPLITS,
    load_ml1m,
    load_ml100k,
    load_ml_latest_small,
    read_ml100k_udata,
)
from securefedrec.data.negatives import sample_negatives
from securefedrec.data.readers import (
    HEADER_NAMES,
    ROLES,
    ColumnSpec,
    check_columns,
    infer_step,
    load_ratings_file,
    parse_columns,
    parse_rating_scale,
    read_ratings,
)
from securefedrec.data.synthetic_data import synthetic

__all__ = [
    "DATASETS",
    "FEEDBACK_KINDS",
    "HEADER_NAMES",
    "ML100K_MD5",
    "LOO_SPLITS",
    "ML100K_SIZE",
    "ML100K_SPLITS",
    "ROLES",
    "SPLITS",
    "ColumnSpec",
    "Dataset",
    "RawRows",
    "Ratings",
    "binarize",
    "check_columns",
    "holdout_mask",
    "holdout_split",
    "infer_step",
    "load_dataset",
    "load_ml1m",
    "load_ml100k",
    "load_ml_latest_small",
    "load_ratings_file",
    "loo_masks",
    "loo_split",
    "parse_columns",
    "parse_rating_scale",
    "read_ml100k_udata",
    "read_ratings",
    "sample_negatives",
    "synthetic",
]
