"""``rated-items``: the server infers which items a user rated (or interacted with) from its update.

Explicit feedback (``--model mf``). Our client's update touches only the rows of
the items its user rated: the gradient of item i's factor and bias is zero
unless the user rated i (:func:`securefedrec.models.mf.item_gradients`). So from
an individual update the rated set is simply the non-zero rows; when noise (DP)
fills every row, the attacker ranks items by row norm and predicts the ``n``
largest, ``n`` being the public mean number of ratings per user.

Implicit feedback (``implicit-mf``, ``ncf``). The update also touches the rows
of the negatives the client sampled (``negatives`` per positive and local epoch,
public configuration), so the non-zero rows are a superset, about five times
too large. What separates the two kinds is the *sign* of the loss gradient:
with BCE the logit's gradient is ``-(1 - sigma(s))`` on a positive and
``+sigma(s)`` on a negative (BPR: ``-/+ sigma(-diff)``), and it multiplies the
same per-user vector in every row. For implicit MF, item i's row moves by
``c_i * [p_u, 1]`` with ``c_i > 0`` for a positive and ``< 0`` for a negative;
for NeuMF the GMF part of the row moves by ``c_i * (p_u * w_gmf)`` (the MLP part
by ``c_i`` times an item-dependent vector). The attacker does not know ``p_u``
and needs no model internals (:meth:`~securefedrec.models.base.Model.item_rows`
only):

1. take the touched rows and their coordinate-wise signs ``S`` (the signs make
   the consistent coordinates -- every coordinate of MF, the GMF block of
   NeuMF -- weigh as much as the large, item-dependent MLP ones);
2. the top singular vector ``v`` of ``S`` is the common user direction up to a
   sign; ``S v`` splits the touched items in two groups;
3. orientation: which group are the positives? The sampling rule is public:
   ``n`` positives bring ``k * n`` uniform draws (``k`` = negatives x local
   epochs) from the ``m - n`` other items, i.e. about
   ``D(n) = (m - n)(1 - (1 - 1/(m - n))^(k n))`` distinct negatives. The
   attacker keeps the assignment whose other group is closer to that count
   (:func:`orient`). It only fails when a user holds about half the catalogue,
   where both assignments fit (not on MovieLens: the most active ML-100K user
   has 44 %).

Several local epochs, Adam's sign steps (``lr * sign(g)``), BPR and weight
decay keep the sign structure; DP noise fills every row and blurs the signs (the split falls
towards chance as the noise grows). On the sum of a round the attacker
ranks the items by the oriented score ``S v`` (the positive group taken as the
smaller one: in a round's sum the net-positive items are the popular ones, a
minority) and predicts the ``n`` highest, ``n`` the public mean activity.

Measured on ml-100k loo implicit (one user per client, one round, 32 factors,
4 negatives, one local epoch of SGD; ``securefedrec attack rated-items --feedback
implicit --split loo --dataset ml-100k --model M --rounds 1``): plaintext at
``--sample-rate 1``, F1 1.0 and AUC 1.0 for implicit-mf and ncf (baseline 0.144);
SecAgg+ at ``--sample-rate 0.1``, F1 = baseline = 0.235 (implicit-mf) and 0.286 (ncf).
On synthetic data it stays >= 0.97 with 2 local epochs, Adam, BPR or weight decay
(0.80 for implicit-mf with 3 epochs of Adam).

Under secure aggregation the server only has the sum of the round's survivors
(>= threshold users). Its best per-user guess is then the same for every user
of that round: the rows of the sum, which rank items by popularity in the round.

Metric: mean per-user F1 of the predicted set (the AUC of the attacker's item
ranking is in ``details``). Baseline: the same inference fed *another* user's
view from the same round, i.e. what population-level knowledge alone gives
(popular items); under secure aggregation every user of a round has the same
view, so the attack cannot beat it. ``details`` also has chance (random
guessing) F1 and AUC 0.5, and ``popularity_f1``: the inference on the round's
sum (what the server gets under secure aggregation) scored for each user.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from attacks.base import AttackResult, Observed, ObservingAttack, auc, f1_score, item_scores, mean, other_user
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError
from securefedrec.models.base import Model

__all__ = ["RatedItemsAttack", "expected_negatives", "infer_items", "interaction_scores", "negative_draws",
           "orient", "predict_rated"]


def predict_rated(scores: np.ndarray, expected: int) -> np.ndarray:
    """Predicted rated set from row norms: the non-zero rows of a sparse update, else the top ``expected``."""
    nonzero = scores > 0
    if not nonzero.all():
        return nonzero
    return _top(scores, expected)


def _top(scores: np.ndarray, expected: int) -> np.ndarray:
    top = np.zeros(len(scores), dtype=bool)
    top[np.argsort(-scores, kind="stable")[: max(1, expected)]] = True
    return top


def expected_negatives(positives: int, num_items: int, draws_per_positive: int) -> float:
    """Expected distinct negatives of a user with ``positives`` items: ``draws_per_positive`` uniform
    draws per positive, with replacement, from the ``num_items - positives`` other items."""
    others = num_items - positives
    if others <= 0 or positives <= 0:
        return 0.0
    return float(others * (1.0 - (1.0 - 1.0 / others) ** (draws_per_positive * positives)))


def orient(side: np.ndarray, num_items: int, draws_per_positive: int) -> np.ndarray:
    """Which of the two groups of touched items (``side`` True / False) holds the positives.

    Returns ``side`` or ``~side``: the assignment whose other group has a size closer to the
    expected distinct negatives of its positives (:func:`expected_negatives`).
    """
    a, b = int(side.sum()), int((~side).sum())
    fit_a = abs(b - expected_negatives(a, num_items, draws_per_positive))
    fit_b = abs(a - expected_negatives(b, num_items, draws_per_positive))
    return side if fit_a <= fit_b else ~side


def interaction_scores(rows: np.ndarray, draws_per_positive: int, *, summed: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Implicit feedback: per item, a score that is positive on the items inferred as interacted.

    ``rows`` are the item rows of one update (:meth:`Model.item_rows`). Returns ``(scores,
    touched)``: ``scores`` is the projection of each touched row's signs on the top singular
    vector of those signs, oriented so that the inferred positives are > 0 (untouched items: 0);
    ``touched`` marks the non-zero rows. Orientation (module docstring): by the expected count
    of negatives (:func:`orient`) for one client's update (an active user's update may touch
    every item), the smaller group for the sum of a round (``summed``).
    """
    touched = (rows != 0).any(axis=1)
    scores = np.zeros(rows.shape[0], dtype=np.float64)
    if touched.sum() < 2:
        scores[touched] = 1.0
        return scores, touched
    signs = np.sign(rows[touched])
    _, _, vt = np.linalg.svd(signs, full_matrices=False)
    proj = signs @ vt[0]
    side = proj > 0
    if summed:
        positive = side if side.sum() <= (~side).sum() else ~side
    else:
        positive = orient(side, rows.shape[0], draws_per_positive)
    scores[touched] = proj if (positive == side).all() else -proj
    return scores, touched


