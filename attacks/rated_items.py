"""``rated-items``: the server infers which items a user rated from that user's update.

Our client's update touches only the rows of the items its user rated: the
gradient of item i's factor and bias is zero unless the user rated i
(:func:`securefedrec.models.mf.item_gradients`). So from an individual update the
rated set is simply the non-zero rows; when noise (DP) fills every row, the
attacker ranks items by row norm and predicts the ``n`` largest, ``n`` being
the public mean number of ratings per user.

Under secure aggregation the server only has the sum of the round's survivors
(>= threshold users). Its best per-user guess is then the same for every user
of that round: the rows of the sum.

Metric: mean per-user F1 of the predicted set (the AUC of the row-norm
ranking is in ``details``). Baseline: the same inference fed *another* user's
view from the same round, i.e. what population-level knowledge alone gives
(popular items); under secure aggregation every user of a round has the same
view, so the attack cannot beat it. ``details`` also has chance (random
guessing) F1 and AUC 0.5.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from attacks.base import AttackResult, Observed, ObservingAttack, auc, f1_score, item_scores, mean, other_user
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError

__all__ = ["RatedItemsAttack", "predict_rated"]


def predict_rated(scores: np.ndarray, expected: int) -> np.ndarray:
    """Predicted rated set from row norms: the non-zero rows of a sparse update, else the top ``expected``."""
    nonzero = scores > 0
    if not nonzero.all():
        return nonzero
    top = np.zeros(len(scores), dtype=bool)
    top[np.argsort(-scores, kind="stable")[: max(1, expected)]] = True
    return top


class RatedItemsAttack(ObservingAttack):
    """Infer each user's rated items from the server's view of one round.

    Args:
        rounds: rounds to run; each user is attacked in the first round it took part in.
        margin, seed: see :class:`~attacks.base.Attack`.
    """

    name: ClassVar[str] = "rated-items"
    metric: ClassVar[str] = "f1"

    def __init__(self, *, rounds: int = 1, margin: float = 0.05, seed: int = 0) -> None:
        super().__init__(rounds=rounds, margin=margin, seed=seed)

    def infer(self, config: ExperimentConfig, obs: Observed) -> AttackResult:
        """Run ``rounds`` rounds, infer every attacked user's rated items, compare with the baseline."""
        model, data = obs.model, obs.simulation.pool.data
        m = obs.simulation.dataset.num_items
        expected = round(float(np.mean(data.counts)))  # public: the mean activity of a user
        first = obs.first_view_of()
        # the attacker's per-user scores: its own update if revealed, else the round's sum
        scores: dict[int, np.ndarray] = {}
        for c, view in first.items():
            update = view.update_of(c)
            scores[c] = item_scores(view.total if update is None else update, model)
        truth = {c: np.isin(np.arange(m), data.user_items(c)) for c in first}
        attacked = [c for c in sorted(first) if 0 < truth[c].sum() < m]
        if not attacked:
            raise ConfigError("rated-items: no user with training ratings took part in the rounds run")
        donors = other_user({c: first[c] for c in attacked}, np.random.default_rng(self.seed))
        rng = np.random.default_rng([self.seed, 1])

        def score(user: int, source: int) -> tuple[float, float]:
            s = scores[source]
            return f1_score(predict_rated(s, expected), truth[user]), auc(s, truth[user])

        own = [score(c, c) for c in attacked]
        base = [score(c, donors[c]) for c in attacked]
        chance = [f1_score(rng.random(m) < truth[c].mean(), truth[c]) for c in attacked]
        f1, f1_base = mean([a for a, _ in own]), mean([a for a, _ in base])
        return self.result(
            config, f1, f1_base, f1 > f1_base + self.margin,
            auc=mean([b for _, b in own]), auc_baseline=mean([b for _, b in base]),
            chance_f1=mean(chance), chance_auc=0.5, users_attacked=len(attacked),
            rounds=len(obs.views), view="individual updates" if obs.views and obs.views[0].individual
            is not None else "sum of the round's survivors",
            baseline_is="the same inference on another user's view of the same round",
        )
