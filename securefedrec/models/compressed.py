"""A compressed model (``--model-compression``): any registered model behind a smaller global vector.

:class:`CompressedModel` wraps the configured model (the *inner* model). Its global vector
``theta`` (length ``Lc``) is the compressed parameters; the inner model's global vector is
``v = E theta`` for a public, sparse, linear *expansion* ``E`` (:class:`Structure`), built from
the inner model's item rows (:meth:`~securefedrec.models.base.Model.item_rows` of the index
vector says where each item's coordinates sit; every other coordinate -- MF's intercept,
NCF's layers -- passes through unchanged):

- ``hash:R``: signed hashing (Weinberger et al. 2009 applied to rows): item ``i``'s row is
  ``s(i) T[h(i)]`` for a table ``T`` of ``ceil(items / R)`` rows; ``h`` is a public seeded
  permutation modulo the table size (every shared row holds as many items, within one) and
  ``s(i) = +-1`` a public seeded sign, both from ``default_rng([seed, HASH_STREAM])``;
- ``qr:R``: quotient-remainder compositional rows (Shi et al., KDD 2020, the additive
  variant, which keeps ``E`` linear): ``Q[i // r] + S[i % r]``, with ``r`` chosen so that
  the two tables hold about ``items / R`` rows together; every item keeps a distinct row;
- ``mixed:R``: mixed-dimension rows (Ginart et al. 2021): item ``i`` keeps ``d_i`` of the
  row's ``w`` columns, ``d_i = clip(round(w (c_i / c_max)^alpha), 1, w)`` for its popularity
  ``c_i``, ``alpha`` found by bisection so the item table shrinks ``R`` times. Ginart et
  al. learn a projection of each block to ``w``; here the projection is a fixed truncation
  (the kept columns first, the rest zero), so ``E`` stays linear and costs nothing on the
  wire. For MF and implicit MF the item bias is kept first (``d_i = 1``: bias only);
- ``prune:F``: the rows of the ``F`` least popular share of the items are removed: fixed
  at zero (MF then predicts ``mu + b_u`` for them);
- ``int8`` (alone or after a structure): the compressed vector is stored on the device and
  broadcast as int8, with one float16 scale per stored row (rows narrower than ``w`` are
  grouped until a scale covers at least ``w`` values). The server keeps its float copy;
  the clients train on the dequantized values;
- ``int4``: the same with 4-bit values (-7..7 times the block's scale, two values to a
  byte): 7.1x alone at ``w = 33`` (16.5 bytes and a 2-byte scale per row instead of 132 bytes), so
  a mild structure (``mixed:1.08+int4``, 8 % fewer values) reaches 8x.

The popularity of ``mixed`` and ``prune`` is the secure aggregate of the items' counts
(:func:`secure_item_counts`): before round 1, every client sends its users' 0/1 item
indicators through the run's own aggregator (SecAgg+ reveals only the sum), so the
structure is public and the same for every client, and masked sums line up. That count
round is not part of the DP accounting: the simulator refuses these two structures with
``--dp`` (hash, qr, int8 and int4 compose with DP).

One round: a client expands ``theta`` (after the int8 / int4 round trip when set), trains the inner
model on ``v = E theta`` exactly as it would uncompressed, and sends ``E^T delta_v`` (the
chain rule). For one local epoch of SGD this is exactly the compressed model's step,
``-lr E^T grad_v = -lr grad_theta``; for several epochs (or Adam) the inner model's local
copy moves freely between its steps (shared rows are not re-tied on the device) and the
client sends the projection of that whole local trajectory -- to first order in ``lr`` the
same as training ``theta`` itself. The uplink therefore carries ``Lc`` values under every
protocol and composes with q8 / q16, ``mod:B``, random-k and user-level DP, which see only
the compressed vector.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from protocols import AggregationAborted, Aggregator, RoundConfig
from securefedrec.compression.codecs import snapshot_bytes
from securefedrec.errors import ConfigError
from securefedrec.models.base import LocalPart, Model, PaddedRatings, RatingsByUser, Trained
from securefedrec.models.compression_spec import ModelCompression

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig
    from securefedrec.models.pool import ClientPool

__all__ = [
    "FLOAT_BYTES",
    "HASH_STREAM",
    "SCALE_BYTES",
    "CompressedModel",
    "Structure",
    "build_structure",
    "half_scales",
    "model_bytes",
    "secure_item_counts",
]

FLOAT_BYTES = 4
"""Bytes per value of an uncompressed model as stored and sent (float32, like the broadcast)."""
HASH_STREAM = 180
"""``default_rng([seed, HASH_STREAM])`` draws the public hash of ``hash:R`` (once per run)."""
SCALE_BYTES = 2
"""Bytes of one int8 / int4 block scale as stored and sent (float16: its relative precision, 2^-11,
is far finer than int8's step of 1/127 of the block's largest magnitude)."""
COUNT_ROUND = 2**31 - 1
"""Round id of the popularity count round (apart from every training round's id)."""


@dataclass(frozen=True)
class Structure:
    """The public linear expansion ``v = E theta`` of a compressed model.

    Attributes:
        rows, cols, signs: the non-zeros of ``E``: ``v[rows[n]] += signs[n] * theta[cols[n]]``.
        inner_length: length L of the inner model's global vector.
        length: length Lc of the compressed vector (item part first, then the passthrough).
        row_lengths: the stored rows of the compressed vector, in order (they sum to Lc).
        decay_span: the server's weight decay shrinks ``theta[:decay_span]``.
        width: the inner model's item row width ``w``.
    """

    rows: np.ndarray
    cols: np.ndarray
    signs: np.ndarray
    inner_length: int
    length: int
    row_lengths: np.ndarray
    decay_span: int
    width: int

    def blocks(self) -> np.ndarray:
        """The int8 / int4 scale block of each compressed coordinate: rows merged to >= ``width`` values."""
        block = np.empty(self.length, np.int64)
        at, current, filled = 0, 0, 0
        for n in self.row_lengths.tolist():
            block[at : at + n] = current
            at, filled = at + n, filled + n
            if filled >= self.width:
                current, filled = current + 1, 0
        return block


def half_scales(scales: torch.Tensor) -> torch.Tensor:
    """``scales`` as float16, each rounded *up* to the next float16 value when rounding lost some of it,
    so the block's largest magnitude stays within the top level; capped at float16's largest value.

    (A value beyond ``top * 65504`` -- no embedding is -- would be clamped to the top level.)
    """
    finite = scales.clamp(max=torch.finfo(torch.float16).max)
    half = finite.to(torch.float16)
    low = half.to(scales.dtype) < finite
    return torch.where(low, torch.nextafter(half, torch.full_like(half, math.inf)), half)


def _column_priority(inner: Model, width: int) -> np.ndarray:
    """The order in which ``mixed`` keeps an item row's columns: MF's and implicit MF's bias first."""
    from securefedrec.models.implicit_mf import ImplicitMF
    from securefedrec.models.mf import MF

    if isinstance(inner, MF | ImplicitMF):  # row [q_i, b_i]: a rare item keeps its bias
        return np.concatenate([[width - 1], np.arange(width - 1)])
    return np.arange(width)


def _mixed_dims(counts: np.ndarray, width: int, budget: int) -> np.ndarray:
    """Per item ``clip(round(w (c / c_max)^alpha), 1, w)``, the smallest ``alpha`` within ``budget``."""
    rel = counts / max(float(counts.max()), 1.0)

    def dims(alpha: float) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.clip(np.rint(width * rel**alpha), 1, width).astype(np.int64)

    if dims(0.0).sum() <= budget:
        return dims(0.0)
    lo, hi = 0.0, 64.0
    if dims(hi).sum() > budget:
        raise ConfigError(f"mixed: {budget} item values cannot hold one value per item and the "
                          f"most popular items' full rows; choose a smaller ratio")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if dims(mid).sum() > budget else (lo, mid)
    return dims(hi)


def build_structure(inner: Model, spec: ModelCompression, seed: int,
                    popularity: np.ndarray | None = None) -> Structure:
    """The expansion of ``spec`` for ``inner``; ``popularity`` (per item counts) for mixed / prune.

    Raises:
        ConfigError: a popularity structure without counts, or a ratio too high for the catalogue.
    """
    L = inner.length
    index = np.asarray(inner.item_rows(np.arange(L, dtype=np.float64))).astype(np.int64)
    m, w = index.shape
    is_item = np.zeros(L, bool)
    is_item[index.ravel()] = True
    passthrough = np.flatnonzero(~is_item)
    ar_w = np.arange(w)
    if spec.needs_popularity and (popularity is None or popularity.shape != (m,)):
        raise ConfigError(f"model compression {spec.structure} needs the popularity of the {m} items "
                          f"(the count round, secure_item_counts)")
    structure, amount = spec.structure, spec.amount
    signs = np.ones(m * w)
    if structure is None:
        cols, rows = np.arange(m * w), index.ravel()
        lengths = np.full(m, w)
    elif structure == "hash":
        buckets = max(1, math.ceil(m / amount))
        rng = np.random.default_rng([seed, HASH_STREAM])
        bucket = rng.permutation(m) % buckets
        signs = np.repeat(rng.choice([-1.0, 1.0], size=m), w)
        cols, rows = (bucket[:, None] * w + ar_w).ravel(), index.ravel()
        lengths = np.full(buckets, w)
    elif structure == "qr":
        n = max(2, math.ceil(m / amount))
        disc = n * n - 4 * m
        r = max(1, math.ceil((n - math.sqrt(disc)) / 2)) if disc >= 0 else max(1, math.ceil(math.sqrt(m)))
        q = math.ceil(m / r)
        items = np.arange(m)
        quo = ((items // r)[:, None] * w + ar_w).ravel()
        rem = (((q + items % r))[:, None] * w + ar_w).ravel()
        cols, rows = np.concatenate([quo, rem]), np.concatenate([index.ravel(), index.ravel()])
        signs = np.ones(2 * m * w)
        lengths = np.full(q + r, w)
    elif structure == "mixed":
        dims = _mixed_dims(np.asarray(popularity, np.float64), w, max(m, math.floor(m * w / amount)))
        keep = np.arange(w)[None, :] < dims[:, None]  # (m, w) in priority order
        chosen = index[:, _column_priority(inner, w)]
        rows = chosen[keep]
        cols = np.arange(rows.size)
        signs = np.ones(rows.size)
        lengths = dims
    else:  # prune
        pruned = round(amount * m)
        order = np.argsort(np.asarray(popularity), kind="stable")  # least popular first, ties by id
        kept = np.sort(order[pruned:])
        rows = index[kept].ravel()
        cols = np.arange(rows.size)
        signs = np.ones(rows.size)
        lengths = np.full(kept.size, w)
    item_params = int(lengths.sum())
    decayed = int(np.count_nonzero(passthrough < inner.decay_span))
    tail = len(passthrough)
    tail_rows = np.full(tail // w, w) if w else np.zeros(0, np.int64)
    if tail % w:
        tail_rows = np.append(tail_rows, tail % w)
    return Structure(
        rows=np.concatenate([rows, passthrough]).astype(np.int64),
        cols=np.concatenate([cols, item_params + np.arange(tail)]).astype(np.int64),
        signs=np.concatenate([signs, np.ones(tail)]),
        inner_length=L, length=item_params + tail,
        row_lengths=np.concatenate([lengths, tail_rows]).astype(np.int64),
        decay_span=item_params + decayed, width=w,
    )


class CompressedModel(Model):
    """The inner model behind a compressed global vector (module docstring).

    Args:
        inner: the configured model.
        spec: the parsed ``--model-compression``.
        seed: the run's seed (the public hash).
        popularity: per item counts for ``mixed`` / ``prune``; without them the model waits for
            :meth:`set_popularity` (the simulator's count round) and refuses every other use.
    """

    name: ClassVar[str] = "compressed"
    feedback: ClassVar[tuple[str, ...]] = ("explicit", "implicit")
    """Any: the simulator checks the inner model's feedback (``--model``)."""
    sparse_updates: ClassVar[bool] = False

    def __init__(self, inner: Model, spec: ModelCompression, seed: int,
                 popularity: np.ndarray | None = None) -> None:
        if not spec.active:
            raise ConfigError("--model-compression none: use the model itself")
        self.inner, self.spec, self.seed = inner, spec, seed
        self._structure: Structure | None = None
        self.popularity: np.ndarray | None = None
        """The items' counts the structure was built from (public, like the structure)."""
        self._tensors: dict[str, torch.Tensor] = {}
        self._view_of: tuple[torch.Tensor, int] | None = None  # the vector (held) and its version
        self._view: torch.Tensor | None = None
        self._own_rows: np.ndarray | None = None  # own_rows() and rows_bytes()'s rest, of this structure
        self._rest: tuple[int, int] | None = None
        if not spec.needs_popularity or popularity is not None:
            self.set_popularity(popularity)

    @classmethod
    def from_config(cls, config: ExperimentConfig, num_items: int) -> CompressedModel:
        """Refused: a compressed model wraps a built one (:func:`securefedrec.models.registry.build_model`
        builds both from the configuration); it is not in the registry itself."""
        raise ConfigError("a compressed model wraps the configured model: build it with "
                          "securefedrec.models.registry.build_model")

    # ---- the structure
    def set_popularity(self, popularity: np.ndarray | None) -> None:
        """Fix the public structure (for mixed / prune from the items' counts)."""
        self._structure = build_structure(self.inner, self.spec, self.seed, popularity)
        self.popularity = popularity
        s = self._structure
        self._tensors = {"rows": torch.as_tensor(s.rows), "cols": torch.as_tensor(s.cols),
                         "signs": torch.as_tensor(s.signs), "blocks": torch.as_tensor(s.blocks())}
        self._view_of, self._view = None, None
        self._own_rows, self._rest = None, None

    @property
    def structure(self) -> Structure:
        """The expansion (raises before the count round of a popularity structure)."""
        if self._structure is None:
            raise ConfigError(f"--model-compression {self.spec.structure}: the structure comes from the "
                              f"items' popularity, which the simulator's count round provides first")
        return self._structure

    @property
    def needs_popularity(self) -> bool:
        """Whether the structure still waits for the items' counts."""
        return self._structure is None

    def _t(self, name: str, device: torch.device) -> torch.Tensor:
        return self._tensors[name].to(device)

    def expand(self, theta: torch.Tensor) -> torch.Tensor:
        """``E theta``: the inner global vector (L,) of a compressed vector (Lc,)."""
        s, dev = self.structure, theta.device
        out = torch.zeros(s.inner_length, dtype=theta.dtype, device=dev)
        signs = self._t("signs", dev).to(theta.dtype)
        return out.index_add_(0, self._t("rows", dev), theta[self._t("cols", dev)] * signs)

    def project(self, deltas: torch.Tensor) -> torch.Tensor:
        """``delta E``: compressed deltas (C, Lc) of inner deltas (C, L) (the chain rule)."""
        s, dev = self.structure, deltas.device
        key = f"transpose:{dev}"
        if key not in self._tensors:  # E^T as a CSR matrix (Lc, L), once per device
            with warnings.catch_warnings():  # torch calls sparse CSR "beta"
                warnings.simplefilter("ignore", UserWarning)
                coo = torch.sparse_coo_tensor(torch.stack([self._t("cols", dev), self._t("rows", dev)]),
                                              self._t("signs", dev), (s.length, s.inner_length))
                self._tensors[key] = coo.coalesce().to_sparse_csr()
        out: torch.Tensor = (self._tensors[key] @ deltas.to(torch.float64).T).T
        return out

    def stored(self, theta: torch.Tensor) -> torch.Tensor:
        """The values a device holds: with int8 / int4, ``theta`` rounded to ``+-(2^(bits-1) - 1)``
        levels of per-row float16 scales (the row's largest magnitude is the top level, within
        float16's rounding, which :func:`half_scales` takes upwards)."""
        if not self.spec.quantized:
            return theta
        top = 2 ** (self.spec.bits - 1) - 1
        blocks = self._t("blocks", theta.device)
        amax = torch.zeros(int(blocks[-1]) + 1 if blocks.numel() else 0, dtype=theta.dtype,
                           device=theta.device).scatter_reduce(0, blocks, theta.abs(), "amax")
        scale = half_scales(amax / top).to(theta.dtype)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))[blocks]
        return torch.round(theta / scale).clamp_(-top, top) * scale

    def device_view(self, theta: torch.Tensor) -> torch.Tensor:
        """The inner global vector a device predicts and trains with: ``E stored(theta)``.

        Cached for the same tensor object at the same torch version (evaluation asks once per
        batch of users); the tensor is held, so its id cannot be reused by another.
        """
        held = self._view_of
        if self._view is None or held is None or held[0] is not theta or held[1] != theta._version:
            self._view, self._view_of = self.expand(self.stored(theta)), (theta, theta._version)
        return self._view

    @property
    def model_bytes(self) -> int:
        """The global parameters as stored and sent: int8 (or int4, two to a byte) plus a float16
        scale per block, or float32."""
        s = self.structure
        if not self.spec.quantized:
            return FLOAT_BYTES * s.length
        blocks = int(self._tensors["blocks"][-1]) + 1 if s.length else 0
        return math.ceil(s.length * self.spec.bits / 8) + SCALE_BYTES * blocks

    @property
    def broadcast_bytes(self) -> int:
        """One client's broadcast of the whole model: :attr:`model_bytes` in one framed message."""
        return snapshot_bytes(0) + self.model_bytes

    # ---- submodel rounds (--submodel): each item's own row of the compressed vector
    def own_rows(self) -> np.ndarray:
        """The compressed coordinates of each item that keeps a whole row of its own, ``(rows, w)``.

        That is every item without a structure (int8 / int4 alone) and every unpruned item of
        ``prune`` (a pruned item has no coordinates: nothing of it is sent); the rows are in item
        order. A submodel round (:mod:`securefedrec.server.submodel`) sends only a client's rows.

        Raises:
            ConfigError: ``hash`` or ``qr`` (a stored row is shared by several items) or ``mixed``
                (rows of different widths).
        """
        if self._own_rows is not None:
            return self._own_rows
        s = self.structure
        owner = np.full(s.inner_length, -1, np.int64)
        owner[s.rows] = s.cols
        shared = (np.bincount(s.rows, minlength=s.inner_length).max(initial=0) > 1
                  or np.unique(s.cols).size != s.cols.size)
        index = np.asarray(self.inner.item_rows(np.arange(s.inner_length, dtype=np.float64))).astype(np.int64)
        coords = owner[index]
        whole = np.all(coords >= 0, axis=1)
        if shared or np.any(~whole & np.any(coords >= 0, axis=1)):
            raise ConfigError(f"--model-compression {self.spec.structure}: an item's row is "
                              f"{'shared with other items' if shared else 'narrower than the others'}, so it "
                              f"is no item's own row to send in a submodel round; use int8, int4 or prune:F")
        self._own_rows = coords[whole]
        return self._own_rows

    def rows_bytes(self, rows: int) -> int:
        """One client's download of ``rows`` of :meth:`own_rows` and every other coordinate, as stored
        (int8 / int4 with a float16 scale per row and per block of the rest, or float32), framed."""
        own = self.own_rows()
        s, w = self.structure, int(own.shape[1])
        if self._rest is None:  # the coordinates in no item's row, and their scale blocks
            rest = np.ones(s.length, bool)
            rest[own.ravel()] = False
            self._rest = (int(rest.sum()), int(np.unique(self._tensors["blocks"].numpy()[rest]).size))
        rest_values, rest_blocks = self._rest
        values = rows * w + rest_values
        if not self.spec.quantized:
            return snapshot_bytes(values)
        return snapshot_bytes(0) + math.ceil(values * self.spec.bits / 8) + SCALE_BYTES * (rows + rest_blocks)

    # ---- the global part
    @property
    def length(self) -> int:
        """Lc, the compressed vector's length."""
        return self.structure.length

    @property
    def decay_span(self) -> int:
        """The compressed item part and the passthrough coordinates the inner model decays."""
        return self.structure.decay_span

    def init_global(self, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
        """The inner model's initial values, one representative inner coordinate per compressed one,
        divided by the square root of how many compressed coordinates sum into it (qr: 2), so the
        expanded start has the inner model's spread."""
        s = self.structure
        v0 = self.inner.init_global(scale, generator).numpy()
        _, first = np.unique(s.cols, return_index=True)
        fan_in = np.bincount(s.rows, minlength=s.inner_length).astype(np.float64)
        rep = s.rows[first]
        theta = v0[rep] * s.signs[first] / np.sqrt(fan_in[rep])
        return torch.from_numpy(theta)

    def item_rows(self, vec: np.ndarray) -> np.ndarray:
        """Each item's row of the *expanded* vector (a copy, items x w).

        With hash and qr, items share stored rows: an item a client never touched has a
        non-zero row in its delta when it shares a row with one it touched, so the rated-items
        attack reads the shared rows (the server sees no more than that).
        """
        theta = torch.from_numpy(np.asarray(vec, np.float64))
        return np.asarray(self.inner.item_rows(self.expand(theta).numpy()))

    # ---- the local part
    def local_shapes(self) -> dict[str, tuple[int, ...]]:
        """The inner model's."""
        return self.inner.local_shapes()

    def init_local(self, num_users: int, dtype: torch.dtype, generator: torch.Generator) -> LocalPart:
        """The inner model's."""
        return self.inner.init_local(num_users, dtype, generator)

    def train(
        self,
        global_vec: torch.Tensor,
        data: RatingsByUser,
        client_users: Sequence[np.ndarray],
        epochs: int,
        lr: float,
        device: torch.device,
        dtype: torch.dtype,
        *,
        local: LocalPart,
        generator: torch.Generator,
    ) -> Trained[torch.Tensor]:
        """The inner model's training on ``E stored(theta)``; the deltas projected back, ``delta E``."""
        view = self.device_view(global_vec.to(torch.float64))
        trained = self.inner.train(view, data, client_users, epochs, lr, device, dtype, local=local,
                                   generator=generator)
        return Trained(self.project(trained.deltas.to(torch.float64)), trained.users, trained.local)

    # ---- local prediction
    def fit_local(self, global_vec: torch.Tensor, batch: PaddedRatings, local: LocalPart) -> LocalPart:
        """The inner model's, on the device's view."""
        return self.inner.fit_local(self.device_view(global_vec), batch, local)

    def predict(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor, scale: tuple[float, float]
    ) -> torch.Tensor:
        """The inner model's, on the device's view."""
        return self.inner.predict(self.device_view(global_vec), local, items, scale)

    def scores(
        self, global_vec: torch.Tensor, local: LocalPart, items: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The inner model's, on the device's view."""
        return self.inner.scores(self.device_view(global_vec), local, items)


def model_bytes(model: Model) -> int:
    """The global parameters of ``model`` as stored and sent (float32 unless compressed)."""
    return model.model_bytes if isinstance(model, CompressedModel) else FLOAT_BYTES * model.length


def secure_item_counts(
    aggregator: Aggregator, pool: ClientPool, num_items: int, *, threshold_fraction: float,
    ring_bits: int, neighbors: int | None, rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The items' popularity as the secure aggregate of every client's item indicators.

    Each client sends, for each item, how many of its users hold it (0 or 1 on a phone);
    the aggregator (the run's own: SecAgg+ reveals only the sum) returns the sum. Every
    client takes part; the release needs ``ceil(threshold_fraction * clients)`` of them.
    Returns the counts and a record of the round (clients, bytes up and down).

    Raises:
        ConfigError: the count round aborted (below the threshold).
    """
    inputs: dict[int, np.ndarray] = {}
    largest = 1
    for cid, users in enumerate(pool.groups):
        counts = np.zeros(num_items)
        for u in users:
            counts[np.unique(pool.data.user_items(int(u)))] += 1.0
        inputs[cid] = counts
        largest = max(largest, len(users))
    config = RoundConfig(round_id=COUNT_ROUND, clip_range=float(largest), ring_bits=ring_bits,
                         threshold=max(1, math.ceil(threshold_fraction * len(inputs))), neighbors=neighbors)
    if rng is not None and hasattr(aggregator, "rng"):
        aggregator.rng = rng
    try:
        result = aggregator.aggregate(inputs, config, {})
    except AggregationAborted as exc:
        raise ConfigError(f"the popularity count round of --model-compression aborted: {exc}") from None
    counts = np.clip(np.rint(result.total), 0, None)
    return counts, {"clients": len(inputs), "bytes_up": result.total_bytes_up,
                    "bytes_down": result.total_bytes_down}
