"""A client's update on its SuperNode: DP noise share, then random-k with error feedback.

The in-process :class:`~securefedrec.server.simulation.Simulation` turns the trained
deltas into protocol inputs in three steps; a node does the same for the
clients it hosts, in the same order and with the same arithmetic, so a
deployment reproduces a simulation:

1. clamp to ``update_clip`` (:func:`~securefedrec.flower.node.train_clients`);
2. ``dp = "user"``: :meth:`~securefedrec.privacy.DistributedGaussian.privatize`
   -- clip to L2 ``C`` and add this client's noise share, std
   ``sigma C / sqrt(t)`` with the round's threshold ``t``;
3. ``randk:F``: add the client's error-feedback residual, take the ``ceil(F L)``
   coordinates that the round's *public* seed picks (the same for every
   client, :data:`~securefedrec.streams.SELECT`), clip them to the round's
   ``clip_range`` and hand only those to the protocol; the rest stays in the
   residual (:class:`~securefedrec.compression.Uplink`).

The server sends ``sigma``, ``C`` and ``t`` in the round's first message
(:func:`dp_info`). A node does not take them on trust (:func:`check_dp`): it
refuses a noise multiplier below what its own copy of the run configuration
requires, another ``C``, a ``t`` above the protocol's release threshold (a sum
could then hold fewer than ``t`` shares) and an encoding range that would clip
the noise share.

Error feedback lives on the node (:class:`FeedbackStore`, in the node's
``Context.state``, keyed by client id, kept across rounds). Whether a round's
selected values reached a released sum is known only to the server, after the
round; the node therefore keeps the round's vector *pending* and settles it the
next time the client is sampled, from the outcome the server sends then
(:func:`feedback_info`): ``ef.round.<c>``, the last round in which the server
received client ``c``'s first reply, and ``ef.in.<c>``, whether its input was in
that round's released sum. A pending round the server does not report was never
received, so the whole vector stays in the residual -- exactly the simulator's
rule (a client that dropped, or a round that aborted, keeps everything).

``dp = "record"`` (DP-SGD inside each silo, :mod:`securefedrec.dpsgd`) replaces
step 2: the node trains each sampled silo it hosts with the silo's own Opacus
engine (:class:`NodeSilos`), continued from the silo's state in the node's
``Context.state`` (:class:`SiloStore`: user factors and biases, accountant
history, generator states -- :class:`~securefedrec.dpsgd.SiloState`), and the
released delta is the trained minus the received global part, as in the
simulator. The server keeps its own view of every silo's accountant (sigma,
sample rate and steps per round are public) for the budget stop, and sends in
the round's first message (:func:`dp_info`) ``dp.mode``, ``dp.clip``,
``dp.batch`` and, per sampled silo ``c``, ``dp.sigma.<c>``, ``dp.steps.<c>``
(steps per round it accounts) and ``dp.rounds.<c>`` (rounds it has accounted so
far). The node calibrates sigma from its own copy of the run configuration
(deterministic, so equal to the server's) and refuses another sigma, clip,
batch or step count (:func:`check_record_dp`), a silo it has trained in more
rounds than the server accounts (the server's budget would be too low), and a
round past the budget by its own accountant.

Notes:
    Noise randomness. By default each share is drawn from
    :func:`~securefedrec.privacy.secure_generator` (256 bits from the OS). The
    node setting ``reproducible-noise`` (node config, see
    :class:`~securefedrec.flower.settings.NodeSettings`) draws it instead from the
    simulator's public stream ``[seed, round, NOISE, client]`` so that a deployment
    can be checked against a simulation bit for bit. Anyone who knows the seed can
    then subtract the noise from the released sum: the DP guarantee is gone. It is
    a node setting, not a run setting, so that a server cannot switch it on.
    With ``dp = "record"`` the same setting decides the silo's torch generator
    (Poisson batches and DP-SGD noise): seeded from the simulator's public
    ``[seed, SILO, silo]`` with it, else from 64 bits of ``secrets`` at the silo's
    first round (then kept, secret, in the node's state). Torch's generator is
    Mersenne Twister, not a CSPRNG; Opacus' ``secure_mode`` (torchcsprng) is the
    stronger choice and is not wired in here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from securefedrec import streams
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError, DecodeError, IntegrityError, StageError

if TYPE_CHECKING:
    from securefedrec.compression import Compressor
    from securefedrec.dpsgd import SiloDPSGD, SiloState
    from securefedrec.privacy import DistributedGaussian, RoundPrivacy

__all__ = [
    "FEEDBACK_PREFIX",
    "SILO_PREFIX",
    "FeedbackStore",
    "NodeSilos",
    "SiloStore",
    "check_dp",
    "check_record_dp",
    "dp_info",
    "feedback_info",
    "info_float",
    "info_int",
    "noise_rng",
    "rotation",
    "selection",
    "uplink_compressor",
]

FEEDBACK_PREFIX = "sfr.ef."
"""Node-state key prefix of a client's error-feedback record (``sfr.ef.<client>``)."""

