"""Clients: one user's device (or one silo of users) training any registered model locally.

:class:`Client` is one client; :class:`ClientPool` trains many sampled
clients at once with the same math (the model's batched
:meth:`~securefedrec.models.base.Model.train`), which is what the simulator
uses. The model's local part (:meth:`~securefedrec.models.base.Model.local_shapes`)
stays inside the client objects; only the delta of the global vector leaves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from protocols.base import SparseVector
from securefedrec.data import Ratings
from securefedrec.errors import ConfigError
from securefedrec.models.base import LocalPart, Model, RatingsByUser
from securefedrec.models.mf import MF, Hyper

__all__ = ["Client", "ClientPool", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be one of auto, cpu, cuda; got {name!r}")
    return torch.device(name)


def _zeros(model: Model, num_users: int, dtype: torch.dtype) -> LocalPart:
    """A fresh local part of ``num_users`` users."""
    return {name: torch.zeros(num_users, *shape, dtype=dtype) for name, shape in model.local_shapes().items()}


class ClientPool:
    """All clients of a simulation; trains any sampled subset in one batched call.

    Args:
        train: training ratings (dense user/item ids).
        num_users: id range of the users.
        model: the model every client trains (:mod:`securefedrec.models.registry`).
        groups: client -> its users; ``None`` = one client per user (cross-device).
        device: torch device for the math.

    Attributes:
        local: the model's local part of every user, on the CPU; each row stays "on the
            device" of the client that owns the user.
    """

    def __init__(
        self,
        train: Ratings,
        num_users: int,
        model: Model,
        *,
        groups: Sequence[np.ndarray] | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.data = RatingsByUser(train, num_users)
        self.model = model
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.groups = [np.asarray(g, np.int64) for g in groups] if groups is not None else [
            np.array([u]) for u in range(num_users)
        ]
        self.local = _zeros(model, num_users, dtype)

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.groups)

    @property
    def hyper(self) -> Hyper:
        """The MF hyper-parameters (DP-SGD's silo model reads them); an error for another model."""
        if not isinstance(self.model, MF):
            raise ConfigError(f"this part reads biased MF's hyper-parameters; model {self.model.name!r} "
                              "has none (use --model mf)")
        return self.model.hyper

    def train(
        self, clients: Sequence[int], global_vec: torch.Tensor, epochs: int, lr: float
    ) -> torch.Tensor:
        """Deltas (len(clients), L) of the sampled clients, in the order given."""
        trained = self.model.train(global_vec, self.data, [self.groups[c] for c in clients], epochs, lr,
                                   self.device, self.dtype)
        self._keep(trained.users, trained.local)
        return trained.deltas

    def train_sparse(
        self, clients: Sequence[int], global_vec: torch.Tensor, lr: float, clip: float
    ) -> list[SparseVector]:
        """One local epoch of one-user clients as clipped sparse deltas, in the order given."""
        users = [int(self.groups[c][0]) for c in clients]
        if any(len(self.groups[c]) != 1 for c in clients):
            raise ConfigError("sparse updates need one user per client (no --silos)")
        trained = self.model.train_sparse(global_vec, self.data, users, lr, clip, self.device, self.dtype)
        self._keep(trained.users, trained.local)
        return trained.deltas

    def _keep(self, users: np.ndarray, local: LocalPart) -> None:
        idx = torch.as_tensor(users)
        for name, value in local.items():
            self.local[name][idx] = value.cpu()

    def client(self, cid: int) -> Client:
        """A stand-alone :class:`Client` for client ``cid`` (same data, same math)."""
        return Client(self.data, self.groups[cid], self.model, self.device, self.dtype)


class Client:
    """One client: a user's device, or a silo holding several users.

    Attributes:
        local: the model's local part of this client's users (rows in ``users`` order).
    """

    def __init__(
        self,
        data: RatingsByUser,
        users: np.ndarray,
        model: Model,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.data = data
        self.users = np.asarray(users, np.int64)
        self.model = model
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.local = _zeros(model, len(self.users), dtype)

    def train(self, global_vec: torch.Tensor, epochs: int, lr: float) -> torch.Tensor:
        """Train locally; return the delta of the global vector (L,). The local part stays here."""
        trained = self.model.train(global_vec, self.data, [self.users], epochs, lr, self.device, self.dtype)
        pos = {u: n for n, u in enumerate(self.users.tolist())}
        idx = torch.as_tensor([pos[u] for u in trained.users.tolist()], dtype=torch.long)
        for name, value in trained.local.items():
            self.local[name][idx] = value.cpu()
        return trained.deltas[0]
