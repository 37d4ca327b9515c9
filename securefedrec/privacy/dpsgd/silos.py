"""Record-level DP for cross-silo federation: each silo trains with Opacus DP-SGD.

``--silos S`` groups the users into S clients (:func:`silo_groups`); with
``--dp record`` every silo trains a torch MF model (:class:`SiloMF`) with an
Opacus :class:`~opacus.PrivacyEngine`: Poisson-sampled mini-batches of its
ratings, per-sample gradients clipped to L2 ``clip`` and Gaussian noise
``N(0, (sigma * clip)^2)`` on their sum. The silo's released delta is
``trained global part - received global part``: post-processing of the DP-SGD
trajectory, so it carries the silo's (epsilon, delta).

What one record is: **one rating** (user, item, stars). Two data sets are
neighbours when they differ in one rating of one silo; a user with many
ratings is *not* protected as a whole (that is ``--dp user``).

The model of a silo: item factors and item biases (the global part, reset
from the broadcast global vector every round), the global mean (a 1x1
embedding, frozen at the broadcast value: every rating touches it, so a step
size that suits the item rows would make it oscillate; the biases absorb any
offset), and the silo's user factors and user biases (local, kept across
rounds). *All* trainable parameters train with DP-SGD: the user factors feed
the item gradients of other ratings, so training them without noise would
leak. Loss per rating: squared error plus ``lam_item ||q_i||^2 + lam_bias b_i^2
+ lam_user ||p_u||^2 + lam_bias b_u^2`` (the frequency-weighted L2 of
:mod:`securefedrec.models.mf`), summed over the batch; the SGD step is
``local_lr / dp_batch_size`` times the noisy sum (so ``local_lr`` is the step
on the mean gradient of an expected batch).

Accounting: Opacus' accountant of each silo (``rdp`` or ``prv``), stepped at
every DP-SGD step with the silo's sample rate ``1 / batches per epoch``. With
a budget and no explicit sigma, each silo's sigma is calibrated
(``make_private_with_epsilon``) for ``rounds * local_epochs`` epochs, as if it
took part in every round. A round that would push any silo past the budget
is refused before it starts. The report's epsilon is the largest over silos.

Notes:
    Memory: the default ``grad_sample_mode="ghost"`` (ghost clipping, Opacus'
    embedding norm sampler) never materializes per-sample gradients: it
    computes each rating's gradient norm from the B looked-up rows and runs a
    second backward pass on the rescaled loss, so memory and time are
    O(batch * k). ``"hooks"`` (tested equal, to float rounding) materializes
    ``batch * (items + silo users) * (k + 1)`` floats per step (about 55 MB for
    ml-100k, k = 32, batch 256): still bounded by the batch, but 10x slower.
    Torch's intra-op threads hurt on a loaded small machine; the benchmark
    sets ``torch.set_num_threads(1)``.

    Randomness: the simulator seeds each silo's Poisson sampler and noise
    generator from (seed, silo) so runs reproduce. Opacus' ``secure_mode``
    (torchcsprng) is the choice for a deployment; it is not used here.

    Checkpoints: :meth:`SiloDPSGD.state` holds, per silo, the user factors and
    user biases, the accountant history, the rounds the silo trained in, its
    sigma and sample rate, and the states of its generators. Opacus does not
    copy a generator: ``make_private(noise_generator=g)`` keeps ``g`` in the
    optimizer (``optimizer.generator``), and ``DPDataLoader.from_data_loader``
    hands the original loader's ``generator`` to its Poisson sampler
    (``batch_sampler.generator``) and to the ``DataLoader`` itself (one int64
    base-seed draw per epoch). Here these are one object, so the state holds the
    same bytes twice (``sampler_rng``, ``noise_rng``) and :meth:`SiloDPSGD.restore`
    sets them on the very generators that draw. The item part is not saved: it is
    reloaded from the broadcast every round. A resumed run equals the
    uninterrupted one bit for bit (``tests/test_dpsgd_resume.py``).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from securefedrec import streams
from securefedrec.errors import CheckpointError, ConfigError, PrivacyBudgetExhausted
from securefedrec.models.base import RatingsByUser
from securefedrec.models.mf import MF, Hyper, Layout
from securefedrec.privacy.accountants.gaussian import PrivacyAccountant, calibrate_noise_multiplier
from securefedrec.privacy.accountants.registry import make_accountant
from securefedrec.privacy.base import RoundPrivacy
from securefedrec.privacy.dpsgd.model import SiloLoss, SiloMF
from securefedrec.privacy.dpsgd.state import (
    STATE_VERSION,
    SiloState,
    byte_tensor,
    decode_array,
    decode_bytes,
    decode_history,
    encode_array,
)

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig

__all__ = ["GRAD_SAMPLE_MODES", "SiloDPSGD", "silo_groups"]

GRAD_SAMPLE_MODES = ("ghost", "hooks")
"""Opacus per-sample gradient modes supported here; ``ghost`` is the default (module Notes)."""

_SILO_STREAM = streams.SILO


def silo_groups(num_users: int, silos: int, seed: int) -> list[np.ndarray]:
    """Split users ``0..num_users-1`` into ``silos`` groups of near-equal size, at random by ``seed``."""
    if not 1 <= silos <= num_users:
        raise ConfigError(f"silos: must be in [1, {num_users}] (the number of users), got {silos}")
    perm = np.random.default_rng([seed, _SILO_STREAM]).permutation(num_users)
    return [np.sort(part) for part in np.array_split(perm, silos)]


class _RatingsDataset(TensorDataset):
    """(local user, item) -> rating, fetched a whole batch at a time (``__getitems__``)."""

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return [tuple(t[idx] for t in self.tensors)]


def _collate_batch(batch: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    return batch[0]


_SETTINGS = ("accountant", "delta", "clip", "batch_size", "epochs", "lr", "grad_sample_mode")
"""The :meth:`SiloDPSGD.state` settings a restoring run must share (``lr`` etc. change the trajectory)."""


class _Silo:
    """One silo's model, Opacus-wrapped optimizer and Poisson data loader."""

    def __init__(self, model: SiloMF, module: nn.Module, optimizer: Any, loader: DataLoader[Any],
                 engine: PrivacyEngine, noise_multiplier: float, criterion: Any) -> None:
        self.criterion = criterion
        self.model = model
        self.module = module
        self.optimizer = optimizer
        self.loader = loader
        self.engine = engine
        self.noise_multiplier = noise_multiplier
        self.sample_rate = 1.0 / len(loader)
        self.rounds = 0

    @property
    def generators(self) -> dict[str, torch.Generator]:
        """The generators that draw (module Notes): the Poisson sampler's and the noise's."""
        sampler: Any = self.loader.batch_sampler  # Opacus' UniformWithReplacementSampler
        return {"sampler_rng": sampler.generator, "noise_rng": self.optimizer.generator}


