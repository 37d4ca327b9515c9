"""Biased matrix factorization, split into a global part and a local part.

Prediction: ``r_hat(u, i) = mu + b_u + b_i + <p_u, q_i>``, clamped to the rating scale.

- Global (shared, aggregated): item factors ``Q`` (items x k), item biases
  ``b`` (items) and the global mean ``mu``, flattened into one vector of length
  ``items * (k + 1) + 1`` in that order (:class:`Layout`).
- Local (never leaves the device): the user's factor ``p_u`` and bias ``b_u``.

One local epoch of a user (the math that :mod:`securefedrec.client` batches):

1. solve ``p_u, b_u`` in closed form (ridge regression on the user's ratings
   with the current item parameters; L2 weight ``lam_user * n_u``, the ALS-WR
   weighting of Zhou et al. 2008);
2. take the gradient of the user's squared error plus frequency-weighted L2
   (``lam_item * ||q_i||^2`` and ``lam_bias * b_i^2`` per rating) with respect
   to the item parameters it rated, and the *mean* residual for ``mu`` (so a
   heavy rater does not own the intercept).

Everything here is pure tensor math on padded batches; no state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Hyper", "Layout", "PaddedRatings", "item_gradients", "predict", "solve_users"]


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
