"""Model fusion: several registered models trained in the same rounds, fused with personal weights.

``--fusion mf,popularity`` (or ``implicit-mf,ncf,popularity``) trains every member model of
the model registry in the same rounds, under the same protocol session, and each client
fuses their predictions with weights it learns on its own held-out data.

**One vector.** The global vector is the concatenation of the members' global vectors,
followed by the fusion *prior* (the global default weights); a client's delta is its
members' deltas side by side plus its prior gradient step. Everything a client sends is one
vector, clipped, noised and aggregated once: user-level DP is accounted once for all of it,
and the bytes up are the members' plus ``P`` prior coordinates (P = members, + 1 on explicit
data). :meth:`Fusion.shares` says which part of the vector (and of the bytes) is whose.

**Local part.** Each member's local part, its names prefixed ``"<member>."``, and the client's
personal weights, kept as an offset from the prior (``fusion_offset``, P values), and on
explicit data the held-out statistics they rest on (below): none of it leaves the device. A
client never sampled has offset 0, i.e. the prior. :meth:`Fusion.item_rows` puts the members'
item rows side by side (a member's own rule for untouched items holds in its columns:
``popularity``'s rows are dense, :mod:`securefedrec.models.popularity` says why).

**Stacking: where the weights are fitted.** A member must not be fitted on the ratings its
fusion weight is fitted on (its in-sample error is optimistic, and the weights would favour
the member that overfits most). The held-out data of a client:

- with a validation split (``--split loo``: each user's second-latest interaction,
  :attr:`~securefedrec.data.Dataset.validation`, which no model trains on), that item;
- otherwise (``u1``..``u5``, ``holdout``), :data:`HOLDOUT` of its training ratings, drawn once
  per run from the seed (a local decision; in a deployment the device's own randomness). The
  members never train on them; at evaluation a member predicts from everything the user has
  (MF re-solves the user's factor on all its training ratings), the usual refit after stacking.
  A holdout drawn afresh each round (cross-fitting, so that the members see every rating) was
  measured and dropped: the item rows then have seen a "held-out" rating in earlier rounds, MF
  looks better on it than it is, and on ML-100K u1 the prior went to ``2 * mf - 1 * popularity``
  (fused RMSE 0.957 against MF's 0.925 in the same run).

**The fused prediction.** Features ``x_m`` of the members on an item:

- explicit data: each member's predicted rating scaled to [-1, 1] by the public scale
  (``z = (r - centre) / half-width``, so that ``reg`` means the same on every scale); fused
  rating ``centre + half-width * (w_0 + sum_m w_m z_m)`` clamped to the scale (linear stacking,
  Wolpert 1992 / Breiman 1996), fitted to the scaled held-out ratings; prior ``(0, 1/M, ..., 1/M)``;
- implicit data: each member's ranking score standardized per user over the catalogue
  (``(s - mean) / std``; logits, probabilities and popularity counts are then on one scale);
  fused score ``sum_m w_m x_m``, prior ``1/M`` each.

**Items nobody rated** (explicit data): an item no client has rated keeps its initial row in MF
(random factors, zero bias), which says nothing. When a member carries the secure interaction
counts (``popularity``'s ``f_i``, or ``content``'s item shares) and reads 0 for the item, each
member of :data:`COLD_MEMBERS` scores it from what it has (popularity: the rated items' mean plus
the user's offset; content: the item's features) and every other member's feature on that item
is replaced by the mean of theirs, with the weights unchanged (the weights are fitted on rated
items; so the fused rating of a cold item is the cold members' mean under the other members'
weight too). Without such a member in the fusion, nothing changes. Measured on ML-100K u1..u5
(``mf,popularity``, 150 rounds, plaintext, ``python -m benchmarks.cold_items``): cold RMSE 1.039
against 1.310 for MF's mean plus user bias (MF itself: 1.310) on 27-36 cold ratings a fold.

**Personal weights** (each time a client trains, after its members' local training, with the
members' new local parts and the global vector it received): the minimiser of the client's
held-out loss plus ``reg/2 * ||w - prior||^2`` (``--fusion-reg``): explicit, the squared error
(closed form, ridge toward the prior) over its held-out ratings -- it keeps the sufficient
statistics ``X^T X`` and ``X^T y`` on the device (``fusion_gram``, ``fusion_moment``) as a moving
average over the rounds it trained in: the kept ones times :data:`MEMORY` plus this round's times
``1 - MEMORY`` (the members' predictions of its held-out ratings change from round to round; the
weights follow a smoothed record of them). The held-out ratings are the same every round, so a
plain discounted sum would count each of them up to ``1 / (1 - MEMORY)`` times (10 at 0.9) and
``reg`` would weigh for a tenth of what it says; in the average each counts at most once
(``1 - MEMORY^k`` after k rounds);
implicit, BPR of each held-out positive against
:data:`NEGATIVES` sampled items it never interacted with, averaged over the negatives
(:data:`NEWTON_STEPS` Newton steps from the prior). ``reg`` counts in held-out observations: with
one validation item a client stays near the prior, with many it follows its own data.

**The prior** is learned from the clients' fusion-weight gradients: the prior coordinates of a
client's delta (the weights over :data:`PRIOR_SCALE`) are ``-fusion_lr`` times the gradient of
its mean held-out loss with respect to them, at the prior
(the mean over its users' gradients), so the server's optimizer descends the population's
held-out loss, through the same protocol as everything else. A client without held-out data
sends zeros there.

The members share the run's settings (``--factors``, ...), except ``--local-lr``,
``--local-epochs`` and ``--weight-decay``: a member takes its own model's default of each one the user
did not give (``--fusion-settings``, resolved by :class:`~securefedrec.config.ExperimentConfig`; its
:meth:`~securefedrec.config.ExperimentConfig.member` is the member's configuration), so that each
member trains at its own step size; the server's learning rate and the rounds are the run's. The
server's weight decay, which shrinks one prefix of the vector, is refused. Sparse deltas do not apply (the
vector is dense). :func:`fusion_report` gives ``final.models.NAME.*`` (each member alone, on
its part of the vector), ``final.fused_global`` (the prior's weights for everyone) and the
weights of every client for the plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from securefedrec.data import Ratings
from securefedrec.errors import ConfigError
from securefedrec.models.base import CHUNK, LocalPart, Model, PaddedRatings, RatingsByUser, Trained
from securefedrec.models.content import ContentModel
from securefedrec.models.names import FUSION_REG
from securefedrec.models.popularity import Popularity

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig
    from securefedrec.metrics import RankingTask

__all__ = ["COLD_MEMBERS", "HOLDOUT", "MEMORY", "NEGATIVES", "NEWTON_STEPS", "OFFSET", "PRIOR_SCALE",
           "Fusion", "fusion_report", "holdout_flags"]

COLD_MEMBERS = ("content", "popularity")
"""Explicit data: the members that score an item nobody rated (module docstring, "Items nobody rated")."""
HOLDOUT = 0.1
"""Share of each user's training ratings held out for its weights when the data has no validation split."""
NEGATIVES = 20
"""Implicit data: sampled non-interacted items per held-out positive in the weights' BPR loss."""
NEWTON_STEPS = 5
"""Implicit data: Newton steps of the personal weights (a smooth, strongly convex problem in P unknowns)."""
OFFSET = "fusion_offset"
"""The local name of the personal weights' offset from the prior."""
MEMORY = 0.9
"""Explicit data: the weight of a client's kept held-out statistics in their moving average each time
it trains (this round's get ``1 - MEMORY``)."""
HOLDOUT_STREAM = 0x5F_55_53_45
"""Seeds the per-run choice of the held-out ratings (``[seed, HOLDOUT_STREAM]``, once per run)."""
PRIOR_SCALE = 4.0
"""The prior's coordinates are its weights divided by this: an adaptive server optimizer steps each
coordinate by about its lr whatever the gradient (FedAdam: 0.03), which moved a weight too slowly to
settle in 30 rounds; this way a round moves a weight by up to ``PRIOR_SCALE * lr``."""
GRAM, MOMENT = "fusion_gram", "fusion_moment"
"""Explicit data: the local names of the held-out statistics ``X^T X`` (P, P) and ``X^T y`` (P,)."""