def infer_items(update: np.ndarray, model: Model, expected: int, draws_per_positive: int | None, *,
                summed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The attacker's inference on one update, or on the sum of a round: ``(predicted set, item scores)``.

    ``draws_per_positive`` is ``None`` for explicit feedback (row norms, :func:`predict_rated`),
    else negatives per positive times local epochs (:func:`interaction_scores`): one client's
    update predicts the inferred positives, the sum of a round (``summed``) the top ``expected``
    items by score.
    """
    if draws_per_positive is None:
        s = item_scores(update, model)
        return predict_rated(s, expected), s
    s, _ = interaction_scores(model.item_rows(update), draws_per_positive, summed=summed)
    return (_top(s, expected) if summed else s > 0), s


def negative_draws(config: ExperimentConfig) -> int | None:
    """Negative draws per positive in one round (negatives x local epochs); ``None`` on explicit data."""
    if config.data.feedback != "implicit":
        return None
    return config.model.negatives * config.model.local_epochs


class RatedItemsAttack(ObservingAttack):
    """Infer each user's rated (or interacted) items from the server's view of one round.

    Args:
        rounds: rounds to run; each user is attacked in the first round it took part in.
        margin, seed: see :class:`~attacks.base.Attack`.
    """

    name: ClassVar[str] = "rated-items"
    metric: ClassVar[str] = "f1"

    def __init__(self, *, rounds: int = 1, margin: float = 0.05, seed: int = 0) -> None:
        super().__init__(rounds=rounds, margin=margin, seed=seed)

    def infer(self, config: ExperimentConfig, obs: Observed) -> AttackResult:
        """Run ``rounds`` rounds, infer every attacked user's items, compare with the baseline."""
        model, data = obs.model, obs.simulation.pool.data
        m = obs.simulation.dataset.num_items
        expected = round(float(np.mean(data.counts)))  # public: the mean activity of a user
        draws = negative_draws(config)
        first = obs.first_view_of()
        # the attacker's per-user inference: on its own update if revealed, else on the round's sum
        inferred: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        on_sum: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for c, view in first.items():
            update = view.update_of(c)
            if view.round_id not in on_sum:
                on_sum[view.round_id] = infer_items(view.total, model, expected, draws, summed=True)
            inferred[c] = (on_sum[view.round_id] if update is None
                           else infer_items(update, model, expected, draws))
        truth = {c: np.isin(np.arange(m), data.user_items(c)) for c in first}
        attacked = [c for c in sorted(first) if 0 < truth[c].sum() < m]
        if not attacked:
            raise ConfigError("rated-items: no user with training ratings took part in the rounds run")
        donors = other_user({c: first[c] for c in attacked}, np.random.default_rng(self.seed))
        rng = np.random.default_rng([self.seed, 1])

        def score(user: int, guess: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
            predicted, s = guess
            return f1_score(predicted, truth[user]), auc(s, truth[user])

        own = [score(c, inferred[c]) for c in attacked]
        base = [score(c, inferred[donors[c]]) for c in attacked]
        popular = [score(c, on_sum[first[c].round_id]) for c in attacked]
        chance = [f1_score(rng.random(m) < truth[c].mean(), truth[c]) for c in attacked]
        naive = {} if draws is None or not obs.views or obs.views[0].individual is None else {
            # what the explicit attack's non-zero rows give here: positives and sampled negatives
            "nonzero_rows_f1": mean([f1_score(item_scores(u, model) > 0, truth[c]) for c in attacked
                                     if (u := first[c].update_of(c)) is not None])}
        f1, f1_base = mean([a for a, _ in own]), mean([a for a, _ in base])
        return self.result(
            config, f1, f1_base, f1 > f1_base + self.margin,
            auc=mean([b for _, b in own]), auc_baseline=mean([b for _, b in base]),
            chance_f1=mean(chance), chance_auc=0.5, users_attacked=len(attacked),
            popularity_f1=mean([a for a, _ in popular]), popularity_auc=mean([b for _, b in popular]),
            feedback=config.data.feedback, model=config.model.name,
            inference=("non-zero item rows" if draws is None
                       else "signs of the item rows along their top singular vector"),
            **naive, rounds=len(obs.views), view="individual updates" if obs.views and obs.views[0].individual
            is not None else "sum of the round's survivors",
            baseline_is="the same inference on another user's view of the same round",
        )
