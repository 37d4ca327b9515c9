"""``dp = "record"`` on a node: each hosted silo's DP-SGD, its state kept in the node's ``Context.state``.

DP-SGD inside each silo (:mod:`securefedrec.privacy.dpsgd`) replaces the noise share of
``dp = "user"`` (:mod:`securefedrec.flower.update`): the node trains each sampled silo it
hosts with the silo's own Opacus engine (:class:`NodeSilos`), continued from the silo's
state in the node's ``Context.state`` (:class:`SiloStore`: user factors and biases,
accountant history, generator states -- :class:`~securefedrec.privacy.SiloState`), and the
released delta is the trained minus the received global part, as in the simulator. The
server keeps its own view of every silo's accountant (sigma, sample rate and steps per
round are public) for the budget stop, and sends in the round's first message
(:func:`~securefedrec.flower.update.dp_info`) ``dp.mode``, ``dp.clip``, ``dp.batch`` and,
per sampled silo ``c``, ``dp.sigma.<c>``, ``dp.steps.<c>`` (steps per round it accounts)
and ``dp.rounds.<c>`` (rounds it has accounted so far). The node calibrates sigma from its
own copy of the run configuration (deterministic, so equal to the server's) and refuses
another sigma, clip, batch or step count (:func:`check_record_dp`), a silo it has trained
in more rounds than the server accounts (the server's budget would be too low), and a
round past the budget by its own accountant.

Notes:
    The node setting ``reproducible-noise``
    (:class:`~securefedrec.flower.settings.NodeSettings`) decides the silo's torch
    generator (Poisson batches and DP-SGD noise): seeded from the simulator's public
    ``[seed, SILO, silo]`` with it, else from 64 bits of ``secrets`` at the silo's first
    round (then kept, secret, in the node's state). Torch's generator is Mersenne Twister,
    not a CSPRNG; Opacus' ``secure_mode`` (torchcsprng) is the stronger choice and is not
    wired in here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from securefedrec.config import ExperimentConfig
from securefedrec.errors import IntegrityError, StageError
from securefedrec.flower.messages import info_float, info_int
from securefedrec.flower.update import TOLERANCE

if TYPE_CHECKING:
    from securefedrec.privacy import SiloDPSGD, SiloState

__all__ = ["SILO_PREFIX", "NodeSilos", "SiloStore", "check_record_dp"]


def check_record_dp(config: ExperimentConfig, silos: SiloDPSGD, info: Mapping[str, Any],
                    round_id: int) -> None:
    """Node side, ``dp = "record"``: the server's DP-SGD fields must equal this node's own silos.

    ``silos`` holds the round's hosted silos, built (sigma calibrated) from this node's configuration.

    Raises:
        DecodeError: a DP field is missing or of the wrong type.
        IntegrityError: a value that differs from this node's (the message names client, round, field).
    """
    where = f"round {round_id}"
    mode = info.get("dp.mode")
    if mode != "record":
        raise IntegrityError(f"{where}, field 'dp.mode': the server sent {mode!r}, this node's run "
                          "configuration has dp 'record'")
    clip = info_float(info, "dp.clip", where)
    if not math.isclose(clip, config.privacy.clip, rel_tol=TOLERANCE):
        raise IntegrityError(f"{where}, field 'dp.clip': the server sent {clip!r}, this node's run "
                          f"configuration has clip {config.privacy.clip!r}")
    batch = info_int(info, "dp.batch", where)
    if batch != config.privacy.batch_size:
        raise IntegrityError(f"{where}, field 'dp.batch': the server sent {batch}, this node's run "
                          f"configuration has dp_batch_size {config.privacy.batch_size}")
    for j, c in enumerate(silos.silo_ids):
        at = f"client {c}, round {round_id}"
        sigma, own = info_float(info, f"dp.sigma.{c}", at), silos.silos[j].noise_multiplier
        if not math.isclose(sigma, own, rel_tol=TOLERANCE):
            raise IntegrityError(f"{at}, field 'dp.sigma.{c}': the server sent noise multiplier {sigma!r}, "
                                 f"this node's run configuration gives silo {c} {own!r}")
        steps, own_steps = info_int(info, f"dp.steps.{c}", at), silos.round_steps(j)
        if steps != own_steps:
            raise IntegrityError(f"{at}, field 'dp.steps.{c}': the server accounts {steps} DP-SGD steps per "
                              f"round, silo {c} takes {own_steps}")


SILO_PREFIX = "sfr.silo."
"""Node-state key prefix of a silo's DP-SGD state (``sfr.silo.<client>``)."""

