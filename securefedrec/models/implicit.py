"""Local training of implicit-feedback models: sampled negatives, BCE or BPR, many clients at once.

Every training rating of a user is an interaction (a positive), whatever its value.
Each local epoch, a client draws ``negatives`` items per positive, uniformly from the
items none of its user's training interactions touch (:func:`sample_negatives`), from
the round's ``generator``, so a resumed run replays the uninterrupted one. The loss
(:data:`~securefedrec.models.names.LOSSES`) is

- ``bce``: binary cross-entropy of the logits, label 1 on positives and 0 on negatives;
- ``bpr``: ``-log sigmoid(s(u, pos) - s(u, neg))`` on each positive paired with each of
  its negatives (Rendle et al. 2009),

averaged over the client's samples, plus ``weight_decay`` times the squared norm of the
item row and of the user's local part each sample reads.

The global vector of an implicit model (:class:`ItemLayout`) is the item table (one row
of ``w`` coordinates per item) followed by ``P`` dense parameters every item shares
(NCF's MLP and output layer). A client trains a *local copy* of it together with its
users' local part (the user embeddings, kept between rounds): one full-batch step of
its own optimizer (SGD or Adam, :data:`~securefedrec.models.names.LOCAL_OPTIMIZERS`)
per local epoch; its delta is ``local copy - global``.

SGD is the default: its delta is ``lr`` times the client's gradient(s), so the server's
mean of the deltas is the population's gradient. Adam's first step is ``lr * sign(g)``
on every coordinate whatever the size of ``g``; a client that touched an item once moves
it as far as one that rated it, and the mean of such votes is a noisy direction. On
ML-100K leave-one-out (one user per client, every client every round, FedAdam server,
2 local epochs) local Adam stalled at HR@10 0.49 after 80 rounds where SGD reached 0.57
after 60 (the scratch measurement of the branch's report).

Batching: a chunk of clients (:func:`client_chunks`) draws the negatives of all its local
epochs first; each client then gets its own copy of the item rows it touches (its
positives and every negative it drew; one tensor of the chunk's distinct (client, item)
pairs) and of the dense part, ``(C, P)``. The loss is the sum of the clients' own
losses, so one backward pass gives every client the gradient of its own loss (no
parameter is shared between two clients), and the optimizer steps are elementwise. An
item that a client neither holds as a positive nor drew as a negative has no copy on
that client (or, where padding points at item 0, a copy whose gradient is zero), so its
row of the delta is exactly zero (:meth:`~securefedrec.models.base.Model.item_rows`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from securefedrec.errors import ConfigError
from securefedrec.models.base import CHUNK, LocalPart, Model, PaddedRatings, RatingsByUser, Trained
from securefedrec.models.names import LOCAL_OPTIMIZERS, LOSSES
from securefedrec.models.personal import PERSONAL_DENSE, check_personal_size, is_personal, personal_shapes

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = [
    "ADAM_BETAS",
    "ADAM_EPS",
    "CHUNK_POSITIVES",
    "ImplicitHyper",
    "ImplicitModel",
    "ItemLayout",
    "client_chunks",
    "implicit_hyper",
    "implicit_loss",
    "latest_columns",
    "local_train",
    "previous_columns",
    "sample_negatives",
]

CHUNK_POSITIVES = 1 << 14
"""At most this many padded positives (users * longest history) per chunk: bounds the
samples of one step at ``(1 + negatives) * CHUNK_POSITIVES`` rows of the item table."""
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True, kw_only=True)
class ImplicitHyper:
    """Hyper-parameters of the local training of an implicit model (module docstring)."""

    negatives: int = 4
    loss: str = "bce"
    weight_decay: float = 0.01
    optimizer: str = "sgd"
    init_std: float = 0.01
    personalize: bool = False
    personal_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.negatives < 1:
            raise ConfigError(f"negatives: must be >= 1, got {self.negatives}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss: must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in LOCAL_OPTIMIZERS:
            raise ConfigError(f"local_optimizer: must be one of {', '.join(LOCAL_OPTIMIZERS)}, "
                              f"got {self.optimizer!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.init_std) and self.init_std >= 0):
            raise ConfigError(f"init_std: must be >= 0, got {self.init_std}")
        if not (math.isfinite(self.personal_decay) and self.personal_decay >= 0):
            raise ConfigError(f"personal_decay: must be >= 0, got {self.personal_decay}")


def implicit_hyper(config: ExperimentConfig) -> ImplicitHyper:
    """The local-training hyper-parameters an experiment configures."""
    m = config.model
    return ImplicitHyper(negatives=m.negatives, loss=m.loss, weight_decay=m.weight_decay,
                         optimizer=m.local_optimizer, init_std=m.init_std, personalize=m.personalize,
                         personal_decay=m.personal_decay)


@dataclass(frozen=True)
class ItemLayout:
    """The global vector of an implicit model: ``items`` rows of ``width``, then ``dense`` shared values."""

    num_items: int
    width: int
    dense: int = 0

    @property
    def table_size(self) -> int:
        """Coordinates of the item table, ``items * width``."""
        return self.num_items * self.width

    @property
    def length(self) -> int:
        """L = items * width + dense."""
        return self.table_size + self.dense

    def table(self, vec: torch.Tensor) -> torch.Tensor:
        """View ``(..., items, width)`` of the item table of a vector (or of a batch of them)."""
        return vec[..., : self.table_size].reshape(*vec.shape[:-1], self.num_items, self.width)

    def shared(self, vec: torch.Tensor) -> torch.Tensor:
        """View ``(..., dense)`` of the shared dense values."""
        return vec[..., self.table_size :]


def sample_negatives(
    batch: PaddedRatings, num_items: int, per_positive: int, generator: torch.Generator,
    epochs: int = 1,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each of ``epochs`` epochs, ``per_positive`` items per positive of each user, drawn uniformly
    from the items it has not interacted with.

    Returns one ``(items, mask)`` per epoch, each (B, n_max * per_positive): the negatives of
    positive ``j`` sit at columns ``j * per_positive ...``; ``mask`` is 0 where the positive is
    padding or the user has interacted with every item. Draws with replacement, epoch by epoch:
    uniform ``r`` in ``[0, items - n_u)`` from ``generator`` (CPU), mapped to the ``r``-th
    non-interacted item through the user's sorted positives ``s_t``: ``r + #{t : s_t - t <= r}``.
    """
    device = batch.items.device
    B, n = batch.items.shape
    real = batch.mask > 0
    available = num_items - real.sum(1)  # (B,)
    cols = torch.arange(n, device=device).expand(B, n)
    # padding sorts last as num_items + column, so s_t - t = num_items there, beyond any draw
    s = torch.where(real, batch.items, num_items + cols).sort(dim=1).values
    gaps = (s - cols).contiguous()
    mask = (real.repeat_interleave(per_positive, 1) & (available > 0)[:, None]).to(batch.mask.dtype)
    span, last = available.clamp(min=1)[:, None], (available - 1).clamp(min=0)[:, None]
    out = []
    for _ in range(epochs):
        draws = torch.rand(B, n * per_positive, generator=generator, dtype=torch.float64).to(device)
        r = torch.minimum((draws * span).long(), last)
        items = (r + torch.searchsorted(gaps, r, right=True)) * (mask > 0)
        out.append((items, mask))
    return out


