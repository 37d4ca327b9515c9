"""Clients: one user's device (or one silo of users) training locally.

:class:`Client` is one client; :class:`ClientPool` trains many sampled
clients at once with the same math (:func:`local_train`), which is what the
simulator uses. User factors and biases stay inside the client objects; only
the delta of the global vector leaves.

Local training, per epoch (full batch over the client's ratings):
solve every user's factor and bias in closed form, then take one gradient
step of size ``lr`` on the client's *local copy* of the global vector. The
returned delta is ``local copy - global`` after ``epochs`` epochs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from protocols.base import SparseVector
from securefedrec.data import Ratings
from securefedrec.errors import ConfigError
from securefedrec.model import Hyper, Layout, PaddedRatings, item_gradients, solve_users

__all__ = ["Client", "ClientPool", "RatingsByUser", "local_train", "local_train_sparse", "resolve_device"]

CHUNK = 256
"""Users per padded batch: bounds memory at CHUNK * longest history * (k + 1) floats."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be one of auto, cpu, cuda; got {name!r}")
    return torch.device(name)


class RatingsByUser:
    """Ratings grouped per user (CSR), with padded batches for the tensor math."""

    def __init__(self, ratings: Ratings, num_users: int) -> None:
        order = np.argsort(ratings.users, kind="stable")
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


class ClientPool:
    """All clients of a simulation; trains any sampled subset in one batched call.

    Args:
        train: training ratings (dense user/item ids).
        num_users, num_items: id ranges.
        layout, hyper: model layout and hyper-parameters.
        groups: client -> its users; ``None`` = one client per user (cross-device).
        device: torch device for the math.
    """

    def __init__(
        self,
        train: Ratings,
        num_users: int,
        layout: Layout,
        hyper: Hyper,
        *,
        groups: Sequence[np.ndarray] | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.data = RatingsByUser(train, num_users)
        self.layout = layout
        self.hyper = hyper
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.groups = [np.asarray(g, np.int64) for g in groups] if groups is not None else [
            np.array([u]) for u in range(num_users)
        ]
        # local state: it stays "on the device" of the client that owns the user
        self.user_factors = torch.zeros(num_users, layout.factors, dtype=dtype)
        self.user_bias = torch.zeros(num_users, dtype=dtype)

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.groups)

    def train(
        self, clients: Sequence[int], global_vec: torch.Tensor, epochs: int, lr: float
    ) -> torch.Tensor:
        """Deltas (len(clients), L) of the sampled clients, in the order given."""
        deltas, users, p, bu = local_train(
            global_vec, self.data, [self.groups[c] for c in clients], self.layout, self.hyper,
            epochs, lr, self.device, self.dtype,
        )
        idx = torch.as_tensor(users)
        self.user_factors[idx] = p.cpu()
        self.user_bias[idx] = bu.cpu()
        return deltas

    def train_sparse(
        self, clients: Sequence[int], global_vec: torch.Tensor, lr: float, clip: float
    ) -> list[SparseVector]:
        """One local epoch of one-user clients as clipped sparse deltas, in the order given."""
        users = [int(self.groups[c][0]) for c in clients]
        if any(len(self.groups[c]) != 1 for c in clients):
            raise ConfigError("sparse updates need one user per client (no --silos)")
        deltas, order, p, bu = local_train_sparse(
            global_vec, self.data, users, self.layout, self.hyper, lr, clip, self.device, self.dtype
        )
        idx = torch.as_tensor(order)
        self.user_factors[idx] = p.cpu()
        self.user_bias[idx] = bu.cpu()
        return deltas

    def client(self, cid: int) -> Client:
        """A stand-alone :class:`Client` for client ``cid`` (same data, same math)."""
        return Client(self.data, self.groups[cid], self.layout, self.hyper, self.device, self.dtype)


class Client:
    """One client: a user's device, or a silo holding several users."""

    def __init__(
        self,
        data: RatingsByUser,
        users: np.ndarray,
        layout: Layout,
        hyper: Hyper,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.data = data
        self.users = np.asarray(users, np.int64)
        self.layout = layout
        self.hyper = hyper
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.user_factors = torch.zeros(len(self.users), layout.factors, dtype=dtype)
        self.user_bias = torch.zeros(len(self.users), dtype=dtype)

    def train(self, global_vec: torch.Tensor, epochs: int, lr: float) -> torch.Tensor:
        """Train locally; return the delta of the global vector (L,). User factors stay here."""
        deltas, users, p, bu = local_train(
            global_vec, self.data, [self.users], self.layout, self.hyper, epochs, lr, self.device, self.dtype
        )
        pos = {u: n for n, u in enumerate(self.users.tolist())}
        idx = torch.as_tensor([pos[u] for u in users.tolist()], dtype=torch.long)
        self.user_factors[idx] = p.cpu()
        self.user_bias[idx] = bu.cpu()
        return deltas[0]
