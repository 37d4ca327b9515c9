"""The distributed Gaussian mechanism: clip to L2 ``C``, add this client's share of the noise.

Each sampled client clips its delta to L2 norm ``C`` and adds
``N(0, (sigma C)^2 / t)`` per coordinate, for the protocol's threshold ``t``
(the fewest survivors for which secure aggregation releases anything), so
every released sum carries at least ``(sigma C)^2`` of noise whatever clients
drop. Why that suffices, and what it assumes, is the user-level DP of
:mod:`securefedrec.privacy.user`; its accounting is
:mod:`securefedrec.privacy.accountants.gaussian`.

Notes:
    Randomness. :meth:`DistributedGaussian.privatize` draws from a generator
    seeded with 256 bits from :mod:`secrets` (the OS CSPRNG) unless one is
    injected; the simulator injects one seeded per (seed, round, client) so
    that a resumed run reproduces. numpy's PCG64 is *not* a cryptographic
    PRG: a party that saw a long stretch of one client's raw noise could in
    principle predict the rest. Here no party sees a client's noise in the
    clear (secure aggregation masks each input), which is why a fresh,
    OS-seeded generator per client and round is acceptable; a deployment that
    sends updates in the clear should sample from a CSPRNG.

    Floating-point attack (Mironov, CCS 2012, "On significance of the least
    significant bits for differential privacy"): textbook floating-point
    samplers leave holes in the set of representable noisy outputs, so
    ``x + noise`` computed in doubles can reveal ``x`` from its low-order bits.
    Here each client's noisy value is *not* released as a double: it is
    clipped to the encoding range and encoded to a fixed-point grid of step
    ``range / (2^(v-1) - 1)`` (tens of thousands of float64 ulps) by
    stochastic rounding (:mod:`protocols.encoding`), and only the ring sum of
    many clients is decoded. Rounding to a grid that is coarse relative to the
    ulp destroys the low-order bits the attack reads, and the sum of ``>= t``
    independent shares hides each share further. This is a mitigation, not a
    proof: the stochastic rounding uses the aggregator's generator and the
    analysis treats the noise as an exact real Gaussian. The principled fix
    is integer noise added in the ring -- the distributed discrete Gaussian
    (Kairouz, Liu, Steinke, ICML 2021) or Skellam (Agarwal, Kairouz, Liu,
    NeurIPS 2021); the latter is :mod:`securefedrec.privacy.mechanisms.skellam`
    (``--dp-mechanism skellam``), with its own accounting. With the plaintext
    protocol and no ``value_bits`` the noisy doubles are sent as they are, so
    the attack applies there (that protocol is insecure anyway).

    Encoding range. The protocols encode every coordinate in
    ``[-R, R]`` and clip outside it. A clipped share would change the noise,
    so :meth:`DistributedGaussian.encoding_range` takes
    ``R = min(C, update_clip) + 10 * share_std``: a coordinate of an L2-clipped
    delta is at most ``C``, and a Gaussian exceeds 10 standard deviations with
    probability 1.5e-23, so even 10^9 coordinates per round clip with
    probability < 1e-13, far below any useful ``delta``.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from securefedrec.errors import ConfigError

__all__ = ["ENCODING_SIGMAS", "DistributedGaussian", "clip_l2", "secure_generator"]

ENCODING_SIGMAS = 10.0
"""Noise standard deviations of headroom in the per-coordinate encoding range."""


def clip_l2(vectors: np.ndarray, clip: float) -> np.ndarray:
    """Scale each row (or the one vector) to L2 norm at most ``clip``; returns a new float64 array."""
    v = np.asarray(vectors, np.float64)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    factor = np.minimum(1.0, clip / np.maximum(norms, np.finfo(np.float64).tiny))
    clipped: np.ndarray = v * factor
    return clipped


def secure_generator() -> np.random.Generator:
    """A generator seeded with 256 bits from the OS CSPRNG (see the module Notes)."""
    return np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence(secrets.randbits(256))))


@dataclass(frozen=True, kw_only=True)
class DistributedGaussian:
    """Clip to L2 ``clip`` and add this client's share of ``N(0, (noise_multiplier * clip)^2)``."""

    output_dtype: ClassVar[type[np.generic]] = np.float64
    """What :meth:`privatize` returns: noisy floats."""

    noise_multiplier: float
    clip: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip: must be > 0, got {self.clip!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(f"noise_multiplier: must be >= 0, got {self.noise_multiplier!r}")

    @property
    def total_std(self) -> float:
        """Per-coordinate noise std that every released sum carries at least: sigma * C."""
        return self.noise_multiplier * self.clip

    def share_std(self, threshold: int) -> float:
        """Per-coordinate std of one client's share: sigma * C / sqrt(threshold)."""
        if threshold < 1:
            raise ConfigError(f"threshold must be >= 1, got {threshold}")
        return self.total_std / math.sqrt(threshold)

    def encoding_range(self, threshold: int, update_clip: float = math.inf) -> float:
        """Per-coordinate bound that holds a clipped delta plus its noise share (module Notes)."""
        return min(self.clip, update_clip) + ENCODING_SIGMAS * self.share_std(threshold)

    def privatize(
        self, delta: np.ndarray, threshold: int, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Clip ``delta`` (one vector, or rows) to L2 <= C and add a noise share per row.

        Args:
            delta: the client's update (L,), or several clients' updates (n, L).
            threshold: the fewest survivors for which the protocol releases the sum.
            rng: noise source; default :func:`secure_generator` (fresh, OS-seeded).
        """
        rng = rng if rng is not None else secure_generator()
        clipped = clip_l2(delta, self.clip)
        std = self.share_std(threshold)
        if std > 0:
            clipped += rng.normal(0.0, std, clipped.shape)
        return clipped

