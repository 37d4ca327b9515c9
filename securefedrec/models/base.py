"""What a model is to the rest of securefedrec: a global part, a local part, batched local training.

A model (docs/ARCHITECTURE.md "How to add a model") splits its parameters in two:

- the *global part*: one flat float64 vector of :attr:`Model.length` values, the
  only thing that leaves a client (as a delta). Protocols, DP, compression, the
  server optimizers and the attacks see nothing else;
- the *local part*: per-user tensors (:meth:`Model.init_local`) that never leave
  the device, e.g. a user's factor and bias, a user embedding, a personal head.
  The pool keeps them between rounds and hands them back to :meth:`Model.train`
  and :meth:`Model.fit_local`.

A model declares the feedback it learns from (:attr:`Model.feedback`: explicit
ratings or implicit interactions), whether it can send sparse deltas
(:attr:`Model.sparse_updates`), and where each item's coordinates sit in the
global vector (:meth:`Model.item_rows`, read by the attacks and by item-level
model compression). Randomness a model needs while training (negative sampling,
dropout) comes from the ``generator`` the caller passes, seeded per round, so a
resumed run replays the uninterrupted one.

The model does the math of many clients at once on padded batches of their
users' ratings (:class:`RatingsByUser`, :class:`PaddedRatings`);
:class:`~securefedrec.models.pool.ClientPool` keeps the local parts and drives
any registered model (:mod:`securefedrec.models.registry`) through this interface.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import numpy as np
import torch

from protocols.base import SparseVector
from securefedrec.data import Dataset, Ratings
from securefedrec.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = ["CHUNK", "LocalPart", "Model", "PaddedRatings", "RatingsByUser", "Trained"]

CHUNK = 256
"""Users per padded batch: bounds memory at CHUNK * longest history * (k + 1) floats."""

LocalPart = dict[str, torch.Tensor]
"""A model's local part for some users: name -> tensor whose first axis is the users."""


@dataclass(frozen=True)
class PaddedRatings:
    """Ratings of B users, padded to the longest: ``items``, ``ratings``, ``mask`` are (B, n_max)."""

    items: torch.Tensor
    ratings: torch.Tensor
    mask: torch.Tensor

    @property
    def counts(self) -> torch.Tensor:
        """Number of ratings per user (B,)."""
        return self.mask.sum(1)


class RatingsByUser:
    """Ratings grouped per user (CSR), with padded batches for the tensor math.

    A user's ratings are in time order (by timestamp, ties in the order of ``ratings``), so
    column ``j`` of a padded row is the user's ``j``-th interaction: sequence-aware models
    (:mod:`securefedrec.models.fism`) read the recency of an interaction from its column.
    """

    def __init__(self, ratings: Ratings, num_users: int) -> None:
        order = np.lexsort((ratings.timestamps, ratings.users))  # stable: ties keep their order
        self.items = ratings.items[order]
        self.values = ratings.ratings[order].astype(np.float32)
        self.counts = np.bincount(ratings.users, minlength=num_users)
        self.indptr = np.concatenate([[0], np.cumsum(self.counts)])

    def user_items(self, user: int) -> np.ndarray:
        """Items rated by ``user``."""
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def padded(self, users: np.ndarray, device: torch.device, dtype: torch.dtype) -> PaddedRatings:
        """Padded (len(users), max count) tensors of the users' ratings."""
        counts = self.counts[users]
        width = max(1, int(counts.max()) if len(counts) else 1)
        items = np.zeros((len(users), width), np.int64)
        values = np.zeros((len(users), width), np.float32)
        mask = np.arange(width)[None, :] < counts[:, None]
        starts = self.indptr[users]
        rows, cols = np.nonzero(mask)
        src = starts[rows] + cols
        items[rows, cols] = self.items[src]
        values[rows, cols] = self.values[src]
        return PaddedRatings(
            torch.as_tensor(items, device=device),
            torch.as_tensor(values, device=device, dtype=dtype),
            torch.as_tensor(mask, device=device, dtype=dtype),
        )


Deltas = TypeVar("Deltas", torch.Tensor, list[SparseVector])


@dataclass(frozen=True)
class Trained(Generic[Deltas]):
    """What one batched local training returns.

    Attributes:
        deltas: one delta of the global vector per client: dense, a (C, L) float64 tensor on
            the training device; sparse, one :class:`~protocols.base.SparseVector` per client.
        users: the trained users, in the order of the rows of ``local``.
        local: the users' new local part.
    """

    deltas: Deltas
    users: np.ndarray
    local: LocalPart


