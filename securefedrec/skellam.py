"""Distributed Skellam mechanism: user-level DP with integer noise added in the ring.

The integer counterpart of :class:`~securefedrec.privacy.DistributedGaussian`
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

RDP of one release (Agarwal, Kairouz, Liu 2021, Sec. 3: the RDP of the
multi-dimensional Skellam mechanism with L1/L2 sensitivities ``Delta_1,
Delta_2``, Theorem 3.5 of arXiv:2110.04995 as we cite it -- some code cites
Corollary 3.6; the formula is checked against ``_skellam_rdp`` in
google-research/federated ``distributed_dp/accounting_utils.py`` and, in
``tests/test_skellam.py``, against the exact Renyi divergence of a shifted
Skellam). ``mu`` is the total noise variance per coordinate, the noise is
``Sk(mu/2, mu/2)``; for integer ``alpha > 1``::

    eps(alpha) <= alpha Delta_2^2 / (2 mu)
                  + min(((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (4 mu^2), 3 Delta_1 / (2 mu))

The first term is the Gaussian mechanism's RDP with ``sigma^2 = mu / Delta_2^2``;
the second is the price of discreteness and vanishes as ``mu`` grows.

Poisson subsampling at rate ``q``: the general upper bound of Zhu & Wang
(ICML 2019, "Poisson Subsampled Renyi Differential Privacy"), the one for
integer orders that needs no assumption on the mechanism -- the bound with
the factor 3, which google-research/federated's
``_compute_rdp_subsampled(upper_bound=True)`` cites as Theorem 5; the tighter
coefficient-1 form needs a condition that is shown for the Gaussian, not for
Skellam, so it is not used::

    eps_q(alpha) <= 1/(alpha - 1) * log( (1-q)^(alpha-1) (alpha q - q + 1)
                      + C(alpha, 2) q^2 (1-q)^(alpha-2) e^eps(2)
                      + 3 sum_{l=3}^{alpha} C(alpha, l) q^l (1-q)^(alpha-l) e^((l-1) eps(l)) )

and we take ``min(eps_q(alpha), eps(alpha))`` (both are upper bounds). Fed
the Gaussian's RDP it is at most ``log(3) / (alpha - 1)`` above Opacus' exact
sampled-Gaussian RDP (tested); the price is real: at ``(epsilon, delta) = (4,
1e-5)``, ``q = 0.2``, 30 rounds the calibrated Skellam noise multiplier is
about 2.6 against the Gaussian's 1.64. Rounds
compose by adding RDP over the integer orders 2..256 (:data:`ORDERS`); epsilon
at ``delta`` comes from Opacus' conversion
(``opacus.accountants.analysis.rdp.get_privacy_spent``, Balle et al. 2020),
the same one the Gaussian path uses. With a budget, :func:`calibrate_mu`
bisects for the smallest ``mu`` that fits the planned rounds, and
:meth:`SkellamAccountant.check_step` refuses a round that would exceed it
(:class:`~securefedrec.errors.PrivacyBudgetExhausted`), as for the Gaussian.

The caveats (1) and (2) of :mod:`securefedrec.privacy` apply unchanged: the
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
    ``ENCODING_SIGMAS`` in :mod:`securefedrec.privacy`), and the round's
    ``value_bits`` hold that limit. Integer inputs are never clipped: a share
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
    seeded with 256 bits from the OS CSPRNG (:func:`~securefedrec.privacy.secure_generator`)
    unless injected; the simulator injects one per (seed, round, client), as
    for the Gaussian. numpy's Poisson sampler is not constant-time and PCG64
    is not a cryptographic PRG (see :mod:`securefedrec.privacy` Notes); the
    floating-point attack on textbook Gaussian samplers (Mironov 2012) does not
    apply, since every released value is an integer sum.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from opacus.accountants.analysis import rdp as rdp_analysis

from protocols import FixedPoint, RoundConfig
from protocols.encoding import MAX_VALUE_BITS, stochastic_round
from securefedrec import streams
from securefedrec.errors import CheckpointError, ConfigError, SecureFedRecError
from securefedrec.privacy import AccountedUserPrivacy, BudgetAccountant, clip_l2, secure_generator

__all__ = [
    "DEFAULT_BETA",
    "DP_MECHANISMS",
    "MAX_SCALE_BITS",
    "ORDERS",
    "SKELLAM_TAIL",
    "DistributedSkellam",
    "SkellamAccountant",
    "SkellamUserPrivacy",
    "calibrate_mu",
    "conditional_round",
    "plan_skellam",
    "poisson_subsampled_rdp",
    "rdp_of",
    "rounded_l1_bound",
    "rounded_l2_bound",
    "skellam_noise",
    "skellam_rdp",
    "skellam_tail",
]

DP_MECHANISMS = ("gaussian", "skellam")
"""Noise of ``--dp user``: distributed Gaussian (:mod:`securefedrec.privacy`) or Skellam (this module)."""

ORDERS = np.arange(2, 257, dtype=np.int64)
"""Integer RDP orders 2..256 (the subsampling bound needs every integer order up to alpha)."""

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


# --------------------------------------------------------------------------- accounting
def skellam_rdp(mu: float, l2: float, l1: float, orders: np.ndarray = ORDERS) -> np.ndarray:
    """RDP of one Skellam release with total variance ``mu`` (module docstring; Agarwal et al. Thm 3.5).

    Args:
        mu: noise variance per coordinate, integer units^2 (the noise is ``Sk(mu/2, mu/2)``).
        l2: L2 sensitivity ``Delta_2`` of the integer vector.
        l1: L1 sensitivity ``Delta_1`` of the integer vector.
        orders: integer orders alpha > 1.
    """
    a = np.asarray(orders, dtype=np.float64)
    if mu <= 0:
        return np.full(a.shape, np.inf)
    extra = np.minimum(((2 * a - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu))
    rdp: np.ndarray = a * l2**2 / (2 * mu) + extra
    return rdp


@functools.lru_cache(maxsize=4)
def _log_binomials(top: int) -> np.ndarray:
    """``log C(a, l)`` for 0 <= l, a <= top (``-inf`` where l > a)."""
    lg = np.array([math.lgamma(k + 1) for k in range(top + 1)])
    a = np.arange(top + 1)[:, None]
    ell = np.arange(top + 1)[None, :]
    out = lg[a] - lg[np.minimum(ell, a)] - lg[np.maximum(a - ell, 0)]
    out = np.where(ell <= a, out, -np.inf)
    out.setflags(write=False)
    return out


def poisson_subsampled_rdp(rdp: np.ndarray, q: float, orders: np.ndarray = ORDERS) -> np.ndarray:
    """Zhu & Wang's general upper bound on Poisson-subsampled RDP (module docstring), min'd with ``rdp``.

    Args:
        rdp: RDP of the mechanism at ``orders``.
        q: sampling rate in (0, 1].
        orders: the consecutive integer orders ``2, 3, ..., A`` (the bound at alpha
            needs the RDP at every integer order up to alpha).

    Raises:
        ConfigError: orders that are not ``2..A``, or ``q`` outside (0, 1].
    """
    orders = np.asarray(orders)
    eps = np.asarray(rdp, dtype=np.float64)
    if orders.ndim != 1 or orders.size == 0 or not np.array_equal(orders, np.arange(2, 2 + orders.size)):
        raise ConfigError("poisson_subsampled_rdp: orders must be the consecutive integers 2, 3, ..., A")
    if eps.shape != orders.shape:
        raise ConfigError(f"poisson_subsampled_rdp: rdp has shape {eps.shape}, orders {orders.shape}")
    if not 0 < q <= 1:
        raise ConfigError(f"sample_rate: must be in (0, 1], got {q!r}")
    if q == 1:
        return eps.copy()
    top = int(orders[-1])
    logc = _log_binomials(top)
    alpha = orders[:, None].astype(np.float64)  # rows: alpha
    ell = np.arange(top + 1, dtype=np.float64)[None, :]  # columns: l
    eps_l = np.full(top + 1, np.inf)
    eps_l[2:] = eps  # eps(l) for l = 2..top
    log_q, log_1q = math.log(q), math.log1p(-q)
    with np.errstate(invalid="ignore", over="ignore"):
        terms = (logc[orders] + ell * log_q + (alpha - ell) * log_1q
                 + np.where(ell >= 2, (ell - 1) * eps_l[None, :], 0.0))
    terms = np.where(ell <= alpha, terms, -np.inf)
    terms[:, 3:] += math.log(3.0)
    terms[:, 0] = (alpha[:, 0] - 1) * log_1q + np.log1p((alpha[:, 0] - 1) * q)  # l = 0 and 1 together
    terms[:, 1] = -np.inf
    peak = np.max(terms, axis=1)
    with np.errstate(invalid="ignore"):
        lse = peak + np.log(np.sum(np.exp(terms - peak[:, None]), axis=1))
    lse = np.where(np.isfinite(peak), lse, np.inf)
    amplified: np.ndarray = np.minimum(lse / (orders - 1), eps)
    return amplified


def _epsilon(rdp: np.ndarray, delta: float, orders: np.ndarray = ORDERS) -> float:
    """Opacus' RDP -> (epsilon, delta) conversion (the optimal-order-at-the-edge warning is silenced)."""
    if not np.any(np.isfinite(rdp)):
        return math.inf
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = rdp_analysis.get_privacy_spent(orders=orders.astype(np.float64), rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=256)
def _rdp_one_round(mu: float, l2: float, l1: float, q: float) -> np.ndarray:
    rdp = poisson_subsampled_rdp(skellam_rdp(mu, l2, l1), q)
    rdp.setflags(write=False)
    return rdp


