"""``poisoning``: fake clients promote a target item into benign users' top-K lists.

Threat (PipAttack, Zhang et al. WSDM 2022; FedRecAttack, Rong et al. ICDE 2022):
the attacker registers fake clients, a fraction of the real users (1 %, 3 %,
5 %), sampled like any client. A fake client ignores local training and sends
a crafted delta of the global vector: it raises the target's item bias and
moves the target's factor towards an approximation of benign user profiles --
the mean factor of publicly popular items (the attacker knows the popular
items, as FedRecAttack assumes some public interactions). Every coordinate is
as large as the protocol's encoding range allows.

Any model (``implicit-mf``, ``ncf``, through :meth:`Model.item_rows`): the fake
clients cannot follow MF's bias, so they move the target's row towards the mean
row of the publicly popular items, extrapolated away from the catalogue's mean
row (``boost``): the target becomes a clone of a "more popular than popular"
item, whatever the model does with a row. Each fake sends ``(wanted -
current) / fraction``, bounded by the encoding range.

Metric: exposure ratio ER@K, the fraction of benign users (who did not rate
the target in training) whose top-K list of the items not in their training
data contains the target, each user predicting with its own local part as in
evaluation (MF: its factor solved on the final model; implicit models: the user
embedding kept on the device). The table also holds each run's test RMSE
(explicit) or HR@10 (implicit), the accuracy price of a defence. ``value`` is
ER@10 at the largest fraction under ``defence``; ``details["table"]`` holds
ER@5 / ER@10 for every defence and fraction (fraction ``"0"``: the defence
without fake clients). Baseline: ER@10 of the target without fake clients and
without defence.

Measured on ml-100k u1 (8 factors, sample rate 0.2, 30 rounds, FedAdam, plaintext;
the SecAgg+ sum, hence ER, is the same): ER@10 of an unrated tail item rises
from 0 to 0.67 / 0.74 / 0.75 at 1 / 3 / 5 % fake clients; enforced ``clip``
0.61 / 0.71 / 0.72; ``trimmed-mean`` 0 / 0 / 0. With FedAvg: 1.0 at every
fraction, ``clip`` 0.005 / 1.0 / 1.0. After only 10 rounds (``benchmarks.attacks
--quick``) the numbers are small (0.13 undefended, 0.09 ``clip`` at 5 %): the
push accumulates round after round.

Measured (synthetic 300 users x 200 items, 20 rounds, plaintext): with the
default FedAdam server optimizer, ER@10 rises from 0.003 to 0.17 / 0.34 / 0.42
at 1 / 3 / 5 % fake clients, and enforced clipping does not stop it -- an
adaptive server optimizer normalises every coordinate, so a *consistent*
push moves the target at the full server step whatever its size. With FedAvg
the undefended attack reaches ER@10 ~ 1.0. User-level DP (epsilon 4) does not
help either (ER@10 0.58 with FedAdam, 1.0 with FedAvg, at 5 %): the noise is
calibrated to hide one user, not a coalition pushing the same coordinates.

Measured on implicit data (synthetic 150 users x 100 items, leave-one-out, 8 factors,
q = 0.5, 20 rounds, plaintext, 5 % fake clients, FedAdam unless said): ER@10 0 -> 1.0
for implicit-mf and ncf undefended; ``median`` 0.16 for implicit-mf (at a price:
HR@10 0.54 -> 0.31), 0 for ncf; ``trimmed-mean`` 0 for both. ``row-clip`` only holds
with a bound at the honest rows' scale (median honest row norm 0.003-0.009 there,
against about 1 for the trained rows): tau 0.1 leaves ER@10 1.0 (implicit-mf) / 0.33
(ncf); tau 0.01 gives 0.61 / 0.007 with FedAdam, and 0.0 / 0.0 with ``fedavg`` lr 2
and ``--server-decay 0.1`` (HR@10 unchanged). On ml-100k loo (implicit-mf, 16
factors, q = 0.2, 10 rounds, that hardened server, 5 % fake clients): ER@10 0 -> 1.0
undefended, 0.0 with ``row-clip`` 0.01, HR@10 0.437 either way; with the default
FedAdam server 0.008 after 10 rounds but 1.0 after 30 (the push accumulates), and
``row-clip`` 0.01 still 0.79 after 30. Choose the bound per model and data from the
honest update norms, and harden the server as above.

Under secure aggregation the server cannot inspect updates, so what is left is
a bound every client must *prove* and what the server does with the sum. A
whole-update L2 bound (``clip``) bounds each fake client's influence to that of
an honest one -- yet a fake spends its whole budget on one item while an
honest user spreads it over every item it rated, so a few per cent of fake
clients still dominate the target's coordinates. Robust aggregation
(median, trimmed mean, norm bounding against the round's median) needs the
individual updates, i.e. plaintext, or secure robust aggregation (MPC
medians, group-wise SecAgg + median), which this project does not implement.

The defence that works under secure aggregation combines three pieces:
``row-clip`` (every client's row of *each item* -- factors and bias -- bounded
by tau, proven like ``clip``; Yuan et al., SIGIR 2023, bound per-item
gradients the same way), a non-adaptive server optimizer (``fedavg``: FedAdam
and server momentum turn any *consistent* push into full-size steps), and
server weight decay ``lambda`` on the item part (``--server-decay``,
:mod:`securefedrec.server.optimizers`). Fake clients that are a fraction f of the
population then add ``lr * f * tau`` (in expectation) to the target's row per
round, and the decay holds its norm below ``lr * f * tau / lambda`` for good;
without the decay the bound grows linearly with the rounds, so ``row-clip``
alone only delays the attack. Measured (ml-100k u1, 16 factors, q = 0.2,
5 % fake clients, fedavg lr 2, lambda 0.1, tau 0.75 -- about the median honest row
norm, 0.71): ER@10 0.002 / 0.025 / 0.006 / 0.015 after 15 / 30 / 60 / 120
rounds; with tau 1.0, 0.27 after 30 rounds (honest items are still weak
early on) and 0.024 after 60. With fedavg and ``row-clip`` 0.75 but no
decay (8 factors): 0.02 after 30 rounds, 0.998 after 60. The tail targets of attack seeds 0-4
on u1 (0 or 1 training rating each) give 0.016-0.025 after 30 rounds. Whether the held row
keeps a target out of top-K lists depends on the gap between its honest score and each
user's K-th item, so on the data and the target: on the synthetic default data (500 users x
300 items, 32 factors, tau 0.5, bound 0.45) the tail targets are items with 11-13 ratings,
and a liked one (mean rating 4.2-4.5) is close to the top already. Of the 9 targets of config
seeds 0-2 x attack seeds 0-2, 5 % fake clients bring ER@10 to 0.99-1.0 for 4 (0 without fake
clients), 0.19 for one, at most 0.04 for the other 4 (item 127, mean rating 2.5, the default
target: 0); tau 0.1 (bound 0.09) still leaves 0.06 / 0.07 / 0.18 / 0.52 on those 4 liked
targets, at test RMSE 0.89-0.90 (0.75-0.77 undefended with FedAdam). On ml-100k u1 the price is: test
RMSE about 0.99 with the whole defence against 0.93 for the undefended
default (FedAdam), because the decay and the row bound also slow honest
learning. The bound is only as good as its proof:
a client that may skip ``row-clip`` is back to the undefended case.

Defences (``defences``):

``none``         plain aggregation.
``row-clip``     every item's row of every update (factors and bias) bounded in L2
                 by ``row_clip``, enforced like ``clip`` (see above for why it needs
                 ``fedavg`` and ``--server-decay`` to hold over many rounds).
``clip``         every update's L2 norm bounded by ``config.privacy.clip`` (the DP clip),
                 *enforced*: a malicious client would simply skip a clip that
                 is only a client-side convention, so this models a check the
                 server can trust. Under SecAgg / SecAgg+ / Paillier the server
                 cannot see norms; the bound holds only if each client proves
                 it in zero knowledge (e.g. a range proof on its masked input,
                 as in RoFL / EIFFeL / ACORN -- not implemented here).
``norm-bound``   server-side: each received update is scaled to at most the
                 median norm of the round (needs individual updates: plaintext only).
``median``       coordinate-wise median of the updates, times their number (plaintext only).
``trimmed-mean`` coordinate-wise mean after dropping the ``trim`` largest and
                 smallest fraction per coordinate, times the number (plaintext only).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import numpy as np
import torch

from attacks.base import Attack, AttackResult, ObservingAggregator, Target
from protocols import AggregationResult, Aggregator, RoundConfig, Stage, get_aggregator
from securefedrec.config import ExperimentConfig
from securefedrec.data import Dataset
from securefedrec.errors import ConfigError
from securefedrec.models.base import Model
from securefedrec.models.mf import MF, Layout
from securefedrec.models.registry import build_model
from securefedrec.privacy import clip_l2
from securefedrec.server.simulation import Simulation

__all__ = [
    "DEFENCES", "SECURE_DEFENCES", "PoisonedAggregator", "PoisoningAttack", "clip_rows", "exposure_ratio",
    "item_coordinates",
]

DEFENCES = ("none", "clip", "row-clip", "norm-bound", "median", "trimmed-mean")
SECURE_DEFENCES = ("none", "clip", "row-clip")
"""The defences that do not need individual updates (``clip`` and ``row-clip`` only when enforced)."""


def _robust_total(messages: Mapping[int, np.ndarray], defence: str, trim: float) -> np.ndarray:
    x = np.stack([messages[c] for c in sorted(messages)])
    n = x.shape[0]
    if defence == "norm-bound":
        norms = np.linalg.norm(x, axis=1)
        total: np.ndarray = clip_l2(x, float(np.median(norms))).sum(0)
        return total
    if defence == "median":
        return np.asarray(np.median(x, axis=0) * n)
    k = min(math.floor(trim * n), (n - 1) // 2)
    s = np.sort(x, axis=0)
    return np.asarray(s[k : n - k].mean(0) * n)


class PoisonedAggregator(ObservingAggregator):
    """The protocol with fake clients among the participants and, optionally, a defence.

    Build it with :meth:`around` (so it carries the protocol's ``name`` and ``secure``).

    Args:
        inner: the protocol.
        fake_ids: ids of the fake clients (outside the benign id range).
        craft: round id -> the fake clients' delta (they all send the same).
        sample_rate: each fake client joins a round with this probability, like a benign one.
        defence: one of :data:`DEFENCES`.
        clip: the enforced L2 bound of the ``clip`` defence.
        trim: fraction trimmed per side by ``trimmed-mean``.
        seed: seeds the fake clients' sampling.
    """

    def __init__(self, inner: Aggregator, *, fake_ids: Sequence[int], craft: Callable[[int], np.ndarray],
                 sample_rate: float, defence: str, clip: float, trim: float, seed: int,
                 layout: Layout | Model | None = None, row_clip: float = math.inf) -> None:
        super().__init__(inner)
        if defence == "row-clip" and (layout is None or not row_clip > 0):
            raise ConfigError("defence 'row-clip' needs the model layout and a row bound > 0")
        if defence not in DEFENCES:
            raise ConfigError(f"unknown defence {defence!r}; choose one of: {', '.join(DEFENCES)}")
        if type(inner).secure and defence not in SECURE_DEFENCES:
            raise ConfigError(f"defence {defence!r} needs the individual updates, which protocol "
                              f"{type(inner).name} hides; under secure aggregation use one of "
                              f"{', '.join(SECURE_DEFENCES)}")
        self.fake_ids = list(fake_ids)
        self.craft = craft
        self.sample_rate = sample_rate
        self.defence = defence
        self.clip = clip
        self.trim = trim
        self.seed = seed
        self.layout = layout
        self.row_clip = row_clip
        self.fake_participations = 0
        self.joined: dict[int, int] = {}
        """round id -> how many fake clients took part."""

    def _aggregate(
        self, inputs: Mapping[int, np.ndarray], config: RoundConfig, dropout: dict[int, Stage], length: int
    ) -> AggregationResult:
        """Add the fake clients' inputs, apply the defence, aggregate."""
        rng = np.random.default_rng([self.seed, config.round_id, 31])
        joined = [f for f in self.fake_ids if rng.random() < self.sample_rate]
        self.joined[config.round_id] = len(joined)
        x = dict(inputs)
        if joined:
            vec = np.clip(self.craft(config.round_id), -config.clip_range, config.clip_range)
            x.update({f: vec for f in joined})
            self.fake_participations += len(joined)
        if self.defence == "clip":  # a bound every client must prove (models a verified range proof)
            x = {c: clip_l2(v, self.clip) for c, v in x.items()}
        elif self.defence == "row-clip":  # a bound on every item's row, also proven
            x = {c: clip_rows(v, self.layout, self.row_clip) for c, v in x.items()}
        result = self.inner.aggregate(x, config, dropout)
        if self.defence in ("norm-bound", "median", "trimmed-mean"):
            messages = getattr(self.inner, "last_messages", {})
            if messages:
                result = dataclasses.replace(result, total=_robust_total(messages, self.defence, self.trim))
        self.observations[config.round_id] = self._observe(result, config.round_id)
        return result


def item_coordinates(layout: Layout | Model) -> np.ndarray:
    """Each item's coordinates in the global vector, (items, w) indices: MF's ``[q_i, b_i]`` for a
    :class:`~securefedrec.models.mf.Layout`, else :meth:`Model.item_rows` of the index vector."""
    if isinstance(layout, Layout):
        m, k = layout.num_items, layout.factors
        return np.concatenate([np.arange(m * k).reshape(m, k), m * k + np.arange(m)[:, None]], axis=1)
    coords: np.ndarray = layout.item_rows(np.arange(layout.length))
    return coords


def clip_rows(update: np.ndarray, layout: Layout | Model | None, bound: float) -> np.ndarray:
    """Scale each item's row of ``update`` (:func:`item_coordinates`: MF's factors and bias, an
    implicit model's item-table row) to L2 norm at most ``bound``; other coordinates are kept."""
    if layout is None:
        raise ConfigError("row clipping needs the model layout")
    coords = item_coordinates(layout)
    out = np.array(update, dtype=np.float64, copy=True)
    rows = out[coords]
    norms = np.sqrt((rows * rows).sum(1))
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-300))
    out[coords] = rows * scale[:, None]
    return out


