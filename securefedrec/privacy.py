"""Differential privacy: user-level distributed DP (DP-FedAvg) and its accounting.

User-level DP (McMahan et al., ICLR 2018, "Learning Differentially Private
Recurrent Language Models"): every round the server Poisson-samples clients
at rate ``q``; each sampled client clips its delta of the global vector to L2
norm ``C`` and adds *its share* of Gaussian noise. The server never adds
noise. Neighbouring data sets differ in one user's whole history, and one
user's contribution to the sum is bounded by ``C`` (the server divides by the
fixed ``q * N``, so the sensitivity of the released mean is ``C / (q N)``).

Distributed noise: with ``n`` sampled clients and the protocol's threshold
``t`` (:attr:`protocols.RoundConfig.threshold`, the fewest survivors for which
secure aggregation releases anything), each client adds ``N(0, (sigma C)^2 / t)``
per coordinate. Any released sum has at least ``t`` survivors, so its noise
variance is ``survivors / t * (sigma C)^2 >= (sigma C)^2``: the guarantee of the
central Gaussian mechanism with noise multiplier ``sigma`` holds whatever
clients drop, at every stage (by construction; ``tests/test_privacy.py``
checks it with SecAgg+ and dropouts). The price: when all ``n`` survive the
noise is ``sqrt(n / t)`` times larger than needed (sqrt(2) at the default
threshold fraction 0.5). This assumes honest clients: a client that skips its
share lowers the noise (the usual distributed-DP trust model). It also needs
*secure* aggregation: with the plaintext protocol (or top-k compression,
which is plaintext-only) the server sees each update with only its share
``sigma C / sqrt(t)`` of noise, so the stated epsilon then holds only against
those who see the released model, not against the server. The report's
``privacy.secure_aggregation`` says which case a run is in.

Two epsilons. (1) ``epsilon``: against an observer of the released models,
with amplification by Poisson sampling -- which assumes the observer does not
learn who was sampled. (2) ``server_epsilon``: against the aggregation server,
which sees who takes part in every round, so amplification does not hold. What
it sees of a round is the sum of the survivors, with at least ``(sigma C)^2``
noise when at least ``t`` survive (else nothing), so a round in which a user
took part is the *unamplified* Gaussian mechanism on that user, and a round in
which it did not take part does not depend on its data (sampling is
independent of the data). Per user, the server's view is therefore the
composition of ``sample_rate = 1`` Gaussian steps over the rounds that user
was sampled in; ``server_epsilon`` composes them for the worst-case user (the
client sampled most often; a silo stands for its users), with the same Opacus
accountant (:meth:`BudgetAccountant.server_epsilon`). It is always
``>= epsilon``, and equal to it at ``sample_rate = 1``. The budget given by
``--epsilon`` calibrates sigma and stops the run on the observer's epsilon
(as every DP-FedAvg paper reports it); the report gives both, so a user who
needs the budget to hold against the server can read (2).

Two caveats of the accounting, stated rather than hidden. (1) The simulator
(and the Flower driver, which samples as it does) draws the Poisson sample from
the run's seed, for reproducibility: whoever knows the seed knows who was
sampled, and against them only ``server_epsilon`` holds. (2) The realized
variance ``survivors / t * (sigma C)^2`` depends on the number of sampled
clients through ``t``; the accountant credits only the ``(sigma C)^2`` that is
always there and ignores the excess, which is the usual simplification in
distributed DP but not a formal argument for the n-dependent part.

Accounting: one Opacus accountant (RDP by default, PRV on request; registry
:data:`ACCOUNTANTS`) stepped once per round with ``(noise_multiplier=sigma,
sample_rate=q)`` -- the sampled Gaussian mechanism. Every round is counted,
also one with no sampled clients or one that aborted (conservative: an aborted
round reveals nothing, but the sampling already happened). With a budget
``(epsilon, delta)`` and no explicit ``sigma``, :func:`calibrate_noise_multiplier`
picks the smallest sigma (Opacus ``get_noise_multiplier``) that fits the
planned rounds; :meth:`PrivacyAccountant.check_step` refuses a round that
would exceed the budget before anything changes
(:class:`~securefedrec.errors.PrivacyBudgetExhausted`).

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
    NeurIPS 2021); the latter is :mod:`securefedrec.skellam`
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

import functools
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from securefedrec import streams
from securefedrec.errors import CheckpointError, ConfigError, PrivacyBudgetExhausted

__all__ = [
    "ACCOUNTANTS",
    "AccountedUserPrivacy",
    "BudgetAccountant",
    "DP_MODES",
    "ENCODING_SIGMAS",
    "DistributedGaussian",
    "PrivacyAccountant",
    "RoundPrivacy",
    "UserLevelPrivacy",
    "build_privacy",
    "calibrate_noise_multiplier",
    "clip_l2",
    "make_accountant",
    "secure_generator",
]

DP_MODES = ("none", "user", "record")
"""``none``; ``user``: DP-FedAvg with distributed Gaussian noise; ``record``: DP-SGD in silos."""

ACCOUNTANTS: dict[str, type[IAccountant]] = {"rdp": RDPAccountant, "prv": PRVAccountant}
"""Accountant name -> Opacus accountant class."""

ENCODING_SIGMAS = 10.0
"""Noise standard deviations of headroom in the per-coordinate encoding range."""


def make_accountant(name: str) -> IAccountant:
    """A fresh Opacus accountant by name (one of :data:`ACCOUNTANTS`)."""
    try:
        return ACCOUNTANTS[name]()
    except KeyError:
        raise ConfigError(f"accountant: must be one of {', '.join(ACCOUNTANTS)}, got {name!r}") from None


@functools.lru_cache(maxsize=64)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one sampled Gaussian step at Opacus' default orders (cached: rounds repeat it)."""
    rdp: np.ndarray = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                               orders=RDPAccountant.DEFAULT_ALPHAS)
    rdp.setflags(write=False)
    return rdp


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Exactly ``RDPAccountant.get_epsilon`` (same orders, same sums), with the per-step RDP cached."""
    rdp = sum([_rdp_one_step(sigma, q) * steps for sigma, q, steps in history])
    eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=64)
def calibrate_noise_multiplier(
    epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The noise multiplier that spends at most ``(epsilon, delta)`` in ``steps`` steps at rate ``q``.

    Opacus ``get_noise_multiplier`` (binary search to within 0.01 of epsilon); cached.

    Raises:
        ConfigError: the budget cannot be met with any sigma <= 1e6.
    """
    make_accountant(accountant)
    try:
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant=accountant))
    except ValueError as exc:
        raise ConfigError(f"epsilon: budget ({epsilon}, {delta}) cannot be met over {steps} steps "
                          f"at sample rate {sample_rate}: {exc}") from None


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