def previous_columns(mask: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each column ``j`` of time-ordered padded rows, the columns ``j - 1, ..., j - window``.

    Returns ``(columns, valid)``, both (B, n, window): the column ``d + 1`` steps before ``j`` at
    ``[..., d]`` (clamped to 0 where there is none) and whether it exists (every column before a
    real interaction is one: padding comes last).
    """
    B, n = mask.shape
    cols = (torch.arange(n, device=mask.device)[:, None]
            - torch.arange(1, window + 1, device=mask.device)[None, :])  # (n, window)
    return cols.clamp(min=0).expand(B, n, window), (cols >= 0).expand(B, n, window)


def latest_columns(mask: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns of each user's ``window`` latest interactions, latest first.

    Returns ``(columns, valid)``, both (B, window).
    """
    counts = mask.sum(1).long()
    cols = counts[:, None] - torch.arange(1, window + 1, device=mask.device)[None, :]
    return cols.clamp(min=0), cols >= 0


class ImplicitModel(Model):
    """A model of implicit feedback trained by :func:`local_train`; subclasses define the logits.

    Global part: :class:`ItemLayout` (item rows, then shared dense values); local part: the
    user tensors of :meth:`user_shapes`, drawn ``N(0, init_std^2)`` at first and kept between
    rounds, and with ``personalize`` the personal score function (:mod:`securefedrec.models.personal`).
    """

    feedback: ClassVar[tuple[str, ...]] = ("implicit",)
    sparse_updates: ClassVar[bool] = False
    window: int = 0
    """How many of the user's interactions before an item the score of that item reads (0: none).

    A model with a window gets, besides its local part, the rows of those interactions in the
    global table (:meth:`context`): while training, the ``window`` interactions before each
    positive (and its negatives) in the user's time order; at prediction, the user's ``window``
    latest interactions. Either way they are the user's own history, on its device."""

    def __init__(self, layout: ItemLayout, hyper: ImplicitHyper) -> None:
        self.layout = layout
        self.hyper = hyper
        if hyper.personalize:
            personal_shapes(layout.dense)  # refuses a model without a shared score function

    def context(self, history: torch.Tensor, valid: torch.Tensor) -> LocalPart:
        """Entries the logits read besides the local part, from the rows of earlier interactions.

        ``history`` (B, n, window, w): for each of n scored positions, the rows of the ``window``
        interactions before it, latest first; ``valid`` (B, n, window) masks those that exist.
        Each returned tensor is (B, n, ...); the logits broadcast it over the items of a position.
        Only models with a :attr:`window` are asked.
        """
        return {}

    @abc.abstractmethod
    def logits(self, rows: torch.Tensor, shared: torch.Tensor, local: LocalPart) -> torch.Tensor:
        """Scores (B, n) of B users on n items each, from the items' rows (B, n, w), the shared
        dense values (B, P) (one copy per user, e.g. its client's) and the users' local part."""

    # ---- the global part
    @property
    def length(self) -> int:
        """L = items * width + dense."""
        return self.layout.length

    @property
    def decay_span(self) -> int:
        """The item table; the shared dense values (NCF's layers) are not shrunk."""
        return self.layout.table_size

    def item_rows(self, vec: np.ndarray) -> np.ndarray:
        """Item ``i``'s row of the item table: a view (items, width)."""
        return vec[: self.layout.table_size].reshape(self.layout.num_items, self.layout.width)

    # ---- the local part
    @abc.abstractmethod
    def user_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of one user's embeddings (the local part without the personal part)."""

    def local_shapes(self) -> dict[str, tuple[int, ...]]:
        """:meth:`user_shapes`, then with ``personalize`` the personal part."""
        shapes = self.user_shapes()
        if self.hyper.personalize:
            shapes.update(personal_shapes(self.layout.dense))
        return shapes

    def init_local(self, num_users: int, dtype: torch.dtype, generator: torch.Generator) -> LocalPart:
        """Every user tensor ``N(0, init_std^2)``, drawn from ``generator`` in :meth:`user_shapes` order;
        the personal part zero (refused above :data:`~securefedrec.models.personal.PERSONAL_MAX_BYTES`,
        before anything is drawn)."""
        personal = personal_shapes(self.layout.dense) if self.hyper.personalize else {}
        check_personal_size(num_users, personal, dtype)
        out = {name: (torch.randn(num_users, *shape, generator=generator, dtype=torch.float64)
                      * self.hyper.init_std).to(dtype)
               for name, shape in self.user_shapes().items()}
        out.update({name: torch.zeros(num_users, *shape, dtype=dtype) for name, shape in personal.items()})
        return out

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
        """:func:`local_train`."""
        return local_train(self, global_vec, data, client_users, epochs, lr, device, dtype,
                           local=local, generator=generator)

    # ---- prediction
    def fit_local(self, global_vec: torch.Tensor, batch: PaddedRatings, local: LocalPart) -> LocalPart:
        """The kept local part, as it is.

        The user's embeddings were trained on its device in its last round, against the
        item table it then held; re-fitting them here would need sampled negatives (and a
        generator, which evaluation does not have) for little change when clients take
        part in most rounds. A model with a :attr:`window` adds its :meth:`context` of the user's
        latest interactions (in ``batch``, the training ratings, time-ordered).
        """
        if not self.window:
            return local
        cols, valid = latest_columns(batch.mask, self.window)
        items = batch.items.gather(1, cols)
        history = self.layout.table(global_vec)[items]  # (B, window, w)
        return local | self.context(history[:, None], valid[:, None])

    def scores(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits of the users of ``local``: on every item (B, items), or on ``items`` (B, n).

        With ``personalize``, of the user's personal score function: the global dense part plus its offset.
        """
        table = self.layout.table(global_vec)
        B = next(iter(local.values())).shape[0]
        rows = table.expand(B, *table.shape) if items is None else table[items]
        shared = self.layout.shared(global_vec).expand(B, self.layout.dense)
        if PERSONAL_DENSE in local:
            shared = shared + local[PERSONAL_DENSE]
        return self.logits(rows, shared, local)

    def predict(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor, scale: tuple[float, float]
    ) -> torch.Tensor:
        """The sigmoid of the score, in [0, 1] whatever ``scale``: there are no ratings to predict.

        (It is the probability of an interaction for BCE, a monotone score for BPR.)
        """
        return torch.sigmoid(self.scores(global_vec, local, items))


def client_chunks(
    data: RatingsByUser, client_users: Sequence[np.ndarray], positives: int = CHUNK_POSITIVES
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Clients sorted by their number of interactions, in chunks of little padding.

    A chunk holds at most :data:`CHUNK` users and at most ``positives`` padded positives
    (users * longest history; default :data:`CHUNK_POSITIVES`), or one larger client.
    Yields ``(clients, users, owner)``: the chunk's client indices, their users, and for each
    user the position of its client in ``clients``.
    """
    users_of = [np.asarray(u, np.int64) for u in client_users]
    longest = np.array([int(data.counts[u].max()) if len(u) else 0 for u in users_of], np.int64)
    order = np.argsort(longest, kind="stable")
    start = 0
    while start < len(order):
        stop, n_users = start, 0
        while stop < len(order):
            more = n_users + len(users_of[order[stop]])
            if stop > start and (more > CHUNK or more * max(1, longest[order[stop]]) > positives):
                break
            n_users, stop = more, stop + 1
        clients = order[start:stop]
        users = [users_of[c] for c in clients]
        yield (clients, np.concatenate(users),
               np.concatenate([np.full(len(u), j, np.int64) for j, u in enumerate(users)]))
        start = stop


def implicit_loss(
    logits: torch.Tensor, n_pos: int, pos_mask: torch.Tensor, neg_mask: torch.Tensor, hyper: ImplicitHyper
) -> torch.Tensor:
    """Per-user sums (B,) of the sample losses: columns ``:n_pos`` are positives, the rest negatives."""
    pos, neg = logits[:, :n_pos], logits[:, n_pos:]
    if hyper.loss == "bce":
        per = torch.cat([F.softplus(-pos) * pos_mask, F.softplus(neg) * neg_mask], dim=1)
    else:  # bpr: each positive against each of its own negatives
        diff = pos.repeat_interleave(hyper.negatives, 1) - neg
        per = F.softplus(-diff) * neg_mask
    return per.sum(1)


class _Optimizer:
    """Elementwise Adam or SGD on a list of tensors, each client's entries stepping on their own."""

    def __init__(self, params: list[torch.Tensor], hyper: ImplicitHyper, lr: float) -> None:
        self.params, self.lr, self.adam = params, lr, hyper.optimizer == "adam"
        self.m = [torch.zeros_like(p) for p in params] if self.adam else []
        self.v = [torch.zeros_like(p) for p in params] if self.adam else []
        self.t = 0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        self.t += 1
        b1, b2 = ADAM_BETAS
        for j, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            if not self.adam:
                p.sub_(g, alpha=self.lr)
                continue
            m, v = self.m[j], self.v[j]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**self.t)).sqrt_().add_(ADAM_EPS)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.t))


