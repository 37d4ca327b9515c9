"""Distributed Skellam mechanism: user-level DP with integer noise added in the ring.

The integer counterpart of :class:`~securefedrec.privacy.mechanisms.gaussian.DistributedGaussian`
(Agarwal, Kairouz, Liu, NeurIPS 2021, "The Skellam Mechanism for Differentially
Private Federated Learning", arXiv:2110.04995). Every sampled client

1. clips its delta to L2 norm ``C`` (and each coordinate to the update clip),
2. scales it by ``gamma`` (a power of two: integer units per 1.0, the
   fixed-point scale of the round's :class:`~protocols.encoding.FixedPoint`),
3. rounds it to integers by *conditional* stochastic rounding (Kairouz, Liu,
   Steinke, ICML 2021, "The Distributed Discrete Gaussian Mechanism for
   Federated Learning with Secure Aggregation", arXiv:2102.06387, Sec. 4):
   unbiased stochastic rounding, redrawn until the integer vector has L2 norm
   at most ``Delta_2`` (below),
4. adds its share ``Sk(lam, lam) = Poisson(lam) - Poisson(lam)`` per coordinate
   with ``lam = mu / (2 t)`` for the protocol's threshold ``t``,

and hands the *integer* vector to secure aggregation, which adds it in the ring
unchanged (:mod:`protocols.encoding`, integer inputs). There is no float noise
anywhere: the ring sum of ``s >= t`` survivors is ``sum of integer updates +
Sk(s lam, s lam)`` exactly (Poisson variables add), i.e. the Skellam mechanism
with variance ``mu`` plus independent extra noise of variance ``mu (s - t) / t``
-- a post-processing, so the guarantee for variance ``mu`` holds whatever
clients drop. The server decodes ``sum * step`` with ``step = 1 / gamma``.

Sensitivity (integer units, one user added or removed). The unrounded scaled
vector has ``||gamma x||_2 <= c = gamma C``. Stochastic rounding moves each
coordinate by less than 1, so always ``||z||_2 <= c + sqrt(d)``; and with
probability at least ``1 - beta`` (Kairouz et al. 2021, the conditional
rounding bound; google-research/federated ``distributed_dp`` implements the
same formula as ``rounded_l2_norm_bound``)::

    ||z||_2^2 <= c^2 + d / 4 + sqrt(2 ln(1 / beta)) * (c + sqrt(d) / 2).

Conditional rounding redraws until ``||z||_2 <= Delta_2 = min(c + sqrt(d),
sqrt(that bound))`` (at most ``1 / (1 - beta)`` draws on average), so
``Delta_2`` is a hard bound, not a high-probability one. For an integer vector
``|z_i| <= z_i^2``, hence ``Delta_1 = min(sqrt(d) Delta_2, Delta_2^2)``.

The RDP of one release, its Poisson subsampling and the budget are
:mod:`securefedrec.privacy.accountants.skellam` (:class:`SkellamAccountant`,
:func:`calibrate_mu`).

The caveats (1) and (2) of :mod:`securefedrec.privacy.user` apply unchanged: the
amplification assumes the adversary does not learn who was sampled (against
the SecAgg server a round is the unamplified mechanism), and the extra noise
above ``mu`` depends on the number of sampled clients. As there, the
plaintext protocol shows the server each client's integer vector with only
its own noise share.

Notes:
    Ring size. Each client's integer coordinate is ``|z_i| <= min(ceil(gamma
    min(C, update_clip)), Delta_2)`` (hard) plus its noise share, and a
    share exceeds ``k`` with probability ``<= 2 exp(-I(k))``, the Chernoff
    bound for ``Sk(lam, lam)`` (``I(k) = k asinh(k / 2 lam) - 2 lam
    (sqrt(1 + (k / 2 lam)^2) - 1)``). :meth:`DistributedSkellam.max_units`
    takes the smallest ``k`` with tail probability ``<=`` :data:`SKELLAM_TAIL`
    ``= 2^-80`` (about 10.6 standard deviations in the Gaussian regime, like
    ``ENCODING_SIGMAS`` in :mod:`securefedrec.privacy.mechanisms.gaussian`),
    and the round's ``value_bits`` hold that limit. Integer inputs are never clipped: a share
    beyond the limit makes :func:`protocols.base.check_inputs` refuse the round
    (naming the client) -- probability ``<= n L 2^-80`` per round, under
    ``1e-17`` for 10^6 coordinates, far below any useful ``delta`` (and the
    event depends on the noise only, not on the data). The *sum* can never wrap:
    :meth:`protocols.encoding.FixedPoint.for_sum` proves ``n * (2^(v-1) - 1)``
    fits the ring, and ``gamma`` is chosen at build time
    (:func:`plan_skellam`) as the largest power of two for which the worst case
    -- every client of the population sampled, threshold 1 -- fits ``ring_bits``,
    with ``gamma C <= 2^24`` (:data:`MAX_SCALE_BITS`). Rounding inflates
    ``Delta_2`` over ``gamma C`` by about ``1/2 + d / (8 gamma C)`` units: at
    the defaults (500 users, d = 9900, 32-bit ring, C = 1) ``gamma C = 2^17``
    and the inflation is 4e-6 of ``Delta_2``.

    Randomness. Rounding and noise of each client come from one generator,
    seeded with 256 bits from the OS CSPRNG (:func:`secure_generator`)
    unless injected; the simulator injects one per (seed, round, client), as
    for the Gaussian. numpy's Poisson sampler is not constant-time and PCG64
    is not a cryptographic PRG (see :mod:`securefedrec.privacy.mechanisms.gaussian`
    Notes); the floating-point attack on textbook Gaussian samplers (Mironov 2012) does not
    apply, since every released value is an integer sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from protocols import FixedPoint
from protocols.encoding import MAX_VALUE_BITS, stochastic_round
from securefedrec.errors import ConfigError, SecureFedRecError
from securefedrec.privacy.accountants.skellam import calibrate_mu
from securefedrec.privacy.mechanisms.gaussian import clip_l2, secure_generator

__all__ = [
    "DEFAULT_BETA",
    "MAX_SCALE_BITS",
    "SKELLAM_TAIL",
    "DistributedSkellam",
    "conditional_round",
    "plan_skellam",
    "rounded_l1_bound",
    "rounded_l2_bound",
    "skellam_noise",
    "skellam_tail",
]

SKELLAM_TAIL = 2.0**-80
"""Per-coordinate probability that a noise share exceeds the encoding headroom (module Notes)."""

DEFAULT_BETA = math.exp(-0.5)
"""Conditional rounding parameter: a draw is redone with probability <= beta."""

MAX_SCALE_BITS = 24
"""``gamma * C <= 2^24``: finer steps buy nothing and would only make the Poisson rates huge."""

MAX_ROUNDING_DRAWS = 200
"""Conditional rounding gives up after this many draws (probability <= beta^200 < 1e-43)."""

_MAX_POISSON_RATE = 2.0**50
"""Largest per-client Poisson rate ``lam`` that :func:`plan_skellam` accepts (exact in float64, fast)."""


def rounded_l2_bound(l2: float, dim: int, beta: float) -> float:
    """L2 bound of a conditionally rounded integer vector with unrounded norm <= ``l2`` (module docstring).

    ``min(l2 + sqrt(d), sqrt(l2^2 + d/4 + sqrt(2 ln(1/beta)) (l2 + sqrt(d)/2)))``;
    ``beta = 0`` is plain stochastic rounding (only the first, deterministic bound).
    """
    if dim < 1 or not l2 > 0 or not 0 <= beta < 1:
        raise ConfigError(f"rounded_l2_bound: need dim >= 1, l2 > 0, 0 <= beta < 1; got {dim}, {l2}, {beta}")
    always = l2 + math.sqrt(dim)
    if beta == 0:
        return always
    conditional = math.sqrt(l2**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (l2 + math.sqrt(dim) / 2))
    return min(always, conditional)


def rounded_l1_bound(l2: float, dim: int) -> float:
    """L1 bound of an integer vector with L2 norm <= ``l2``: ``min(sqrt(d) l2, l2^2)`` (|z_i| <= z_i^2)."""
    return min(math.sqrt(dim) * l2, l2**2)


def conditional_round(y: np.ndarray, bound: float, rng: np.random.Generator) -> np.ndarray:
    """Stochastically round ``y`` to integers, redrawing until the L2 norm is <= ``bound``; int64.

    The norm is compared against ``bound^2 (1 - 1e-9)``, a margin for the float
    summation, so the returned vector's exact norm is <= ``bound``.

    Raises:
        SecureFedRecError: no draw met the bound in :data:`MAX_ROUNDING_DRAWS` tries
            (the bound was not one that holds with probability >= 1 - beta).
    """
    y = np.asarray(y, dtype=np.float64)
    limit = bound**2 * (1 - 1e-9)
    for _ in range(MAX_ROUNDING_DRAWS):
        z = stochastic_round(y, rng)
        if float(np.dot(z, z)) <= limit:
            return z.astype(np.int64)
    raise SecureFedRecError(f"conditional rounding: no draw within L2 norm {bound:.6g} in "
                            f"{MAX_ROUNDING_DRAWS} tries (input norm {np.linalg.norm(y):.6g})")


def skellam_noise(lam: float, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """``Poisson(lam) - Poisson(lam)`` per element (int64; variance ``2 lam``); zeros for ``lam = 0``."""
    if lam == 0:
        return np.zeros(shape, dtype=np.int64)
    noise: np.ndarray = rng.poisson(lam, shape).astype(np.int64) - rng.poisson(lam, shape).astype(np.int64)
    return noise


def skellam_tail(lam: float, prob: float = SKELLAM_TAIL) -> int:
    """The smallest ``k`` with ``2 exp(-I(k)) <= prob``, a bound on ``P(|Sk(lam, lam)| >= k)`` (Chernoff)."""
    if lam <= 0:
        return 0
    target = math.log(2 / prob)

    def rate(k: float) -> float:
        u = k / (2 * lam)
        return k * math.asinh(u) - 2 * lam * u * u / (1 + math.sqrt(1 + u * u))

    hi = max(1.0, math.ceil(2 * math.sqrt(2 * lam * target)))
    while rate(hi) < target:
        hi *= 2
    lo = 0.0
    while hi - lo > 1:
        mid = math.floor((lo + hi) / 2)
        if rate(mid) >= target:
            hi = mid
        else:
            lo = mid
    return int(hi)


@dataclass(frozen=True, kw_only=True)
class DistributedSkellam:
    """Clip, scale by ``scale``, conditionally round, add this client's ``Sk(mu/2t, mu/2t)`` share.

    Attributes:
        clip: L2 bound ``C`` of a delta (float units).
        scale: ``gamma``, integer units per 1.0 (a power of two).
        mu: total noise variance per coordinate that any released sum carries (integer units^2).
        dim: length ``d`` of the vectors.
        coordinate_bound: per-coordinate bound of a delta before L2 clipping (the update clip).
        beta: conditional rounding parameter in [0, 1) (0: plain stochastic rounding).
    """

    output_dtype: ClassVar[type[np.generic]] = np.int64
    """What :meth:`privatize` returns: integer units."""

    clip: float
    scale: float
    mu: float
    dim: int
    coordinate_bound: float = math.inf
    beta: float = DEFAULT_BETA

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip: must be > 0, got {self.clip!r}")
        if not (math.isfinite(self.scale) and self.scale > 0 and math.frexp(self.scale)[0] == 0.5):
            raise ConfigError(f"scale: must be a power of two, got {self.scale!r}")
        if not (math.isfinite(self.mu) and self.mu >= 0):
            raise ConfigError(f"mu: must be >= 0, got {self.mu!r}")
        if self.dim < 1:
            raise ConfigError(f"dim: must be >= 1, got {self.dim!r}")
        if not self.coordinate_bound > 0:
            raise ConfigError(f"coordinate_bound: must be > 0, got {self.coordinate_bound!r}")
        if not 0 <= self.beta < 1:
            raise ConfigError(f"beta: must be in [0, 1), got {self.beta!r}")

    @property
    def l2_sensitivity(self) -> float:
        """``Delta_2``: hard bound on the L2 norm of one client's rounded integer vector."""
        return rounded_l2_bound(self.scale * self.clip, self.dim, self.beta)

    @property
    def l1_sensitivity(self) -> float:
        """``Delta_1 = min(sqrt(d) Delta_2, Delta_2^2)``."""
        return rounded_l1_bound(self.l2_sensitivity, self.dim)

    @property
    def noise_multiplier(self) -> float:
        """Gaussian-equivalent noise multiplier ``sqrt(mu) / Delta_2``."""
        return math.sqrt(self.mu) / self.l2_sensitivity

    @property
    def total_std(self) -> float:
        """Noise std per coordinate of every released sum at least, in float units: ``sqrt(mu) / gamma``."""
        return math.sqrt(self.mu) / self.scale

    def share_rate(self, threshold: int) -> float:
        """Poisson rate ``lam = mu / (2 t)`` of one client's share (its variance is ``2 lam``)."""
        if threshold < 1:
            raise ConfigError(f"threshold must be >= 1, got {threshold}")
        return self.mu / (2 * threshold)

    def max_units(self, threshold: int) -> int:
        """Bound on one client's integer coordinate, noise share included (module Notes)."""
        signal = min(math.ceil(self.scale * min(self.clip, self.coordinate_bound)),
                     math.floor(self.l2_sensitivity))
        return int(signal) + skellam_tail(self.share_rate(threshold))

    def encoding(self, n: int, threshold: int, ring_bits: int) -> FixedPoint:
        """The round's encoding: ``scale == gamma`` exactly, ``value_bits`` holding :meth:`max_units`.

        Raises:
            ConfigError: the sum of ``n`` such values does not fit ``ring_bits`` (from
                :meth:`~protocols.encoding.FixedPoint.for_sum`).
        """
        units = self.max_units(threshold)
        value_bits = max(2, units.bit_length() + 1)
        if value_bits > MAX_VALUE_BITS:
            raise ConfigError(f"ring_bits: a Skellam share needs {value_bits} value bits, more than "
                              f"{MAX_VALUE_BITS}; lower the scale")
        clip_range = ((1 << (value_bits - 1)) - 1) / self.scale  # exact: scale is a power of two
        return FixedPoint.for_sum(n, clip_range, ring_bits, value_bits)

    def privatize(
        self, delta: np.ndarray, threshold: int, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Integer units: clip, scale, conditionally round, add a ``Sk(lam, lam)`` share; int64, per row.

        ``threshold`` (the fewest survivors for which the protocol releases the sum) sizes the
        share's rate :meth:`share_rate`; ``rng`` draws the rounding and the noise (default
        :func:`secure_generator`). ``delta`` is one update (L,) or rows of them (n, L).
        """
        rng = rng if rng is not None else secure_generator()
        x = np.asarray(delta, dtype=np.float64)
        if x.shape[-1] != self.dim:
            raise ConfigError(f"delta has length {x.shape[-1]}, the mechanism was built for {self.dim}")
        bound = min(self.clip, self.coordinate_bound)
        clipped = clip_l2(np.clip(x, -bound, bound), self.clip) * self.scale  # exact scaling (power of 2)
        rows = clipped.reshape(-1, self.dim)
        lam = self.share_rate(threshold)
        out = np.empty(rows.shape, dtype=np.int64)
        for j, row in enumerate(rows):
            out[j] = conditional_round(row, self.l2_sensitivity, rng) + skellam_noise(lam, (self.dim,), rng)
        return out.reshape(x.shape)


def plan_skellam(
    *,
    clip: float,
    dim: int,
    max_clients: int,
    ring_bits: int,
    sample_rate: float,
    rounds: int,
    delta: float,
    epsilon: float | None = None,
    noise_multiplier: float | None = None,
    coordinate_bound: float = math.inf,
    beta: float = DEFAULT_BETA,
) -> DistributedSkellam:
    """The mechanism with the largest power-of-two ``gamma`` whose worst-case ring sum fits (module Notes).

    ``mu`` is ``(noise_multiplier * Delta_2)^2`` if a noise multiplier is given, else
    :func:`calibrate_mu` for ``(epsilon, delta)`` over ``rounds`` rounds at ``sample_rate``.
    Worst case: all ``max_clients`` sampled and threshold 1 (largest share).

    Raises:
        ConfigError: no ``gamma`` with ``gamma C >= 1`` fits ``ring_bits``, or the budget
            cannot be met (message says what to change).
    """
    if noise_multiplier is not None and not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ConfigError(f"noise_multiplier: must be >= 0, got {noise_multiplier!r}")

    def noise_for(l2: float, l1: float) -> float:
        if noise_multiplier is not None:
            return (noise_multiplier * l2) ** 2
        if epsilon is None:
            raise ConfigError("dp: skellam needs epsilon (a budget) or noise_multiplier")
        return calibrate_mu(epsilon, delta, sample_rate, rounds, l2, l1)

    exponent = math.floor(MAX_SCALE_BITS - math.log2(clip))
    while 2.0**exponent * clip >= 1:
        gamma = 2.0**exponent
        draft = DistributedSkellam(clip=clip, scale=gamma, mu=0.0, dim=dim,
                                   coordinate_bound=coordinate_bound, beta=beta)
        mech = replace(draft, mu=noise_for(draft.l2_sensitivity, draft.l1_sensitivity))
        if mech.share_rate(1) <= _MAX_POISSON_RATE:
            try:
                mech.encoding(max_clients, 1, ring_bits)
            except ConfigError:
                pass
            else:
                return mech
        exponent -= 1
    raise ConfigError(f"ring_bits: {ring_bits} bits cannot hold the sum of {max_clients} clients' "
                      f"Skellam-noised integer updates at any useful scale; raise --ring-bits")
