"""Biased matrix factorization, split into a global part and a local part.

Prediction: ``r_hat(u, i) = mu + b_u + b_i + <p_u, q_i>``, clamped to the rating scale.

- Global (shared, aggregated): item factors ``Q`` (items x k), item biases
  ``b`` (items) and the global mean ``mu``, flattened into one vector of length
  ``items * (k + 1) + 1`` in that order (:class:`Layout`).
- Local (never leaves the device): the user's factor ``p_u`` and bias ``b_u``.

One local epoch of a user:

1. solve ``p_u, b_u`` in closed form (ridge regression on the user's ratings
   with the current item parameters; L2 weight ``lam_user * n_u``, the ALS-WR
   weighting of Zhou et al. 2008);
2. take the gradient of the user's squared error plus frequency-weighted L2
   (``lam_item * ||q_i||^2`` and ``lam_bias * b_i^2`` per rating) with respect
   to the item parameters it rated, and the *mean* residual for ``mu`` (so a
   heavy rater does not own the intercept).

A client's local training (:func:`local_train`, batched over many clients), per
epoch (full batch over the client's ratings): solve every user's factor and bias,
then take one gradient step of size ``lr`` on the client's *local copy* of the
global vector; the delta is ``local copy - global`` after ``epochs`` epochs.
:func:`local_train_sparse` is one such epoch as sparse deltas. :class:`MF` is
this model behind the :class:`~securefedrec.models.base.Model` interface.
Everything here is pure tensor math on padded batches; no state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from protocols.base import SparseVector
from securefedrec.errors import ConfigError
from securefedrec.models.base import CHUNK, LocalPart, Model, PaddedRatings, RatingsByUser, Trained

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = [
    "MF",
    "Hyper",
    "Layout",
    "item_gradients",
    "local_train",
    "local_train_sparse",
    "predict",
    "solve_users",
]


@dataclass(frozen=True, kw_only=True)
class Hyper:
    """Model hyper-parameters (tuned on ml-100k u1..u5; see benchmarks/utility.py)."""

    factors: int = 32
    lam_user: float = 0.1
    lam_item: float = 0.15
    lam_bias: float = 0.05
    init_std: float = 0.01


@dataclass(frozen=True)
class Layout:
    """Where each global parameter lives in the flat global vector."""

    num_items: int
    factors: int

    @property
    def length(self) -> int:
        """L = items * (k + 1) + 1."""
        return self.num_items * (self.factors + 1) + 1

    def split(self, vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views ``(Q, b, mu)`` of a global vector (or of a batch ``(B, L)`` of them)."""
        m, k = self.num_items, self.factors
        lead = vec.shape[:-1]
        return (
            vec[..., : m * k].reshape(*lead, m, k),
            vec[..., m * k : m * (k + 1)],
            vec[..., m * (k + 1)],
        )

    def init(self, mu: float, std: float, generator: torch.Generator) -> torch.Tensor:
        """A fresh global vector: small Gaussian item factors, zero biases, ``mu``."""
        vec = torch.zeros(self.length, dtype=torch.float64)
        m, k = self.num_items, self.factors
        vec[: m * k] = torch.randn(m * k, generator=generator, dtype=torch.float64) * std
        vec[-1] = mu
        return vec