class SiloDPSGD(RoundPrivacy):
    """Record-level DP: every silo trains with Opacus DP-SGD (see the module docstring).

    Args:
        data: training ratings grouped per user.
        groups: silo -> its users.
        layout, hyper: model layout and regularization.
        epochs, lr, batch_size: local epochs per round, step on the mean gradient, expected batch.
        clip: per-sample gradient L2 bound.
        noise_multiplier: sigma; ``None`` = calibrate each silo to ``(epsilon, delta)``.
        epsilon: budget per silo (``None`` = no limit; then ``noise_multiplier`` is needed).
        delta: delta per silo.
        rounds: planned rounds (for calibration).
        accountant: ``rdp`` or ``prv``.
        seed: seeds each silo's Poisson sampler, noise and user-factor init.
        silo_ids: the ids of ``groups`` (default ``0..len(groups)-1``): a Flower node builds only the
            silos it hosts; seeds and messages use the id, ``train`` and ``silos`` the position.
    """

    mode = "record"

    def __init__(
        self,
        *,
        data: RatingsByUser,
        groups: Sequence[np.ndarray],
        layout: Layout,
        hyper: Hyper,
        epochs: int,
        lr: float,
        batch_size: int,
        clip: float,
        noise_multiplier: float | None,
        epsilon: float | None,
        delta: float,
        rounds: int,
        accountant: str = "rdp",
        seed: int = 0,
        grad_sample_mode: str = "ghost",
        silo_ids: Sequence[int] | None = None,
    ) -> None:
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(f"grad_sample_mode: must be one of {', '.join(GRAD_SAMPLE_MODES)}, "
                              f"got {grad_sample_mode!r}")
        self.grad_sample_mode = grad_sample_mode
        if noise_multiplier is None and epsilon is None:
            raise ConfigError("dp: 'record' needs epsilon (a budget) or noise_multiplier")
        make_accountant(accountant)
        self.layout, self.hyper = layout, hyper
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.clip = clip
        self.budget = epsilon
        self._delta = delta
        self.accountant = accountant
        self.calibrated = noise_multiplier is None
        self.planned_rounds = rounds
        self.rounds_done = 0
        self.silo_ids = list(range(len(groups))) if silo_ids is None else [int(s) for s in silo_ids]
        if len(self.silo_ids) != len(groups):
            raise ConfigError(f"silo_ids: {len(self.silo_ids)} ids for {len(groups)} silos")
        self.silos: list[_Silo] = []
        for s, users in zip(self.silo_ids, groups, strict=True):
            self.silos.append(self._make_silo(s, data, np.asarray(users, np.int64), noise_multiplier,
                                              epsilon, rounds, seed))

    @classmethod
    def build(cls, config: ExperimentConfig, pool: Any, model: Any) -> SiloDPSGD:
        """:meth:`from_config` for every silo of the pool (the registry's entry point)."""
        return cls.from_config(config, pool, model)

    @classmethod
    def from_config(cls, config: ExperimentConfig, pool: Any, model: Any,
                    silo_ids: Sequence[int] | None = None) -> SiloDPSGD:
        """Build from an :class:`~securefedrec.config.ExperimentConfig` and the simulator's pool.

        ``silo_ids``: build only these silos (a Flower node's); default all of ``pool.groups``.

        Raises:
            ConfigError: ``model`` is not biased MF (the per-record model of DP-SGD is MF's).
        """
        if not isinstance(model, MF):
            raise ConfigError(f"dp 'record' (DP-SGD in silos) trains biased MF per record; model "
                              f"{getattr(model, 'name', model)!r} is not supported (use --model mf)")
        groups = pool.groups if silo_ids is None else [pool.groups[s] for s in silo_ids]
        dp = config.privacy
        return cls(
            data=pool.data, groups=groups, layout=model.layout, hyper=model.hyper,
            epochs=config.model.local_epochs, lr=config.model.local_lr, batch_size=dp.batch_size,
            clip=dp.clip, noise_multiplier=dp.noise_multiplier, epsilon=dp.epsilon,
            delta=dp.delta, rounds=config.federation.rounds, accountant=dp.accountant, seed=config.run.seed,
            silo_ids=silo_ids,
        )

    def _make_silo(self, s: int, data: RatingsByUser, users: np.ndarray, noise_multiplier: float | None,
                   epsilon: float | None, rounds: int, seed: int) -> _Silo:
        counts = data.counts[users]
        if counts.sum() == 0:
            raise ConfigError(f"silos: silo {s} has no training ratings; use fewer silos")
        local = np.repeat(np.arange(len(users)), counts)
        rows = np.concatenate([np.arange(data.indptr[u], data.indptr[u + 1]) for u in users])
        x = torch.as_tensor(np.stack([local, data.items[rows]], 1), dtype=torch.long)
        y = torch.as_tensor(data.values[rows], dtype=torch.float32)
        silo_seed = int(np.random.default_rng([seed, _SILO_STREAM, s]).integers(2**62))
        gen = torch.Generator().manual_seed(silo_seed)
        model = SiloMF(len(users), self.layout.num_items, self.layout.factors, self.hyper, gen)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trainable, lr=self.lr / self.batch_size)
        loader: DataLoader[Any] = DataLoader(_RatingsDataset(x, y), batch_size=self.batch_size,
                                             generator=gen, collate_fn=_collate_batch)
        engine = PrivacyEngine(accountant=self.accountant)
        common: dict[str, Any] = dict(module=model, optimizer=optimizer, data_loader=loader,
                                      criterion=SiloLoss(), max_grad_norm=self.clip, loss_reduction="sum",
                                      noise_generator=gen, grad_sample_mode=self.grad_sample_mode)
        try:
            if noise_multiplier is None:
                if epsilon is None:
                    raise ConfigError("dp: 'record' needs epsilon (a budget) or noise_multiplier")
                # what make_private_with_epsilon(epochs=rounds * epochs) computes, from the cached
                # calibration: the server, the simulator and every node of a deployment calibrate alike
                sample_rate = 1 / len(loader)
                steps = int(rounds * self.epochs / sample_rate)
                noise_multiplier = calibrate_noise_multiplier(epsilon, self._delta, sample_rate, steps,
                                                              self.accountant)
            made = engine.make_private(noise_multiplier=noise_multiplier, **common)
        except ValueError as exc:
            raise ConfigError(f"epsilon: silo {s} cannot meet ({epsilon}, {self._delta}): {exc}") from None
        # ghost mode also returns the criterion wrapper; the tuple's length depends on the mode
        module, dp_opt, criterion, dp_loader = made if len(made) == 4 else (made[0], made[1], SiloLoss(),
                                                                          made[2])
        return _Silo(model, module, dp_opt, dp_loader, engine, float(dp_opt.noise_multiplier), criterion)

    # ------------------------------------------------------------------ RoundPrivacy
    @property
    def delta(self) -> float:
        """The delta that each silo's epsilon refers to."""
        return self._delta

    def _steps_per_round(self, silo: _Silo) -> int:
        return self.epochs * len(silo.loader)

    def round_steps(self, j: int) -> int:
        """DP-SGD steps the silo at position ``j`` takes (and is accounted for) in a round it trains in."""
        return self._steps_per_round(self.silos[j])

    def silo_epsilons(self) -> list[float]:
        """Each silo's epsilon so far."""
        return [self._silo_epsilon(s.engine.accountant.history) for s in self.silos]

    def _silo_epsilon(self, history: list[tuple[float, float, int]]) -> float:
        if not history:
            return 0.0
        # Opacus' epsilon of this history, exactly; with ``rdp`` from the cached one-step RDP (much faster)
        sigma, q, _ = history[-1]
        acc = PrivacyAccountant(noise_multiplier=sigma, sample_rate=q, delta=self._delta,
                                accountant=self.accountant)
        acc.history = list(history)
        return acc.epsilon()

    def check_round(self, round_id: int) -> float:
        """Largest silo epsilon if every silo trained this round; raise if over budget."""
        worst = 0.0
        for s, silo in zip(self.silo_ids, self.silos, strict=True):
            nxt = [*silo.engine.accountant.history,
                   (silo.noise_multiplier, silo.sample_rate, self._steps_per_round(silo))]
            eps = self._silo_epsilon(nxt)
            if self.budget is not None and eps > self.budget:
                raise PrivacyBudgetExhausted(
                    f"round {round_id + 1} would spend epsilon {eps:.4g} > budget {self.budget:.4g} "
                    f"in silo {s} (delta {self._delta:.3g}); stopped at epsilon {self.epsilon():.4g}"
                )
            worst = max(worst, eps)
        return worst

    def commit_round(self, round_id: int) -> float:
        """Opacus' accountants already counted the steps; return the largest silo epsilon."""
        self.rounds_done = round_id + 1
        return self.epsilon()

    def charge(self, clients: Sequence[int]) -> None:
        """Count one round of DP-SGD steps for silos (positions) that trained elsewhere.

        The Flower server's view of silos that train on their nodes: each step goes through the
        silo's Opacus accountant exactly as the optimizer's hook would (same sigma, same ``q``,
        same merging of entries), so the history -- and epsilon -- equal the simulator's.
        """
        for j in clients:
            silo = self.silos[j]
            for _ in range(self._steps_per_round(silo)):
                silo.engine.accountant.step(noise_multiplier=silo.noise_multiplier,
                                            sample_rate=silo.sample_rate)
            silo.rounds += 1

    # ------------------------------------------------------------------ checkpoints
    def silo_state(self, j: int) -> SiloState:
        """The state of the silo at position ``j`` (copies)."""
        silo = self.silos[j]
        gens = silo.generators
        return SiloState(
            silo=self.silo_ids[j], noise_multiplier=silo.noise_multiplier, sample_rate=silo.sample_rate,
            rounds=silo.rounds, history=tuple((float(a), float(b), int(c))
                                              for a, b, c in silo.engine.accountant.history),
            user=silo.model.user.weight.detach().numpy().copy(),
            user_bias=silo.model.user_bias.weight.detach()[:, 0].numpy().copy(),
            sampler_rng=bytes(gens["sampler_rng"].get_state().numpy().tobytes()),
            noise_rng=bytes(gens["noise_rng"].get_state().numpy().tobytes()),
        )

    def check_silo_state(self, j: int, st: SiloState, where: str) -> None:
        """Raise :class:`CheckpointError` (naming ``where``, silo and field) unless ``st`` fits silo ``j``.

        Sigma must equal this run's unless sigma is calibrated and the planned rounds differ (a run
        extended to more rounds is re-calibrated; the history then accounts both sigmas exactly).
        """
        silo, sid = self.silos[j], self.silo_ids[j]
        at = f"{where}, silo {sid}"
        if st.silo != sid:
            raise CheckpointError(f"{at}, field 'silo': the state is silo {st.silo}'s")
        shapes = {"user": (st.user, tuple(silo.model.user.weight.shape)),
                  "user_bias": (st.user_bias, (silo.model.user_bias.weight.shape[0],))}
        for name, (arr, shape) in shapes.items():
            if arr.dtype != np.float32 or arr.shape != shape or not np.all(np.isfinite(arr)):
                raise CheckpointError(f"{at}, field {name!r}: float32 {list(arr.shape)} (finite), expected "
                                      f"float32 {list(shape)}")
        for name, gen in silo.generators.items():
            size = int(gen.get_state().numel())
            if len(getattr(st, name)) != size:
                raise CheckpointError(f"{at}, field {name!r}: {len(getattr(st, name))} bytes, a generator "
                                      f"state has {size}")
            try:  # on a scratch generator: nothing changes before every check has passed
                torch.Generator(device=gen.device).set_state(byte_tensor(getattr(st, name)))
            except RuntimeError as exc:
                raise CheckpointError(f"{at}, field {name!r}: not a generator state ({exc})") from None
        if silo.generators["sampler_rng"] is silo.generators["noise_rng"] and st.sampler_rng != st.noise_rng:
            raise CheckpointError(f"{at}, field 'noise_rng': the sampler and the noise share one generator, "
                                  "but the two saved states differ")
        if st.sample_rate != silo.sample_rate:
            raise CheckpointError(f"{at}, field 'sample_rate': {st.sample_rate!r}, this run has "
                                  f"{silo.sample_rate!r} (other data or batch size)")
        if st.noise_multiplier != silo.noise_multiplier and not self.calibrated:
            raise CheckpointError(f"{at}, field 'noise_multiplier': {st.noise_multiplier!r}, this run has "
                                  f"{silo.noise_multiplier!r}")
        if not isinstance(st.rounds, int) or st.rounds < 0:
            raise CheckpointError(f"{at}, field 'rounds': must be an int >= 0, got {st.rounds!r}")
        steps, per_round = sum(h[2] for h in st.history), self._steps_per_round(silo)
        if steps != st.rounds * per_round:
            raise CheckpointError(f"{at}, field 'history': {steps} DP-SGD steps for {st.rounds} rounds of "
                                  f"{per_round}")

    def load_silo_states(self, states: Mapping[int, SiloState], where: str) -> None:
        """Continue the silos at the given positions from ``states``; all are checked before any changes."""
        for j, st in states.items():
            self.check_silo_state(j, st, where)
        for j, st in states.items():
            silo = self.silos[j]
            with torch.no_grad():
                silo.model.user.weight.copy_(torch.from_numpy(st.user))
                silo.model.user_bias.weight.copy_(torch.from_numpy(st.user_bias)[:, None])
            for name, gen in silo.generators.items():
                gen.set_state(byte_tensor(getattr(st, name)))
            silo.engine.accountant.history = list(st.history)
            silo.rounds = st.rounds

    def state(self) -> dict[str, Any]:
        """JSON-able state of every silo (:class:`SiloState`; arrays and generator states in base64)."""
        silos = []
        for j in range(len(self.silos)):
            st = self.silo_state(j)
            silos.append({
                "silo": st.silo, "noise_multiplier": st.noise_multiplier, "sample_rate": st.sample_rate,
                "rounds": st.rounds, "history": [list(h) for h in st.history],
                "user": encode_array(st.user), "user_bias": encode_array(st.user_bias),
                "sampler_rng": base64.b64encode(st.sampler_rng).decode("ascii"),
                "noise_rng": base64.b64encode(st.noise_rng).decode("ascii"),
            })
        return {"mode": self.mode, "version": STATE_VERSION, "rounds_done": self.rounds_done,
                "planned_rounds": self.planned_rounds, "calibrated": self.calibrated,
                **{k: getattr(self, k) for k in _SETTINGS}, "silos": silos}

    def restore(self, rounds_done: int, state: dict[str, Any] | None) -> None:
        """Continue after ``rounds_done`` rounds from :meth:`state`; nothing changes unless all of it fits.

        Raises:
            CheckpointError: naming the field (and silo) that is missing, malformed or does not match
                this run (silo count, users per silo, settings, sample rate, generator state size, ...).
        """
        where = "checkpoint privacy state"
        if state is None or state.get("mode") != self.mode:
            raise CheckpointError(f"{where}: holds no record-level DP-SGD state; it was written by a run "
                                  "without --dp record")
        if state.get("version") != STATE_VERSION:
            raise CheckpointError(f"{where}, field 'version': {state.get('version')!r}, expected "
                                  f"{STATE_VERSION} (written before --dp record runs could resume?)")
        if state.get("rounds_done") != rounds_done:
            raise CheckpointError(f"{where}, field 'rounds_done': {state.get('rounds_done')!r}, but "
                                  f"{rounds_done} rounds were run")
        for name in _SETTINGS:
            if state.get(name) != getattr(self, name):
                raise CheckpointError(f"{where}, field {name!r}: {state.get(name)!r}, this run has "
                                      f"{getattr(self, name)!r}")
        raw = state.get("silos")
        if not isinstance(raw, list) or len(raw) != len(self.silos):
            count = len(raw) if isinstance(raw, list) else raw
            raise CheckpointError(f"{where}, field 'silos': {count!r} silos, this run has {len(self.silos)}")
        same_plan = state.get("planned_rounds") == self.planned_rounds
        states = {j: self._decode_silo(j, entry, where) for j, entry in enumerate(raw)}
        for j, st in states.items():
            if same_plan and st.noise_multiplier != self.silos[j].noise_multiplier:
                raise CheckpointError(f"{where}, silo {self.silo_ids[j]}, field 'noise_multiplier': "
                                      f"{st.noise_multiplier!r}, this run has "
                                      f"{self.silos[j].noise_multiplier!r}")
            if st.rounds > rounds_done:
                raise CheckpointError(f"{where}, silo {self.silo_ids[j]}, field 'rounds': {st.rounds} of "
                                      f"{rounds_done} rounds")
        self.load_silo_states(states, where)
        self.rounds_done = rounds_done

    def _decode_silo(self, j: int, entry: Any, where: str) -> SiloState:
        at = f"{where}, silo {self.silo_ids[j]}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{at}: must be an object, got {type(entry).__name__}")
        missing = [k for k in ("silo", "noise_multiplier", "sample_rate", "rounds", "history", "user",
                               "user_bias", "sampler_rng", "noise_rng") if k not in entry]
        if missing:
            raise CheckpointError(f"{at}, field {missing[0]!r}: missing")
        for name in ("noise_multiplier", "sample_rate"):
            value = entry[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CheckpointError(f"{at}, field {name!r}: must be a number, got {value!r}")
        for name in ("silo", "rounds"):
            if isinstance(entry[name], bool) or not isinstance(entry[name], int):
                raise CheckpointError(f"{at}, field {name!r}: must be an int, got {entry[name]!r}")
        return SiloState(
            silo=entry["silo"], noise_multiplier=float(entry["noise_multiplier"]),
            sample_rate=float(entry["sample_rate"]), rounds=entry["rounds"],
            history=decode_history(entry["history"], f"{at}, field 'history'"),
            user=decode_array(entry["user"], f"{at}, field 'user'"),
            user_bias=decode_array(entry["user_bias"], f"{at}, field 'user_bias'"),
            sampler_rng=decode_bytes(entry["sampler_rng"], f"{at}, field 'sampler_rng'"),
            noise_rng=decode_bytes(entry["noise_rng"], f"{at}, field 'noise_rng'"),
        )

    def epsilon(self) -> float:
        """The largest epsilon over silos."""
        return max(self.silo_epsilons(), default=0.0)

    def train(self, clients: Sequence[int], global_vec: torch.Tensor, round_id: int) -> torch.Tensor:
        """DP-SGD in each sampled silo from ``global_vec``; deltas (n, L) in float32."""
        g = global_vec.to(torch.float32)
        Q, b, mu = self.layout.split(g)
        out = torch.zeros(len(clients), self.layout.length)
        for j, cid in enumerate(clients):
            silo = self.silos[cid]
            silo.model.load_global(Q, b, mu)
            silo.module.train()
            for _ in range(self.epochs):
                for x, y in silo.loader:
                    silo.optimizer.zero_grad()
                    loss = silo.criterion(silo.module(x), y)
                    loss.backward()
                    silo.optimizer.step()
            silo.rounds += 1
            out[j] = silo.model.global_vector() - g
        return out

    def summary(self) -> dict[str, Any]:
        """Report entry: DP-SGD parameters and each silo's epsilon."""
        return {
            "mode": self.mode,
            "mechanism": "DP-SGD per silo (Opacus PrivacyEngine, Poisson batches)",
            "grad_sample_mode": self.grad_sample_mode,
            "noise_multiplier": [s.noise_multiplier for s in self.silos],
            "noise_multiplier_calibrated": self.calibrated,
            "clip": self.clip,
            "batch_size": self.batch_size,
            "sample_rate": [s.sample_rate for s in self.silos],
            "accountant": self.accountant,
            "delta": self._delta,
            "budget_epsilon": self.budget,
            "silo_epsilon": self.silo_epsilons(),
            "epsilon": self.epsilon(),
            "unit": "record (one rating)",
        }