_TOLERANCE = 1e-9


def info_int(info: Mapping[str, Any], key: str, where: str) -> int:
    """``info[key]`` as an int; :class:`DecodeError` naming the field when missing or of another type."""
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"{where}: field {key!r} must be an int, got {value!r}")
    return value


def info_float(info: Mapping[str, Any], key: str, where: str) -> float:
    """``info[key]`` as a finite float; :class:`DecodeError` naming the field otherwise."""
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DecodeError(f"{where}: field {key!r} must be a finite number, got {value!r}")
    return float(value)


# ---- differential privacy -------------------------------------------------------------------
def dp_info(privacy: RoundPrivacy | None, threshold: int,
            sampled: Sequence[int] = ()) -> dict[str, int | float | str]:
    """Server side: the DP fields of a round's first message (empty without DP).

    ``sampled``: the round's clients (``dp = "record"`` sends each silo's sigma, steps per round and
    rounds accounted so far; all public).
    """
    from securefedrec.dpsgd import SiloDPSGD
    from securefedrec.privacy import UserLevelPrivacy

    if privacy is None:
        return {}
    if isinstance(privacy, SiloDPSGD):
        info: dict[str, int | float | str] = {"dp.mode": "record", "dp.clip": float(privacy.clip),
                                              "dp.batch": int(privacy.batch_size)}
        for c in sampled:
            j = privacy.silo_ids.index(c)
            info.update({f"dp.sigma.{c}": float(privacy.silos[j].noise_multiplier),
                         f"dp.steps.{c}": privacy.round_steps(j), f"dp.rounds.{c}": privacy.silos[j].rounds})
        return info
    if not isinstance(privacy, UserLevelPrivacy):
        raise ConfigError(f"dp: {privacy.mode!r} cannot run on the Flower deployment engine")
    mech = privacy.mechanism
    return {"dp.sigma": float(mech.noise_multiplier), "dp.clip": float(mech.clip), "dp.threshold": threshold}


