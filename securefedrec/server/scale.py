"""One federated round on a catalogue at scale (:class:`~securefedrec.data.scale.ScaleCatalog`), streamed.

The sampled users are generated, trained and turned into submodel inputs one
chunk at a time (:func:`stream_updates`): a user's history exists only while its
chunk is trained, and what is kept per client is its update on its own rows
(``history x (k + 1)`` floats), so memory follows the round, not the population
or the catalogue. The round then aggregates the chunks' updates: summed chunk by
chunk in plaintext (``secure=False``, the baseline), or by submodel SecAgg
(:class:`protocols.submodel.SubmodelAggregator`) over every sampled client.

Local training is biased MF's (the math of :mod:`securefedrec.models.mf`, in
numpy): the user's factor and bias are solved in closed form on its ratings
(ridge), then one gradient step on its item rows, clipped per coordinate.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocols import RoundConfig
from protocols.submodel import RowLayout, SubmodelAggregator, SubmodelInput
from securefedrec.data.scale import ScaleCatalog
from securefedrec.errors import ConfigError

__all__ = ["ScaleModel", "peak_rss_gib", "run_scale_round", "stream_updates"]


@dataclass
class ScaleModel:
    """Biased MF's global part for a catalogue: item factors, item biases, global mean."""

    factors: np.ndarray = field(repr=False)
    biases: np.ndarray = field(repr=False)
    mean: float = 3.5

    @classmethod
    def init(cls, items: int, k: int, seed: int = 0, std: float = 0.01) -> ScaleModel:
        """Small random factors, zero biases."""
        rng = np.random.default_rng([seed, 7])
        return cls((std * rng.standard_normal((items, k))).astype(np.float32), np.zeros(items, np.float32))

    @property
    def layout(self) -> RowLayout:
        """Row i = item i's factors then its bias; the global mean is the one shared coordinate."""
        m, k = self.factors.shape
        rows = np.concatenate([np.arange(m * k).reshape(m, k), (m * k + np.arange(m))[:, None]], axis=1)
        return RowLayout(m * (k + 1) + 1, rows)


def local_update(model: ScaleModel, items: np.ndarray, ratings: np.ndarray, *, lam: float = 0.1,
                 lr: float = 0.05, clip: float = 1.0) -> np.ndarray:
    """One client's update on its rows, ``(len(items), k + 1)``: factor and bias steps, clipped."""
    q = model.factors[items].astype(np.float64)
    b = model.biases[items].astype(np.float64)
    target = ratings - model.mean - b
    k = q.shape[1]
    p = np.linalg.solve(q.T @ q + lam * np.eye(k), q.T @ target)
    err = target - q @ p
    step_q = lr * (err[:, None] * p[None, :] - lam * q)
    step_b = lr * (err - lam * b)
    out: np.ndarray = np.clip(np.concatenate([step_q, step_b[:, None]], axis=1), -clip, clip)
    return out


def stream_updates(catalog: ScaleCatalog, model: ScaleModel, users: np.ndarray, chunk: int
                   ) -> Iterator[dict[int, SubmodelInput]]:
    """The sampled users' updates, one chunk of ``chunk`` users at a time (histories generated lazily)."""
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    for start in range(0, users.size, chunk):
        part = {}
        for user in users[start : start + chunk].tolist():
            h = catalog.history(user)
            part[user] = SubmodelInput(h.items, local_update(model, h.items, h.ratings), np.zeros(1))
        yield part


def peak_rss_gib() -> float:
    """Peak resident memory of this process and its (waited-for) children, GiB (Linux ru_maxrss in KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return float(max(own, kids)) / 2**20


def run_scale_round(
    catalog: ScaleCatalog, model: ScaleModel, round_id: int, rate: float, *, chunk: int = 256,
    secure: bool = True, item_epsilon: float = 4.0, workers: int = 1, server_lr: float = 1.0,
) -> dict[str, Any]:
    """Sample, train in chunks, aggregate, apply the mean update; return the round's measurements.

    Returns ``clients``, ``seconds`` (the whole round), ``seconds_train``, ``seconds_aggregate``,
    ``bytes_up`` / ``bytes_down`` per client (mean; secure only), ``rows_reported`` (mean) and
    ``peak_gib`` (:func:`peak_rss_gib` after the round).
    """
    t0 = time.perf_counter()
    users = catalog.sample(round_id, rate)
    layout = model.layout
    out: dict[str, Any] = {"clients": int(users.size), "users": catalog.users, "items": catalog.items,
                           "secure": secure}
    if users.size == 0:
        return {**out, "seconds": time.perf_counter() - t0, "peak_gib": peak_rss_gib()}
    total = np.zeros(layout.length)
    kept: dict[int, SubmodelInput] = {}
    for part in stream_updates(catalog, model, users, chunk):
        if secure:
            kept.update(part)  # compact: each client's own rows only
        else:  # the plaintext baseline sums chunk by chunk
            for x in part.values():
                total[layout.rows[x.rows]] += x.values
    t1 = time.perf_counter()
    out["seconds_train"] = t1 - t0
    if secure:
        agg = SubmodelAggregator(layout, item_epsilon=item_epsilon, malicious=False, workers=workers)
        res = agg.aggregate(kept, RoundConfig(round_id=round_id, clip_range=1.0, ring_bits=32,
                                              threshold=max(1, users.size // 2)))
        total = res.result.total
        out.update(bytes_up=float(np.mean(list(res.result.bytes_up.values()))),
                   bytes_down=float(np.mean(list(res.result.bytes_down.values()))),
                   rows_reported=float(np.mean(list(res.reported.values()))), item_epsilon=item_epsilon)
    out["seconds_aggregate"] = time.perf_counter() - t1
    m, k = model.factors.shape
    mean = server_lr * total / users.size
    model.factors += mean[: m * k].reshape(m, k).astype(np.float32)
    model.biases += mean[m * k : m * (k + 1)].astype(np.float32)
    out.update(seconds=time.perf_counter() - t0, peak_gib=peak_rss_gib())
    return out
