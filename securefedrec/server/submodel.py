"""Submodel rounds in the simulator (``--submodel``, ``--item-epsilon``): clients send only their rows.

The model's :meth:`~securefedrec.models.base.Model.item_rows` cut its global
vector into one row per item and the shared coordinates
(:class:`protocols.submodel.RowLayout`). After local training each sampled
client hands :class:`protocols.submodel.SubmodelAggregator` the rows its delta
touched (an item a client never touched has a zero row, ``Model.item_rows``);
the client itself reports a randomized-response set of rows (item-level
epsilon-LDP), downloads those rows, and the protocol sums exactly over every
coordinate: the pairwise masks cover each pair's common rows, and the secrets are
Shamir-shared on SecAgg+'s graph (``--protocol secagg``: with every client; the
security argument is in :mod:`protocols.submodel`).

Notes:
    What the simulator shortcuts: local training runs on the whole broadcast, so a
    true item that the randomized response dropped (probability ``1 / (1 + e^eps)``)
    still shapes the client's local part this round, though its row update is never
    sent. A deployed client would skip those ratings for the round; the global
    update is the same, the local part differs only on them.
"""

from __future__ import annotations

import functools

import numpy as np

from protocols import RoundConfig, Stage
from protocols.secagg import CORRUPTION_RATE
from protocols.submodel import RowLayout, SubmodelAggregator, SubmodelInput, SubmodelResult
from securefedrec.compression.codecs import snapshot_bytes
from securefedrec.models.base import Model
from securefedrec.models.compressed import CompressedModel

COMPLETE = 2**31 - 1
"""A degree that every round caps at n - 1: the complete sharing graph (plain SecAgg)."""

__all__ = ["SubmodelRounds", "row_layout", "submodel_inputs"]


def row_layout(model: Model) -> RowLayout:
    """The public row layout of ``model``'s global vector: one row per item, the rest shared.

    A compressed model's rows are its items' own rows of the compressed vector
    (:meth:`~securefedrec.models.compressed.CompressedModel.own_rows`: int8, int4, prune).
    """
    if isinstance(model, CompressedModel):
        return RowLayout(model.length, model.own_rows())
    coords = np.asarray(model.item_rows(np.arange(model.length, dtype=np.int64)), dtype=np.int64)
    return RowLayout(model.length, coords)


def submodel_inputs(layout: RowLayout, deltas: np.ndarray, clients: list[int]) -> dict[int, SubmodelInput]:
    """Each client's touched rows (non-zero rows of its delta), its values there and its shared values."""
    out = {}
    for j, cid in enumerate(clients):
        block = deltas[j][layout.rows]
        touched = np.flatnonzero(np.any(block != 0.0, axis=1))
        out[cid] = SubmodelInput(touched, block[touched], deltas[j][layout.shared])
    return out


class SubmodelRounds:
    """The submodel aggregation of a :class:`~securefedrec.server.simulation.Simulation`.

    Args:
        model: the run's model (its item rows define the layout).
        item_epsilon: each client's randomized-response epsilon.
        malicious: the server threat model (signed keys, consistency round binding the table).
        workers: processes that simulate the clients.
        sparse: share each client's secrets on SecAgg+'s k-regular graph (``--protocol secagg+``;
            k from the round's ``neighbors``, else chosen from n and ``dropout_rate``);
            ``False`` shares them with every client (``--protocol secagg``). The pairwise
            masks cover every pair's rows in common either way.
        dropout_rate: the share of clients the graph must tolerate losing by the unmask stage.
        corruption_rate: the fraction of clients the server may control (t' counts them).
    """

    def __init__(
        self, model: Model, item_epsilon: float, *, malicious: bool = True, workers: int = 1,
        sparse: bool = True, dropout_rate: float = 0.05, corruption_rate: float = CORRUPTION_RATE,
    ) -> None:
        self.model = model
        self.item_epsilon = item_epsilon
        self._new = functools.partial(SubmodelAggregator, item_epsilon=item_epsilon, malicious=malicious,
                                      workers=workers, neighbors=None if sparse else COMPLETE,
                                      dropout_rate=dropout_rate, corruption_rate=corruption_rate)
        self._aggregator: SubmodelAggregator | None = None
        if not (isinstance(model, CompressedModel) and model.needs_popularity):
            self._aggregator = self.aggregator  # else after the popularity count round (prune:F)

    @property
    def layout(self) -> RowLayout:
        """The rows of the model's global vector (:func:`row_layout`)."""
        return self.aggregator.layout

    @property
    def aggregator(self) -> SubmodelAggregator:
        """The protocol's aggregator over :attr:`layout`, built at the first use."""
        if self._aggregator is None:
            self._aggregator = self._new(row_layout(self.model))
        return self._aggregator

    def aggregate(
        self, deltas: np.ndarray, clients: list[int], config: RoundConfig, plan: dict[int, Stage],
        rng: np.random.Generator,
    ) -> tuple[SubmodelResult, int]:
        """One round over the clients' dense deltas; the result and the bytes of the rows downloaded
        (a compressed model's rows as stored: int8 / int4 with their scales)."""
        self.aggregator.rng = rng
        result = self.aggregator.aggregate(submodel_inputs(self.layout, deltas, clients), config, plan)
        model = self.model
        down = sum(model.rows_bytes(size) if isinstance(model, CompressedModel)
                   else snapshot_bytes(self.layout.client_length(size)) for size in result.reported.values())
        return result, down