def exposure_ratio(sim: Simulation, target: int, ks: Sequence[int] = (5, 10)) -> dict[int, float]:
    """ER@K of ``target`` on the simulation's current model, for any model.

    Among the benign users whose training data does not hold the target, the share whose top-K
    list of the items *not in their training data* contains it. Each user ranks with the local
    part it predicts with (:meth:`Model.fit_local`: MF's factors solved on the final model, an
    implicit model's kept user embeddings) and :meth:`Model.scores`, as in evaluation.
    """
    model, data = sim.model, sim.pool.data
    g = torch.from_numpy(sim.global_vec).to(torch.float64)
    users = np.asarray([u for u in range(sim.dataset.num_users)
                        if data.counts[u] > 0 and target not in set(data.user_items(u).tolist())])
    hits = {k: 0 for k in ks}
    for s in range(0, len(users), 256):
        chunk = users[s : s + 256]
        batch = data.padded(chunk, torch.device("cpu"), torch.float64)
        kept = {name: value[torch.as_tensor(chunk)].to(torch.float64)
                for name, value in sim.pool.local.items()}
        with torch.no_grad():
            scores = model.scores(g, model.fit_local(g, batch, kept)).numpy().copy()
        rows, cols = np.nonzero(batch.mask.numpy())
        scores[rows, batch.items.numpy()[rows, cols]] = -np.inf  # rank only items not interacted with
        above = (scores > scores[:, [target]]).sum(1)
        for k in ks:
            hits[k] += int((above < k).sum())
    return {k: hits[k] / max(1, len(users)) for k in ks}