def rdp_of(history: Sequence[tuple[float, float, int]], l2: float, l1: float) -> np.ndarray:
    """Composed RDP at :data:`ORDERS` of rounds ``[(mu, q, rounds), ...]`` with fixed sensitivities."""
    total = np.zeros(ORDERS.shape)
    for mu, q, steps in history:
        if steps:
            total = total + _rdp_one_round(float(mu), float(l2), float(l1), float(q)) * steps
    return total


def calibrate_mu(
    epsilon: float, delta: float, sample_rate: float, rounds: int, l2: float, l1: float
) -> float:
    """The smallest ``mu`` (to a relative 1e-6) whose ``rounds`` subsampled releases spend <= ``epsilon``.

    Bisection on ``log mu`` (epsilon decreases in ``mu``); the returned value itself
    meets the budget.

    Raises:
        ConfigError: the budget cannot be met with any noise multiplier ``sqrt(mu) / l2 <= 1e6``.
    """
    if not (math.isfinite(epsilon) and epsilon > 0) or not 0 < delta < 1 or rounds < 1:
        raise ConfigError(f"epsilon: need epsilon > 0, 0 < delta < 1, rounds >= 1; got "
                          f"({epsilon}, {delta}, {rounds})")

    def eps(mu: float) -> float:
        return _epsilon(rdp_of([(mu, sample_rate, rounds)], l2, l1), delta)

    hi = l2**2  # noise multiplier 1
    while eps(hi) > epsilon:
        hi *= 4
        if hi > (1e6 * l2) ** 2:
            raise ConfigError(f"epsilon: budget ({epsilon}, {delta}) cannot be met over {rounds} rounds "
                              f"at sample rate {sample_rate} with Skellam noise multiplier <= 1e6")
    lo = hi / 4
    while eps(lo) <= epsilon:
        hi, lo = lo, lo / 4
        if lo < (1e-6 * l2) ** 2:
            return hi
    while hi / lo > 1 + 1e-6:
        mid = math.sqrt(hi * lo)
        if eps(mid) <= epsilon:
            hi = mid
        else:
            lo = mid
    return hi


