"""Rows of the global vector, and randomized response over a client's set of rows.

A model's global vector of length L is cut into ``num_rows`` rows of ``width``
coordinates each (for matrix factorization: item i's factors and bias) and the
*shared* coordinates that belong to no row (the global mean, an MLP's weights):
a :class:`RowLayout`. A submodel client holds the shared coordinates and the
rows of its index set; :func:`randomized_response` draws that set from the rows
the client really touched.

Notes:
    Privacy of the index set (Niu et al., MobiCom 2020, section 4): the server learns
    the perturbed set, nothing else about the true one. Every row's indicator bit is
    reported through symmetric randomized response: a true row is kept with probability
    ``p = e^eps / (1 + e^eps)``, every other row joins with ``1 - p``, independently.
    For any one row the two likelihood ratios are ``p / (1 - p) = e^eps``, so each
    row's membership is eps-LDP (item-level local DP, Warner 1965; the guarantee the
    report calls ``item_epsilon``). Symmetric RR is the least false-positive rate for a
    given eps among the rules that keep this guarantee, which matters because the false
    positives are what a client pays for: ``(num_rows - m) / (1 + e^eps)`` extra rows.
    A true row that is not kept is neither downloaded nor uploaded this round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from protocols.errors import ConfigError

__all__ = ["RowLayout", "keep_probability", "randomized_response"]


def keep_probability(epsilon: float) -> float:
    """``e^eps / (1 + e^eps)``: the chance that a true row stays in the reported set."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"item epsilon must be a positive finite number, got {epsilon}")
    return 1.0 / (1.0 + math.exp(-epsilon))


def randomized_response(
    true_rows: np.ndarray, num_rows: int, epsilon: float, rng: np.random.Generator
) -> np.ndarray:
    """The reported set (sorted int64 row ids): each true row kept w.p. p, each other row added w.p. 1 - p.

    ``rng`` is the client's own source (draw it from ``os.urandom``: the privacy of the set
    rests on the server not predicting it). The false positives are drawn as their
    binomial count and a uniform subset of that size, which has exactly the law of one
    independent coin per row, in time linear in the set's size rather than the catalogue's.

    Raises:
        ConfigError: rows outside ``[0, num_rows)`` or repeated, or a bad ``epsilon``.
    """
    p = keep_probability(epsilon)
    rows = np.asarray(true_rows, dtype=np.int64)
    if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= num_rows)):
        raise ConfigError(f"true rows must be a 1-D array of ids in [0, {num_rows})")
    rows = np.unique(rows)
    if rows.size != np.asarray(true_rows).size:
        raise ConfigError("true rows must not repeat")
    kept = rows[rng.random(rows.size) < p]
    others = num_rows - rows.size
    count = int(rng.binomial(others, 1.0 - p)) if others else 0
    picks = np.sort(rng.choice(others, size=count, replace=False)) if count else np.zeros(0, np.int64)
    # the j-th row outside the true set: j plus the number of true rows at or below it
    fake = picks + np.searchsorted(rows - np.arange(rows.size), picks, side="right")
    return np.union1d(kept, fake.astype(np.int64))


@dataclass(frozen=True, eq=False)
class RowLayout:
    """Where each row of the global vector sits: public, the same for every party.

    Attributes:
        length: L, the global vector's length.
        rows: ``(num_rows, width)`` coordinates of each row (int64, disjoint, inside ``[0, L)``).
        shared: the coordinates in no row, ascending (every client holds them).
    """

    length: int
    rows: np.ndarray = field(repr=False)
    shared: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rows = np.asarray(self.rows, dtype=np.int64)
        if rows.ndim != 2 or rows.shape[1] < 1:
            raise ConfigError(f"row layout: rows must be a 2-D (num_rows, width) array, not {rows.shape}")
        flat = rows.ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= self.length):
            raise ConfigError(f"row layout: a coordinate lies outside [0, {self.length})")
        taken = np.zeros(self.length, dtype=bool)
        taken[flat] = True
        if int(taken.sum()) != flat.size:
            raise ConfigError("row layout: two rows share a coordinate")
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "shared", np.flatnonzero(~taken).astype(np.int64))

    @classmethod
    def blocks(cls, num_rows: int, width: int, shared: int = 0) -> RowLayout:
        """Rows one after another (row r at ``[r * width, (r + 1) * width)``), then ``shared`` coordinates."""
        rows = np.arange(num_rows * width, dtype=np.int64).reshape(num_rows, width)
        return cls(num_rows * width + shared, rows)

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return int(self.rows.shape[0])

    @property
    def width(self) -> int:
        """Coordinates per row."""
        return int(self.rows.shape[1])

    def client_length(self, set_size: int) -> int:
        """Length of the vector of a client holding ``set_size`` rows: the shared coordinates, its rows."""
        return int(self.shared.size + set_size * self.width)

    def coordinates(self, rows: np.ndarray) -> np.ndarray:
        """Global coordinates of a client's vector: the shared ones, then each of ``rows`` (ascending)."""
        return np.concatenate([self.shared, self.rows[rows].ravel()])

    def positions(self, own: np.ndarray, common: np.ndarray) -> np.ndarray:
        """Positions of the shared coordinates and the rows ``common`` in a vector holding the rows ``own``.

        ``common`` must be a sorted subset of the sorted ``own``; a pairwise mask on the
        intersection of two sets covers exactly these positions, in this order, for both.
        """
        at = np.searchsorted(own, common)
        s, w = self.shared.size, self.width
        rows = (s + at[:, None] * w + np.arange(w)[None, :]).ravel()
        return np.concatenate([np.arange(s, dtype=np.int64), rows.astype(np.int64)])
