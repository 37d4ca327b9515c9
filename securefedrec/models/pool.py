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


def _or_default(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or one seeded 0 for callers that do not sample per round."""
    return generator if generator is not None else torch.Generator().manual_seed(0)


class ClientPool:
    """All clients of a simulation; trains any sampled subset in one batched call.

    Args:
        train: training ratings (dense user/item ids).
        num_users: id range of the users.
        model: the model every client trains (:mod:`securefedrec.models.registry`).
        groups: client -> its users; ``None`` = one client per user (cross-device).
        device: torch device for the math.
        seed: seeds the model's initial local part (:meth:`~securefedrec.models.base.Model.init_local`).

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
        seed: int = 0,
    ) -> None:
        self.data = RatingsByUser(train, num_users)
        self.model = model
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.groups = [np.asarray(g, np.int64) for g in groups] if groups is not None else [
            np.array([u]) for u in range(num_users)
        ]
        self.local = model.init_local(num_users, dtype, torch.Generator().manual_seed(seed))

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.groups)

    def train(
        self, clients: Sequence[int], global_vec: torch.Tensor, epochs: int, lr: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Deltas (len(clients), L) of the sampled clients, in the order given.

        ``generator`` draws what the model samples while training (default: seeded 0).
        """
        client_users = [self.groups[c] for c in clients]
        trained = self.model.train(global_vec, self.data, client_users, epochs, lr, self.device, self.dtype,
                                   local=self.rows(np.concatenate(client_users) if client_users else []),
                                   generator=_or_default(generator))
        self._keep(trained.users, trained.local)
        return trained.deltas

    def train_sparse(
        self, clients: Sequence[int], global_vec: torch.Tensor, lr: float, clip: float,
        generator: torch.Generator | None = None,
    ) -> list[SparseVector]:
        """One local epoch of one-user clients as clipped sparse deltas, in the order given."""
        users = [int(self.groups[c][0]) for c in clients]
        if any(len(self.groups[c]) != 1 for c in clients):
            raise ConfigError("sparse updates need one user per client (no --silos)")
        trained = self.model.train_sparse(global_vec, self.data, users, lr, clip, self.device, self.dtype,
                                          local=self.rows(users),
                                          generator=_or_default(generator))
        self._keep(trained.users, trained.local)
        return trained.deltas

    def rows(self, users: Sequence[int] | np.ndarray) -> LocalPart:
        """The kept local part of ``users`` (rows in that order, CPU copies)."""
        idx = torch.as_tensor(np.asarray(users, np.int64))
        return {name: value[idx] for name, value in self.local.items()}

    def _keep(self, users: np.ndarray, local: LocalPart) -> None:
        idx = torch.as_tensor(users)
        for name, value in local.items():
            self.local[name][idx] = value.cpu()

    def client(self, cid: int) -> Client:
        """A stand-alone :class:`Client` for client ``cid`` (same data, same math)."""
        return Client(self.data, self.groups[cid], self.model, self.device, self.dtype,
                      local=self.rows(self.groups[cid]))


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
        local: LocalPart | None = None,
    ) -> None:
        self.data = data
        self.users = np.asarray(users, np.int64)
        self.model = model
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.local = local if local is not None else model.init_local(
            len(self.users), dtype, torch.Generator().manual_seed(0))

    def train(
        self, global_vec: torch.Tensor, epochs: int, lr: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Train locally; return the delta of the global vector (L,). The local part stays here."""
        trained = self.model.train(global_vec, self.data, [self.users], epochs, lr, self.device, self.dtype,
                                   local=self.local, generator=_or_default(generator))
        pos = {u: n for n, u in enumerate(self.users.tolist())}
        idx = torch.as_tensor([pos[u] for u in trained.users.tolist()], dtype=torch.long)
        for name, value in trained.local.items():
            self.local[name][idx] = value.cpu()
        return trained.deltas[0]