class SkellamAccountant(BudgetAccountant):
    """Counts subsampled Skellam rounds (RDP over :data:`ORDERS`) and enforces a budget.

    The history is ``[(mu, sample_rate, rounds), ...]`` like the Gaussian accountant's
    ``(sigma, q, steps)``; the sensitivities are fixed for the run.

    Args:
        mu: noise variance of the rounds to come (integer units^2).
        l2: L2 sensitivity ``Delta_2`` (integer units).
        l1: L1 sensitivity ``Delta_1`` (integer units).
        sample_rate: Poisson sampling rate q.
        delta: the delta at which epsilon is reported.
        budget: stop before epsilon would exceed this; ``None`` = no limit.
    """

    name = "rdp (Skellam, Zhu-Wang subsampling)"

    def __init__(
        self, *, mu: float, l2: float, l1: float, sample_rate: float, delta: float,
        budget: float | None = None,
    ) -> None:
        super().__init__(sample_rate=sample_rate, delta=delta, budget=budget)
        if not (math.isfinite(mu) and mu >= 0):
            raise ConfigError(f"mu: must be >= 0, got {mu!r}")
        if not (l2 > 0 and l1 > 0):
            raise ConfigError(f"sensitivities must be > 0, got l2={l2!r}, l1={l1!r}")
        self.mu, self.l2, self.l1 = mu, l2, l1

    @property
    def noise(self) -> float:
        """Mu of the rounds to come."""
        return self.mu

    def _epsilon_of(self, history: list[tuple[float, float, int]]) -> float:
        if not history:
            return 0.0
        return _epsilon(rdp_of(history, self.l2, self.l1), self.delta)


# --------------------------------------------------------------------------- mechanism
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

        Args:
            delta: the client's update (L,), or several clients' updates (n, L).
            threshold: the fewest survivors for which the protocol releases the sum.
            rng: rounding and noise source; default :func:`~securefedrec.privacy.secure_generator`.
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


