"""Matrix factorization with the user's recent history as context (``--model fism``).

The leave-one-out test item is each user's *latest* interaction, and what a user does next
depends most on what it did just before (MovieLens users rate in sessions, by genre and
era). FISM (Kabbur et al., KDD'13) and SVD++ (Koren, KDD'08) represent a user by the items
it interacted with; here those items are weighted by recency, a factored Markov chain over
the last few steps (FPMC, Rendle et al. WWW'10, in a FISM form):

    s(u, i) = <p_u + c_u, q_i> + b_i,   c_u = sum_d a^(d-1) y_{h_d} / sum_d a^(d-1)

where ``h_1, ..., h_W`` are the ``W`` (:data:`WINDOW`) interactions before the scored one,
latest first, and ``a`` (:data:`DECAY`) the weight of one step further back. While training,
the history of a positive is the interactions before it in the user's time order (its
sampled negatives share it), so the model learns to predict each interaction from the ones
before it -- exactly what the test asks; at prediction the history is the user's latest
``W`` training interactions.

- Global: one row ``[q_i, b_i, y_i]`` of ``2k + 1`` values per item
  (:class:`~securefedrec.models.implicit.ItemLayout`): the item's target embedding, bias and
  context embedding. A client's delta touches only the rows of its positives and sampled
  negatives, as for implicit-mf.
- Local: the user's embedding ``p_u`` (k,), kept between rounds. The history itself is the
  user's own training data: it never leaves the device; only gradients through ``y`` of its
  items do, inside the delta that secure aggregation sums.

Measured on ML-100K leave-one-out (plaintext, seed 0, every client every round, local lr 30,
2 local epochs, weight decay 0, 30 rounds): HR@10 0.661 / NDCG@10 0.405, against 0.622 / 0.360
for implicit-mf in the same setting; a window of 3 with decay 0.5 gave 0.655 / 0.407, and 60
rounds peaked at 0.668 (round 40-50) before falling to 0.652.

Those settings (a window of 8 with decay 0.8 included) were chosen on the test item and
overfit: on ``--split loo``'s validation item HR@10 peaked at 0.742 (round 40) and fell. Chosen
on that validation item instead (its row of ``names.MODEL_DEFAULTS``): local lr 5, 2 local epochs,
weight decay 0, 60 rounds (validation HR@10 0.772 with W 8, a 0.8). Then, on the same
validation item (seed 0, round 60; HR@10 / NDCG@10), W and a: (16, 0.8) 0.768 / 0.489, (16,
0.9) 0.753 / 0.481, (8, 0.9) 0.769 / 0.487, (8, 0.8) 0.772 / 0.491, (4, 0.9) 0.774 / 0.495, (4,
0.8) 0.778 / 0.498, (4, 0.7) 0.781 / 0.499, kept (gains within the +-0.014 noise, but monotone
in W). On the papers' ``loo-full`` test, 5 seeds, every client every round: HR@10 0.740 +-
0.009 / NDCG@10 0.468 +- 0.005 (0.727 / 0.458 with W 8, a 0.8), against 0.751 / 0.467 for the
same model trained centrally (0.748 / 0.464). Fitting the user embedding alone first (1-4
user-only steps before each round's joint steps, as FCF does) peaked lower (0.752 at lr 10 and
1 step, 0.680 at lr 30 and 4 steps); weight decay 3e-4 or server decay 0.002 changed the
validation peak by less than its noise (+-0.014 at 943 users).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from securefedrec.models.base import LocalPart
from securefedrec.models.implicit import ImplicitHyper, ImplicitModel, ItemLayout, implicit_hyper

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = ["DECAY", "FISM", "WINDOW"]

WINDOW = 4
"""Interactions before the scored one that its user's context reads."""
DECAY = 0.7
"""Weight of one step further back in the history (geometric)."""


class FISM(ImplicitModel):
    """MF plus a recency-weighted context of the user's last :data:`WINDOW` interactions; ``factors`` k."""

    name: ClassVar[str] = "fism"

    def __init__(self, num_items: int, factors: int, hyper: ImplicitHyper, window: int = WINDOW,
                 decay: float = DECAY) -> None:
        super().__init__(ItemLayout(num_items, 2 * factors + 1), hyper)
        self.factors, self.window, self.decay = factors, window, decay

    @classmethod
    def from_config(cls, config: ExperimentConfig, num_items: int) -> FISM:
        """``config``'s factors, init_std, negatives, loss, weight_decay and local_optimizer."""
        return cls(num_items, config.model.factors, implicit_hyper(config))

    def init_global(self, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """Both item embeddings ``N(0, init_std^2)``, zero biases (``scale`` does not apply)."""
        m, k = self.layout.num_items, self.factors
        table = torch.randn(m, 2 * k + 1, generator=generator, dtype=torch.float64) * self.hyper.init_std
        table[:, k] = 0.0
        return table.reshape(-1)

    def user_shapes(self) -> dict[str, tuple[int, ...]]:
        """The user's embedding (k,)."""
        return {"user_factors": (self.factors,)}

    def context(self, history: torch.Tensor, valid: torch.Tensor) -> LocalPart:
        """``c_u`` (B, n, k): the recency-weighted mean of the history's context embeddings (0 if none)."""
        k = self.factors
        steps = torch.arange(self.window, device=history.device, dtype=history.dtype)
        weights = self.decay**steps * valid.to(history.dtype)  # (B, n, window)
        total = (weights[..., None] * history[..., k + 1 :]).sum(-2)
        return {"context": total / weights.sum(-1, keepdim=True).clamp(min=1e-12)}

    def logits(self, rows: torch.Tensor, shared: torch.Tensor, local: LocalPart) -> torch.Tensor:
        """``<p_u + c_u, q_i> + b_i`` on the items of ``rows`` (B, n, 2k + 1)."""
        k = self.factors
        user = local["user_factors"][:, None, :]
        if "context" in local:
            user = user + local["context"]
        out: torch.Tensor = (rows[..., :k] * user).sum(-1) + rows[..., k]
        return out
