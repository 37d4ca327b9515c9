"""The attack harness: build a run, expose exactly what the protocol reveals, score an attack.

What the attacker sees is decided by code, not by convention. The simulation
is given an :class:`ObservingAggregator` wrapped around the real protocol; after
each round it records only what that protocol hands the server:

- ``plaintext``: the individual decoded vectors the server received
  (:attr:`protocols.PlaintextAggregator.last_messages`, also filled by the
  top-k uplink), keyed by client id;
- every secure protocol (SecAgg, SecAgg+, Paillier): the decoded sum
  (:attr:`protocols.AggregationResult.total`), the survivor set and the bytes
  each client sent (the transcript's size). The masked / encrypted messages
  themselves are uniform (SecAgg) or semantically secure (Paillier) and carry
  nothing else; the wrapper never reads the protocol's inputs.

Together with the global vector the clients trained on (the server broadcast
it) and the sampled client ids (the server chose them), that forms a
:class:`ServerView`, the only input of an attack's inference step. Ground truth
(the users' ratings, labels) is used only to score the inference.

Registry: :data:`ATTACKS` maps names to classes; :func:`get_attack` builds one
and its errors list the registered names.
"""

from __future__ import annotations

import abc
import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from attacks.registry import ATTACKS  # the names, in a module light enough for the CLI parser
from protocols import AggregationResult, Aggregator, RoundConfig, Stage, get_aggregator
from protocols.base import CAPABILITIES
from securefedrec.config import ExperimentConfig
from securefedrec.data import Dataset
from securefedrec.errors import ConfigError
from securefedrec.models.base import Model
from securefedrec.server.simulation import Simulation

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "Observation",
    "Observed",
    "ObservingAggregator",
    "ObservingAttack",
    "ServerView",
    "Target",
    "auc",
    "derangement",
    "f1_score",
    "get_attack",
    "item_scores",
    "mean",
    "observe",
    "other_user",
    "run_attack",
    "users_by_view",
]



