"""``--model-compression SPEC``: the text form of a compressed model, parsed without torch.

A spec is ``none`` or ``+``-joined parts: at most one *structure* and optionally one storage
width, ``int8`` or ``int4``:

- ``hash:R``: signed hashing of the item rows into ``ceil(items / R)`` shared rows;
- ``qr:R``: quotient-remainder compositional rows (Shi et al., KDD 2020), two tables of
  about ``items / R`` rows together (at least about ``2 sqrt(items)``: ``r + items / r``);
- ``mixed:R``: mixed-dimension item rows by popularity (Ginart et al. 2021), ``1 / R`` of the
  item table's values in all;
- ``prune:F``: the rows of the ``F`` least popular share of the items pruned (fixed at zero);
- ``int8``: the global vector stored and broadcast as int8 with one float16 scale per row;
- ``int4``: the same with 4-bit values (-7..7, two to a byte): 7.1x alone at 33 values a row, so a
  mild structure (``mixed:1.08``) then reaches 8x.

:mod:`securefedrec.models.compressed` builds the model; :mod:`securefedrec.config` validates
``--model-compression`` with :func:`parse_model_compression`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["POPULARITY_STRUCTURES", "QUANTIZERS", "STRUCTURES", "ModelCompression", "parse_model_compression"]

STRUCTURES = ("hash", "qr", "mixed", "prune")
"""The structural techniques (each takes one number)."""

QUANTIZERS = {"int8": 8, "int4": 4}
"""The storage widths: name -> bits per value (signed, symmetric: ``+-(2^(bits-1) - 1)`` levels)."""

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
        int4: the same with 4-bit values (at most one of ``int8`` and ``int4``).
    """

    structure: str | None
    amount: float
    int8: bool
    int4: bool = False

    @property
    def bits(self) -> int:
        """Bits per stored value: 8 or 4 when quantized, else 32 (float32)."""
        return 8 if self.int8 else 4 if self.int4 else 32

    @property
    def quantized(self) -> bool:
        """Whether the vector is stored as integers with per-row scales (``int8`` or ``int4``)."""
        return self.int8 or self.int4

    @property
    def active(self) -> bool:
        """Whether anything is compressed."""
        return self.structure is not None or self.quantized

    @property
    def needs_popularity(self) -> bool:
        """Whether the structure is chosen from the items' popularity."""
        return self.structure in POPULARITY_STRUCTURES


def parse_model_compression(text: str) -> ModelCompression:
    """``"mixed:8+int8"`` -> :class:`ModelCompression`.

    Raises:
        ValueError: an unknown part, a bad number, two structures, or two storage widths.
    """
    if text.strip() == "none":
        return ModelCompression(None, 1.0, False)
    structure: str | None = None
    amount, quantizer = 1.0, ""
    for part in text.split("+"):
        name, _, arg = part.strip().partition(":")
        if name in QUANTIZERS and not arg:
            if quantizer:
                raise ValueError(f"at most one of {', '.join(QUANTIZERS)} in {text!r}")
            quantizer = name
            continue
        if name not in STRUCTURES:
            raise ValueError(f"unknown model compression {part!r} in {text!r}; expected none, or "
                             f"{', '.join(n + ':X' for n in STRUCTURES)} and/or int8 or int4 joined by '+'")
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
    return ModelCompression(structure, amount, quantizer == "int8", quantizer == "int4")