def check_dp(
    config: ExperimentConfig,
    info: Mapping[str, Any],
    *,
    protocol_threshold: int,
    clip_range: float,
    where: str,
    wrap: bool = False,
) -> tuple[DistributedGaussian, int]:
    """Node side: the mechanism and threshold of the round, checked against this node's configuration.

    ``clip_range`` must hold a noise share, unless the round wraps (``mod:B``):
    values are then reduced modulo the ring, never clipped, which is
    post-processing of the noisy sum whatever the range.

    Raises:
        DecodeError: a DP field is missing or of the wrong type.
        ConfigError: this node's own DP mechanism cannot run on Flower.
        IntegrityError: a value that would weaken the guarantee (the message names the field).
    """
    from securefedrec.privacy import DistributedGaussian, UserLevelPrivacy

    mechanism_name = config.to_dict().get("dp_mechanism", "gaussian")  # another DP mechanism's field
    if mechanism_name != "gaussian":
        raise ConfigError(f"{where}, field 'dp_mechanism': {mechanism_name!r} does not run on the Flower "
                          "deployment engine yet; only the Gaussian noise shares do")
    sigma = info_float(info, "dp.sigma", where)
    clip = info_float(info, "dp.clip", where)
    threshold = info_int(info, "dp.threshold", where)
    own = UserLevelPrivacy.from_config(config).mechanism  # sigma calibrated exactly as the server did
    if sigma < own.noise_multiplier * (1 - _TOLERANCE):
        raise IntegrityError(f"{where}, field 'dp.sigma': the server asks for noise multiplier {sigma!r}, "
                             f"below the {own.noise_multiplier!r} that this node's run configuration "
                             "requires")
    if not math.isclose(clip, own.clip, rel_tol=_TOLERANCE):
        raise IntegrityError(f"{where}, field 'dp.clip': the server sent {clip!r}, this node's run "
                             f"configuration has clip {own.clip!r}")
    if not 1 <= threshold <= protocol_threshold:
        raise IntegrityError(f"{where}, field 'dp.threshold': {threshold} must be between 1 and the "
                             f"protocol's release threshold {protocol_threshold} (every released sum must "
                             "hold at least that many noise shares)")
    mechanism = DistributedGaussian(noise_multiplier=sigma, clip=own.clip)
    need = mechanism.encoding_range(threshold, config.update_clip)
    if not wrap and clip_range < need * (1 - _TOLERANCE):
        raise IntegrityError(f"{where}, field 'clip_range': the protocol's range {clip_range!r} would clip "
                          f"the noise share (needs {need!r})")
    return mechanism, threshold


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
    if not math.isclose(clip, config.clip, rel_tol=_TOLERANCE):
        raise IntegrityError(f"{where}, field 'dp.clip': the server sent {clip!r}, this node's run "
                          f"configuration has clip {config.clip!r}")
    batch = info_int(info, "dp.batch", where)
    if batch != config.dp_batch_size:
        raise IntegrityError(f"{where}, field 'dp.batch': the server sent {batch}, this node's run "
                          f"configuration has dp_batch_size {config.dp_batch_size}")
    for j, c in enumerate(silos.silo_ids):
        at = f"client {c}, round {round_id}"
        sigma, own = info_float(info, f"dp.sigma.{c}", at), silos.silos[j].noise_multiplier
        if not math.isclose(sigma, own, rel_tol=_TOLERANCE):
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
    """Each hosted silo's :class:`~securefedrec.dpsgd.SiloState` in a node's state, kept across rounds.

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
        from securefedrec.dpsgd import SiloState

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
        import dataclasses
        import secrets

        from securefedrec.dpsgd import SiloDPSGD
        from securefedrec.server.simulation import Simulation

        plain = Simulation(dataclasses.replace(config, dp="none"))  # data, silo groups, layout; no DP built
        self.silos = SiloDPSGD.from_config(config, plain.pool, plain.layout, silo_ids=list(clients))
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
        clip = self.config.update_clip
        out: np.ndarray = trained.clamp_(-clip, clip).to("cpu", torch.float64).numpy()
        return out

    def keep(self) -> None:
        """Store every silo's state after :meth:`train`."""
        for j in range(len(self.silos.silos)):
            self.store.keep(self.silos.silo_state(j), self.round_id)


def noise_rng(seed: int, round_id: int, client: int) -> np.random.Generator:
    """The simulator's noise stream of ``client`` in ``round_id`` (public seed: reproduction only).

    Equals the generator :meth:`~securefedrec.privacy.UserLevelPrivacy.from_config` hands the
    simulator: ``default_rng([seed, round_id, streams.NOISE, client])``.
    """
    return np.random.default_rng([seed, round_id, streams.NOISE, client])


# ---- random-k and error feedback --------------------------------------------------------------
def uplink_compressor(config: ExperimentConfig) -> Compressor:
    """The run's compressor, refusing one that cannot go through secure aggregation."""
    from securefedrec.compression import parse_compression

    comp = parse_compression(config.compression)
    if not comp.secure_ok:
        raise ConfigError(f"compression: {comp.spec} cannot be used with protocol {config.protocol!r}: its "
                          "indices reveal which items each user rated; use randk:F")
    return comp