# --------------------------------------------------------------------------- results
@dataclass(frozen=True, kw_only=True)
class AttackResult:
    """One attack against one configuration (the keys of the attack report, docs/ARCHITECTURE.md).

    ``success`` is True when the attacker beat ``baseline`` by the attack's margin
    (for ``malicious-server``: when any secret was revealed).
    """

    attack: str
    protocol: str
    metric: str
    value: float
    baseline: float
    success: bool
    details: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the report keys first."""
        return {
            "attack": self.attack, "protocol": self.protocol, "metric": self.metric,
            "value": self.value, "baseline": self.baseline, "success": self.success,
            "details": _jsonable(self.details), "config": _jsonable(self.config),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- the server's view
@dataclass(frozen=True)
class Observation:
    """What one ``aggregate`` call revealed to the server."""

    round_id: int
    total: np.ndarray
    survivors: frozenset[int]
    bytes_up: Mapping[int, int]
    individual: Mapping[int, np.ndarray] | None


@dataclass(frozen=True)
class ServerView:
    """Everything the server of one round knows; the only input of an attack's inference.

    Attributes:
        round_id: the round (0-based).
        protocol: the protocol's registry name.
        secure: whether the protocol reveals only the sum.
        broadcast: the global vector the clients trained on (the server sent it).
        sampled: the clients the server invited.
        survivors: the clients whose input is in ``total``.
        total: the decoded sum of the survivors' updates, full length L.
        bytes_up: bytes each client sent (the transcript's size).
        individual: client id -> its decoded update (full length L); ``None``
            unless the protocol sends updates in the clear.
    """

    round_id: int
    protocol: str
    secure: bool
    broadcast: np.ndarray
    sampled: tuple[int, ...]
    survivors: frozenset[int]
    total: np.ndarray
    bytes_up: Mapping[int, int]
    individual: Mapping[int, np.ndarray] | None

    def update_of(self, client: int) -> np.ndarray | None:
        """The update of ``client`` if the protocol revealed it, else ``None``."""
        if self.individual is None:
            return None
        return self.individual.get(client)


class ObservingAggregator(Aggregator):
    """Wraps a protocol and records, per round, only what that protocol reveals to the server.

    Use :meth:`around` (it copies the wrapped class's ``name`` and capabilities).
    ``rng`` and ``last_messages`` are forwarded, so the simulator and the
    top-k uplink treat the wrapper like the protocol itself.
    """

    name: ClassVar[str] = "observed"
    secure: ClassVar[bool] = True

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner
        self.observations: dict[int, Observation] = {}
        self._round: int | None = None

    @classmethod
    def around(cls, inner: Aggregator, **options: Any) -> Any:
        """A ``cls`` wrapping ``inner``, of a subclass carrying ``inner``'s ``name`` and capabilities."""
        copied = {c: getattr(type(inner), c) for c in CAPABILITIES if c != "accepts_sparse"}
        # accepts_sparse stays False: the views are built from dense vectors
        sub = type(f"{cls.__name__}{type(inner).__name__}", (cls,), {"name": type(inner).name, **copied})
        return sub(inner, **options)

    # forwarded attributes ------------------------------------------------------------
    @property
    def rng(self) -> Any:
        """The wrapped protocol's rounding generator (``None`` if it has none)."""
        return getattr(self.inner, "rng", None)

    @rng.setter
    def rng(self, value: Any) -> None:
        if hasattr(self.inner, "rng"):
            self.inner.rng = value

    @property
    def last_messages(self) -> dict[int, np.ndarray]:
        """The wrapped protocol's individual messages (empty for a secure protocol)."""
        return dict(getattr(self.inner, "last_messages", {}))

    @last_messages.setter
    def last_messages(self, received: dict[int, np.ndarray]) -> None:
        # the top-k uplink (plaintext only) sums itself and hands the server the messages here
        if self.secure:
            raise ConfigError(
                f"protocol {self.name} is secure; it never hands the server individual messages")
        if hasattr(self.inner, "last_messages"):
            self.inner.last_messages = received
        if self._round is not None:
            total = np.sum([received[c] for c in sorted(received)], axis=0) if received else np.zeros(0)
            self.observations[self._round] = Observation(
                self._round, total, frozenset(received), {}, dict(received))

    def expect_round(self, round_id: int) -> None:
        """Tell the wrapper which round the next messages belong to (top-k bypasses ``aggregate``)."""
        self._round = round_id

    def _aggregate(
        self, inputs: Mapping[int, np.ndarray], config: RoundConfig, dropout: dict[int, Stage], length: int
    ) -> AggregationResult:
        """Run the wrapped protocol; record the sum (and, for plaintext only, the messages)."""
        result = self.inner.aggregate(inputs, config, dropout)
        self.observations[config.round_id] = self._observe(result, config.round_id)
        return result

    def _observe(self, result: AggregationResult, round_id: int) -> Observation:
        individual: dict[int, np.ndarray] | None = None
        if not type(self.inner).secure:
            messages = getattr(self.inner, "last_messages", None)
            if messages is None:
                raise ConfigError(
                    f"protocol {type(self.inner).name} is not secure but exposes no last_messages")
            individual = {c: np.array(v, dtype=np.float64) for c, v in messages.items()}
        return Observation(round_id, np.array(result.total, dtype=np.float64), result.survivors,
                           dict(result.bytes_up), individual)


# --------------------------------------------------------------------------- running
@dataclass
class Observed:
    """A run and the server's views of its rounds."""

    simulation: Simulation
    views: list[ServerView]

    @property
    def model(self) -> Model:
        """The model (public: its global vector's layout, :meth:`Model.item_rows`)."""
        return self.simulation.model

    def first_view_of(self) -> dict[int, ServerView]:
        """client -> the first view in which it is a survivor."""
        out: dict[int, ServerView] = {}
        for view in self.views:
            for c in sorted(view.survivors):
                out.setdefault(c, view)
        return out


def _public_index(sim: Simulation, round_id: int) -> np.ndarray | None:
    """The coordinates a random-k round sends (drawn from a public seed), else ``None``."""
    return sim.uplink.compressor.public_coords(sim.model.length, sim.config.run.seed, round_id)


def _scatter(vec: np.ndarray, length: int, idx: np.ndarray | None, what: str) -> np.ndarray:
    if vec.shape[0] == length:
        return vec
    if idx is None or len(idx) != vec.shape[0]:
        raise ConfigError(f"{what}: length {vec.shape[0]} does not match the model's {length}")
    full = np.zeros(length, dtype=np.float64)
    full[idx] = vec
    return full


def observe(
    config: ExperimentConfig,
    *,
    dataset: Dataset | None = None,
    aggregator: Aggregator | None = None,
    rounds: int | None = None,
    aggregator_options: Mapping[str, Any] | None = None,
    wrapper: ObservingAggregator | None = None,
) -> Observed:
    """Run ``rounds`` rounds (default ``config.federation.rounds``) of ``config``; record the server's views.

    Args:
        config: the configuration under attack.
        dataset: use this instead of loading ``config.data.dataset``.
        aggregator: the protocol object (default
            ``get_aggregator(config.federation.protocol, **aggregator_options)``).
        rounds: how many rounds to run.
        aggregator_options: options for the registry, e.g. ``{"key_bits": 512}`` for Paillier.
        wrapper: a custom :class:`ObservingAggregator` (already wrapping the protocol), for
            attacks that also act as clients (poisoning).
    """
    if config.privacy.silos is not None:
        raise ConfigError("silos: the attacks target one user per client; run them without --silos")
    if wrapper is None:
        inner = aggregator or get_aggregator(config.federation.protocol, **dict(aggregator_options or {}))
        wrapper = ObservingAggregator.around(inner)
    spy: ObservingAggregator = wrapper
    n_rounds = config.federation.rounds if rounds is None else rounds
    if n_rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {n_rounds}")
    sim = Simulation(config.replace(eval_every=max(config.run.eval_every, 10**6)),
                     dataset=dataset, aggregator=spy)
    views: list[ServerView] = []
    L = sim.model.length
    for _ in range(n_rounds):
        r = sim.next_round
        sampled = tuple(sim.sample(r))
        before = sim.global_vec.copy()
        spy.expect_round(r)
        sim.run_round()
        obs = spy.observations.pop(r, None)
        if obs is None:  # aborted or empty round: the server learnt nothing
            continue
        broadcast = before if sim.downlink.codec is None else sim.downlink.view.astype(np.float64)
        idx = _public_index(sim, r)
        individual = None if obs.individual is None else {
            c: _scatter(v, L, idx, f"round {r}, client {c}") for c, v in obs.individual.items()}
        views.append(ServerView(
            round_id=r, protocol=config.federation.protocol, secure=type(spy).secure, broadcast=broadcast,
            sampled=sampled, survivors=obs.survivors, total=_scatter(obs.total, L, idx, f"round {r}"),
            bytes_up=obs.bytes_up, individual=individual,
        ))
    return Observed(sim, views)


# --------------------------------------------------------------------------- scoring helpers
def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count 1/2); NaN if a class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    bounds = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(s)]])
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - pos * (pos + 1) / 2.0
    return float(u / (pos * neg))