class BudgetAccountant:
    """A history of ``(noise, sample_rate, steps)`` with a budget stop; subclasses give its epsilon.

    Shared by the Gaussian accountant below and the Skellam one
    (:class:`securefedrec.skellam.SkellamAccountant`): ``noise`` is sigma or mu,
    :meth:`_epsilon_of` turns a history into epsilon at :attr:`delta`.
    """

    def __init__(self, *, sample_rate: float, delta: float, budget: float | None) -> None:
        if not 0 < sample_rate <= 1:
            raise ConfigError(f"sample_rate: must be in (0, 1], got {sample_rate!r}")
        if not 0 < delta < 1:
            raise ConfigError(f"delta: must be in (0, 1), got {delta!r}")
        self.sample_rate = sample_rate
        self.delta = delta
        self.budget = budget
        self.history: list[tuple[float, float, int]] = []

    @property
    def noise(self) -> float:
        """The noise parameter of the steps to come."""
        raise NotImplementedError

    def _epsilon_of(self, history: list[tuple[float, float, int]]) -> float:
        raise NotImplementedError

    @property
    def steps(self) -> int:
        """Steps (rounds) counted so far."""
        return sum(h[2] for h in self.history)

    def _with(self, extra: int) -> list[tuple[float, float, int]]:
        history = list(self.history)
        if extra:
            if history and history[-1][:2] == (self.noise, self.sample_rate):
                history[-1] = (self.noise, self.sample_rate, history[-1][2] + extra)
            else:
                history.append((self.noise, self.sample_rate, extra))
        return history

    def epsilon(self, extra_steps: int = 0) -> float:
        """Epsilon at :attr:`delta` after the steps taken plus ``extra_steps`` more."""
        return self._epsilon_of([h for h in self._with(extra_steps) if h[2] > 0])

    def check_step(self, what: str | None = None) -> float:
        """Epsilon after one more step; raise if that exceeds the budget (nothing changes)."""
        eps = self.epsilon(1)
        if self.budget is not None and eps > self.budget:
            what = what or f"step {self.steps + 1}"
            raise PrivacyBudgetExhausted(
                f"{what} would spend epsilon {eps:.4g} > budget {self.budget:.4g} "
                f"(delta {self.delta:.3g}); stopped after {self.steps} steps at epsilon "
                f"{self.epsilon():.4g}"
            )
        return eps

    def step(self) -> float:
        """Count one step (after :meth:`check_step`); return the new epsilon."""
        eps = self.check_step()
        self.history = self._with(1)
        return eps

    def server_history(self, participations: int) -> list[tuple[float, float, int]]:
        """The history as the aggregation server sees a user who took part in ``participations`` steps.

        Each ``(noise, q, steps)`` becomes ``(noise, 1.0, min(steps, participations))``: no
        amplification (the server knows who was sampled), and the user's steps counted in every
        segment where it could have fallen -- exact for a run with one noise level, an upper bound
        when the noise changed (a resumed run).
        """
        if participations < 0:
            raise ConfigError(f"participations: must be >= 0, got {participations}")
        return [(noise, 1.0, min(steps, participations)) for noise, _, steps in self.history
                if min(steps, participations) > 0]

    def server_epsilon(self, participations: int) -> float:
        """Epsilon against the aggregation server for a user sampled in ``participations`` steps."""
        return self._epsilon_of(self.server_history(participations))