def _personal_step(
    model: ImplicitModel, personal: LocalPart, opt: _Optimizer, picked: torch.Tensor, shared: torch.Tensor,
    user: LocalPart, n_pos: int, pos_mask: torch.Tensor, neg_mask: torch.Tensor, own: torch.Tensor,
    count: torch.Tensor,
) -> None:
    """One step of the users' personal score functions (:mod:`securefedrec.models.personal`).

    ``picked`` (B, n, w), ``shared`` (B, P) and ``user`` are the client's trained copies, held fixed;
    the loss is the one of the global step on the personalized score, plus ``personal_decay``
    times the offset's squared norm per sample, per client over ``count`` samples.
    """
    hyper = model.hyper
    offset = personal[PERSONAL_DENSE]
    per_user = implicit_loss(model.logits(picked, shared + offset, user), n_pos, pos_mask, neg_mask, hyper)
    if hyper.personal_decay:
        weights = torch.cat([pos_mask, neg_mask], dim=1)
        per_user = per_user + hyper.personal_decay * (offset**2).sum(1) * weights.sum(1)
    per_client = torch.zeros_like(count).index_add_(0, own, per_user)
    loss = (per_client / count.clamp(min=1)).sum()
    opt.step(list(torch.autograd.grad(loss, [offset])))


