"""``--model-compression SPEC``: the text form of a compressed model, parsed without torch.

A spec is ``none`` or ``+``-joined parts: at most one *structure* and optionally ``int8``:

- ``hash:R``: signed hashing of the item rows into ``ceil(items / R)`` shared rows;
- ``qr:R``: quotient-remainder compositional rows (Shi et al., KDD 2020), two tables of
  about ``items / R`` rows together (at least about ``2 sqrt(items)``: ``r + items / r``);
- ``mixed:R``: mixed-dimension item rows by popularity (Ginart et al. 2021), ``1 / R`` of the
  item table's values in all;
- ``prune:F``: the rows of the ``F`` least popular share of the items pruned (fixed at zero);
- ``int8``: the global vector stored and broadcast as int8 with one float32 scale per row.

:mod:`securefedrec.models.compressed` builds the model; :mod:`securefedrec.config` validates
``--model-compression`` with :func:`parse_model_compression`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["POPULARITY_STRUCTURES", "STRUCTURES", "ModelCompression", "parse_model_compression"]

STRUCTURES = ("hash", "qr", "mixed", "prune")
"""The structural techniques (each takes one number)."""

POPULARITY_STRUCTURES = ("mixed", "prune")
"""The structures that need the items' popularity (a secure aggregate of counts)."""


@dataclass(frozen=True)
class ModelCompression:
    """A parsed ``--model-compression``.

    Attributes:
        structure: one of :data:`STRUCTURES`, or ``None`` (the item rows as they are).
        amount: ``R`` (item-table ratio, > 1) for hash, qr and mixed; the pruned fraction
            ``F`` in (0, 1) for prune; 1.0 without a structure.
        int8: whether the global vector is stored and broadcast as int8 with per-row scales.
    """

    structure: str | None
    amount: float
    int8: bool

    @property
    def active(self) -> bool:
        """Whether anything is compressed."""
        return self.structure is not None or self.int8

    @property
    def needs_popularity(self) -> bool:
        """Whether the structure is chosen from the items' popularity."""
        return self.structure in POPULARITY_STRUCTURES


def parse_model_compression(text: str) -> ModelCompression:
    """``"mixed:8+int8"`` -> :class:`ModelCompression`.

    Raises:
        ValueError: an unknown part, a bad number, two structures, or a repeated ``int8``.
    """
    if text.strip() == "none":
        return ModelCompression(None, 1.0, False)
    structure: str | None = None
    amount, int8 = 1.0, False
    for part in text.split("+"):
        name, _, arg = part.strip().partition(":")
        if name == "int8" and not arg:
            if int8:
                raise ValueError(f"int8 given twice in {text!r}")
            int8 = True
            continue
        if name not in STRUCTURES:
            raise ValueError(f"unknown model compression {part!r} in {text!r}; expected none, or "
                             f"{', '.join(n + ':X' for n in STRUCTURES)} and/or int8 joined by '+'")
        if structure is not None:
            raise ValueError(f"at most one of {', '.join(STRUCTURES)} in {text!r}")
        try:
            value = float(arg)
        except ValueError:
            raise ValueError(f"{name} needs a number, as in {name}:{'0.9' if name == 'prune' else '8'}; "
                             f"got {part!r}") from None
        if name == "prune":
            if not (math.isfinite(value) and 0 < value < 1):
                raise ValueError(f"prune:F takes the pruned fraction F in (0, 1), got {part!r}")
        elif not (math.isfinite(value) and value > 1):
            raise ValueError(f"{name}:R takes a ratio R > 1, got {part!r}")
        structure, amount = name, value
    return ModelCompression(structure, amount, int8)
