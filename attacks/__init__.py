"""Attack harness for securefedrec: what each defence really stops.

Each attack runs a configuration, sees exactly what its protocol reveals to
the server (:class:`ServerView`, built by :func:`observe`), computes its metric
and a baseline, and returns an :class:`AttackResult` (``attack``, ``protocol``,
``metric``, ``value``, ``baseline``, ``success``). Start with :func:`run_attack`
or :func:`get_attack` (names in :data:`ATTACKS`).
"""

from attacks.attribute import AttributeInferenceAttack
from attacks.base import (
    ATTACKS,
    Attack,
    AttackResult,
    Observation,
    ObservingAggregator,
    ServerView,
    auc,
    f1_score,
    get_attack,
    item_scores,
    observe,
    run_attack,
)
from attacks.malicious_server import MaliciousServerAttack
from attacks.poisoning import PoisoningAttack
from attacks.rated_items import RatedItemsAttack
from attacks.reconstruction import RatingReconstructionAttack

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "AttributeInferenceAttack",
    "MaliciousServerAttack",
    "Observation",
    "ObservingAggregator",
    "PoisoningAttack",
    "RatedItemsAttack",
    "RatingReconstructionAttack",
    "ServerView",
    "auc",
    "f1_score",
    "get_attack",
    "item_scores",
    "observe",
    "run_attack",
]
