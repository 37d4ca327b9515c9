"""Record-level DP for cross-silo federation: each silo trains with Opacus DP-SGD.

``--silos S`` groups the users into S clients (:func:`silo_groups`); with
``--dp record`` every silo trains a torch MF model (:class:`SiloMF`) with an
Opacus :class:`~opacus.PrivacyEngine`: Poisson-sampled mini-batches of its
ratings, per-sample gradients clipped to L2 ``clip`` and Gaussian noise
``N(0, (sigma * clip)^2)`` on their sum. The silo's released delta is
``trained global part - received global part``: post-processing of the DP-SGD
trajectory, so it carries the silo's (epsilon, delta).

What one record is: **one rating** (user, item, stars). Two data sets are
neighbours when they differ in one rating of one silo; a user with many
ratings is *not* protected as a whole (that is ``--dp user``).

The model of a silo: item factors and item biases (the global part, reset
from the broadcast global vector every round), the global mean (a 1x1
embedding, frozen at the broadcast value: every rating touches it, so a step
size that suits the item rows would make it oscillate; the biases absorb any
offset), and the silo's user factors and user biases (local, kept across
rounds). *All* trainable parameters train with DP-SGD: the user factors feed
the item gradients of other ratings, so training them without noise would
leak. Loss per rating: squared error plus ``lam_item ||q_i||^2 + lam_bias b_i^2
+ lam_user ||p_u||^2 + lam_bias b_u^2`` (the frequency-weighted L2 of
:mod:`securefedrec.model`), summed over the batch; the SGD step is
``local_lr / dp_batch_size`` times the noisy sum (so ``local_lr`` is the step
on the mean gradient of an expected batch).

Accounting: Opacus' accountant of each silo (``rdp`` or ``prv``), stepped at
every DP-SGD step with the silo's sample rate ``1 / batches per epoch``. With
a budget and no explicit sigma, each silo's sigma is calibrated
(``make_private_with_epsilon``) for ``rounds * local_epochs`` epochs, as if it
took part in every round. A round that would push any silo past the budget
is refused before it starts. The report's epsilon is the largest over silos.

Notes:
    Memory: the default ``grad_sample_mode="ghost"`` (ghost clipping, Opacus'
    embedding norm sampler) never materializes per-sample gradients: it
    computes each rating's gradient norm from the B looked-up rows and runs a
    second backward pass on the rescaled loss, so memory and time are
    O(batch * k). ``"hooks"`` (tested equal, to float rounding) materializes
    ``batch * (items + silo users) * (k + 1)`` floats per step (about 55 MB for
    ml-100k, k = 32, batch 256): still bounded by the batch, but 10x slower.
    Torch's intra-op threads hurt on a loaded small machine; the benchmark
    sets ``torch.set_num_threads(1)``.

    Randomness: the simulator seeds each silo's Poisson sampler and noise
    generator from (seed, silo) so runs reproduce. Opacus' ``secure_mode``
    (torchcsprng) is the choice for a deployment; it is not used here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from securefedrec import streams
from securefedrec.client import RatingsByUser
from securefedrec.errors import CheckpointError, ConfigError, PrivacyBudgetExhausted
from securefedrec.model import Hyper, Layout
from securefedrec.privacy import RoundPrivacy, make_accountant

__all__ = ["GRAD_SAMPLE_MODES", "SiloDPSGD", "SiloLoss", "SiloMF", "silo_groups"]

GRAD_SAMPLE_MODES = ("ghost", "hooks")
"""Opacus per-sample gradient modes supported here; ``ghost`` is the default (module Notes)."""


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

_SILO_STREAM = streams.SILO


def silo_groups(num_users: int, silos: int, seed: int) -> list[np.ndarray]:
    """Split users ``0..num_users-1`` into ``silos`` groups of near-equal size, at random by ``seed``."""
    if not 1 <= silos <= num_users:
        raise ConfigError(f"silos: must be in [1, {num_users}] (the number of users), got {silos}")
    perm = np.random.default_rng([seed, _SILO_STREAM]).permutation(num_users)
    return [np.sort(part) for part in np.array_split(perm, silos)]


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
        """The global part flattened in :class:`~securefedrec.model.Layout` order."""
        return torch.cat([self.item.weight.detach().reshape(-1), self.item_bias.weight.detach()[:, 0],
                          self.mean.weight.detach().reshape(1)])


class _RatingsDataset(TensorDataset):
    """(local user, item) -> rating, fetched a whole batch at a time (``__getitems__``)."""

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return [tuple(t[idx] for t in self.tensors)]


def _collate_batch(batch: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    return batch[0]


class _Silo:
    """One silo's model, Opacus-wrapped optimizer and Poisson data loader."""

    def __init__(self, model: SiloMF, module: nn.Module, optimizer: Any, loader: DataLoader[Any],
                 engine: PrivacyEngine, noise_multiplier: float, criterion: Any) -> None:
        self.criterion = criterion
        self.model = model
        self.module = module
        self.optimizer = optimizer
        self.loader = loader
        self.engine = engine
        self.noise_multiplier = noise_multiplier
        self.sample_rate = 1.0 / len(loader)
        self.rounds = 0


