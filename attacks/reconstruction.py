"""``rating-reconstruction``: recover a user's ratings from its updates (FedMF's leakage).

Chai et al. 2020 (FedMF, "Secure Federated Matrix Factorization") show that a
server seeing two consecutive gradients of one user can solve for its ratings.
For *our* client (:mod:`securefedrec.models.pool`, one local epoch) a single update
already suffices; the derivation:

The client solves ``p_u, b_u`` in closed form (ridge, weight ``lam_user * n``
on every coordinate, ``n`` = the user's number of ratings), then sends
``delta = -lr * grad`` with, for each rated item i and ``err_i = r_ui - pred_ui``::

    grad b_i = -err_i + lam_bias * b_i
    grad q_i = -err_i * p_u + lam_item * q_i

The server knows ``lr``, the lambdas and the broadcast ``q_i, b_i, mu``, so

1. ``err_i = lam_bias * b_i - grad b_i`` for every non-zero row (the rated items);
2. ``lam_item * q_i - grad q_i = err_i * p_u``: the ratio of the factor and bias
   coordinates gives ``p_u`` (least squares over the rated items); the ridge normal
   equations give it too, ``sum_i err_i q_i = lam_user * n * p_u``, without dividing
   by a small ``err`` (a user with one well-fitted rating); both are averaged when
   the ratio is well posed;
3. the bias row of the same equations, ``sum_i err_i = lam_user * n * b_u``,
   gives ``b_u``;
4. ``r_ui = mu + b_i + b_u + <p_u, q_i> + err_i``.

With two or more updates of the same user (consecutive rounds, where it was
sampled) the estimates are averaged before rounding to the rating scale.
Several local epochs, DP noise or quantization break the exact algebra.

Under secure aggregation the server only has the sum of the round; the best it
can do is apply the same algebra to the sum, as if one user had sent it.

Explicit biased MF only (``--model mf``): the attack refuses any other model
with a :class:`~securefedrec.errors.ConfigError` naming ``--model``.

Metric: the fraction of ratings recovered exactly after rounding to the scale;
RMSE in ``details``. Baseline: the server's prediction without the user's
update, ``round(mu + b_i)`` from the broadcast model.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from attacks.base import AttackResult, Observed, ObservingAttack, Target
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError
from securefedrec.models.mf import MF, Hyper, Layout
from securefedrec.models.registry import get_model

__all__ = ["RatingReconstructionAttack", "reconstruct_ratings"]


def reconstruct_ratings(
    update: np.ndarray, broadcast: np.ndarray, layout: Layout, hyper: Hyper, lr: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ratings implied by one update: ``(items, estimates)`` for its non-zero rows.

    ``update`` is the client's delta of the global vector, ``broadcast`` the global
    vector it trained from (both length L).
    """
    m, k = layout.num_items, layout.factors
    g = -np.asarray(update, dtype=np.float64) / lr
    gq = g[: m * k].reshape(m, k)
    gb = g[m * k : m * (k + 1)]
    Q = broadcast[: m * k].reshape(m, k)
    b = broadcast[m * k : m * (k + 1)]
    mu = float(broadcast[-1])
    rows = np.flatnonzero((gq != 0).any(1) | (gb != 0))
    if len(rows) == 0:
        return rows, np.zeros(0)
    err = hyper.lam_bias * b[rows] - gb[rows]
    n = len(rows)
    # the ridge normal equations: sum_i err_i * [q_i, 1] = lam_user * n * [p_u, b_u]
    p = err @ Q[rows] / (hyper.lam_user * n)
    b_u = float(err.sum()) / (hyper.lam_user * n)
    v = hyper.lam_item * Q[rows] - gq[rows]  # = err_i * p_u: the ratio route, used when it is well posed
    denom = float(err @ err)
    if denom > 1e-6 * n:
        p = 0.5 * (p + (err @ v) / denom)
    est = mu + b[rows] + b_u + Q[rows] @ p + err
    return rows, est