# --------------------------------------------------------------------------- simulator
class SkellamUserPrivacy(AccountedUserPrivacy[DistributedSkellam, SkellamAccountant]):
    """``--dp user --dp-mechanism skellam`` for the simulator: integer noise, Skellam accounting.

    The rounding and noise of a client come from its ``rng_factory`` generator
    (``None``: :func:`~securefedrec.privacy.secure_generator`).
    """

    @classmethod
    def from_config(
        cls, config: Any, num_clients: int, dim: int, noise_stream: int = streams.NOISE
    ) -> SkellamUserPrivacy:
        """Build from an :class:`~securefedrec.config.ExperimentConfig` (``dp_mechanism == "skellam"``).

        Args:
            config: the experiment.
            num_clients: the population (the most clients a round can sample).
            dim: length of a client's delta.
            noise_stream: random stream id; noise is seeded per (seed, round, stream, client).
        """
        mech = plan_skellam(
            clip=config.clip, dim=dim, max_clients=num_clients, ring_bits=config.ring_bits,
            sample_rate=config.sample_rate, rounds=config.rounds, delta=config.delta,
            epsilon=config.epsilon, noise_multiplier=config.noise_multiplier,
            coordinate_bound=config.update_clip,
        )
        seed = config.seed

        def seeded(round_id: int, client: int) -> np.random.Generator:
            return np.random.default_rng([seed, round_id, noise_stream, client])

        self = cls(
            mech,
            SkellamAccountant(mu=mech.mu, l2=mech.l2_sensitivity, l1=mech.l1_sensitivity,
                              sample_rate=config.sample_rate, delta=config.delta, budget=config.epsilon),
            seeded,
        )
        self.calibrated = config.noise_multiplier is None
        return self

    def round_config(self, config: RoundConfig, n: int) -> RoundConfig:
        """``config`` with the encoding of the integer units: ``scale == gamma``, range for the shares."""
        fp = self.mechanism.encoding(n, config.threshold, config.ring_bits)
        return replace(config, clip_range=fp.clip_range, value_bits=fp.value_bits)

    def state(self) -> dict[str, Any]:
        """The accountant's history ``(mu, q, rounds)`` and the sensitivities, for checkpoints."""
        return {"mode": self.mode, "mechanism": "skellam", "l2": self.accountant.l2, "l1": self.accountant.l1,
                "history": [list(h) for h in self.accountant.history], **self._participation_state()}

    def restore(self, rounds_done: int, state: dict[str, Any] | None) -> None:
        """Restore the history saved by :meth:`state`; it must count ``rounds_done`` rounds."""
        if state is None or state.get("mode") != self.mode or state.get("mechanism") != "skellam":
            raise CheckpointError("checkpoint holds no Skellam user-level accounting; it was written by a "
                                  "run without --dp user --dp-mechanism skellam")
        if (state["l2"], state["l1"]) != (self.accountant.l2, self.accountant.l1):
            ours = (self.accountant.l2, self.accountant.l1)
            raise CheckpointError(f"checkpoint was accounted with sensitivities ({state['l2']}, "
                                  f"{state['l1']}), this run has {ours}")
        self._restore_history(rounds_done, state)

    def encoding_range(self, threshold: int, update_clip: float) -> float:
        """Per-coordinate float range of the round's encoding (``max_units`` rounded up to value bits)."""
        units = self.mechanism.max_units(threshold)
        return ((1 << units.bit_length()) - 1) / self.mechanism.scale

    def privatize(
        self, deltas: np.ndarray, clients: Sequence[int], threshold: int, round_id: int
    ) -> np.ndarray:
        """Each client's row as integer units (int64), rounded and noised with its own generator."""
        out = np.empty(deltas.shape, dtype=np.int64)
        for j, cid in enumerate(clients):
            out[j] = self.mechanism.privatize(deltas[j], threshold, self._rng(round_id, cid))
        return out

    def realized_std(self, survivors: int, threshold: int) -> float | None:
        """Per-coordinate noise std (float units) of a sum of ``survivors`` shares: sqrt(2 s lam) / gamma."""
        return math.sqrt(2 * survivors * self.mechanism.share_rate(threshold)) / self.mechanism.scale

    def summary(self) -> dict[str, Any]:
        """Report entry: mechanism parameters and the spend so far."""
        m = self.mechanism
        return {
            "mode": self.mode,
            "mechanism": "distributed Skellam (integer noise in the ring, shares sized for the threshold)",
            "noise_multiplier": m.noise_multiplier,
            "noise_multiplier_calibrated": self.calibrated,
            "clip": m.clip,
            "scale": m.scale,
            "mu": m.mu,
            "l2_sensitivity": m.l2_sensitivity,
            "l1_sensitivity": m.l1_sensitivity,
            "rounding_beta": m.beta,
            "sample_rate": self.accountant.sample_rate,
            "accountant": self.accountant.name,
            "delta": self.accountant.delta,
            "budget_epsilon": self.accountant.budget,
            "rounds_accounted": self.accountant.steps,
            "epsilon": self.epsilon(),
            "server_epsilon": self.server_epsilon(),
            "server_rounds_worst_user": self.worst_participation,
            "unit": "user (all ratings of one user)",
        }
