"""Test-only models for the evaluation tests (never registered outside a test's monkeypatch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from securefedrec.config import ExperimentConfig
from securefedrec.models.base import LocalPart, Model, PaddedRatings, RatingsByUser, Trained


class FixedScores(Model):
    """Scores from a fixed (users, items) table; the local part is each user's row index."""

    name: ClassVar[str] = "fixed-scores"
    feedback: ClassVar[tuple[str, ...]] = ("explicit", "implicit")

    def __init__(self, table: np.ndarray) -> None:
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.calls: list[torch.Tensor] = []

    @classmethod
    def from_config(cls, config: ExperimentConfig, num_items: int) -> Model:
        raise NotImplementedError("built by hand in the tests")

    @property
    def length(self) -> int:
        return 1

    @property
    def decay_span(self) -> int:
        return 0

    def init_global(self, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        return torch.zeros(1, dtype=torch.float64)

    def item_rows(self, vec: np.ndarray) -> np.ndarray:
        return vec.reshape(1, -1)[:, :0]

    def local_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"row": ()}

    def init_local(self, num_users: int, dtype: torch.dtype, generator: torch.Generator) -> LocalPart:
        return {"row": torch.arange(num_users, dtype=dtype)}

    def train(self, global_vec: torch.Tensor, data: RatingsByUser, client_users: Sequence[np.ndarray],
              epochs: int, lr: float, device: torch.device, dtype: torch.dtype, *, local: LocalPart,
              generator: torch.Generator) -> Trained[torch.Tensor]:
        raise NotImplementedError("evaluation only")

    def fit_local(self, global_vec: torch.Tensor, batch: PaddedRatings, local: LocalPart) -> LocalPart:
        return local

    def predict(self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor,
                scale: tuple[float, float]) -> torch.Tensor:
        return self.scores(global_vec, local, items).clamp(*scale)

    def scores(self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor | None = None
               ) -> torch.Tensor:
        rows = self.table[local["row"].long()]
        if items is None:
            return rows
        self.calls.append(items.clone())
        return rows.gather(1, items)


class Popularity(Model):
    """Implicit feedback: the global vector counts each item's interactions (a client adds its
    items); a user's scores are the counts. No local part."""

    name: ClassVar[str] = "popularity"
    feedback: ClassVar[tuple[str, ...]] = ("implicit",)
    candidates: ClassVar[list[torch.Tensor]] = []
    """Every ``items`` the evaluation asked scores of (class-wide, reset by the tests)."""

    def __init__(self, num_items: int) -> None:
        self.num_items = num_items

    @classmethod
    def from_config(cls, config: ExperimentConfig, num_items: int) -> Model:
        return cls(num_items)

    @property
    def length(self) -> int:
        return self.num_items

    @property
    def decay_span(self) -> int:
        return 0

    def init_global(self, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        return torch.zeros(self.num_items, dtype=torch.float64)

    def item_rows(self, vec: np.ndarray) -> np.ndarray:
        return vec.reshape(-1, 1)

    def local_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def train(self, global_vec: torch.Tensor, data: RatingsByUser, client_users: Sequence[np.ndarray],
              epochs: int, lr: float, device: torch.device, dtype: torch.dtype, *, local: LocalPart,
              generator: torch.Generator) -> Trained[torch.Tensor]:
        deltas = torch.zeros(len(client_users), self.num_items, dtype=torch.float64, device=device)
        for c, users in enumerate(client_users):
            for u in users:
                deltas[c, torch.as_tensor(data.user_items(int(u)))] += 1.0
        users_all = np.concatenate(client_users) if client_users else np.zeros(0, np.int64)
        return Trained(deltas, users_all, {})

    def fit_local(self, global_vec: torch.Tensor, batch: PaddedRatings, local: LocalPart) -> LocalPart:
        return {"n": torch.zeros(len(batch.items))}

    def predict(self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor,
                scale: tuple[float, float]) -> torch.Tensor:
        return self.scores(global_vec, local, items).clamp(*scale)

    def scores(self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor | None = None
               ) -> torch.Tensor:
        rows = global_vec.to(torch.float32)[None, :].expand(len(local["n"]), -1)
        if items is None:
            return rows
        type(self).candidates.append(items.cpu().clone())
        return rows.gather(1, items)


class Shuffled(Popularity):
    """Another implicit model: popularity counts scored through a fixed permutation of the items."""

    name: ClassVar[str] = "shuffled"

    def scores(self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor | None = None
               ) -> torch.Tensor:
        perm = torch.as_tensor(np.random.default_rng(7).permutation(self.num_items))
        return super().scores(global_vec[perm], local, items)