def _subset(data: RatingsByUser, keep: np.ndarray) -> RatingsByUser:
    """The ratings of ``data`` where ``keep`` (one flag per rating, in ``data``'s order)."""
    num_users = len(data.counts)
    users = np.repeat(np.arange(num_users), data.counts)
    ratings = Ratings(users[keep], data.items[keep], data.values[keep], np.zeros(int(keep.sum()), np.int64))
    return RatingsByUser(ratings, num_users)


def holdout_flags(data: RatingsByUser, share: float, seed: int) -> np.ndarray:
    """One flag per rating of ``data``: ``floor(share * n_u)`` random ratings of each user, from ``seed``."""
    num_users = len(data.counts)
    users = np.repeat(np.arange(num_users), data.counts)
    keys = np.random.default_rng([seed, HOLDOUT_STREAM]).random(len(users))
    order = np.lexsort((keys, users))
    rank = np.empty(len(users), np.int64)
    rank[order] = np.arange(len(users)) - data.indptr[users[order]]
    held: np.ndarray = rank < np.floor(share * data.counts)[users]
    return held


class Fusion(Model):
    """Member models in one global vector, fused per client (module docstring).

    Args:
        members: the member models (distinct names), in ``--fusion`` order.
        implicit: implicit data (fused ranking score) or explicit (fused rating).
        lr: the prior's step (``--fusion-lr``): its delta is ``-lr`` times the held-out gradient.
        reg: pull of the personal weights toward the prior (``--fusion-reg``; its default by feedback:
            :data:`~securefedrec.models.names.FUSION_REG`), in held-out observations.
        seed: chooses the held-out ratings when the data has no validation split.
        personal: predict with the personal weights (``False``: the prior's, for everyone).
        training: each member's ``(local epochs, local learning rate)``, in member order (default:
            those :meth:`train` is given, for every member).
    """

    name: ClassVar[str] = "fusion"
    feedback: ClassVar[tuple[str, ...]] = ("explicit", "implicit")
    sparse_updates: ClassVar[bool] = False

    def __init__(self, members: Sequence[Model], *, implicit: bool, lr: float, reg: float, seed: int = 0,
                 personal: bool = True, training: Sequence[tuple[int, float]] | None = None) -> None:
        names = [m.name for m in members]
        if not members or len(set(names)) != len(names):
            raise ConfigError(f"--fusion needs distinct member models, got {','.join(names)!r}")
        kind = "implicit" if implicit else "explicit"
        for member in members:
            if kind not in member.feedback:
                raise ConfigError(f"--fusion member {member.name!r} learns from "
                                  f"{' and '.join(member.feedback)} feedback only, not --feedback {kind}")
        if training is not None and len(training) != len(members):
            raise ConfigError(f"--fusion: {len(training)} members' training settings for {len(members)} "
                              f"members")
        self.members = tuple(members)
        self.training = None if training is None else tuple(training)
        self.implicit = implicit
        self.lr = lr
        self.reg = reg
        self.seed = seed
        self.personal = personal
        self._split: tuple[RatingsByUser, RatingsByUser, RatingsByUser] | None = None
        self.starts = np.cumsum([0, *(m.length for m in members)]).tolist()
        self.prior_size = len(members) + (0 if implicit else 1)
        self.num_items = int(members[0].item_rows(np.zeros(members[0].length)).shape[0])
        self.scale: tuple[float, float] = (1.0, 5.0)
        self.validation: RatingsByUser | None = None

    @classmethod
    def from_config(cls, config: ExperimentConfig, num_items: int) -> Fusion:
        """Refused: the members come from the registry (:func:`securefedrec.models.registry.build_model`)."""
        raise ConfigError("a fusion is built from its members by securefedrec.models.registry.build_model")

    @classmethod
    def of(cls, config: ExperimentConfig, members: Sequence[Model]) -> Fusion:
        """The fusion of ``members`` that ``config`` configures (``--fusion-lr``; ``--fusion-reg`` or, not
        given, :data:`~securefedrec.models.names.FUSION_REG` of the run's feedback; each member's local
        epochs and learning rate from :meth:`~securefedrec.config.ExperimentConfig.member`).

        Raises:
            ConfigError: a member of the wrong feedback kind, a repeated member, or ``--server-decay``.
        """
        if config.server.decay > 0:
            raise ConfigError(f"--server-decay {config.server.decay} shrinks one model's item part; it does "
                              f"not apply to --fusion {config.model.fusion}")
        reg = config.model.fusion_reg
        own = [config.member(member.name).model for member in members]
        return cls(members, implicit=config.data.feedback == "implicit", lr=config.model.fusion_lr,
                   reg=FUSION_REG[config.data.feedback] if reg is None else reg, seed=config.run.seed,
                   training=[(m.local_epochs, m.local_lr) for m in own])

    def global_weights(self) -> Fusion:
        """The same fusion predicting with the prior's weights for every client (``fused_global``)."""
        twin = Fusion(self.members, implicit=self.implicit, lr=self.lr, reg=self.reg, seed=self.seed,
                      personal=False, training=self.training)
        twin.scale, twin.validation = self.scale, self.validation
        return twin

    def use_validation(self, validation: Ratings, num_users: int) -> None:
        """Fit the weights on ``validation`` (the data set's validation split) instead of a holdout."""
        self.validation = RatingsByUser(validation, num_users) if len(validation) else None
        self._split = None

    # ---- the parts of the vector
    def part(self, vec: torch.Tensor, m: int) -> torch.Tensor:
        """Member ``m``'s global vector (a view of ``vec``)."""
        return vec[..., self.starts[m] : self.starts[m + 1]]

    def prior(self, vec: torch.Tensor) -> torch.Tensor:
        """The prior's weights (P,): :data:`PRIOR_SCALE` times the last P coordinates of ``vec``."""
        return vec[..., self.starts[-1] :] * PRIOR_SCALE

    def member_local(self, local: LocalPart, m: int) -> LocalPart:
        """Member ``m``'s local part, its names unprefixed."""
        prefix = f"{self.members[m].name}."
        return {name.removeprefix(prefix): value for name, value in local.items() if name.startswith(prefix)}

    def _prefixed(self, m: int, local: LocalPart) -> LocalPart:
        return {f"{self.members[m].name}.{name}": value for name, value in local.items()}

    def shares(self) -> dict[str, float]:
        """Member name (and ``fusion-prior``) -> its share of the global vector's length."""
        out = {m.name: m.length / self.length for m in self.members}
        out["fusion-prior"] = self.prior_size / self.length
        return out

    # ---- the global part
    @property
    def length(self) -> int:
        """L = the members' lengths + P."""
        return int(self.starts[-1]) + self.prior_size

    @property
    def decay_span(self) -> int:
        """Nothing (``--server-decay`` is refused by :meth:`of`)."""
        return 0

    def init_global(self, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """The members' initial vectors, then the prior ``(0, 1/M, ...)`` (implicit: ``(1/M, ...)``).
        Keeps the public ``scale`` for the fused ratings of :meth:`train` and :meth:`scores`."""
        self.scale = scale
        M = len(self.members)
        prior = torch.full((self.prior_size,), 1.0 / M, dtype=torch.float64)
        if not self.implicit:
            prior[0] = 0.0
        return torch.cat([*(m.init_global(scale, generator) for m in self.members), prior / PRIOR_SCALE])

    def item_rows(self, vec: np.ndarray) -> np.ndarray:
        """Item ``i``'s rows of every member side by side (items, sum of the members' widths)."""
        return np.concatenate([m.item_rows(vec[self.starts[n] : self.starts[n + 1]])
                               for n, m in enumerate(self.members)], axis=1)

    # ---- the local part
    def local_shapes(self) -> dict[str, tuple[int, ...]]:
        """The members' local parts (prefixed) and the personal weights' offset (P,)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for member in self.members:
            shapes.update({f"{member.name}.{k}": s for k, s in member.local_shapes().items()})
        shapes[OFFSET] = (self.prior_size,)
        if not self.implicit:
            shapes.update({GRAM: (self.prior_size, self.prior_size), MOMENT: (self.prior_size,)})
        return shapes

    def init_local(self, num_users: int, dtype: torch.dtype, generator: torch.Generator) -> LocalPart:
        """Each member's initial local part (drawn in member order), and a zero offset (the prior)."""
        out: LocalPart = {}
        for n, member in enumerate(self.members):
            out.update(self._prefixed(n, member.init_local(num_users, dtype, generator)))
        P = self.prior_size
        out[OFFSET] = torch.zeros(num_users, P, dtype=dtype)
        if not self.implicit:
            out[GRAM] = torch.zeros(num_users, P, P, dtype=dtype)
            out[MOMENT] = torch.zeros(num_users, P, dtype=dtype)
        return out

    # ---- training
    def split(self, data: RatingsByUser) -> tuple[RatingsByUser, RatingsByUser]:
        """``(what the members train on, what the weights are fitted on)`` for the training data ``data``:
        ``(data, validation)``, or the run's holdout (:func:`holdout_flags`) and the rest."""
        if self._split is None or self._split[0] is not data:
            if self.validation is not None:
                self._split = (data, data, self.validation)
            else:
                held = holdout_flags(data, HOLDOUT, self.seed)
                self._split = (data, _subset(data, ~held), _subset(data, held))
        return self._split[1], self._split[2]

    def train(
        self,
        global_vec: torch.Tensor,
        data: RatingsByUser,
        client_users: Sequence[np.ndarray],
        epochs: int,
        lr: float,
        device: torch.device,
        dtype: torch.dtype,
        *,
        local: LocalPart,
        generator: torch.Generator,
    ) -> Trained[torch.Tensor]:
        """Every member's local training on the members' data (its own ``epochs`` and ``lr`` where the
        fusion has them), then the weights on the held-out data.

        Returns the users in the order of ``np.concatenate(client_users)``.
        """
        members_data, held = self.split(data)
        C = len(client_users)
        users = (np.concatenate([np.asarray(u, np.int64) for u in client_users]) if C
                 else np.zeros(0, np.int64))
        owner = np.concatenate([np.full(len(u), c) for c, u in enumerate(client_users)]) if C else users
        deltas = torch.zeros(C, self.length, device=device, dtype=torch.float64)
        new_local: LocalPart = {}
        for n, member in enumerate(self.members):
            own_epochs, own_lr = (epochs, lr) if self.training is None else self.training[n]
            trained = member.train(self.part(global_vec, n), members_data, client_users, own_epochs, own_lr,
                                   device, dtype, local=self.member_local(local, n), generator=generator)
            deltas[:, self.starts[n] : self.starts[n + 1]] = trained.deltas.to(device, torch.float64)
            sorter = np.argsort(trained.users, kind="stable")
            perm = torch.as_tensor(sorter[np.searchsorted(trained.users[sorter], users)])
            new_local.update(self._prefixed(n, {k: v.cpu()[perm] for k, v in trained.local.items()}))
        new_local.update({k: v for k, v in local.items() if k in (GRAM, MOMENT)})
        weights, grads = self._fit_weights(global_vec, members_data, held, users, owner, C, new_local,
                                           device, dtype, generator)
        deltas[:, self.starts[-1] :] = grads.mul_(-self.lr * PRIOR_SCALE)  # d loss / d coordinate
        new_local.update(weights)
        return Trained(deltas, users, new_local)

    def _fit_weights(
        self, global_vec: torch.Tensor, members_data: RatingsByUser, held: RatingsByUser, users: np.ndarray,
        owner: np.ndarray, C: int, local: LocalPart, device: torch.device, dtype: torch.dtype,
        generator: torch.Generator,
    ) -> tuple[LocalPart, torch.Tensor]:
        """Each user's personal offset (and, explicit, held-out statistics; rows in ``users`` order, CPU)
        and each client's mean prior gradient (C, P) float64 over its users with held-out data."""
        g = global_vec.to(device=device, dtype=dtype)
        prior = self.prior(g)
        P = self.prior_size
        offsets = torch.zeros(len(users), P, dtype=dtype)
        stats = {k: local[k].clone() for k in (GRAM, MOMENT) if k in local}
        grads = torch.zeros(C, P, device=device, dtype=torch.float64)
        counts = torch.zeros(C, device=device, dtype=torch.float64)
        for start in range(0, len(users), CHUNK):
            chunk = users[start : start + CHUNK]
            batch = held.padded(chunk, device, dtype)
            rows = {k: v[start : start + CHUNK].to(device=device, dtype=dtype) for k, v in local.items()}
            has = batch.counts > 0  # held-out data this round
            if self.implicit:
                w, grad = self._fit_implicit(g, rows, batch, members_data.padded(chunk, device, dtype),
                                             prior, generator)
                fitted = has
            else:
                w, grad, gram, moment = self._fit_explicit(g, rows, batch, prior)
                stats[GRAM][start : start + len(chunk)] = gram.cpu()
                stats[MOMENT][start : start + len(chunk)] = moment.cpu()
                fitted = gram.abs().sum((1, 2)) > 0  # held-out data this round or kept from earlier ones
            offsets[start : start + len(chunk)] = ((w - prior) * fitted[:, None]).cpu()
            own = torch.as_tensor(owner[start : start + CHUNK], device=device)
            grads.index_add_(0, own[has], grad[has].to(torch.float64))
            counts.index_add_(0, own[has], torch.ones(int(has.sum()), device=device, dtype=torch.float64))
        return {OFFSET: offsets, **stats}, grads / counts.clamp(min=1)[:, None]

    def _fit_explicit(self, g: torch.Tensor, local: LocalPart, batch: PaddedRatings,
                      prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ridge toward the prior on the held-out statistics (their moving average: :data:`MEMORY` times
        the kept ones plus ``1 - MEMORY`` times this round's); the half mean squared error's gradient at
        the prior on this round's held-out ratings; the new statistics ``(X^T X, X^T y)``."""
        X = self._features(g, local, batch.items) * batch.mask[..., None]
        centre, half = self._centre_half()
        y = (batch.ratings - centre) / half * batch.mask
        gram = MEMORY * local[GRAM] + (1 - MEMORY) * (X.transpose(1, 2) @ X)
        moment = MEMORY * local[MOMENT] + (1 - MEMORY) * (X.transpose(1, 2) @ y[..., None])[..., 0]
        eye = torch.eye(self.prior_size, dtype=X.dtype, device=X.device)
        w = torch.linalg.solve(gram + self.reg * eye, (moment + self.reg * prior)[..., None])[..., 0]
        resid = (y - X @ prior) * batch.mask
        grad = -(X.transpose(1, 2) @ resid[..., None])[..., 0] / batch.counts.clamp(min=1)[:, None]
        return w, grad, gram, moment

    def _fit_implicit(self, g: torch.Tensor, local: LocalPart, batch: PaddedRatings, seen: PaddedRatings,
                      prior: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """BPR of the held-out positives against sampled negatives (:meth:`solve_bpr`); the gradient is
        the mean over the user's held-out positives."""
        d, weight = self._bpr_pairs(g, local, batch, seen, generator)
        w, at_prior = self.solve_bpr(d, weight, prior)
        return w, at_prior / batch.counts.clamp(min=1)[:, None]

    def _bpr_pairs(self, g: torch.Tensor, local: LocalPart, batch: PaddedRatings, seen: PaddedRatings,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature differences ``x(pos) - x(neg)`` (B, pairs, M) of each held-out positive and each of
        its :data:`NEGATIVES` sampled items, and the pairs' weights (B, pairs): ``1 / #negatives`` of the
        positive, 0 for padding and for a drawn item the user interacted with."""
        z = self._standardized(g, local)  # (B, items, M)
        B, num_items, M = z.shape
        device = z.device
        negs = torch.randint(0, num_items, (B, NEGATIVES), generator=generator).to(device)
        known = torch.zeros(B, num_items, dtype=torch.bool, device=device)
        rows = torch.arange(B, device=device)[:, None]
        known[rows.expand_as(seen.items)[seen.mask > 0], seen.items[seen.mask > 0]] = True
        known[rows.expand_as(batch.items)[batch.mask > 0], batch.items[batch.mask > 0]] = True
        neg_ok = ~known.gather(1, negs)  # (B, K)
        pos, neg = z[rows, batch.items], z[rows, negs]  # (B, n, M), (B, K, M)
        d = (pos[:, :, None, :] - neg[:, None, :, :]).reshape(B, -1, M)
        pair = (batch.mask[:, :, None] * neg_ok[:, None, :].to(z.dtype)).reshape(B, -1)
        return d, pair / neg_ok.sum(1).clamp(min=1).to(z.dtype)[:, None]

    def solve_bpr(self, d: torch.Tensor, weight: torch.Tensor,
                  prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each user's minimiser of ``sum weight * softplus(-d . w) + reg/2 ||w - prior||^2``
        (:data:`NEWTON_STEPS` Newton steps from the prior), and the loss's gradient at the prior."""
        M = d.shape[-1]
        eye = torch.eye(M, dtype=d.dtype, device=d.device)

        def gradient(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            p = torch.sigmoid((d * w[:, None, :]).sum(-1))
            grad = -((weight * (1 - p))[..., None] * d).sum(1)
            hess = (d * (weight * p * (1 - p))[..., None]).transpose(1, 2) @ d
            return grad, hess

        start = prior.expand(d.shape[0], M)
        w = start.clone()
        for _ in range(NEWTON_STEPS):
            grad, hess = gradient(w)
            step = torch.linalg.solve(hess + self.reg * eye, (grad + self.reg * (w - prior))[..., None])
            w = w - step[..., 0]
        at_prior, _ = gradient(start)
        return w, at_prior

    # ---- prediction
    def _standardized(self, g: torch.Tensor, local: LocalPart) -> torch.Tensor:
        """Every member's scores on every item, standardized per user over the catalogue (B, items, M)."""
        parts = []
        for n, member in enumerate(self.members):
            s = member.scores(self.part(g, n), self.member_local(local, n)).to(g.dtype)
            mean, std = s.mean(1, keepdim=True), s.std(1, keepdim=True)
            parts.append((s - mean) / std.clamp(min=1e-6))
        return torch.stack(parts, dim=-1)

    def _features(self, g: torch.Tensor, local: LocalPart, items: torch.Tensor) -> torch.Tensor:
        """The fusion's inputs on ``items`` (B, n, P): explicit ``(1, rating_1, ...)``; implicit the
        standardized scores."""
        if self.implicit:
            z = self._standardized(g, local)
            rows = torch.arange(z.shape[0], device=z.device)[:, None]
            return z[rows, items]
        centre, half = self._centre_half()
        preds = [(member.predict(self.part(g, n), self.member_local(local, n), items, self.scale).to(g.dtype)
                  - centre) / half for n, member in enumerate(self.members)]
        preds = self._cold_rule(g, items, preds)
        return torch.stack([torch.ones_like(preds[0]), *preds], dim=-1)

    def unrated(self, g: torch.Tensor) -> torch.Tensor | None:
        """Whether nobody rated each item (items,) bool, from the first member carrying the secure counts
        (``popularity``; ``content`` on explicit data), or ``None`` without such a member."""
        for n, member in enumerate(self.members):
            if isinstance(member, Popularity):
                return member.unrated(self.part(g, n))
            if isinstance(member, ContentModel) and member.counts is not None:
                shares = member.shares(self.part(g, n))
                return member.counts.unrated(shares) if shares is not None else None
        return None

    def _cold_rule(self, g: torch.Tensor, items: torch.Tensor,
                   preds: list[torch.Tensor]) -> list[torch.Tensor]:
        """``preds`` (the members' scaled ratings on ``items``) with every non-:data:`COLD_MEMBERS` member's
        replaced by the cold members' mean on the items nobody rated (module docstring)."""
        cold_members = [n for n, m in enumerate(self.members) if m.name in COLD_MEMBERS]
        unrated = self.unrated(g) if 0 < len(cold_members) < len(self.members) else None
        if unrated is None:
            return preds
        cold = unrated.to(items.device)[items]
        stand_in = torch.stack([preds[n] for n in cold_members]).mean(0)
        return [p if n in cold_members else torch.where(cold, stand_in, p) for n, p in enumerate(preds)]

    def _centre_half(self) -> tuple[float, float]:
        """The public scale's centre and half-width (the explicit features and targets are scaled by them)."""
        lo, hi = self.scale
        return (lo + hi) / 2, max((hi - lo) / 2, 1e-6)

    def weights(self, g: torch.Tensor, local: LocalPart) -> torch.Tensor:
        """The weights each user predicts with (B, P): the prior, plus its offset when personal."""
        prior = self.prior(g).to(local[OFFSET].dtype)
        if not self.personal:
            return prior.expand(local[OFFSET].shape[0], -1)
        return prior + local[OFFSET]

    def fit_local(self, global_vec: torch.Tensor, batch: PaddedRatings, local: LocalPart) -> LocalPart:
        """Each member's :meth:`~securefedrec.models.base.Model.fit_local` on all the user's training
        ratings; the kept weights' offset as it is."""
        out: LocalPart = {k: v for k, v in local.items() if k in (OFFSET, GRAM, MOMENT)}
        for n, member in enumerate(self.members):
            out.update(self._prefixed(n, member.fit_local(self.part(global_vec, n), batch,
                                                          self.member_local(local, n))))
        return out

    def predict(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor, scale: tuple[float, float]
    ) -> torch.Tensor:
        """Explicit: the fused rating clamped to ``scale``; implicit: the sigmoid of the fused score."""
        fused = self.scores(global_vec, local, items)
        return torch.sigmoid(fused) if self.implicit else fused.clamp(scale[0], scale[1])

    def scores(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The fused score (explicit: the unclamped fused rating): (B, items), or (B, n) on ``items``."""
        if items is None:
            B = local[OFFSET].shape[0]
            items = torch.arange(self.num_items, device=global_vec.device).expand(B, self.num_items)
        weights = self.weights(global_vec, local)
        fused = (self._features(global_vec, local, items) * weights[:, None, :]).sum(-1)
        if self.implicit:
            return fused
        centre, half = self._centre_half()
        rating: torch.Tensor = centre + half * fused
        return rating


def fusion_report(
    model: Fusion, global_vec: np.ndarray, local: LocalPart, train: RatingsByUser, test: Ratings,
    scale: tuple[float, float], *, task: RankingTask | None, errors: bool, device: torch.device,
    bytes_up: int,
) -> dict[str, Any]:
    """What a fused run adds to the report's ``final``.

    - ``models``: each member alone, on its own part of the vector and its own local part
      (every metric of :func:`~securefedrec.metrics.evaluate`), with ``share`` (its share of
      the vector) and ``bytes_up`` (that share of the run's bytes up); ``fusion-prior`` too;
    - ``fused_global``: the fusion with the prior's weights for every client;
    - ``fusion_weights``: the member names, the prior and every trained client's personal weights.
    """
    from securefedrec.metrics import evaluate

    g = torch.from_numpy(global_vec)
    shares = model.shares()
    models: dict[str, Any] = {}
    for n, member in enumerate(model.members):
        ev = evaluate(model.part(g, n), member, train, test, scale, task=task, errors=errors,
                      device=device, local=model.member_local(local, n))
        models[member.name] = {**ev.as_dict(), "share": shares[member.name],
                               "bytes_up": round(bytes_up * shares[member.name])}
    models["fusion-prior"] = {"share": shares["fusion-prior"],
                              "bytes_up": round(bytes_up * shares["fusion-prior"])}
    fused_global = evaluate(g, model.global_weights(), train, test, scale, task=task, errors=errors,
                            device=device, local=local).as_dict()
    prior = model.prior(g).tolist()
    offsets = local[OFFSET].to(torch.float64)
    trained = offsets.abs().sum(1) > 0
    names = ([] if model.implicit else ["intercept"]) + [m.name for m in model.members]
    return {"models": models, "fused_global": fused_global,
            "fusion_weights": {"names": names, "prior": prior,
                               "personal": (model.prior(g)[None, :] + offsets[trained]).tolist()}}