def f1_score(predicted: np.ndarray, truth: np.ndarray) -> float:
    """F1 of a predicted boolean set against the true one (1.0 when both are empty)."""
    p = np.asarray(predicted, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    tp = int((p & t).sum())
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * tp / denom


def item_scores(update: np.ndarray, model: Model) -> np.ndarray:
    """Per item, the L2 norm of the update's row (:meth:`Model.item_rows`, e.g. MF's factors and bias)."""
    rows = model.item_rows(update)
    scores: np.ndarray = np.sqrt((rows * rows).sum(1))
    return scores


# --------------------------------------------------------------------------- attacks
@dataclass(frozen=True, kw_only=True)
class Target:
    """What :meth:`Attack.run` was told to use instead of what the configuration would build."""

    dataset: Dataset | None = None
    """The data set (default: load ``config.data.dataset``)."""
    aggregator: Aggregator | None = None
    """The protocol object (default: the configured protocol with ``aggregator_options``)."""
    aggregator_options: Mapping[str, Any] = field(default_factory=dict)
    """Options for the protocol registry."""


class Attack(abc.ABC):
    """An attack: run a configuration, infer from the server's view, score against a baseline.

    Subclasses set ``name`` (registry key) and ``metric`` and implement :meth:`attack`.

    Args:
        margin: the attack succeeds when its value beats the baseline by more than this.
        seed: seeds the attacker's own randomness (labelled subset, fake clients, ...).
    """

    name: ClassVar[str]
    metric: ClassVar[str]

    def __init__(self, *, margin: float = 0.05, seed: int = 0) -> None:
        if not (math.isfinite(margin) and margin >= 0):
            raise ConfigError(f"margin must be >= 0, got {margin}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.margin = margin
        self.seed = seed

    def run(
        self,
        config: ExperimentConfig,
        *,
        dataset: Dataset | None = None,
        aggregator: Aggregator | None = None,
        aggregator_options: Mapping[str, Any] | None = None,
    ) -> AttackResult:
        """Attack ``config``; ``dataset``/``aggregator`` override what the config would build.

        ``aggregator_options`` go to the protocol registry (e.g. ``{"key_bits": 512}`` for
        Paillier). Subclasses implement :meth:`attack`.
        """
        return self.attack(config, Target(dataset=dataset, aggregator=aggregator,
                                          aggregator_options=dict(aggregator_options or {})))

    @abc.abstractmethod
    def attack(self, config: ExperimentConfig, target: Target) -> AttackResult:
        """Attack ``config`` with the overrides of ``target`` (see :meth:`run`)."""

    def result(
        self, config: ExperimentConfig, value: float, baseline: float, success: bool, **details: Any
    ) -> AttackResult:
        """An :class:`AttackResult` for this attack."""
        return AttackResult(attack=self.name, protocol=config.federation.protocol, metric=self.metric,
                            value=float(value), baseline=float(baseline), success=bool(success),
                            details=details, config=config.to_dict())



class ObservingAttack(Attack):
    """An attack that runs ``rounds`` rounds of the configuration and reads what the server saw.

    Args:
        rounds: rounds to run.
        margin, seed: see :class:`Attack`.
    """

    def __init__(self, *, rounds: int, margin: float = 0.05, seed: int = 0) -> None:
        super().__init__(margin=margin, seed=seed)
        if rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {rounds}")
        self.rounds = rounds

    def attack(self, config: ExperimentConfig, target: Target) -> AttackResult:
        """Run :attr:`rounds` rounds through :func:`observe`, then :meth:`infer` from the views."""
        return self.infer(config, observe(config, dataset=target.dataset, aggregator=target.aggregator,
                                          rounds=self.rounds, aggregator_options=target.aggregator_options))

    @abc.abstractmethod
    def infer(self, config: ExperimentConfig, obs: Observed) -> AttackResult:
        """Infer from the server's views of the run and score against the baseline."""


def get_attack(name: str, **options: Any) -> Attack:
    """Build the attack registered as ``name`` with its ``options``.

    Raises:
        ConfigError: unknown name (the message lists the registered ones) or a bad option.
    """
    try:
        target = ATTACKS[name]
    except KeyError:
        raise ConfigError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}") from None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        attack: Attack = cls(**options)
    except TypeError as exc:
        raise ConfigError(f"attack {name}: {exc}") from None
    return attack


def run_attack(
    name: str,
    config: ExperimentConfig,
    *,
    dataset: Dataset | None = None,
    aggregator_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> AttackResult:
    """``get_attack(name, **options).run(config, ...)``."""
    return get_attack(name, **options).run(config, dataset=dataset, aggregator_options=aggregator_options)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``range(n)`` with no fixed point (identity for n < 2)."""
    if n < 2:
        return np.arange(n)
    perm = rng.permutation(n)
    # rotate the shuffled order by one: a cycle through all n, so no element maps to itself
    out: np.ndarray = np.empty(n, dtype=np.int64)
    out[perm] = np.roll(perm, -1)
    return out


def users_by_view(first: Mapping[int, ServerView]) -> dict[int, list[int]]:
    """round id -> the clients whose first view is that round (sorted)."""
    groups: dict[int, list[int]] = {}
    for c in sorted(first):
        groups.setdefault(first[c].round_id, []).append(c)
    return groups


def other_user(first: Mapping[int, ServerView], rng: np.random.Generator) -> dict[int, int]:
    """For each client, another client of the same round (else of any round): the baseline's donor."""
    donors: dict[int, int] = {}
    groups = users_by_view(first)
    everyone = sorted(first)
    for members in groups.values():
        if len(members) >= 2:
            perm = derangement(len(members), rng)
            donors.update({members[i]: members[int(perm[i])] for i in range(len(members))})
        else:
            for c in members:
                pool = [o for o in everyone if o != c]
                donors[c] = int(rng.choice(pool)) if pool else c
    return donors


def mean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN if none)."""
    vals = [v for v in values if math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan
