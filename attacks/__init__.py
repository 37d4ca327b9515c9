"""Attack harness for securefedrec: what each defence really stops.

Each attack runs a configuration, sees exactly what its protocol reveals to
the server (:class:`ServerView`, built by :func:`observe`), computes its metric
and a baseline, and returns an :class:`AttackResult` (``attack``, ``protocol``,
``metric``, ``value``, ``baseline``, ``success``). Start with :func:`run_attack`
or :func:`get_attack` (names in :data:`ATTACKS`).

The names are imported on first use (PEP 562): ``attacks.cli``, which the
``securefedrec`` parser loads, must not pay for torch.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from attacks.attribute import AttributeInferenceAttack
    from attacks.base import (
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
    from attacks.malicious.attack import MaliciousServerAttack
    from attacks.poisoning import PoisoningAttack
    from attacks.rated_items import RatedItemsAttack
    from attacks.reconstruction import RatingReconstructionAttack

from attacks.registry import ATTACKS

_LAZY = {
    "AttributeInferenceAttack": "attribute",
    **{name: "base" for name in ("Attack", "AttackResult", "Observation", "ObservingAggregator", "ServerView",
                                 "auc", "f1_score", "get_attack", "item_scores", "observe", "run_attack")},
    "MaliciousServerAttack": "malicious.attack",
    "PoisoningAttack": "poisoning",
    "RatedItemsAttack": "rated_items",
    "RatingReconstructionAttack": "reconstruction",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'attacks' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"attacks.{module}"), name)
    globals()[name] = value
    return value

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