class PoisoningAttack(Attack):
    """Fake clients promote one item; ER@5 / ER@10 per malicious fraction and defence.

    Args:
        fractions: fake clients as fractions of the real users.
        defences: defences to evaluate (default: all that the protocol allows).
        defence: the defence whose ER@10 at the largest fraction is ``value``
            (default: ``row-clip`` -- the best available under secure aggregation).
        target: the promoted item (default: a seeded pick among the least popular tenth).
        popular: how many publicly popular items approximate the user profiles.
        trim: per-side trim fraction of ``trimmed-mean``.
        row_clip: the per-item L2 bound of ``row-clip``.
        rounds: rounds per run (default ``config.federation.rounds``).
        boost: how far models other than MF push the target's row past the popular items'
            mean row, in units of its distance from the catalogue's mean row.
        margin, seed: see :class:`~attacks.base.Attack`.
    """

    name: ClassVar[str] = "poisoning"
    metric: ClassVar[str] = "er@10"

    def __init__(self, *, fractions: Sequence[float] = (0.01, 0.03, 0.05),
                 defences: Sequence[str] | None = None, defence: str = "row-clip", target: int | None = None,
                 popular: int = 20, trim: float = 0.1, row_clip: float = 0.75, rounds: int | None = None,
                 boost: float = 1.0, margin: float = 0.05, seed: int = 0) -> None:
        super().__init__(margin=margin, seed=seed)
        if not fractions or any(not 0 < f < 1 for f in fractions):
            raise ConfigError(f"fractions must be in (0, 1), got {list(fractions)}")
        for d in [*(defences or ()), defence]:
            if d not in DEFENCES:
                raise ConfigError(f"unknown defence {d!r}; choose one of: {', '.join(DEFENCES)}")
        if not 0 <= trim < 0.5:
            raise ConfigError(f"trim must be in [0, 0.5), got {trim}")
        if rounds is not None and rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {rounds}")
        if not (math.isfinite(row_clip) and row_clip > 0):
            raise ConfigError(f"row_clip must be a positive number, got {row_clip}")
        if not (math.isfinite(boost) and boost >= 0):
            raise ConfigError(f"boost must be >= 0, got {boost}")
        self.boost = boost
        self.row_clip = row_clip
        self.fractions = tuple(sorted(fractions))
        self.defences = None if defences is None else tuple(defences)
        self.defence = defence
        self.target = target
        self.popular = popular
        self.trim = trim
        self.rounds = rounds

    def simulation(self, config: ExperimentConfig, dataset: Dataset, make_inner: Callable[[], Aggregator],
                   target: int, fraction: float, defence: str) -> tuple[Simulation, PoisonedAggregator]:
        """A fresh run of ``config`` with fake clients (``fraction`` of the users) behind ``defence``.

        Returns the simulation (not yet run) and its :class:`PoisonedAggregator`, whose
        ``joined`` records how many fake clients took part in each round.
        """
        holder: dict[str, Simulation] = {}
        model = build_model(config, dataset.num_items, dataset=dataset)  # public: the global vector's layout
        coords = item_coordinates(model)
        counts = np.bincount(dataset.train.items, minlength=dataset.num_items)
        top = np.argsort(-counts, kind="stable")[: self.popular]

        def craft(round_id: int) -> np.ndarray:
            g = holder["sim"].global_vec  # the broadcast: every client, fake or not, receives it
            big = config.model.update_clip
            delta = np.zeros(len(g))
            if isinstance(model, MF):  # the profile direction for the factors, the bias up
                m, k = model.layout.num_items, model.layout.factors
                d = g[: m * k].reshape(m, k)[top].mean(0)
                d = d / max(float(np.linalg.norm(d)), 1e-12)
                delta[target * k : (target + 1) * k] = big * d
                delta[m * k + target] = big
                return delta
            # any other model: the target's row towards the popular items' mean row, extrapolated
            # away from the catalogue's mean row (a clone of a "more popular than popular" item)
            rows = model.item_rows(g)
            centre = rows[top].mean(0)
            wanted = centre + self.boost * (centre - rows.mean(0))
            delta[coords[target]] = np.clip((wanted - rows[target]) / max(fraction, 1e-3), -big, big)
            return delta

        wrapper: PoisonedAggregator = PoisonedAggregator.around(
            make_inner(), fake_ids=[], craft=craft, sample_rate=config.federation.sample_rate,
            defence=defence, clip=config.privacy.clip, trim=self.trim, seed=self.seed,
            layout=model, row_clip=self.row_clip)
        sim = Simulation(config.replace(eval_every=10**6), dataset=dataset, aggregator=wrapper)
        holder["sim"] = sim
        n_users = sim.dataset.num_users
        n_fake = max(1, round(fraction * n_users)) if fraction > 0 else 0
        wrapper.fake_ids = list(range(n_users, n_users + n_fake))  # after every benign id
        return sim, wrapper

    def _one_run(self, config: ExperimentConfig, dataset: Dataset, make_inner: Callable[[], Aggregator],
                 target: int, fraction: float, defence: str
                 ) -> tuple[dict[int, float], int, dict[str, float]]:
        sim, wrapper = self.simulation(config, dataset, make_inner, target, fraction, defence)
        for _ in range(self.rounds or config.federation.rounds):
            sim.run_round()
        ev = sim.evaluate()  # RMSE on explicit data, HR@10 on implicit data
        return exposure_ratio(sim, target), wrapper.fake_participations, {
            "rmse": math.nan if ev.rmse is None else ev.rmse, "hr@10": math.nan if ev.hr is None else ev.hr}

    def attack(self, config: ExperimentConfig, given: Target) -> AttackResult:
        """Train once without and once per (fraction, defence) with fake clients; report ER@K."""
        if config.privacy.silos is not None:
            raise ConfigError("silos: poisoning targets the cross-device setting; run it without --silos")
        if given.aggregator is not None:
            raise ConfigError("poisoning builds a fresh protocol per run; pass aggregator_options instead")

        def make_inner() -> Aggregator:
            return get_aggregator(config.federation.protocol, **given.aggregator_options)

        secure = type(make_inner()).secure
        defences = self.defences or (SECURE_DEFENCES if secure else DEFENCES)
        if secure:
            bad = [d for d in (*defences, self.defence) if d not in SECURE_DEFENCES]
            if bad:
                raise ConfigError(f"defence {bad[0]!r} needs individual updates, hidden by protocol "
                                  f"{config.federation.protocol}; choose from {', '.join(SECURE_DEFENCES)}")
        if self.defence not in defences:
            defences = (*defences, self.defence)
        data = given.dataset if given.dataset is not None else Simulation(
            config.replace(rounds=1), aggregator=make_inner()).dataset
        target = self.target if self.target is not None else self._pick_target(data)
        if not 0 <= target < data.num_items:
            raise ConfigError(f"target item {target} is outside 0..{data.num_items - 1}")
        clean, _, clean_utility = self._one_run(config, data, make_inner, target, 0.0, "none")
        table: dict[str, dict[str, dict[str, float]]] = {}
        participations: dict[str, int] = {}
        for defence in defences:
            # the defence's own cost: ER@K of the target with the defence and no fake client
            er0, _, utility0 = ((clean, 0, clean_utility) if defence == "none"
                                else self._one_run(config, data, make_inner, target, 0.0, defence))
            table[defence] = {"0": {"er@5": er0[5], "er@10": er0[10], **utility0}}
            for f in self.fractions:
                er, joined, utility = self._one_run(config, data, make_inner, target, f, defence)
                table[defence][f"{f:g}"] = {"er@5": er[5], "er@10": er[10], **utility}
                participations[f"{defence}/{f:g}"] = joined
        value = table[self.defence][f"{self.fractions[-1]:g}"]["er@10"]
        return self.result(
            config, value, clean[10], value > clean[10] + self.margin,
            target=target, target_train_ratings=int((data.train.items == target).sum()),
            defence=self.defence, fraction=self.fractions[-1], table=table,
            clean={"er@5": clean[5], "er@10": clean[10], **clean_utility},
            fake_participations=participations,
            defences_under_secure_aggregation=(
                "only 'clip' and 'row-clip', and only if each client proves its bound in zero "
                "knowledge; 'row-clip' holds over many rounds with fedavg and --server-decay; "
                "norm-bound / median / trimmed-mean need the individual updates"),
            baseline_is="ER@10 of the target without fake clients",
        )

    def _pick_target(self, data: Dataset) -> int:
        counts = np.bincount(data.train.items, minlength=data.num_items)
        order = np.argsort(counts, kind="stable")
        tail = order[: max(1, data.num_items // 10)]
        return int(np.random.default_rng([self.seed, 5]).choice(tail))