class RatingReconstructionAttack(ObservingAttack):
    """Recover every attacked user's training ratings from the server's views.

    Args:
        rounds: rounds to run (default 2: two consecutive updates where a user is sampled twice).
        margin, seed: see :class:`~attacks.base.Attack`.
    """

    name: ClassVar[str] = "rating-reconstruction"
    metric: ClassVar[str] = "exact_fraction"

    def __init__(self, *, rounds: int = 2, margin: float = 0.05, seed: int = 0) -> None:
        super().__init__(rounds=rounds, margin=margin, seed=seed)

    def attack(self, config: ExperimentConfig, target: Target) -> AttackResult:
        """Refuse a model other than biased MF before running anything, then attack as usual.

        Raises:
            ConfigError: ``--model`` is not ``mf`` (the algebra re-solves MF's user factor and
                bias; implicit models have no ratings to reconstruct: their leak is the set of
                interacted items, the ``rated-items`` attack).
        """
        if not issubclass(get_model(config.model.name), MF):
            raise ConfigError(
                f"rating-reconstruction inverts biased MF's update (explicit ratings) and needs --model mf, "
                f"not --model {config.model.name}; on implicit feedback there are no ratings to "
                f"reconstruct, the leak is which items a user interacted with: use the rated-items attack")
        return super().attack(config, target)

    def infer(self, config: ExperimentConfig, obs: Observed) -> AttackResult:
        """Run the rounds, reconstruct, score against the model-only baseline."""
        sim = obs.simulation
        layout, hyper, data = sim.layout, sim.hyper, sim.pool.data
        lo, hi = sim.dataset.scale
        m = layout.num_items
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, np.ndarray] = {}
        prior: dict[int, np.ndarray] = {}
        updates_used: dict[int, int] = {}
        for view in obs.views:
            pseudo: tuple[np.ndarray, np.ndarray] | None = None
            b = view.broadcast[layout.num_items * layout.factors : m * (layout.factors + 1)]
            for c in sorted(view.survivors):
                update = view.update_of(c)
                if update is None:  # secure: only the sum, the same for every survivor
                    if pseudo is None:
                        pseudo = reconstruct_ratings(view.total, view.broadcast, layout, hyper,
                                                     config.model.local_lr)
                    rows, est = pseudo
                else:
                    rows, est = reconstruct_ratings(update, view.broadcast, layout, hyper,
                                                    config.model.local_lr)
                s = sums.setdefault(c, np.zeros(m))
                n = counts.setdefault(c, np.zeros(m))
                s[rows] += est
                n[rows] += 1
                updates_used[c] = updates_used.get(c, 0) + 1
                prior.setdefault(c, float(view.broadcast[-1]) + b)
        if not sums:
            raise ConfigError("rating-reconstruction: no user took part in the rounds run")
        errs, hits, base_errs, base_hits, missing = [], [], [], [], 0
        for c in sorted(sums):
            lo_i, hi_i = int(data.indptr[c]), int(data.indptr[c + 1])
            items, truth = data.items[lo_i:hi_i], data.values[lo_i:hi_i].astype(np.float64)
            if len(items) == 0:
                continue
            n = counts[c][items]
            missing += int((n == 0).sum())
            est = np.where(n > 0, sums[c][items] / np.maximum(n, 1), (lo + hi) / 2)
            rec = np.clip(np.rint(est), lo, hi)
            errs.append(np.clip(est, lo, hi) - truth)
            hits.append(rec == truth)
            guess = np.clip(prior[c][items], lo, hi)
            base_errs.append(guess - truth)
            base_hits.append(np.clip(np.rint(guess), lo, hi) == truth)
        e, h = np.concatenate(errs), np.concatenate(hits)
        be, bh = np.concatenate(base_errs), np.concatenate(base_hits)
        exact, base_exact = float(h.mean()), float(bh.mean())
        return self.result(
            config, exact, base_exact, exact > base_exact + self.margin,
            rmse=math.sqrt(float(np.mean(e * e))), rmse_baseline=math.sqrt(float(np.mean(be * be))),
            ratings=len(h), users_attacked=len(sums),
            updates_per_user=float(np.mean(list(updates_used.values()))),
            ratings_without_nonzero_row=missing, local_epochs=config.model.local_epochs,
            exact_algebra=config.model.local_epochs == 1 and config.privacy.mode == "none",
            baseline_is="round(mu + b_i) from the broadcast model (no information from the user)",
        )
