"""A client's update on its SuperNode: DP noise share, then random-k with error feedback.

The in-process :class:`~securefedrec.server.simulation.Simulation` turns the trained
deltas into protocol inputs in three steps; a node does the same for the
clients it hosts, in the same order and with the same arithmetic, so a
deployment reproduces a simulation:

1. clamp to ``update_clip`` (:func:`~securefedrec.flower.node.runtime.train_clients`);
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

``dp = "record"`` (DP-SGD inside each silo) replaces step 2 with the silos'
DP-SGD on their node (:mod:`securefedrec.flower.node.silos`); :func:`dp_info` sends
its public fields.

Notes:
    Noise randomness. By default each share is drawn from
    :func:`~securefedrec.privacy.secure_generator` (256 bits from the OS). The
    node setting ``reproducible-noise`` (node config, see
    :class:`~securefedrec.flower.settings.NodeSettings`) draws it instead from the
    simulator's public stream ``[seed, round, NOISE, client]`` so that a deployment
    can be checked against a simulation bit for bit. Anyone who knows the seed can
    then subtract the noise from the released sum: the DP guarantee is gone. It is
    a node setting, not a run setting, so that a server cannot switch it on.
    With ``dp = "record"`` the same setting seeds the silos' DP-SGD generators
    (:mod:`securefedrec.flower.node.silos` Notes).
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
from securefedrec.flower.messages import info_float, info_int

if TYPE_CHECKING:
    from securefedrec.compression import Compressor
    from securefedrec.privacy import DistributedGaussian, RoundPrivacy

__all__ = [
    "FEEDBACK_PREFIX",
    "TOLERANCE",
    "FeedbackStore",
    "check_dp",
    "dp_info",
    "feedback_info",
    "noise_rng",
    "rotation",
    "selection",
    "uplink_compressor",
]

FEEDBACK_PREFIX = "sfr.ef."
"""Node-state key prefix of a client's error-feedback record (``sfr.ef.<client>``)."""

TOLERANCE = 1e-9
"""Relative slack when a node compares the server's DP parameters with its own (float round-off only)."""


# ---- differential privacy -------------------------------------------------------------------
def dp_info(privacy: RoundPrivacy | None, threshold: int,
            sampled: Sequence[int] = ()) -> dict[str, int | float | str]:
    """Server side: the DP fields of a round's first message (empty without DP).

    ``sampled``: the round's clients (``dp = "record"`` sends each silo's sigma, steps per round and
    rounds accounted so far; all public).
    """
    from securefedrec.privacy import SiloDPSGD, UserLevelPrivacy

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
    if sigma < own.noise_multiplier * (1 - TOLERANCE):
        raise IntegrityError(f"{where}, field 'dp.sigma': the server asks for noise multiplier {sigma!r}, "
                             f"below the {own.noise_multiplier!r} that this node's run configuration "
                             "requires")
    if not math.isclose(clip, own.clip, rel_tol=TOLERANCE):
        raise IntegrityError(f"{where}, field 'dp.clip': the server sent {clip!r}, this node's run "
                             f"configuration has clip {own.clip!r}")
    if not 1 <= threshold <= protocol_threshold:
        raise IntegrityError(f"{where}, field 'dp.threshold': {threshold} must be between 1 and the "
                             f"protocol's release threshold {protocol_threshold} (every released sum must "
                             "hold at least that many noise shares)")
    mechanism = DistributedGaussian(noise_multiplier=sigma, clip=own.clip)
    need = mechanism.encoding_range(threshold, config.model.update_clip)
    if not wrap and clip_range < need * (1 - TOLERANCE):
        raise IntegrityError(f"{where}, field 'clip_range': the protocol's range {clip_range!r} would clip "
                          f"the noise share (needs {need!r})")
    return mechanism, threshold


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

    comp = parse_compression(config.compression.codec)
    if not comp.secure_ok:
        raise ConfigError(f"compression: {comp.spec} cannot be used with protocol "
                          f"{config.federation.protocol!r}: its indices reveal which items each user "
                          "rated; use randk:F")
    return comp


def selection(comp: Compressor, length: int, seed: int, round_id: int) -> np.ndarray | None:
    """The coordinates the round sends (sorted int64), or ``None`` for all (no error feedback).

    The simulator's public choice (:meth:`~securefedrec.compression.Compressor.public_coords`).
    """
    if not comp.feedback:
        return None
    idx = comp.public_coords(length, seed, round_id)
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