_SILO_ARRAYS = ("user", "user_bias", "sampler_rng", "noise_rng", "history", "scalars", "counts")


class SiloStore:
    """Each hosted silo's :class:`~securefedrec.privacy.SiloState` in a node's state, kept across rounds.

    Record ``sfr.silo.<client>`` (an ``ArrayRecord``): ``user`` and ``user_bias`` (float32),
    ``sampler_rng`` and ``noise_rng`` (uint8 generator states), ``history`` (float64 rows
    ``sigma, q, steps``), ``scalars`` (float64 ``sigma, q``) and ``counts`` (int64 ``silo, rounds,
    last round trained``).
    """

    def __init__(self, state: RecordDict) -> None:
        self.state = state

    def load(self, cid: int, where: str) -> SiloState | None:
        """Silo ``cid``'s stored state (``None`` before its first round).

        Raises:
            StageError: the record is malformed (the message names the field).
        """
        from securefedrec.privacy import SiloState

        key = f"{SILO_PREFIX}{cid}"
        record = self.state.array_records.get(key)
        if record is None:
            return None
        arrays: dict[str, np.ndarray] = {}
        for name in _SILO_ARRAYS:
            if name not in record:
                raise StageError(f"{where}: node state {key!r} lacks field {name!r}")
            arrays[name] = record[name].numpy()
        kinds = {"sampler_rng": (np.uint8, 1), "noise_rng": (np.uint8, 1), "history": (np.float64, 2),
                 "scalars": (np.float64, 1), "counts": (np.int64, 1)}
        for name, (dtype, ndim) in kinds.items():
            a = arrays[name]
            if a.dtype != dtype or a.ndim != ndim or (name == "history" and a.shape[1] != 3) or (
                    name in ("scalars", "counts") and a.shape[0] != {"scalars": 2, "counts": 3}[name]):
                raise StageError(f"{where}: node state {key!r}, field {name!r}: {a.dtype} {list(a.shape)} "
                                 "is not what this build stores")
        scalars, counts = arrays["scalars"], arrays["counts"]
        history = tuple((float(a), float(b), int(n)) for a, b, n in arrays["history"])
        return SiloState(
            silo=int(counts[0]), noise_multiplier=float(scalars[0]), sample_rate=float(scalars[1]),
            rounds=int(counts[1]), history=history,
            user=arrays["user"], user_bias=arrays["user_bias"], sampler_rng=arrays["sampler_rng"].tobytes(),
            noise_rng=arrays["noise_rng"].tobytes(),
        )

    def keep(self, st: SiloState, round_id: int) -> None:
        """Store silo ``st.silo``'s state after it trained in round ``round_id``."""
        history = np.array(st.history, dtype=np.float64).reshape(-1, 3)
        arrays: dict[str, np.ndarray] = {
            "user": np.ascontiguousarray(st.user, dtype=np.float32),
            "user_bias": np.ascontiguousarray(st.user_bias, dtype=np.float32),
            "sampler_rng": np.frombuffer(st.sampler_rng, dtype=np.uint8).copy(),
            "noise_rng": np.frombuffer(st.noise_rng, dtype=np.uint8).copy(),
            "history": history,
            "scalars": np.array([st.noise_multiplier, st.sample_rate], dtype=np.float64),
            "counts": np.array([st.silo, st.rounds, round_id], dtype=np.int64),
        }
        self.state[f"{SILO_PREFIX}{st.silo}"] = ArrayRecord(
            array_dict={k: Array.from_numpy_ndarray(v) for k, v in arrays.items()})