def selection(comp: Compressor, length: int, seed: int, round_id: int) -> np.ndarray | None:
    """The coordinates the round sends (sorted int64), or ``None`` for all (no error feedback).

    The simulator's public choice: ``comp.select`` from ``default_rng([seed, round_id, SELECT])``.
    """
    if not comp.feedback:
        return None
    idx = comp.select(np.zeros(length), np.random.default_rng([seed, round_id, streams.SELECT]))
    return np.arange(length, dtype=np.int64) if idx is None else np.asarray(idx, dtype=np.int64)


def rotation(comp: Compressor, length: int, seed: int, round_id: int) -> np.ndarray | None:
    """``mod:B``: the round's public rotation signs (``Uplink.signs``), else ``None``."""
    from securefedrec.compression import Uplink

    return Uplink(comp, seed).signs(length, round_id) if comp.wraps else None


def feedback_info(outcomes: Mapping[int, tuple[int, bool]], clients: list[int]) -> dict[int, dict[str, int]]:
    """Server side: per addressed client, its last reported round and whether it was in that sum."""
    return {c: {"ef.round": outcomes[c][0], "ef.in": int(outcomes[c][1])} for c in clients if c in outcomes}


class FeedbackStore:
    """Per-client error-feedback residuals in a node's state, kept across rounds.

    Record ``sfr.ef.<client>`` (an ``ArrayRecord``) holds the client's last round,
    pending until the server reports its outcome: ``round``, ``full`` (the previous
    residual + that round's vector), ``idx`` and ``sent`` (the values handed to the
    protocol). The residual is ``full`` minus what reached a released sum.
    """

    def __init__(self, state: RecordDict) -> None:
        self.state = state

    def residual(self, cid: int, info: Mapping[str, Any], where: str) -> np.ndarray | None:
        """Client ``cid``'s residual after settling its pending round with the server's outcome.

        Reads only; :meth:`keep` writes.

        Raises:
            StageError: the server reports a later round than the node's pending one
                (this node's state was lost or belongs to another run).
            DecodeError: an outcome field of the wrong type.
        """
        record = self.state.array_records.get(f"{FEEDBACK_PREFIX}{cid}")
        if record is None:
            return None
        pending = int(record["round"].numpy()[0])
        full = np.asarray(record["full"].numpy(), dtype=np.float64)
        told = info.get(f"ef.round.{cid}")
        included = False
        if told is not None:
            told_round = info_int(info, f"ef.round.{cid}", where)
            flag = info_int(info, f"ef.in.{cid}", where)
            if flag not in (0, 1):
                raise DecodeError(f"{where}: field 'ef.in.{cid}' must be 0 or 1, got {flag}")
            if told_round > pending:
                raise StageError(f"{where}, field 'ef.round.{cid}': the server reports client {cid} in round "
                                 f"{told_round}, but this node last trained it in round {pending}")
            included = told_round == pending and flag == 1
        dense = np.zeros_like(full)
        if included:
            idx = np.asarray(record["idx"].numpy(), dtype=np.int64)
            dense[idx] = np.asarray(record["sent"].numpy(), dtype=np.float64)
        residual = full - dense  # ErrorFeedback.commit
        return residual if np.any(residual) else None

    def keep(self, cid: int, round_id: int, full: np.ndarray, idx: np.ndarray, sent: np.ndarray) -> None:
        """Store round ``round_id``'s vector as pending (its residual was consumed into ``full``)."""
        self.state[f"{FEEDBACK_PREFIX}{cid}"] = ArrayRecord(array_dict={
            "round": Array.from_numpy_ndarray(np.array([round_id], dtype=np.int64)),
            "full": Array.from_numpy_ndarray(np.ascontiguousarray(full, dtype=np.float64)),
            "idx": Array.from_numpy_ndarray(np.ascontiguousarray(idx, dtype=np.int64)),
            "sent": Array.from_numpy_ndarray(np.ascontiguousarray(sent, dtype=np.float64)),
        })
