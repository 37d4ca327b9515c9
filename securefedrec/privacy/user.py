"""User-level distributed DP (DP-FedAvg) in the simulator: one mode, two noise mechanisms.

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

The noise of a client is one of two mechanisms
(:mod:`securefedrec.privacy.mechanisms`): the distributed Gaussian above
(``--dp-mechanism gaussian``) or its integer counterpart, the distributed
Skellam (``--dp-mechanism skellam``), each with its accountant
(:mod:`securefedrec.privacy.accountants`). :class:`AccountedUserPrivacy`
holds what they share -- the rounds, the budget stop, the server's epsilon,
one :meth:`~AccountedUserPrivacy.privatize` -- and :class:`UserLevelPrivacy`
and :class:`SkellamUserPrivacy` what differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from protocols import RoundConfig
from securefedrec import streams
from securefedrec.errors import CheckpointError, ConfigError
from securefedrec.privacy.accountants.base import BudgetAccountant
from securefedrec.privacy.accountants.gaussian import PrivacyAccountant, calibrate_noise_multiplier
from securefedrec.privacy.accountants.skellam import SkellamAccountant
from securefedrec.privacy.base import RoundPrivacy
from securefedrec.privacy.mechanisms.base import NoiseMechanism
from securefedrec.privacy.mechanisms.gaussian import DistributedGaussian
from securefedrec.privacy.mechanisms.skellam import DistributedSkellam, plan_skellam

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = ["AccountedUserPrivacy", "SkellamUserPrivacy", "UserLevelPrivacy", "seeded_noise"]

MechanismT = TypeVar("MechanismT", bound=NoiseMechanism)
AccountantT = TypeVar("AccountantT", bound=BudgetAccountant)


def seeded_noise(seed: int, noise_stream: int = streams.NOISE) -> Callable[[int, int], np.random.Generator]:
    """``(round, client) -> generator`` seeded per (seed, round, noise_stream, client): reproducible runs."""

    def seeded(round_id: int, client: int) -> np.random.Generator:
        return np.random.default_rng([seed, round_id, noise_stream, client])

    return seeded


class AccountedUserPrivacy(RoundPrivacy, Generic[MechanismT, AccountantT]):
    """User-level DP in the simulator: a noise mechanism, an accountant that counts rounds,
    and per-client noise sources (shared by the Gaussian and the Skellam mechanism).

    Args:
        mechanism: clipping and noise.
        accountant: counts rounds.
        rng_factory: ``(round, client) -> generator`` for the client's noise;
            ``None`` draws every share from
            :func:`~securefedrec.privacy.mechanisms.gaussian.secure_generator`.
    """

    mode = "user"
    description = ""
    """The mechanism as the report names it."""

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

    def privatize(
        self, deltas: np.ndarray, clients: Sequence[int], threshold: int, round_id: int
    ) -> np.ndarray:
        """Each client's row clipped and noised by the mechanism with its own generator.

        Floats for the Gaussian, integer units (int64) for the Skellam mechanism
        (:attr:`~securefedrec.privacy.mechanisms.base.NoiseMechanism.output_dtype`).
        """
        out = np.empty(deltas.shape, dtype=self.mechanism.output_dtype)
        for j, cid in enumerate(clients):
            out[j] = self.mechanism.privatize(deltas[j], threshold, self._rng(round_id, cid))
        return out

    def _mechanism_summary(self) -> dict[str, Any]:
        """The mechanism's own report entries (after ``clip``)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Report entry: mechanism parameters and the spend so far."""
        return {
            "mode": self.mode,
            "mechanism": self.description,
            "noise_multiplier": self.mechanism.noise_multiplier,
            "noise_multiplier_calibrated": self.calibrated,
            "clip": self.mechanism.clip,
            **self._mechanism_summary(),
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


class UserLevelPrivacy(AccountedUserPrivacy[DistributedGaussian, PrivacyAccountant]):
    """DP-FedAvg for the simulator: the distributed Gaussian and an Opacus accountant."""

    description = "distributed Gaussian (DP-FedAvg, noise shares sized for the threshold)"

    @classmethod
    def build(cls, config: ExperimentConfig, pool: Any, model: Any) -> UserLevelPrivacy:
        """:meth:`from_config` (the registry's entry point; the pool and model are not needed)."""
        return cls.from_config(config)

    @classmethod
    def from_config(cls, config: ExperimentConfig, noise_stream: int = streams.NOISE) -> UserLevelPrivacy:
        """Build from an :class:`~securefedrec.config.ExperimentConfig` (``dp == "user"``).

        sigma = ``config.privacy.noise_multiplier``, else calibrated so that
        ``config.federation.rounds`` rounds spend at most ``(epsilon, delta)`` of ``config.privacy``.
        Noise is seeded per (seed, round, noise_stream, client) for reproducible runs.
        """
        dp, fed = config.privacy, config.federation
        sigma = dp.noise_multiplier
        calibrated = sigma is None
        if sigma is None:
            if dp.epsilon is None:
                raise ConfigError("dp: 'user' needs epsilon (a budget) or noise_multiplier")
            sigma = calibrate_noise_multiplier(dp.epsilon, dp.delta, fed.sample_rate, fed.rounds,
                                               dp.accountant)
        self = cls(
            DistributedGaussian(noise_multiplier=sigma, clip=dp.clip),
            PrivacyAccountant(noise_multiplier=sigma, sample_rate=fed.sample_rate, delta=dp.delta,
                              accountant=dp.accountant, budget=dp.epsilon),
            seeded_noise(config.run.seed, noise_stream),
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

    def realized_std(self, survivors: int, threshold: int) -> float | None:
        """Per-coordinate noise std of a sum of ``survivors`` shares."""
        return self.mechanism.share_std(threshold) * math.sqrt(survivors)


class SkellamUserPrivacy(AccountedUserPrivacy[DistributedSkellam, SkellamAccountant]):
    """``--dp user --dp-mechanism skellam`` for the simulator: integer noise, Skellam accounting.

    The rounding and noise of a client come from its ``rng_factory`` generator
    (``None``: :func:`~securefedrec.privacy.mechanisms.gaussian.secure_generator`).
    """

    description = "distributed Skellam (integer noise in the ring, shares sized for the threshold)"

    @classmethod
    def build(cls, config: ExperimentConfig, pool: Any, model: Any) -> SkellamUserPrivacy:
        """:meth:`from_config` for the pool's population and the model's delta length."""
        return cls.from_config(config, pool.num_clients, model.length)

    @classmethod
    def from_config(
        cls, config: ExperimentConfig, num_clients: int, dim: int, noise_stream: int = streams.NOISE
    ) -> SkellamUserPrivacy:
        """Build from an :class:`~securefedrec.config.ExperimentConfig` (``dp_mechanism == "skellam"``).

        Args:
            config: the experiment.
            num_clients: the population (the most clients a round can sample).
            dim: length of a client's delta.
            noise_stream: random stream id; noise is seeded per (seed, round, stream, client).
        """
        dp, fed = config.privacy, config.federation
        mech = plan_skellam(
            clip=dp.clip, dim=dim, max_clients=num_clients, ring_bits=fed.ring_bits,
            sample_rate=fed.sample_rate, rounds=fed.rounds, delta=dp.delta,
            epsilon=dp.epsilon, noise_multiplier=dp.noise_multiplier,
            coordinate_bound=config.model.update_clip,
        )
        self = cls(
            mech,
            SkellamAccountant(mu=mech.mu, l2=mech.l2_sensitivity, l1=mech.l1_sensitivity,
                              sample_rate=fed.sample_rate, delta=dp.delta, budget=dp.epsilon),
            seeded_noise(config.run.seed, noise_stream),
        )
        self.calibrated = dp.noise_multiplier is None
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

    def realized_std(self, survivors: int, threshold: int) -> float | None:
        """Per-coordinate noise std (float units) of a sum of ``survivors`` shares: sqrt(2 s lam) / gamma."""
        return math.sqrt(2 * survivors * self.mechanism.share_rate(threshold)) / self.mechanism.scale

    def _mechanism_summary(self) -> dict[str, Any]:
        """Scale, variance, sensitivities and rounding of the integer noise."""
        m = self.mechanism
        return {"scale": m.scale, "mu": m.mu, "l2_sensitivity": m.l2_sensitivity,
                "l1_sensitivity": m.l1_sensitivity, "rounding_beta": m.beta}
