"""The attack registry: name -> ``"module:Class"``, importing nothing (the CLI's parser reads it).

:func:`attacks.base.get_attack` builds an attack from it; its errors list these names.
"""

from __future__ import annotations

__all__ = ["ATTACKS"]

ATTACKS: dict[str, str] = {
    "rated-items": "attacks.rated_items:RatedItemsAttack",
    "rating-reconstruction": "attacks.reconstruction:RatingReconstructionAttack",
    "attribute-inference": "attacks.attribute:AttributeInferenceAttack",
    "poisoning": "attacks.poisoning:PoisoningAttack",
    "malicious-server": "attacks.malicious.attack:MaliciousServerAttack",
}
"""Attack name -> ``"module:Class"`` of its :class:`Attack`."""
