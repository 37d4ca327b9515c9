"""The torch model of one silo for DP-SGD: biased MF as Opacus needs it (:class:`SiloMF`).

Every parameter is an ``nn.Embedding`` and each rating's L2 term is an output
column, so Opacus sees one activation per layer and the regularization is part
of every per-sample gradient. Which parts train, and why all of them do with
DP-SGD, is in :mod:`securefedrec.privacy.dpsgd.silos`.
"""

from __future__ import annotations

import torch
from torch import nn

from securefedrec.models.mf import Hyper

__all__ = ["SiloLoss", "SiloMF"]


class SiloLoss(nn.Module):
    """Per-rating loss: squared error plus the rating's L2 term (columns of :class:`SiloMF` output).

    Has a ``reduction`` attribute (``sum`` / ``none``) so Opacus' ghost clipping can ask for
    per-sample losses.
    """

    def __init__(self, reduction: str = "sum") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of predictions ``out`` (B, 2) against ratings ``target`` (B,)."""
        per = (out[:, 0] - target) ** 2 + out[:, 1]
        return per if self.reduction == "none" else per.sum()


class SiloMF(nn.Module):
    """Biased MF of one silo: global item part + the silo's local user part, all nn.Embedding.

    ``forward`` takes a (B, 2) long tensor of (local user, item) and returns (B, 2): the
    predictions and each rating's L2 term (one embedding lookup each, so Opacus sees one
    activation per layer and the L2 term is part of every per-sample gradient).
    """

    def __init__(self, num_users: int, num_items: int, factors: int, hyper: Hyper,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.hyper = hyper
        self.item = nn.Embedding(num_items, factors)
        self.item_bias = nn.Embedding(num_items, 1)
        self.mean = nn.Embedding(1, 1)
        self.user = nn.Embedding(num_users, factors)
        self.user_bias = nn.Embedding(num_users, 1)
        with torch.no_grad():
            self.user.weight.copy_(torch.randn(num_users, factors, generator=generator) * hyper.init_std)
            self.user_bias.weight.zero_()
        # the intercept is touched by every rating: a step that suits the item rows would make it
        # oscillate, so silos leave it at the broadcast value (the biases absorb any offset)
        self.mean.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Columns: prediction mu + b_u + b_i + <p_u, q_i>, and the rating's L2 term."""
        u, i, h = x[:, 0], x[:, 1], self.hyper
        p, q, bu, bi = self.user(u), self.item(i), self.user_bias(u)[:, 0], self.item_bias(i)[:, 0]
        pred = self.mean(torch.zeros_like(u))[:, 0] + bu + bi + (p * q).sum(-1)
        reg = (h.lam_item * (q**2).sum(-1) + h.lam_bias * bi**2
               + h.lam_user * (p**2).sum(-1) + h.lam_bias * bu**2)
        return torch.stack([pred, reg], 1)

    def load_global(self, Q: torch.Tensor, b: torch.Tensor, mu: torch.Tensor) -> None:
        """Overwrite the global part with the broadcast values."""
        with torch.no_grad():
            self.item.weight.copy_(Q)
            self.item_bias.weight.copy_(b[:, None])
            self.mean.weight.fill_(float(mu))

    def global_vector(self) -> torch.Tensor:
        """The global part flattened in :class:`~securefedrec.models.mf.Layout` order."""
        return torch.cat([self.item.weight.detach().reshape(-1), self.item_bias.weight.detach()[:, 0],
                          self.mean.weight.detach().reshape(1)])