def solve_users(
    Q: torch.Tensor, b: torch.Tensor, mu: torch.Tensor, data: PaddedRatings, lam_user: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge solution of each user's factor and bias (B, k), (B,).

    ``Q``, ``b`` are either global (items, k), (items,) or per-user gathered
    (B, n_max, k), (B, n_max); ``mu`` is a scalar or (B,).
    """
    q, bi = _gather(Q, b, data)
    mu_b = mu if mu.dim() == 0 else mu[:, None]
    mask = data.mask
    k = q.shape[-1]
    X = torch.cat([q, torch.ones_like(q[..., :1])], dim=-1) * mask[..., None]
    y = (data.ratings - mu_b - bi) * mask
    A = X.transpose(1, 2) @ X
    reg = (lam_user * data.counts.clamp(min=1)).to(A.dtype)
    A = A + reg[:, None, None] * torch.eye(k + 1, dtype=A.dtype, device=A.device)
    w = torch.linalg.solve(A, (X.transpose(1, 2) @ y[..., None]))[..., 0]
    return w[:, :k], w[:, k]


def _gather(Q: torch.Tensor, b: torch.Tensor, data: PaddedRatings) -> tuple[torch.Tensor, torch.Tensor]:
    if Q.dim() == 3 and Q.shape[1] == data.items.shape[1] and b.dim() == 2:
        return Q, b
    return Q[data.items], b[data.items]


def item_gradients(
    q: torch.Tensor,
    bi: torch.Tensor,
    mu: torch.Tensor,
    p: torch.Tensor,
    bu: torch.Tensor,
    data: PaddedRatings,
    hyper: Hyper,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-rating gradients w.r.t. the rated items' factors and biases, and per-user mu gradient.

    ``q`` (B, n_max, k) and ``bi`` (B, n_max) are the item parameters gathered at
    ``data.items``. Returns ``(dq, db, dmu)`` of shapes (B, n_max, k), (B, n_max), (B,),
    zero at padding.
    """
    mask = data.mask
    mu_b = mu if mu.dim() == 0 else mu[:, None]
    pred = mu_b + bi + bu[:, None] + (q * p[:, None, :]).sum(-1)
    err = (data.ratings - pred) * mask
    dq = (-err[..., None] * p[:, None, :] + hyper.lam_item * q) * mask[..., None]
    db = (-err + hyper.lam_bias * bi) * mask
    dmu = -err.sum(1) / data.counts.clamp(min=1)
    return dq, db, dmu


def predict(
    Q: torch.Tensor,
    b: torch.Tensor,
    mu: torch.Tensor,
    p: torch.Tensor,
    bu: torch.Tensor,
    items: torch.Tensor,
    scale: tuple[float, float],
) -> torch.Tensor:
    """Clamped predictions for users (B, k)/(B,) on ``items`` (B, n) -> (B, n)."""
    raw = mu + b[items] + bu[:, None] + (Q[items] * p[:, None, :]).sum(-1)
    return raw.clamp(scale[0], scale[1])


Batch = tuple[slice, PaddedRatings, torch.Tensor]


def _batches(
    data: RatingsByUser, client_users: Sequence[np.ndarray], device: torch.device, dtype: torch.dtype
) -> tuple[np.ndarray, list[Batch]]:
    """Users of all clients, sorted by history length (little padding), in padded chunks with owners."""
    C = len(client_users)
    users = np.concatenate([np.asarray(u, np.int64) for u in client_users]) if C else np.zeros(0, np.int64)
    owner = np.concatenate([np.full(len(u), c) for c, u in enumerate(client_users)]) if C else users
    order = np.argsort(data.counts[users], kind="stable")
    users, owner = users[order], owner[order]
    batches = [
        (slice(s, s + CHUNK), data.padded(users[s : s + CHUNK], device, dtype),
         torch.as_tensor(owner[s : s + CHUNK], device=device))
        for s in range(0, len(users), CHUNK)
    ]
    return users, batches


def local_train(
    global_vec: torch.Tensor,
    data: RatingsByUser,
    client_users: Sequence[np.ndarray],
    layout: Layout,
    hyper: Hyper,
    epochs: int,
    lr: float,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]:
    """Train clients (each a set of users) from ``global_vec``; the math of every client.

    Returns ``(deltas (C, L) float64, users, p (n_users, k), b_u (n_users,))`` where
    ``users`` lists the users in the order of the returned factors.
    """
    if epochs < 1:
        raise ConfigError(f"local epochs must be >= 1, got {epochs}")
    g = global_vec.to(device=device, dtype=dtype)
    Q, b, mu = layout.split(g)
    m, k = layout.num_items, layout.factors
    C = len(client_users)
    users, batches = _batches(data, client_users, device, dtype)
    # all clients' deltas in one flat float64 buffer: row c is client c's vector of length L
    L = layout.length
    delta = torch.zeros(C * L, device=device, dtype=torch.float64)
    p_all = torch.zeros(len(users), k, device=device, dtype=dtype)
    bu_all = torch.zeros(len(users), device=device, dtype=dtype)
    ar_k = torch.arange(k, device=device)
    for epoch in range(epochs):
        # with one epoch the gradient step goes straight into the delta
        grad, scale = (delta, -lr) if epochs == 1 else (torch.zeros_like(delta), 1.0)
        for sl, batch, own in batches:
            row = own[:, None] * L
            idx_q = ((row + batch.items * k)[..., None] + ar_k).reshape(-1)
            idx_b = (row + m * k + batch.items).reshape(-1)
            idx_mu = own * L + (L - 1)
            q, bi, mu_u = Q[batch.items], b[batch.items], mu.expand(len(own))
            if epoch > 0:  # the client's local copy = global + its delta so far
                q = q + delta[idx_q].view(q.shape).to(dtype)
                bi = bi + delta[idx_b].view(bi.shape).to(dtype)
                mu_u = mu_u + delta[idx_mu].to(dtype)
            p, bu = solve_users(q, bi, mu_u, batch, hyper.lam_user)
            p_all[sl], bu_all[sl] = p, bu
            d_q, d_b, d_mu = item_gradients(q, bi, mu_u, p, bu, batch, hyper)
            grad.index_add_(0, idx_q, d_q.reshape(-1).to(torch.float64), alpha=scale)
            grad.index_add_(0, idx_b, d_b.reshape(-1).to(torch.float64), alpha=scale)
            grad.index_add_(0, idx_mu, d_mu.to(torch.float64), alpha=scale)
        if epochs > 1:
            delta.add_(grad, alpha=-lr)
    deltas = delta.view(C, L)
    return deltas, users, p_all, bu_all


def local_train_sparse(
    global_vec: torch.Tensor,
    data: RatingsByUser,
    users_of_clients: Sequence[int],
    layout: Layout,
    hyper: Hyper,
    lr: float,
    clip: float,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[list[SparseVector], np.ndarray, torch.Tensor, torch.Tensor]:
    """One local epoch of one-user clients, as sparse deltas (the same math as :func:`local_train`).

    A user's delta is non-zero only on the items it rated (and ``mu``); each
    coordinate is clipped to ``[-clip, clip]``. Returns the deltas in client
    order, then ``users, p, b_u`` as :func:`local_train` does.
    """
    Q, b, mu = layout.split(global_vec.to(device=device, dtype=dtype))
    m, k, L = layout.num_items, layout.factors, layout.length
    users, batches = _batches(data, [np.array([u]) for u in users_of_clients], device, dtype)
    out: list[SparseVector | None] = [None] * len(users)
    p_all = torch.zeros(len(users), k, device=device, dtype=dtype)
    bu_all = torch.zeros(len(users), device=device, dtype=dtype)
    ar_k = np.arange(k)
    for sl, batch, own in batches:
        q, bi, mu_u = Q[batch.items], b[batch.items], mu.expand(len(own))
        p, bu = solve_users(q, bi, mu_u, batch, hyper.lam_user)
        p_all[sl], bu_all[sl] = p, bu
        d_q, d_b, d_mu = item_gradients(q, bi, mu_u, p, bu, batch, hyper)
        # per real rating its k factor coordinates and its bias coordinate (rows stay in user order)
        real = batch.mask > 0
        it = batch.items[real].cpu().numpy()
        idx = np.empty((len(it), k + 1), np.int64)
        idx[:, :k] = it[:, None] * k + ar_k
        idx[:, k] = m * k + it
        val = torch.cat([d_q[real], d_b[real][:, None]], dim=1).to(torch.float64)
        flat_idx = idx.reshape(-1)
        flat_val = val.mul_(-lr).clamp_(-clip, clip).cpu().numpy().reshape(-1)
        dmu = (-lr * d_mu.to(torch.float64)).clamp_(-clip, clip).cpu().numpy()
        ends = np.cumsum(batch.counts.cpu().numpy().astype(np.int64)) * (k + 1)
        for row, client in enumerate(own.cpu().numpy().tolist()):
            lo, hi = (ends[row - 1] if row else 0), ends[row]
            out[client] = SparseVector(np.append(flat_idx[lo:hi], L - 1),
                                       np.append(flat_val[lo:hi], dmu[row]), L)
    return [v for v in out if v is not None], users, p_all, bu_all


class MF(Model):
    """Biased MF behind the :class:`~securefedrec.models.base.Model` interface.

    Global part: ``(Q, b, mu)`` in :class:`Layout` order; local part: ``user_factors``
    (k,) and ``user_bias`` () per user.
    """

    name: ClassVar[str] = "mf"
    feedback: ClassVar[tuple[str, ...]] = ("explicit",)
    sparse_updates: ClassVar[bool] = True

    def __init__(self, layout: Layout, hyper: Hyper) -> None:
        if layout.factors != hyper.factors:
            raise ConfigError(f"layout has {layout.factors} factors, hyper-parameters {hyper.factors}")
        self.layout = layout
        self.hyper = hyper

    @classmethod
    def from_config(cls, config: ExperimentConfig, num_items: int) -> MF:
        """MF with ``config``'s factors and regularization."""
        m = config.model
        hyper = Hyper(factors=m.factors, lam_user=m.lam_user, lam_item=m.lam_item, lam_bias=m.lam_bias,
                      init_std=m.init_std)
        return cls(Layout(num_items, config.model.factors), hyper)

    @property
    def length(self) -> int:
        """L = items * (k + 1) + 1."""
        return self.layout.length

    @property
    def decay_span(self) -> int:
        """The item part; never the intercept."""
        return self.layout.length - 1

    def init_global(self, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """Small Gaussian item factors, zero biases; the intercept at the middle of the public scale."""
        lo, hi = scale
        return self.layout.init((lo + hi) / 2, self.hyper.init_std, generator)

    def item_rows(self, vec: np.ndarray) -> np.ndarray:
        """Item ``i``'s row: its factors ``q_i`` and its bias ``b_i`` (items, k + 1)."""
        m, k = self.layout.num_items, self.layout.factors
        return np.concatenate([vec[: m * k].reshape(m, k), vec[m * k : m * (k + 1), None]], axis=1)

    def local_shapes(self) -> dict[str, tuple[int, ...]]:
        """A user's factor (k,) and bias ()."""
        return {"user_factors": (self.layout.factors,), "user_bias": ()}

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
        """:func:`local_train` (the user's factor and bias are re-solved: ``local`` is not read)."""
        deltas, users, p, bu = local_train(global_vec, data, client_users, self.layout, self.hyper,
                                           epochs, lr, device, dtype)
        return Trained(deltas, users, {"user_factors": p, "user_bias": bu})

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
        """:func:`local_train_sparse`."""
        deltas, users, p, bu = local_train_sparse(global_vec, data, users_of_clients, self.layout,
                                                  self.hyper, lr, clip, device, dtype)
        return Trained(deltas, users, {"user_factors": p, "user_bias": bu})

    def fit_local(self, global_vec: torch.Tensor, batch: PaddedRatings, local: LocalPart) -> LocalPart:
        """Each user's factor and bias in closed form (:func:`solve_users`); ``local`` is not read."""
        Q, b, mu = self.layout.split(global_vec)
        p, bu = solve_users(Q, b, mu, batch, self.hyper.lam_user)
        return {"user_factors": p, "user_bias": bu}

    def predict(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor, scale: tuple[float, float]
    ) -> torch.Tensor:
        """:func:`predict`: ``mu + b_u + b_i + <p_u, q_i>``, clamped to the scale."""
        Q, b, mu = self.layout.split(global_vec)
        return predict(Q, b, mu, local["user_factors"], local["user_bias"], items, scale)

    def scores(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unclamped ``mu + b_u + b_i + <p_u, q_i>``, for every item or on ``items`` (B, n)."""
        Q, b, mu = self.layout.split(global_vec)
        p, bu = local["user_factors"], local["user_bias"]
        if items is None:
            every: torch.Tensor = mu + b[None, :] + bu[:, None] + p @ Q.T
            return every
        some: torch.Tensor = mu + b[items] + bu[:, None] + (Q[items] * p[:, None, :]).sum(-1)
        return some