class SiloDPSGD(RoundPrivacy):
    """Record-level DP: every silo trains with Opacus DP-SGD (see the module docstring).

    Args:
        data: training ratings grouped per user.
        groups: silo -> its users.
        layout, hyper: model layout and regularization.
        epochs, lr, batch_size: local epochs per round, step on the mean gradient, expected batch.
        clip: per-sample gradient L2 bound.
        noise_multiplier: sigma; ``None`` = calibrate each silo to ``(epsilon, delta)``.
        epsilon: budget per silo (``None`` = no limit; then ``noise_multiplier`` is needed).
        delta: delta per silo.
        rounds: planned rounds (for calibration).
        accountant: ``rdp`` or ``prv``.
        seed: seeds each silo's Poisson sampler, noise and user-factor init.
    """

    mode = "record"

    def __init__(
        self,
        *,
        data: RatingsByUser,
        groups: Sequence[np.ndarray],
        layout: Layout,
        hyper: Hyper,
        epochs: int,
        lr: float,
        batch_size: int,
        clip: float,
        noise_multiplier: float | None,
        epsilon: float | None,
        delta: float,
        rounds: int,
        accountant: str = "rdp",
        seed: int = 0,
        grad_sample_mode: str = "ghost",
    ) -> None:
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(f"grad_sample_mode: must be one of {', '.join(GRAD_SAMPLE_MODES)}, "
                              f"got {grad_sample_mode!r}")
        self.grad_sample_mode = grad_sample_mode
        if noise_multiplier is None and epsilon is None:
            raise ConfigError("dp: 'record' needs epsilon (a budget) or noise_multiplier")
        make_accountant(accountant)
        self.layout, self.hyper = layout, hyper
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.clip = clip
        self.budget = epsilon
        self._delta = delta
        self.accountant = accountant
        self.calibrated = noise_multiplier is None
        self.silos: list[_Silo] = []
        for s, users in enumerate(groups):
            self.silos.append(self._make_silo(s, data, np.asarray(users, np.int64), noise_multiplier,
                                              epsilon, rounds, seed))

    @classmethod
    def from_config(cls, config: Any, pool: Any, layout: Layout) -> SiloDPSGD:
        """Build from an :class:`~securefedrec.config.ExperimentConfig` and the simulator's pool."""
        return cls(
            data=pool.data, groups=pool.groups, layout=layout, hyper=pool.hyper,
            epochs=config.local_epochs, lr=config.local_lr, batch_size=config.dp_batch_size,
            clip=config.clip, noise_multiplier=config.noise_multiplier, epsilon=config.epsilon,
            delta=config.delta, rounds=config.rounds, accountant=config.accountant, seed=config.seed,
        )

    def _make_silo(self, s: int, data: RatingsByUser, users: np.ndarray, noise_multiplier: float | None,
                   epsilon: float | None, rounds: int, seed: int) -> _Silo:
        counts = data.counts[users]
        if counts.sum() == 0:
            raise ConfigError(f"silos: silo {s} has no training ratings; use fewer silos")
        local = np.repeat(np.arange(len(users)), counts)
        rows = np.concatenate([np.arange(data.indptr[u], data.indptr[u + 1]) for u in users])
        x = torch.as_tensor(np.stack([local, data.items[rows]], 1), dtype=torch.long)
        y = torch.as_tensor(data.values[rows], dtype=torch.float32)
        silo_seed = int(np.random.default_rng([seed, _SILO_STREAM, s]).integers(2**62))
        gen = torch.Generator().manual_seed(silo_seed)
        model = SiloMF(len(users), self.layout.num_items, self.layout.factors, self.hyper, gen)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trainable, lr=self.lr / self.batch_size)
        loader: DataLoader[Any] = DataLoader(_RatingsDataset(x, y), batch_size=self.batch_size,
                                             generator=gen, collate_fn=_collate_batch)
        engine = PrivacyEngine(accountant=self.accountant)
        common: dict[str, Any] = dict(module=model, optimizer=optimizer, data_loader=loader,
                                      criterion=SiloLoss(), max_grad_norm=self.clip, loss_reduction="sum",
                                      noise_generator=gen, grad_sample_mode=self.grad_sample_mode)
        try:
            if noise_multiplier is None:
                if epsilon is None:
                    raise ConfigError("dp: 'record' needs epsilon (a budget) or noise_multiplier")
                made = engine.make_private_with_epsilon(
                    target_epsilon=epsilon, target_delta=self._delta, epochs=rounds * self.epochs, **common)
            else:
                made = engine.make_private(noise_multiplier=noise_multiplier, **common)
        except ValueError as exc:
            raise ConfigError(f"epsilon: silo {s} cannot meet ({epsilon}, {self._delta}): {exc}") from None
        # ghost mode also returns the criterion wrapper; the tuple's length depends on the mode
        module, dp_opt, criterion, dp_loader = made if len(made) == 4 else (made[0], made[1], SiloLoss(),
                                                                          made[2])
        return _Silo(model, module, dp_opt, dp_loader, engine, float(dp_opt.noise_multiplier), criterion)

    # ------------------------------------------------------------------ RoundPrivacy
    @property
    def delta(self) -> float:
        """The delta that each silo's epsilon refers to."""
        return self._delta

    def _steps_per_round(self, silo: _Silo) -> int:
        return self.epochs * len(silo.loader)

    def silo_epsilons(self) -> list[float]:
        """Each silo's epsilon so far."""
        return [self._silo_epsilon(s.engine.accountant.history) for s in self.silos]

    def _silo_epsilon(self, history: list[tuple[float, float, int]]) -> float:
        if not history:
            return 0.0
        if any(h[0] == 0 for h in history):
            return math.inf
        acc = make_accountant(self.accountant)
        acc.history = list(history)
        return float(acc.get_epsilon(delta=self._delta))

    def check_round(self, round_id: int) -> float:
        """Largest silo epsilon if every silo trained this round; raise if over budget."""
        worst = 0.0
        for s, silo in enumerate(self.silos):
            nxt = [*silo.engine.accountant.history,
                   (silo.noise_multiplier, silo.sample_rate, self._steps_per_round(silo))]
            eps = self._silo_epsilon(nxt)
            if self.budget is not None and eps > self.budget:
                raise PrivacyBudgetExhausted(
                    f"round {round_id + 1} would spend epsilon {eps:.4g} > budget {self.budget:.4g} "
                    f"in silo {s} (delta {self._delta:.3g}); stopped at epsilon {self.epsilon():.4g}"
                )
            worst = max(worst, eps)
        return worst

    def commit_round(self, round_id: int) -> float:
        """Opacus' accountants already counted the steps; return the largest silo epsilon."""
        return self.epsilon()

    def state(self) -> dict[str, Any]:
        """Per-silo accountant histories (informational; resuming is not supported)."""
        return {"mode": self.mode, "history": [[list(h) for h in s.engine.accountant.history]
                                               for s in self.silos]}

    def restore(self, rounds_done: int, state: dict[str, Any] | None) -> None:
        """Not supported: the silos' DP-SGD state (user factors, accountants) is not checkpointed."""
        raise CheckpointError("resuming a --dp record run from a checkpoint is not supported")

    def epsilon(self) -> float:
        """The largest epsilon over silos."""
        return max(self.silo_epsilons(), default=0.0)

    def train(self, clients: Sequence[int], global_vec: torch.Tensor, round_id: int) -> torch.Tensor:
        """DP-SGD in each sampled silo from ``global_vec``; deltas (n, L) in float32."""
        g = global_vec.to(torch.float32)
        Q, b, mu = self.layout.split(g)
        out = torch.zeros(len(clients), self.layout.length)
        for j, cid in enumerate(clients):
            silo = self.silos[cid]
            silo.model.load_global(Q, b, mu)
            silo.module.train()
            for _ in range(self.epochs):
                for x, y in silo.loader:
                    silo.optimizer.zero_grad()
                    loss = silo.criterion(silo.module(x), y)
                    loss.backward()
                    silo.optimizer.step()
            silo.rounds += 1
            out[j] = silo.model.global_vector() - g
        return out

    def summary(self) -> dict[str, Any]:
        """Report entry: DP-SGD parameters and each silo's epsilon."""
        return {
            "mode": self.mode,
            "mechanism": "DP-SGD per silo (Opacus PrivacyEngine, Poisson batches)",
            "grad_sample_mode": self.grad_sample_mode,
            "noise_multiplier": [s.noise_multiplier for s in self.silos],
            "noise_multiplier_calibrated": self.calibrated,
            "clip": self.clip,
            "batch_size": self.batch_size,
            "sample_rate": [s.sample_rate for s in self.silos],
            "accountant": self.accountant,
            "delta": self._delta,
            "budget_epsilon": self.budget,
            "silo_epsilon": self.silo_epsilons(),
            "epsilon": self.epsilon(),
            "unit": "record (one rating)",
        }
