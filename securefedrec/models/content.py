"""A content model (``--model content``): items scored from their side information (explicit or implicit).

Score: ``s(u, i) = mu + b_u + <x_i, w> + <x_i W, p_u>``, where ``x_i`` is item ``i``'s feature row
(:mod:`securefedrec.data.features`: genres, title words, year; any item-feature file).
An item's embedding ``q_i = x_i W`` and bias ``b_i = <x_i, w>`` come from its features only,
so an item nobody has rated (a cold item) gets a score as soon as it has features.

- Global (shared, aggregated): the feature weights ``W`` (features x k), the feature biases
  ``w`` (features) and the intercept ``mu``, flattened in that order (:class:`ContentLayout`),
  ``F * (k + 1) + 1`` values; with ``--content-weighting item`` (explicit data) followed by the
  items' interaction shares ``f_i`` (items values: the secure counts of
  :class:`~securefedrec.models.popularity.Popularity`, the same dense delta ``Ind_c - n_c * f``),
  which weight the training loss (below).
- Local (never leaves the device): the user's preference vector ``p_u`` (k,) and bias ``b_u``.

Local training of a client, per local epoch (full batch over its users' training data), on its
local copy of ``(W, w, mu)``:

- explicit ratings: solve ``p_u, b_u`` in closed form (ridge, as biased MF,
  :func:`~securefedrec.models.mf.solve_users`), then one gradient step of size ``lr`` on the
  client's *mean* over its ratings of ``(r - s)^2 / 2 + lam_item |q_i|^2 / 2 + lam_bias b_i^2 / 2``
  (``--content-weighting rating``, the default: a mean, not MF's per-item sum: every rating of a
  client moves the same shared weights), or (``item``) its sum of those terms times the *item
  weight* ``a_i = 1 / (I * max(f_i, COUNT_FLOOR * fbar))`` (``I`` the items with ``f_i > 0``,
  ``fbar`` their mean share): averaged over the clients this is the mean over items of each
  item's mean loss, every item weighted once whatever its number of ratings. A rating-weighted
  loss fits the feature weights to the popular items, which are rated higher than the rarely
  rated ones; the cold items (no rating at all) are predicted from those same weights, and are
  rated like rare items, not like popular ones (ML-100K u1..u5: cold ratings average 2.3 stars,
  all ratings 3.5, items' means 3.1). Measured (u1..u5, 30 rounds, factors 8): cold RMSE 1.184
  against 1.262 by rating, but RMSE over all test ratings 1.077 against 0.986. Before any count
  has arrived (all ``f_i <= 0``) the loss is the client's mean over its ratings;
- implicit interactions: ``negatives`` sampled negatives per positive (from the round's
  generator, :func:`~securefedrec.models.implicit.sample_negatives`), the BCE or BPR loss of
  :func:`~securefedrec.models.implicit.implicit_loss` plus ``weight_decay`` on ``q_i`` and
  ``p_u`` per sample, averaged over the client's samples; one SGD step on the local copy and on
  ``p_u, b_u`` (kept between rounds, as the implicit models keep their user embeddings).

The delta is ``local copy - global``. Its coordinates are feature weights, so
:meth:`ContentModel.item_rows` refuses: an item has no coordinates of its own in this model
(the attacks that read item rows, e.g. the rated-items inference and item-row clipping, do not
apply and say so with a :class:`~securefedrec.errors.ConfigError`).

Where the features come from (:meth:`ContentModel.for_dataset`, which the simulator calls with
the data set it trains on): ``--item-features FILE`` or the data set's own
(:func:`securefedrec.data.features.item_features`), mapped onto the data set's item ids.
``from_config`` (no data set at hand) loads the data set ``config.data`` names for its item ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from securefedrec.data import Dataset, synthetic
from securefedrec.data.features import ItemFeatures, configured_item_ids, item_features
from securefedrec.errors import ConfigError
from securefedrec.models.base import LocalPart, Model, PaddedRatings, RatingsByUser, Trained
from securefedrec.models.implicit import (
    ImplicitHyper,
    client_chunks,
    implicit_hyper,
    implicit_loss,
    sample_negatives,
)
from securefedrec.models.mf import Layout, solve_users
from securefedrec.models.popularity import Popularity

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = ["CHUNK_POSITIVES", "COUNT_FLOOR", "ContentHyper", "ContentLayout", "ContentModel",
           "content_features"]

CHUNK_POSITIVES = 1 << 14
"""At most this many padded positives (users * longest history) per chunk: a chunk gathers the
weights of their features, ``(1 + negatives) * CHUNK_POSITIVES * nonzeros * k`` floats, where
``nonzeros`` is the most features one item has (about 10 on MovieLens)."""
COUNT_FLOOR = 0.02
"""Explicit data: an item's interaction share counts as at least this share of the average rated item's
(ML-100K: one client of 943 is about 0.017 of the average item's 59), so that no rating weighs more than
``1 / COUNT_FLOOR`` times an average item's while the secure counts settle."""


@dataclass(frozen=True, kw_only=True)
class ContentHyper:
    """Hyper-parameters of the content model (module docstring); ``implicit``: the sampled-negative ones."""

    factors: int = 32
    lam_user: float = 0.1
    lam_item: float = 0.15
    lam_bias: float = 0.05
    init_std: float = 0.01
    implicit: ImplicitHyper | None = None
    """``None``: explicit ratings; else the loss, negatives and weight decay of implicit training."""
    item_weighting: bool = False
    """Explicit ratings: weight the loss so that each item counts once (``--content-weighting item``)."""

    def __post_init__(self) -> None:
        if self.factors < 1:
            raise ConfigError(f"factors: must be >= 1, got {self.factors}")
        for name in ("lam_user", "lam_item", "lam_bias", "init_std"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.implicit is not None and self.implicit.optimizer != "sgd":
            raise ConfigError(f"--model content trains with --local-optimizer sgd only, "
                              f"not {self.implicit.optimizer!r}")
        if self.implicit is not None and self.item_weighting:
            raise ConfigError("--content-weighting item applies to explicit ratings, not implicit feedback")
        if self.implicit is not None and self.implicit.personalize:
            raise ConfigError("--personalize applies to --model ncf, not content")


class ContentLayout(Layout):
    """MF's layout (:class:`~securefedrec.models.mf.Layout`) with one row per feature instead of per
    item: ``W`` (features x k), ``w`` (features), ``mu``; ``split`` gives ``(W, w, mu)``."""

    @property
    def num_features(self) -> int:
        """The number of feature rows (MF's ``num_items``)."""
        return self.num_items


def content_features(config: ExperimentConfig, dataset: Dataset) -> ItemFeatures:
    """The item features ``config`` names, on the items of ``dataset`` (rows in its item order).

    Synthetic features (no ``--item-features``) describe the data set the ``--synthetic-*``
    flags and the seed generate; ``dataset`` must be that one.

    Raises:
        ConfigError: a synthetic ``dataset`` other than the configured one, or a data set
            without features and no ``--item-features``.
        DataError: an unreadable feature file, or one whose ids match none of ``dataset``'s.
    """
    data = config.data
    if data.dataset == "synthetic" and data.item_features is None:
        made = synthetic(data.synthetic_users, data.synthetic_items, data.synthetic_ratings_per_user,
                         seed=config.run.seed, split=data.split, feedback=data.feedback)
        same = (made.item_ids == dataset.item_ids and len(made.train) == len(dataset.train)
                and np.array_equal(made.train.items, dataset.train.items)
                and np.array_equal(made.train.users, dataset.train.users))
        if not same:
            raise ConfigError("--model content on synthetic data: the data set given is not the one "
                              "--synthetic-users/-items/-ratings-per-user and --seed generate, whose latent "
                              "factors the synthetic item features copy; pass that data set or "
                              "--item-features")
    return item_features(config, dataset.item_ids)


def _hyper(config: ExperimentConfig) -> ContentHyper:
    m = config.model
    implicit = implicit_hyper(config) if config.data.feedback == "implicit" else None
    return ContentHyper(factors=m.factors, lam_user=m.lam_user, lam_item=m.lam_item, lam_bias=m.lam_bias,
                        init_std=m.init_std, implicit=implicit,
                        item_weighting=implicit is None and m.content_weighting == "item")


class ContentModel(Model):
    """The content model behind the :class:`~securefedrec.models.base.Model` interface.

    Args:
        features: (items, F) feature rows in the data set's item order.
        hyper: hyper-parameters; ``hyper.implicit`` set for implicit feedback.
    """

    name: ClassVar[str] = "content"
    feedback: ClassVar[tuple[str, ...]] = ("explicit", "implicit")
    sparse_updates: ClassVar[bool] = False

    def __init__(self, features: np.ndarray, hyper: ContentHyper) -> None:
        if features.ndim != 2 or features.shape[1] < 1:
            raise ConfigError(f"content features must be an (items, features >= 1) matrix, "
                              f"got {features.shape}")
        if not np.isfinite(features).all():
            raise ConfigError("content features must be finite")
        self.features = np.ascontiguousarray(features, dtype=np.float32)
        self.hyper = hyper
        self.layout = ContentLayout(features.shape[1], hyper.factors)
        # the rows as (column, value) lists padded to the longest (value 0): training gathers only
        # the weights of an item's own features
        nonzero = self.features != 0
        width = max(1, int(nonzero.sum(1).max(initial=0)))
        self._cols = np.zeros((self.num_items, width), np.int64)
        self._vals = np.zeros((self.num_items, width), np.float32)
        rows, cols = np.nonzero(nonzero)
        slot = np.arange(len(rows)) - np.searchsorted(rows, rows)
        self._cols[rows, slot] = cols
        self._vals[rows, slot] = self.features[rows, cols]
        self.counts = (Popularity(self.num_items, explicit=False)
                       if hyper.implicit is None and hyper.item_weighting else None)
        """Explicit data: the items' secure interaction shares, the vector's last block (module docstring)."""
        self._on: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._sparse_on: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_config(cls, config: ExperimentConfig, num_items: int) -> ContentModel:
        """The features of the items of the data set ``config.data`` names (loaded here for its item
        ids; :meth:`for_dataset` when the data set is at hand).

        Raises:
            ConfigError: that data set has another number of items than ``num_items``.
        """
        ids = configured_item_ids(config)
        if len(ids) != num_items:
            raise ConfigError(f"--model content: the data set {config.data.dataset!r} has "
                              f"{len(ids)} items, the model is asked for {num_items}")
        return cls(item_features(config, ids).matrix, _hyper(config))

    @classmethod
    def for_dataset(cls, config: ExperimentConfig, dataset: Dataset) -> ContentModel:
        """``config``'s factors, regularization and, on implicit data, its sampled-negative training;
        the features of ``dataset``'s items (:func:`content_features`)."""
        return cls(content_features(config, dataset).matrix, _hyper(config))

    @property
    def num_items(self) -> int:
        """Items of the catalogue (rows of the feature matrix)."""
        return int(self.features.shape[0])

    def _x(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The feature matrix on ``device`` (cached per device and dtype)."""
        key = (device, dtype)
        if key not in self._on:
            self._on[key] = torch.as_tensor(self.features, device=device, dtype=dtype)
        return self._on[key]

    def _sparse(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Each item's feature columns and values (items, nonzeros), padded with value 0 (cached)."""
        key = (device, dtype)
        if key not in self._sparse_on:
            self._sparse_on[key] = (torch.as_tensor(self._cols, device=device),
                                    torch.as_tensor(self._vals, device=device, dtype=dtype))
        return self._sparse_on[key]

    def _embed(self, items: torch.Tensor, own: torch.Tensor, W: torch.Tensor, w: torch.Tensor,
               cols: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, n, k) and biases (B, n) of ``items`` (B, n) from each user's client copy
        ``W[own]``, ``w[own]`` ((clients, F, k), (clients, F)), reading only the items' own features."""
        c, v = cols[items], vals[items]  # (B, n, z)
        who = own[:, None, None].expand_as(c)
        q = (v[..., None] * W[who, c]).sum(-2)
        b = (v * w[who, c]).sum(-1)
        return q, b

    # ---- the global part
    @property
    def length(self) -> int:
        """L = features * (k + 1) + 1, + items on explicit data (the interaction shares)."""
        return self.layout.length + (self.num_items if self.counts is not None else 0)

    def shares(self, global_vec: torch.Tensor) -> torch.Tensor | None:
        """The items' interaction shares ``f_i`` (items,) (a view), or ``None`` on implicit data."""
        return None if self.counts is None else global_vec[..., self.layout.length :]

    def item_weights(self, global_vec: torch.Tensor) -> torch.Tensor | None:
        """Each item's loss weight ``a_i`` (items,) from the shares (module docstring); ``None`` on
        implicit data or while no share is positive (then each client's loss is its mean)."""
        f = self.shares(global_vec)
        if f is None or not bool((f > 0).any()):
            return None
        rated = f > 0
        floor = COUNT_FLOOR * f[rated].mean()
        weights: torch.Tensor = 1.0 / (int(rated.sum()) * f.clamp(min=floor))
        return weights

    @property
    def decay_span(self) -> int:
        """The feature weights and biases; never the intercept."""
        return self.layout.length - 1

    def init_global(self, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """Gaussian ``W`` (``init_std``), zero ``w``; ``mu`` mid-scale (explicit) or 0 (implicit)."""
        f, k = self.layout.num_features, self.layout.factors
        vec = torch.zeros(self.layout.length, dtype=torch.float64)
        vec[: f * k] = torch.randn(f * k, generator=generator, dtype=torch.float64) * self.hyper.init_std
        vec[self.layout.length - 1] = (scale[0] + scale[1]) / 2 if self.hyper.implicit is None else 0.0
        return torch.cat([vec, torch.zeros(self.length - self.layout.length, dtype=torch.float64)])

    def item_rows(self, vec: np.ndarray) -> np.ndarray:
        """Refused: the content model's coordinates are feature weights, shared by the items with the feature.

        Raises:
            ConfigError: always; what reads item rows (the rated-items attack, item-row clipping of
                the poisoning attack, item-level compression) does not apply to ``--model content``.
        """
        raise ConfigError("--model content has no per-item coordinates (its global vector is feature weights "
                          "shared by the items): attacks and compression that read item rows do not apply")

    # ---- the local part
    def local_shapes(self) -> dict[str, tuple[int, ...]]:
        """The user's preference vector (k,) and bias ()."""
        return {"user_factors": (self.layout.factors,), "user_bias": ()}

    def init_local(self, num_users: int, dtype: torch.dtype, generator: torch.Generator) -> LocalPart:
        """Explicit: zeros (re-solved every epoch). Implicit: ``p_u ~ N(0, init_std^2)``, ``b_u = 0``."""
        k = self.layout.factors
        if self.hyper.implicit is None:
            return super().init_local(num_users, dtype, generator)
        p = torch.randn(num_users, k, generator=generator, dtype=torch.float64) * self.hyper.init_std
        return {"user_factors": p.to(dtype), "user_bias": torch.zeros(num_users, dtype=dtype)}

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
        """Local training of clients (module docstring): dense (C, L) float64 deltas.

        ``local`` rows are in ``np.concatenate(client_users)`` order; the returned local part is
        in :attr:`Trained.users` order. Implicit: negatives drawn from ``generator`` chunk by chunk,
        epoch by epoch.
        """
        if epochs < 1:
            raise ConfigError(f"local epochs must be >= 1, got {epochs}")
        X = self._sparse(device, dtype)
        W0, w0, mu0 = self.layout.split(global_vec.to(device=device, dtype=dtype))
        weights = self.item_weights(global_vec.to(device=device, dtype=dtype))
        f, k = self.layout.num_features, self.layout.factors
        C = len(client_users)
        deltas = torch.zeros(C, self.length, device=device, dtype=torch.float64)
        flat = np.concatenate([np.asarray(u, np.int64) for u in client_users]) if C else np.zeros(0, np.int64)
        row_of = {int(u): n for n, u in enumerate(flat.tolist())}
        done_users: list[np.ndarray] = []
        done_local: dict[str, list[torch.Tensor]] = {"user_factors": [], "user_bias": []}
        for clients, users, owner in client_chunks(data, client_users, CHUNK_POSITIVES):
            batch = data.padded(users, device, dtype)
            own = torch.as_tensor(owner, device=device)
            n = len(clients)
            Wc = W0.expand(n, f, k).clone().requires_grad_()
            wc = w0.expand(n, f).clone().requires_grad_()
            muc = mu0.expand(n).clone().requires_grad_()
            rows = torch.as_tensor([row_of[int(u)] for u in users.tolist()], dtype=torch.long)
            if self.hyper.implicit is None:
                p, bu = self._explicit_epochs(X, batch, own, n, (Wc, wc, muc), epochs, lr, weights)
            else:
                kept = (local["user_factors"][rows].to(device=device, dtype=dtype),
                        local["user_bias"][rows].to(device=device, dtype=dtype))
                p, bu = self._implicit_epochs(X, batch, own, n, (Wc, wc, muc), kept, epochs, lr, generator)
            with torch.no_grad():
                pos = torch.as_tensor(clients, device=device)
                deltas[pos, : self.layout.length] = torch.cat(
                    [(Wc - W0).reshape(n, -1), wc - w0, (muc - mu0)[:, None]], dim=1).to(torch.float64)
            done_users.append(users)
            done_local["user_factors"].append(p.detach())
            done_local["user_bias"].append(bu.detach())
        users_out = np.concatenate(done_users) if done_users else np.zeros(0, np.int64)
        new_local = {name: (torch.cat(parts) if parts else local[name][:0].to(device))
                     for name, parts in done_local.items()}
        if self.counts is not None:  # the shares' delta, clients in client_users order
            f0 = global_vec[self.layout.length :]
            counted = self.counts.train(f0, data, client_users, epochs, lr, device, dtype,
                                        local={"user_offset": torch.zeros(len(flat), dtype=dtype)},
                                        generator=generator)
            deltas[:, self.layout.length :] = counted.deltas.to(device, torch.float64)
        return Trained(deltas, users_out, new_local)

    def _explicit_epochs(self, X: tuple[torch.Tensor, torch.Tensor], batch: PaddedRatings, own: torch.Tensor,
                         n: int, params: tuple[torch.Tensor, torch.Tensor, torch.Tensor], epochs: int,
                         lr: float, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit epochs of a chunk of ``n`` clients on their copies ``params`` (changed in place): the
        sum of the item-weighted losses, or (``weights`` None) the client's mean loss."""
        Wc, wc, muc = params
        h = self.hyper
        if weights is None:
            mask = batch.mask
            count = torch.zeros(n, device=mask.device, dtype=mask.dtype).index_add_(0, own, batch.counts)
        else:
            mask = batch.mask * weights.to(batch.mask.dtype)[batch.items]
            count = torch.ones(n, device=mask.device, dtype=mask.dtype)
        p = bu = torch.zeros(0)
        for _ in range(epochs):
            q, bi = self._embed(batch.items, own, Wc, wc, *X)
            mu = muc[own]
            with torch.no_grad():
                p, bu = solve_users(q.detach(), bi.detach(), mu.detach(), batch, h.lam_user)
            pred = mu[:, None] + bu[:, None] + bi + (q * p[:, None, :]).sum(-1)
            err = (batch.ratings - pred) * batch.mask
            per_user = 0.5 * ((err**2 * mask).sum(1) + h.lam_item * ((q**2).sum(-1) * mask).sum(1)
                              + h.lam_bias * ((bi**2) * mask).sum(1))
            self._step(per_user, own, count, [Wc, wc, muc], lr)
        return p, bu

    def _implicit_epochs(self, X: tuple[torch.Tensor, torch.Tensor], batch: PaddedRatings, own: torch.Tensor,
                         n: int,
                         params: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                         kept: tuple[torch.Tensor, torch.Tensor], epochs: int, lr: float,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Implicit epochs of a chunk of ``n`` clients: SGD on their copies and on the users' ``p_u, b_u``."""
        Wc, wc, muc = params
        hyper = self.hyper.implicit
        if hyper is None:  # pragma: no cover - train() dispatches on it
            raise ConfigError("implicit training needs the implicit hyper-parameters")
        p, bu = kept[0].clone().requires_grad_(), kept[1].clone().requires_grad_()
        n_pos = batch.items.shape[1]
        drawn = sample_negatives(batch, self.num_items, hyper.negatives, generator, epochs)
        for negs, neg_mask in drawn:
            q, bi = self._embed(torch.cat([batch.items, negs], dim=1), own, Wc, wc, *X)
            logits = muc[own][:, None] + bu[:, None] + bi + (q * p[:, None, :]).sum(-1)
            per_user = implicit_loss(logits, n_pos, batch.mask, neg_mask, hyper)
            weights = torch.cat([batch.mask, neg_mask], dim=1)
            if hyper.weight_decay:
                per_user = per_user + hyper.weight_decay * (((q**2).sum(-1) * weights).sum(1)
                                                            + (p**2).sum(1) * weights.sum(1))
            count = torch.zeros(n, device=q.device, dtype=q.dtype).index_add_(
                0, own, (neg_mask if hyper.loss == "bpr" else weights).sum(1))
            self._step(per_user, own, count, [Wc, wc, muc, p, bu], lr)
        return p, bu

    @staticmethod
    def _step(per_user: torch.Tensor, own: torch.Tensor, count: torch.Tensor, params: list[torch.Tensor],
              lr: float) -> None:
        """One SGD step of every client on the mean of its users' losses (each client its own gradient)."""
        per_client = torch.zeros_like(count).index_add_(0, own, per_user)
        loss = (per_client / count.clamp(min=1)).sum()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for param, grad in zip(params, grads, strict=True):
                param.sub_(grad, alpha=lr)

    # ---- prediction
    def fit_local(self, global_vec: torch.Tensor, batch: PaddedRatings, local: LocalPart) -> LocalPart:
        """Explicit: ``p_u, b_u`` in closed form on the user's training ratings; implicit: the kept ones."""
        if self.hyper.implicit is not None:
            return local
        q, b, mu = self._items(global_vec)
        p, bu = solve_users(q, b, mu, batch, self.hyper.lam_user)
        return {"user_factors": p, "user_bias": bu}

    def _items(self, global_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every item's embedding ``X W`` (items, k) and bias ``X w`` (items,), and ``mu``."""
        W, w, mu = self.layout.split(global_vec)
        X = self._x(global_vec.device, global_vec.dtype)
        return X @ W, X @ w, mu

    def scores(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``mu + b_u + b_i + <p_u, q_i>`` on every item (B, items) or on ``items`` (B, n)."""
        q, b, mu = self._items(global_vec)
        p, bu = local["user_factors"], local["user_bias"]
        if items is None:
            every: torch.Tensor = mu + b[None, :] + bu[:, None] + p @ q.T
            return every
        some: torch.Tensor = mu + b[items] + bu[:, None] + (q[items] * p[:, None, :]).sum(-1)
        return some

    def predict(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor, scale: tuple[float, float]
    ) -> torch.Tensor:
        """Explicit: the score clamped to ``scale``. Implicit: its sigmoid, in [0, 1]."""
        s = self.scores(global_vec, local, items)
        return torch.sigmoid(s) if self.hyper.implicit is not None else s.clamp(scale[0], scale[1])
