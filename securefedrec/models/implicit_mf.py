"""Matrix factorization of implicit feedback (``--model implicit-mf``).

Score: ``s(u, i) = <p_u, q_i> + b_i``; trained on positives and sampled negatives with BCE
or BPR (:mod:`securefedrec.models.implicit`).

- Global: one row ``[q_i, b_i]`` of ``k + 1`` values per item
  (:class:`~securefedrec.models.implicit.ItemLayout`).
- Local: the user's embedding ``p_u`` (k,), kept between rounds on the device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from securefedrec.models.base import LocalPart
from securefedrec.models.implicit import ImplicitHyper, ImplicitModel, ItemLayout, implicit_hyper

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = ["ImplicitMF"]


class ImplicitMF(ImplicitModel):
    """MF of implicit feedback; ``factors`` k."""

    name: ClassVar[str] = "implicit-mf"

    def __init__(self, num_items: int, factors: int, hyper: ImplicitHyper) -> None:
        super().__init__(ItemLayout(num_items, factors + 1), hyper)
        self.factors = factors

    @classmethod
    def from_config(cls, config: ExperimentConfig, num_items: int) -> ImplicitMF:
        """``config``'s factors, init_std, negatives, loss, weight_decay and local_optimizer."""
        return cls(num_items, config.model.factors, implicit_hyper(config))

    def init_global(self, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """Item embeddings ``N(0, init_std^2)``, zero biases (``scale`` does not apply)."""
        m, k = self.layout.num_items, self.factors
        table = torch.zeros(m, k + 1, dtype=torch.float64)
        table[:, :k] = torch.randn(m, k, generator=generator, dtype=torch.float64) * self.hyper.init_std
        return table.reshape(-1)

    def user_shapes(self) -> dict[str, tuple[int, ...]]:
        """The user's embedding (k,)."""
        return {"user_factors": (self.factors,)}

    def logits(self, rows: torch.Tensor, shared: torch.Tensor, local: LocalPart) -> torch.Tensor:
        """``<p_u, q_i> + b_i`` on the items of ``rows`` (B, n, k + 1)."""
        k = self.factors
        out: torch.Tensor = (rows[..., :k] * local["user_factors"][:, None, :]).sum(-1) + rows[..., k]
        return out