class PrivacyAccountant(BudgetAccountant):
    """Counts sampled-Gaussian steps with an Opacus accountant and enforces a budget.

    The history is a list of ``(noise_multiplier, sample_rate, steps)`` as in
    Opacus, so a run resumed with another sigma is still accounted exactly.

    Args:
        noise_multiplier: sigma of the steps to come.
        sample_rate: Poisson sampling rate q of the steps to come.
        delta: the delta at which epsilon is reported.
        accountant: ``rdp`` or ``prv`` (:data:`ACCOUNTANTS`).
        budget: stop before epsilon would exceed this; ``None`` = no limit.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        delta: float,
        accountant: str = "rdp",
        budget: float | None = None,
    ) -> None:
        make_accountant(accountant)
        super().__init__(sample_rate=sample_rate, delta=delta, budget=budget)
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ConfigError(f"noise_multiplier: must be >= 0, got {noise_multiplier!r}")
        self.noise_multiplier = noise_multiplier
        self.name = accountant

    @property
    def noise(self) -> float:
        """Sigma of the steps to come."""
        return self.noise_multiplier

    def _epsilon_of(self, history: list[tuple[float, float, int]]) -> float:
        history = [h for h in history if h[2] > 0]
        if not history:
            return 0.0
        if any(h[0] == 0 for h in history):
            return math.inf
        if self.name == "rdp":
            return _rdp_epsilon(history, self.delta)
        acc = make_accountant(self.name)
        acc.history = history
        with np.errstate(divide="ignore"):  # PRV at q = 1 (server_epsilon): log(1 - q) = -inf, harmless
            return float(acc.get_epsilon(delta=self.delta))

    def opacus(self) -> IAccountant:
        """An Opacus accountant holding the same history (for cross-checks)."""
        acc = make_accountant(self.name)
        acc.history = list(self.history)
        return acc


class RoundPrivacy:
    """What the simulator asks of a DP mode each round (user-level or record-level).

    ``check_round`` runs before anything changes and raises
    :class:`~securefedrec.errors.PrivacyBudgetExhausted` when the round would
    overspend; ``commit_round`` counts the round and returns epsilon so far.
    """

    mode: str = "none"

    def check_round(self, round_id: int) -> float:
        """Epsilon after this round; raise if over budget."""
        raise NotImplementedError

    def commit_round(self, round_id: int) -> float:
        """Count the round; return epsilon so far."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """JSON-able accounting state for checkpoints."""
        raise NotImplementedError

    def restore(self, rounds_done: int, state: dict[str, Any] | None) -> None:
        """Resume the accounting after ``rounds_done`` rounds from :meth:`state` (checkpoints)."""
        raise NotImplementedError

    def epsilon(self) -> float:
        """Epsilon spent so far, against an observer of the released models (module docstring)."""
        raise NotImplementedError

    def count_participants(self, clients: Sequence[int]) -> None:
        """Note the clients sampled in the round about to be committed (for :meth:`server_epsilon`)."""

    def server_epsilon(self) -> float:
        """Epsilon spent so far against the aggregation server, which knows who was sampled.

        This default returns :meth:`epsilon`: right for a mode whose amplification happens where
        the server cannot see it (DP-SGD's Poisson batches inside a silo); user-level DP overrides it.
        """
        return self.epsilon()

    @property
    def delta(self) -> float:
        """The delta that epsilon refers to."""
        raise NotImplementedError

    def encoding_range(self, threshold: int, update_clip: float) -> float:
        """Per-coordinate range that the protocol must encode."""
        return update_clip

    def train(self, clients: Sequence[int], global_vec: torch.Tensor, round_id: int) -> torch.Tensor | None:
        """Deltas (n, L) when this mode trains the clients itself, else ``None``."""
        return None

    def privatize(
        self, deltas: np.ndarray, clients: Sequence[int], threshold: int, round_id: int
    ) -> np.ndarray:
        """The rows the clients hand to the protocol."""
        return deltas

    def realized_std(self, survivors: int, threshold: int) -> float | None:
        """Per-coordinate noise std of a released sum, when the mode adds noise to the sum."""
        return None

    def summary(self) -> dict[str, Any]:
        """Report entry."""
        raise NotImplementedError


MechanismT = TypeVar("MechanismT")
AccountantT = TypeVar("AccountantT", bound=BudgetAccountant)


class AccountedUserPrivacy(RoundPrivacy, Generic[MechanismT, AccountantT]):
    """User-level DP in the simulator: a noise mechanism, an accountant that counts rounds,
    and per-client noise sources (shared by the Gaussian and the Skellam mechanism).

    Args:
        mechanism: clipping and noise.
        accountant: counts rounds.
        rng_factory: ``(round, client) -> generator`` for the client's noise;
            ``None`` draws every share from :func:`secure_generator`.
    """

    mode = "user"

    def __init__(
        self,
        mechanism: MechanismT,
        accountant: AccountantT,
        rng_factory: Callable[[int, int], np.random.Generator] | None = None,
    ) -> None:
        self.mechanism = mechanism
        self.accountant = accountant
        self.rng_factory = rng_factory
        self.calibrated = False
        self.participation: dict[int, int] = {}
        """Client id -> rounds it was sampled in (and counted)."""
        self.participation_floor = 0
        """Rounds restored from a checkpoint without participation counts: every client counted in each."""

    def _rng(self, round_id: int, client: int) -> np.random.Generator | None:
        return self.rng_factory(round_id, client) if self.rng_factory is not None else None

    def check_round(self, round_id: int) -> float:
        """Epsilon after this round; raises :class:`PrivacyBudgetExhausted` if over budget."""
        return self.accountant.check_step(f"round {round_id + 1}")

    def commit_round(self, round_id: int) -> float:
        """Count the round; return epsilon so far."""
        return self.accountant.step()

    def _restore_history(self, rounds_done: int, state: dict[str, Any]) -> None:
        history = [(float(h[0]), float(h[1]), int(h[2])) for h in state["history"]]
        if sum(h[2] for h in history) != rounds_done:
            raise CheckpointError(f"checkpoint accounts {sum(h[2] for h in history)} rounds, "
                                  f"but {rounds_done} were run")
        counts = state.get("participation")
        floor = state.get("participation_floor", 0)
        if counts is None:  # written before participation was counted: assume the worst, every round
            participation, floor = {}, rounds_done
        else:
            try:
                participation = {int(c): int(k) for c, k in dict(counts).items()}
            except (TypeError, ValueError):
                raise CheckpointError("checkpoint: privacy 'participation' must map client ids to round "
                                      "counts") from None
            if not isinstance(floor, int) or not 0 <= floor <= rounds_done or any(
                    not 0 <= k <= rounds_done - floor for k in participation.values()):
                raise CheckpointError(f"checkpoint: privacy participation counts do not fit {rounds_done} "
                                      "rounds")
        self.accountant.history = history
        self.participation, self.participation_floor = participation, floor

    def _participation_state(self) -> dict[str, Any]:
        return {"participation": {str(c): k for c, k in sorted(self.participation.items())},
                "participation_floor": self.participation_floor}

    def count_participants(self, clients: Sequence[int]) -> None:
        """Note the clients sampled in the round about to be committed (for :meth:`server_epsilon`)."""
        for c in clients:
            self.participation[int(c)] = self.participation.get(int(c), 0) + 1

    @property
    def worst_participation(self) -> int:
        """Rounds counted for the client sampled most often (the worst-case user)."""
        return self.participation_floor + max(self.participation.values(), default=0)

    def epsilon(self) -> float:
        """Epsilon spent so far, against an observer of the released models (with amplification)."""
        return self.accountant.epsilon()

    def server_epsilon(self) -> float:
        """Epsilon spent so far against the aggregation server: no amplification, worst-case user."""
        return self.accountant.server_epsilon(self.worst_participation)

    @property
    def delta(self) -> float:
        """The delta that epsilon refers to."""
        return self.accountant.delta


class UserLevelPrivacy(AccountedUserPrivacy[DistributedGaussian, PrivacyAccountant]):
    """DP-FedAvg for the simulator: the distributed Gaussian and an Opacus accountant."""

    @classmethod
    def from_config(cls, config: Any, noise_stream: int = streams.NOISE) -> UserLevelPrivacy:
        """Build from an :class:`~securefedrec.config.ExperimentConfig` (``dp == "user"``).

        sigma = ``config.noise_multiplier``, else calibrated so that
        ``config.rounds`` rounds spend at most ``(config.epsilon, config.delta)``.
        Noise is seeded per (seed, round, noise_stream, client) for reproducible runs.
        """
        sigma = config.noise_multiplier
        calibrated = sigma is None
        if sigma is None:
            if config.epsilon is None:
                raise ConfigError("dp: 'user' needs epsilon (a budget) or noise_multiplier")
            sigma = calibrate_noise_multiplier(config.epsilon, config.delta, config.sample_rate,
                                               config.rounds, config.accountant)
        seed = config.seed

        def seeded(round_id: int, client: int) -> np.random.Generator:
            return np.random.default_rng([seed, round_id, noise_stream, client])

        self = cls(
            DistributedGaussian(noise_multiplier=sigma, clip=config.clip),
            PrivacyAccountant(noise_multiplier=sigma, sample_rate=config.sample_rate, delta=config.delta,
                              accountant=config.accountant, budget=config.epsilon),
            seeded,
        )
        self.calibrated = calibrated
        return self

    def state(self) -> dict[str, Any]:
        """The accountant's history (sigma, q, rounds), for checkpoints."""
        return {"mode": self.mode, "history": [list(h) for h in self.accountant.history],
                **self._participation_state()}

    def restore(self, rounds_done: int, state: dict[str, Any] | None) -> None:
        """Restore the history saved by :meth:`state`; it must count ``rounds_done`` rounds."""
        if state is None or state.get("mode") != self.mode:
            raise CheckpointError("checkpoint holds no user-level privacy accounting; "
                                  "it was written by a run without --dp user")
        self._restore_history(rounds_done, state)

    def encoding_range(self, threshold: int, update_clip: float) -> float:
        """Per-coordinate range that the protocol must encode."""
        return self.mechanism.encoding_range(threshold, update_clip)

    def privatize(
        self, deltas: np.ndarray, clients: Sequence[int], threshold: int, round_id: int
    ) -> np.ndarray:
        """Each client's row clipped and noised with its own generator."""
        out = np.empty_like(deltas, dtype=np.float64)
        for j, cid in enumerate(clients):
            out[j] = self.mechanism.privatize(deltas[j], threshold, self._rng(round_id, cid))
        return out

    def realized_std(self, survivors: int, threshold: int) -> float | None:
        """Per-coordinate noise std of a sum of ``survivors`` shares."""
        return self.mechanism.share_std(threshold) * math.sqrt(survivors)

    def summary(self) -> dict[str, Any]:
        """Report entry: mechanism parameters and the spend so far."""
        return {
            "mode": self.mode,
            "mechanism": "distributed Gaussian (DP-FedAvg, noise shares sized for the threshold)",
            "noise_multiplier": self.mechanism.noise_multiplier,
            "noise_multiplier_calibrated": self.calibrated,
            "clip": self.mechanism.clip,
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


def build_privacy(config: Any, pool: Any, layout: Any) -> RoundPrivacy | None:
    """The DP mode of an :class:`~securefedrec.config.ExperimentConfig` (``None`` for ``dp = "none"``)."""
    if config.dp == "user":
        if config.dp_mechanism == "skellam":  # integer noise in the ring
            from securefedrec.skellam import SkellamUserPrivacy

            return SkellamUserPrivacy.from_config(config, pool.num_clients, layout.length)
        return UserLevelPrivacy.from_config(config)
    if config.dp == "record":
        from securefedrec.dpsgd import SiloDPSGD

        return SiloDPSGD.from_config(config, pool, layout)
    return None