def _history_context(
    model: ImplicitModel, picked: torch.Tensor, n_pos: int, batch: PaddedRatings
) -> LocalPart:
    """The model's :meth:`~ImplicitModel.context` of each training column (none without a window).

    The client's own copies of its positives' rows (``picked[:, :n_pos]``, time-ordered) give the
    history of each positive; its negatives (``negatives`` per positive, in its order) share it.
    """
    if not model.window:
        return {}
    cols, valid = previous_columns(batch.mask, model.window)
    B = picked.shape[0]
    history = picked[torch.arange(B, device=picked.device)[:, None, None], cols]  # (B, n, window, w)
    context = model.context(history, valid)
    k = model.hyper.negatives
    return {name: torch.cat([v, v.repeat_interleave(k, 1)], dim=1) for name, v in context.items()}


def local_train(
    model: ImplicitModel,
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
    """Train clients (each a set of users) of ``model`` from ``global_vec``: dense (C, L) float64 deltas.

    ``local`` holds the users' kept local part, rows in ``np.concatenate(client_users)`` order;
    the returned local part has its rows in :attr:`Trained.users` order (the chunks' order).
    Negatives are drawn from ``generator`` chunk by chunk, epoch by epoch, in a fixed order.
    """
    if epochs < 1:
        raise ConfigError(f"local epochs must be >= 1, got {epochs}")
    layout, hyper = model.layout, model.hyper
    g = global_vec.to(device=device, dtype=dtype)
    g_table, g_shared = layout.table(g), layout.shared(g)
    C = len(client_users)
    deltas = torch.zeros(C, layout.length, device=device, dtype=torch.float64)
    flat_users = (np.concatenate([np.asarray(u, np.int64) for u in client_users]) if C
                  else np.zeros(0, np.int64))
    row_of = {int(u): n for n, u in enumerate(flat_users.tolist())}
    done_users: list[np.ndarray] = []
    done_local: dict[str, list[torch.Tensor]] = {name: [] for name in local}
    m, w = layout.num_items, layout.width
    delta_table = deltas[:, : layout.table_size].view(C, m, w)
    for clients, users, owner in client_chunks(data, client_users):
        batch = data.padded(users, device, dtype)
        own = torch.as_tensor(owner, device=device)
        n_pos = batch.items.shape[1]
        # every epoch's negatives first (the generator's order: chunk by chunk, epoch by epoch)
        drawn = sample_negatives(batch, m, hyper.negatives, generator, epochs)
        # the (client, item) pairs the chunk touches: each client trains its own copy of those rows only
        keys = [own[:, None] * m + torch.cat([batch.items, negs], dim=1) for negs, _ in drawn]
        hit = torch.zeros(len(clients) * m, dtype=torch.bool, device=device)
        for key in keys:
            hit[key.reshape(-1)] = True
        touched = hit.nonzero()[:, 0]  # sorted
        compact = hit.cumsum(0) - 1  # key -> its row among the touched
        at = [compact[key] for key in keys]
        rows = g_table[touched % m].clone().requires_grad_()
        shared = g_shared.expand(len(clients), layout.dense).clone().requires_grad_()
        rows_idx = torch.as_tensor([row_of[int(u)] for u in users.tolist()], dtype=torch.long)
        user = {name: value[rows_idx].to(device=device, dtype=dtype).requires_grad_()
                for name, value in local.items() if not is_personal(name)}
        personal = {name: value[rows_idx].to(device=device, dtype=dtype).requires_grad_()
                    for name, value in local.items() if is_personal(name)}
        params = [rows, shared, *user.values()]
        opt = _Optimizer(params, hyper, lr)
        personal_opt = _Optimizer(list(personal.values()), hyper, lr)
        for (_, neg_mask), idx in zip(drawn, at, strict=True):
            picked = rows.index_select(0, idx.reshape(-1)).view(*idx.shape, w)  # backward: index_add
            logits = model.logits(picked, shared[own], user | _history_context(model, picked, n_pos, batch))
            per_user = implicit_loss(logits, n_pos, batch.mask, neg_mask, hyper)
            weights = torch.cat([batch.mask, neg_mask], dim=1)
            if hyper.weight_decay:
                user_sq = sum((v**2).reshape(len(users), -1).sum(1) for v in user.values())
                per_user = per_user + hyper.weight_decay * (((picked**2).sum(-1) * weights).sum(1)
                                                            + user_sq * weights.sum(1))
            count = torch.zeros(len(clients), device=device, dtype=dtype).index_add_(
                0, own, (neg_mask if hyper.loss == "bpr" else weights).sum(1))
            per_client = torch.zeros(len(clients), device=device, dtype=dtype).index_add_(0, own, per_user)
            loss = (per_client / count.clamp(min=1)).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)  # MF has no shared values
            opt.step([torch.zeros_like(p) if d is None else d for p, d in zip(params, grads, strict=True)])
            if personal:  # after the global step, which never reads the personal part
                _personal_step(model, personal, personal_opt, rows.detach().index_select(0, idx.reshape(-1))
                               .view(*idx.shape, w), shared.detach()[own],
                               {name: v.detach() for name, v in user.items()}, n_pos, batch.mask, neg_mask,
                               own, count)
        with torch.no_grad():
            pos = torch.as_tensor(clients, device=device)
            delta_table[pos[touched // m], touched % m] = (rows - g_table[touched % m]).to(torch.float64)
            deltas[pos, layout.table_size :] = (shared - g_shared).to(torch.float64)
        done_users.append(users)
        for name, value in (user | personal).items():
            done_local[name].append(value.detach())
    users_out = np.concatenate(done_users) if done_users else np.zeros(0, np.int64)
    new_local = {name: (torch.cat(parts) if parts else local[name][:0].to(device))
                 for name, parts in done_local.items()}
    return Trained(deltas, users_out, new_local)
