"""How our protocol messages ride inside Flower messages.

One Flower message carries one protocol stage for every client hosted by the
destination SuperNode (usually one)::

    RecordDict
      "sfr.meta"     ConfigRecord  {"version": 1, "stage": str, "round": int, "sampled": [int, ...]}
      "sfr.payload"  ConfigRecord  {"<client id>": bytes, ...}   the protocol's own encoded messages
      "sfr.global"   ArrayRecord   {"global": float64 (L,)}      only in the TRAIN stage

The payload bytes are exactly what the protocol parties produce and check
(:class:`~protocols.secagg.SecAggClient` / :class:`~protocols.secagg.SecAggServer`,
:class:`~protocols.paillier.PaillierClient` / :class:`~protocols.paillier.PaillierServer`;
versioned, length-checked); this module only frames them. Small public round
settings (the DP parameters, the Paillier round configuration, error-feedback
outcomes) travel as ``info.<key>`` fields of ``sfr.meta``. Unpacking validates
every field and raises :class:`~securefedrec.errors.DecodeError` naming the field at fault.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from protocols import RoundConfig
from securefedrec.errors import ConfigError, DecodeError

__all__ = [
    "FORMAT_VERSION",
    "PAILLIER_ROUND_KEYS",
    "FlowerStage",
    "StageMessage",
    "info_float",
    "info_int",
    "pack",
    "paillier_round_config",
    "paillier_round_info",
    "unpack",
]

FORMAT_VERSION = 1
"""Version of the framing below; a message of another version is refused."""

META, PAYLOAD, GLOBAL = "sfr.meta", "sfr.payload", "sfr.global"


class FlowerStage(enum.Enum):
    """The Flower message types of one round; the value is ``"<category>.<action>"``.

    ``TRAIN`` carries the global vector and the SecAgg setup: the client trains
    and answers with its key advertisement (training and ADVERTISE share one
    message, so a round costs one exchange fewer). The ``PAILLIER_*`` stages are
    the packed-Paillier round (:mod:`protocols.paillier.aggregator`):
    ``PAILLIER_TRAIN`` (train, answer the signed X25519 advert),
    ``PAILLIER_ADVERTS`` (the relayed advert list; the client named ``holder``
    answers with the sealed key bundle), ``PAILLIER_HOLD`` (the next key-holder
    candidate when the first did not answer), ``PAILLIER_KEY`` (a sealed private
    key; answer: a signed acknowledgement), ``PAILLIER_ENCRYPT`` (answer: the
    packed ciphertexts), ``PAILLIER_CONSISTENCY`` (malicious-server model only: the
    survivor set; answer: the client's signature on it) and ``PAILLIER_DECRYPT`` (the
    product of ciphertexts to one key holder -- malicious model: the survivor set, its
    signatures and every survivor's signed ciphertexts; answer: the packed plaintext sum).
    ``SUBMODEL_TRAIN`` and ``SUBMODEL_SETUP`` open a submodel round (:mod:`protocols.submodel`):
    train, answer the randomized-response row request; then the setup with the row table,
    answer the key advertisement. Its later stages are SecAgg's (``SHARE_KEYS`` on).
    """

    HELLO = "query.sfr_hello"
    TRAIN = "train.sfr_advertise"
    SUBMODEL_TRAIN = "train.sfr_submodel_request"
    SUBMODEL_SETUP = "query.sfr_submodel_advertise"
    SHARE_KEYS = "query.sfr_share_keys"
    MASKED_INPUT = "query.sfr_masked_input"
    CONSISTENCY = "query.sfr_consistency"
    UNMASK = "query.sfr_unmask"
    PAILLIER_TRAIN = "train.sfr_paillier_advertise"
    PAILLIER_ADVERTS = "query.sfr_paillier_adverts"
    PAILLIER_HOLD = "query.sfr_paillier_hold"
    PAILLIER_KEY = "query.sfr_paillier_key"
    PAILLIER_ENCRYPT = "query.sfr_paillier_encrypt"
    PAILLIER_CONSISTENCY = "query.sfr_paillier_consistency"
    PAILLIER_DECRYPT = "query.sfr_paillier_decrypt"

    @property
    def action(self) -> str:
        """The action name a ClientApp function is registered under."""
        return self.value.split(".", 1)[1]


@dataclass(frozen=True)
class StageMessage:
    """The content of one Flower message of our protocol, decoded."""

    stage: FlowerStage
    round_id: int
    payload: dict[int, bytes] = field(default_factory=dict)
    """client id -> that client's protocol message (bytes)."""
    sampled: tuple[int, ...] = ()
    """The round's sampled clients (public; in the SecAgg setup as well)."""
    global_vec: np.ndarray | None = None
    """The broadcast global vector (TRAIN stage only)."""
    info: dict[str, int | float | str] = field(default_factory=dict)
    """Small public fields: hello replies (partition, identity keys), the round's DP parameters,
    the Paillier round configuration, error-feedback outcomes (``ef.round.<client>``, ...)."""


def pack(message: StageMessage) -> RecordDict:
    """Encode ``message`` as Flower records."""
    meta: dict[str, object] = {
        "version": FORMAT_VERSION,
        "stage": message.stage.name,
        "round": message.round_id,
        "sampled": [int(c) for c in message.sampled],
    }
    for key, value in message.info.items():
        meta[f"info.{key}"] = value
    records: dict[str, ConfigRecord | ArrayRecord] = {
        META: ConfigRecord(meta),  # type: ignore[arg-type]
        PAYLOAD: ConfigRecord({str(int(c)): bytes(m) for c, m in message.payload.items()}),
    }
    if message.global_vec is not None:
        vec = np.ascontiguousarray(message.global_vec, dtype=np.float64)
        records[GLOBAL] = ArrayRecord(array_dict={"global": Array.from_numpy_ndarray(vec)})
    return RecordDict(records)  # type: ignore[arg-type]


def _field(record: ConfigRecord, key: str, kind: type, where: str) -> object:
    if key not in record:
        raise DecodeError(f"{where}: field {key!r} is missing")
    value = record[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise DecodeError(f"{where}: field {key!r} must be an int, got {type(value).__name__}")
    if kind is not int and not isinstance(value, kind):
        raise DecodeError(f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def unpack(content: RecordDict, *, expect: FlowerStage | None = None, where: str = "message") -> StageMessage:
    """Decode Flower records made by :func:`pack`.

    Args:
        content: the Flower message content.
        expect: refuse a message of another stage.
        where: who sent it (node / round), named in errors.

    Raises:
        DecodeError: a record or field is missing, of the wrong type, or of another version/stage.
    """
    meta = content.config_records.get(META)
    payload = content.config_records.get(PAYLOAD)
    if meta is None or payload is None:
        raise DecodeError(f"{where}: not a securefedrec message (records {sorted(content.keys())})")
    version = _field(meta, "version", int, where)
    if version != FORMAT_VERSION:
        raise DecodeError(f"{where}: format version {version}, this build speaks {FORMAT_VERSION}")
    stage_name = _field(meta, "stage", str, where)
    try:
        stage = FlowerStage[str(stage_name)]
    except KeyError:
        raise DecodeError(f"{where}: unknown stage {stage_name!r}") from None
    if expect is not None and stage is not expect:
        raise DecodeError(f"{where}: a {stage.name} message where {expect.name} was expected")
    round_id = int(_field(meta, "round", int, where))  # type: ignore[call-overload]
    if round_id < 0:
        raise DecodeError(f"{where}: round {round_id} is negative")
    sampled_raw = meta.get("sampled", [])
    if not isinstance(sampled_raw, list) or any(
        isinstance(c, bool) or not isinstance(c, int) for c in sampled_raw
    ):
        raise DecodeError(f"{where}: field 'sampled' must be a list of ints")
    out: dict[int, bytes] = {}
    for key, value in payload.items():
        if not key.isdigit():
            raise DecodeError(f"{where}: payload key {key!r} is not a client id")
        if not isinstance(value, bytes):
            raise DecodeError(f"{where}: payload of client {key} is {type(value).__name__}, not bytes")
        out[int(key)] = value
    info: dict[str, int | float | str] = {}
    for key, value in meta.items():
        if not key.startswith("info."):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise DecodeError(f"{where}: field {key!r} must be an int, float or str, "
                              f"got {type(value).__name__}")
        info[key[5:]] = value
    vec = None
    arrays = content.array_records.get(GLOBAL)
    if arrays is not None:
        if "global" not in arrays:
            raise DecodeError(f"{where}: record {GLOBAL!r} has no 'global' array")
        vec = np.asarray(arrays["global"].numpy(), dtype=np.float64)
        if vec.ndim != 1 or not np.all(np.isfinite(vec)):
            raise DecodeError(f"{where}: the global vector must be a finite 1-D array, got shape {vec.shape}")
    return StageMessage(stage, round_id, out, tuple(int(c) for c in sampled_raw), vec, info)


PAILLIER_ROUND_KEYS = ("clip_range", "ring_bits", "value_bits", "threshold")
"""The :class:`~protocols.RoundConfig` fields a Paillier round's first message carries (``round.<key>``)."""


def paillier_round_info(config: RoundConfig, length: int) -> dict[str, int | float | str]:
    """Server side: the round configuration as ``info`` fields (``value_bits`` 0 stands for ``None``)."""
    return {"round.clip_range": float(config.clip_range), "round.ring_bits": config.ring_bits,
            "round.value_bits": config.value_bits or 0, "round.threshold": config.threshold,
            "round.length": length}


def paillier_round_config(info: Mapping[str, object], round_id: int, where: str) -> RoundConfig:
    """Node side: the :class:`~protocols.RoundConfig` in ``info``, validated.

    Raises:
        DecodeError: a field is missing or of the wrong type. ConfigError: an invalid value.
    """
    values: dict[str, int | float] = {}
    for key in PAILLIER_ROUND_KEYS:
        value = info.get(f"round.{key}")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (key != "clip_range" and not isinstance(value, int)):
            kind = "a number" if key == "clip_range" else "an int"
            raise DecodeError(f"{where}: field 'round.{key}' must be {kind}, got {value!r}")
        values[key] = value  # type: ignore[assignment]
    if not math.isfinite(values["clip_range"]):
        raise DecodeError(f"{where}: field 'round.clip_range' must be finite, got {values['clip_range']!r}")
    try:
        return RoundConfig(round_id=round_id, clip_range=float(values["clip_range"]),
                           ring_bits=int(values["ring_bits"]), value_bits=int(values["value_bits"]) or None,
                           threshold=int(values["threshold"]))
    except ConfigError as exc:
        raise ConfigError(f"{where}: the server's round configuration: {exc}") from None


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