class Model(abc.ABC):
    """A recommendation model: its global part, its local part, and the math of both.

    Subclasses register a ``name`` in :data:`securefedrec.models.registry.MODELS`.
    """

    name: ClassVar[str]
    feedback: ClassVar[tuple[str, ...]] = ("explicit",)
    """The kinds of data it learns from: ``explicit`` ratings and/or ``implicit`` interactions."""
    sparse_updates: ClassVar[bool] = False
    """Whether :meth:`train_sparse` is implemented (a delta non-zero only on the user's items)."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: ExperimentConfig, num_items: int) -> Model:
        """The model an experiment configures, for a catalogue of ``num_items`` items."""

    @classmethod
    def for_dataset(cls, config: ExperimentConfig, dataset: Dataset) -> Model:
        """The model an experiment configures, for the data set it trains on (default:
        :meth:`from_config` with its number of items). A model that reads the items' side
        information (``content``) overrides it to map the features onto ``dataset.item_ids``."""
        return cls.from_config(config, dataset.num_items)

    # ---- the global part
    @property
    @abc.abstractmethod
    def length(self) -> int:
        """Length L of the global vector."""

    @property
    @abc.abstractmethod
    def decay_span(self) -> int:
        """The server's weight decay shrinks ``x[:decay_span]`` (:mod:`securefedrec.server.optimizers`)."""

    @abc.abstractmethod
    def init_global(self, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """A fresh global vector (L,) float64; ``scale`` is the public rating scale."""

    @abc.abstractmethod
    def item_rows(self, vec: np.ndarray) -> np.ndarray:
        """The coordinates of each item in a global vector (or a delta): a view (items, w).

        An item that a client's data never touches has a zero row in its delta, for every
        model: the rated-items attack and item-level model compression rely on it.
        """

    # ---- the local part
    @abc.abstractmethod
    def local_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of one user's entry of each local tensor."""

    def init_local(self, num_users: int, dtype: torch.dtype, generator: torch.Generator) -> LocalPart:
        """The local part of ``num_users`` users before any training (default: zeros)."""
        shapes = self.local_shapes()
        return {name: torch.zeros(num_users, *shape, dtype=dtype) for name, shape in shapes.items()}

    @abc.abstractmethod
    def train(
        self,
        global_vec: torch.Tensor,
        data: RatingsByUser,
        client_users: Sequence[np.ndarray],
        epochs: int,
        lr: float,
        device: torch.device,
        dtype: torch.dtype,
        *,
        local: LocalPart,
        generator: torch.Generator,
    ) -> Trained[torch.Tensor]:
        """Local training of clients (each a set of users) from ``global_vec``: dense (C, L) deltas.

        ``local`` is the users' local part as their clients kept it from their last round, rows
        in the order of ``np.concatenate(client_users)`` (on the CPU); the returned
        :attr:`Trained.local` holds their new rows in :attr:`Trained.users` order.
        ``generator`` (CPU) draws whatever the training samples.
        """

    def train_sparse(
        self,
        global_vec: torch.Tensor,
        data: RatingsByUser,
        users_of_clients: Sequence[int],
        lr: float,
        clip: float,
        device: torch.device,
        dtype: torch.dtype,
        *,
        local: LocalPart,
        generator: torch.Generator,
    ) -> Trained[list[SparseVector]]:
        """One local epoch of one-user clients: sparse deltas clipped to ``[-clip, clip]``, client order.

        Only models with :attr:`sparse_updates` implement it.
        """
        raise ConfigError(f"model {self.name!r} has no sparse updates")

    # ---- local prediction (evaluation, on the device)
    @abc.abstractmethod
    def fit_local(self, global_vec: torch.Tensor, batch: PaddedRatings, local: LocalPart) -> LocalPart:
        """The local part each user of ``batch`` predicts with, for this global vector.

        ``local`` holds the users' kept local part (rows in ``batch`` order, on the device);
        a model may re-fit it on the training ratings of ``batch`` (MF solves it in closed
        form) or use it as it is.
        """

    @abc.abstractmethod
    def predict(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor, scale: tuple[float, float]
    ) -> torch.Tensor:
        """Predicted ratings (B, n) of the users of ``local`` on ``items`` (B, n), within ``scale``."""

    @abc.abstractmethod
    def scores(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Ranking scores of the users of ``local``: (B, items) for every item, or (B, n) on ``items``."""
