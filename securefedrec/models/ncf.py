"""NeuMF (``--model ncf``): a GMF and an MLP tower fused by one output layer (He et al., WWW'17).

For user ``u`` and item ``i`` with GMF embeddings ``p_u, q_i`` (k each) and MLP embeddings
``x_u, y_i`` (``layers[0] / 2`` each)::

    h_0 = [x_u, y_i];  h_j = relu(h_{j-1} W_j + c_j)  (widths layers[1], ..., layers[-1])
    s(u, i) = [p_u * q_i, h_last] . w_out + b_out

trained on positives and sampled negatives with BCE or BPR (:mod:`securefedrec.models.implicit`).

- Global: one row ``[q_i, y_i]`` per item, then the MLP's weights and biases and the output
  layer (the shared dense part of :class:`~securefedrec.models.implicit.ItemLayout`), in the
  order of :meth:`NCF.shapes`.
- Local: the user's ``gmf`` (k,) and ``mlp`` (layers[0] / 2,) embeddings, kept between rounds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch

from securefedrec.errors import ConfigError
from securefedrec.models.base import LocalPart
from securefedrec.models.implicit import ImplicitHyper, ImplicitModel, ItemLayout, implicit_hyper
from securefedrec.models.names import parse_layers

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = ["NCF"]


class NCF(ImplicitModel):
    """NeuMF with ``factors`` GMF factors and MLP ``layers`` (the first = user + item MLP embeddings)."""

    name: ClassVar[str] = "ncf"

    def __init__(self, num_items: int, factors: int, layers: tuple[int, ...], hyper: ImplicitHyper) -> None:
        if len(layers) < 2 or min(layers) < 1 or layers[0] % 2 or factors < 1:
            raise ConfigError(f"ncf needs factors >= 1 and at least two positive MLP widths, the first "
                              f"even; got factors {factors}, layers {layers}")
        self.factors, self.layers = factors, tuple(layers)
        self.mlp_dim = layers[0] // 2
        dense = sum(math.prod(shape) for shape in self.shapes().values())
        super().__init__(ItemLayout(num_items, factors + self.mlp_dim, dense), hyper)

    @classmethod
    def from_config(cls, config: ExperimentConfig, num_items: int) -> NCF:
        """``config``'s factors, mlp_layers, init_std, negatives, loss, weight_decay and local_optimizer."""
        try:
            layers = parse_layers(config.model.mlp_layers)
        except ValueError as exc:
            raise ConfigError(f"mlp_layers: {exc}") from None
        return cls(num_items, config.model.factors, layers, implicit_hyper(config))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shared dense parameters in their order in the global vector: name -> shape."""
        out: dict[str, tuple[int, ...]] = {}
        for j, (fan_in, fan_out) in enumerate(zip(self.layers[:-1], self.layers[1:], strict=True)):
            out[f"w{j}"], out[f"c{j}"] = (fan_in, fan_out), (fan_out,)
        out["w_out"], out["b_out"] = (self.factors + self.layers[-1],), (1,)
        return out

    def _unpack(self, shared: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views (B, *shape) of the shared dense values (B, P)."""
        out, at = {}, 0
        for name, shape in self.shapes().items():
            size = math.prod(shape)
            out[name] = shared[:, at : at + size].reshape(shared.shape[0], *shape)
            at += size
        return out

    def init_global(self, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """Embeddings ``N(0, init_std^2)``; MLP weights Glorot-uniform, biases 0; output LeCun-uniform."""
        m, w = self.layout.num_items, self.layout.width
        parts = [torch.randn(m * w, generator=generator, dtype=torch.float64) * self.hyper.init_std]
        for name, shape in self.shapes().items():
            if name.startswith("c") or name == "b_out":
                parts.append(torch.zeros(math.prod(shape), dtype=torch.float64))
                continue
            bound = (math.sqrt(6.0 / (shape[0] + shape[1])) if len(shape) == 2
                     else math.sqrt(3.0 / shape[0]))
            parts.append((torch.rand(math.prod(shape), generator=generator, dtype=torch.float64) * 2 - 1)
                         * bound)
        return torch.cat(parts)

    def user_shapes(self) -> dict[str, tuple[int, ...]]:
        """The user's GMF embedding (k,) and MLP embedding (layers[0] / 2,)."""
        return {"user_gmf": (self.factors,), "user_mlp": (self.mlp_dim,)}

    def logits(self, rows: torch.Tensor, shared: torch.Tensor, local: LocalPart) -> torch.Tensor:
        """NeuMF's score on the items of ``rows`` (B, n, k + layers[0] / 2)."""
        k = self.factors
        B, n, _ = rows.shape
        p = self._unpack(shared)
        gmf = rows[..., :k] * local["user_gmf"][:, None, :]
        h = torch.cat([local["user_mlp"][:, None, :].expand(B, n, self.mlp_dim), rows[..., k:]], dim=-1)
        for j in range(len(self.layers) - 1):
            h = torch.relu(torch.baddbmm(p[f"c{j}"][:, None, :], h, p[f"w{j}"]))
        out: torch.Tensor = (torch.cat([gmf, h], dim=-1) * p["w_out"][:, None, :]).sum(-1) + p["b_out"]
        return out