class NodeSilos:
    """``dp = "record"`` on a node: the round's hosted silos' DP-SGD, continued from the node's state.

    Everything is built and checked here, before anything changes: the silos (sigma calibrated
    from this node's configuration), the server's fields (:func:`check_record_dp`), each stored
    state, the rounds the server accounts, and this node's own budget. :meth:`train` then trains
    and :meth:`keep` stores the new states.

    Args:
        config: this node's run configuration (``dp = "record"``).
        clients: the round's silos that this node hosts and was asked to train.
        info: the round's first message's fields.
        state: the node's ``Context.state``.
        round_id: the round.
        reproducible: seed a new silo's generator from the public seed, as the simulator does
            (the node setting ``reproducible-noise``, module Notes); else from ``secrets``.

    Raises:
        IntegrityError, DecodeError: from :func:`check_record_dp`.
        StageError: a malformed stored state, or a silo trained in more rounds than the server accounts.
        CheckpointError: a stored state that does not fit the silo (users, sample rate, ...).
        PrivacyBudgetExhausted: the round would take a silo past the budget.
    """

    def __init__(self, config: ExperimentConfig, clients: Sequence[int], info: Mapping[str, Any],
                 state: RecordDict, round_id: int, *, reproducible: bool) -> None:
        import secrets

        from securefedrec.flower.node.checks import node_dataset
        from securefedrec.privacy import SiloDPSGD
        from securefedrec.server.simulation import Simulation

        # data (parsed once per process), silo groups, model; no DP built
        plain = Simulation(config.replace(dp="none"), dataset=node_dataset(config))
        self.silos = SiloDPSGD.from_config(config, plain.pool, plain.model, silo_ids=list(clients))
        self.config, self.round_id = config, round_id
        self.store = SiloStore(state)
        check_record_dp(config, self.silos, info, round_id)
        stored: dict[int, SiloState] = {}
        for j, c in enumerate(self.silos.silo_ids):
            at = f"client {c}, round {round_id}"
            st = self.store.load(c, at)
            accounted = info_int(info, f"dp.rounds.{c}", at)
            trained = 0 if st is None else st.rounds
            if trained > accounted:
                raise StageError(f"{at}, field 'dp.rounds.{c}': the server accounts {accounted} rounds of "
                                 f"silo {c}, this node trained it in {trained} (the server's budget would be "
                                 "too low)")
            if st is not None:
                stored[j] = st
        self.silos.load_silo_states(stored, f"node state, round {round_id}")
        if not reproducible:
            for j, silo in enumerate(self.silos.silos):
                if j not in stored:  # a new silo: its sampler and noise from OS entropy, kept secret
                    for gen in {id(g): g for g in silo.generators.values()}.values():
                        gen.manual_seed(secrets.randbits(64))
        self.silos.check_round(round_id)  # this node never trains a silo past the budget

    def train(self, view: np.ndarray) -> np.ndarray:
        """Each silo's DP-SGD from ``view``; the deltas clamped to ``update_clip``, float64 (n, L)."""
        import torch

        trained = self.silos.train(list(range(len(self.silos.silos))),
                                   torch.from_numpy(np.asarray(view, np.float64)), self.round_id)
        clip = self.config.model.update_clip
        out: np.ndarray = trained.clamp_(-clip, clip).to("cpu", torch.float64).numpy()
        return out

    def keep(self) -> None:
        """Store every silo's state after :meth:`train`."""
        for j in range(len(self.silos.silos)):
            self.store.keep(self.silos.silo_state(j), self.round_id)
