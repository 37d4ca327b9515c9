"""Packed Paillier aggregation: the server adds ciphertexts, a key-holding client decrypts the sum.

FedMF (Chai et al. 2020) encrypts every value of a client's update under a
Paillier key the server does not hold; the server multiplies ciphertexts
(adding plaintexts) and key-holding clients decrypt only the sum. One value
per ciphertext makes that slow and bulky, so this implementation packs many
fixed-point values per plaintext (BatchCrypt, :mod:`protocols.paillier.packing`),
computes the encryption randomness ahead of time
(:mod:`protocols.paillier.pool`) and decrypts with CRT (:mod:`protocols.paillier.raw`).

Round (sans-IO parties :class:`PaillierClient` and :class:`PaillierServer`,
driven in process by :class:`PaillierAggregator`). Honest-but-curious server
(``malicious=False``, the default):

====================  ======================================================
ADVERTISE             clients send signed X25519 keys; server relays the list
SHARE_KEYS            the key holder sends the signed public key and each
                      peer's sealed private key; server relays; peers ack
(offline)             clients fill their randomness pools
MASKED_INPUT          clients send packed ciphertexts; server multiplies them
CONSISTENCY           nothing is sent (a client gone here cannot decrypt)
UNMASK                one key-holding survivor decrypts the product and
                      returns the packed plaintext sum; the server unpacks
====================  ======================================================

Malicious server (``malicious=True``); ADVERTISE and SHARE_KEYS as above:

====================  ======================================================
MASKED_INPUT          clients send packed ciphertexts with an Ed25519
                      signature over (round, client id, SHA-256 of the
                      block); the server checks and keeps them
CONSISTENCY           the server sends the survivor set S; each survivor
                      signs (round, sorted S), at most once per round; fewer
                      than t' = n // 2 + 1 signatures abort the round
UNMASK                one key holder that signed S receives S, the
                      consistency signatures and every member's signed
                      ciphertexts; it checks all of them, multiplies the
                      ciphertexts itself, decrypts once per round and
                      returns the packed plaintext sum; the server unpacks
====================  ======================================================

A client's input is in the sum exactly when its ciphertexts reached the
server; below ``threshold`` ciphertexts the round aborts before anything is
decrypted. If the chosen decryptor is gone, the next key-holding survivor
(malicious model: the next that signed S) decrypts. Threat models and their
costs: :class:`PaillierAggregator` Notes; key distribution:
:mod:`protocols.paillier.keys`.
"""

from __future__ import annotations

import functools
import itertools
import math
import struct
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocols.base import (
    AggregationResult,
    Aggregator,
    DropoutPlan,
    RoundConfig,
    Stage,
    abort_if_below_threshold,
    check_inputs,
)
from protocols.encoding import FixedPoint
from protocols.errors import (
    AggregationAborted,
    ConfigError,
    DecodeError,
    IntegrityError,
    SecureFedRecError,
    StageError,
)
from protocols.paillier import keys as keymod
from protocols.paillier.keys import DEFAULT_KEY_BITS, Advert
from protocols.paillier.packing import SlotLayout, pack_offset, unpack_sum
from protocols.paillier.pool import RandomnessPool, fill_pools
from protocols.paillier.raw import (
    MPZ,
    PrivateKey,
    PublicKey,
    as_mpz,
    encrypt_with_obfuscator,
    raw_decrypt,
)
from protocols.wire import frame, kind_of, unframe

__all__ = [
    "Ciphertexts",
    "PaillierAggregator",
    "PaillierClient",
    "PaillierServer",
    "as_private_key",
    "consistency_threshold",
    "decode_ciphertexts",
    "encode_aggregate",
    "encode_verified_aggregate",
    "round_layout",
]

KIND_ADVERT = 1
KIND_ADVERT_LIST = 2
KIND_KEY_BUNDLE = 3
KIND_KEY_DELIVERY = 4
KIND_KEY_ACK = 5
KIND_CIPHERTEXTS = 6
KIND_AGGREGATE = 7
KIND_PLAINTEXT_SUM = 8
KIND_SIGNED_CIPHERTEXTS = 9
KIND_CONSISTENCY_REQUEST = 10
KIND_CONSISTENCY_SIGNATURE = 11
KIND_VERIFIED_AGGREGATE = 12

_IDS = struct.Struct(">QQ")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_SIG = 64


def _fields(layout: struct.Struct, payload: bytes, offset: int) -> tuple[Any, ...]:
    """``layout.unpack_from`` that raises :class:`DecodeError` on a short message."""
    if offset + layout.size > len(payload):
        raise DecodeError(f"message truncated: {len(payload)} bytes, field at {offset} needs {layout.size}")
    return layout.unpack_from(payload, offset)


def as_private_key(keypair: object) -> PrivateKey:
    """Accept our :class:`PrivateKey` or a ``phe`` private key (with ``p``, ``q``, ``public_key.n``)."""
    if isinstance(keypair, PrivateKey):
        return keypair
    p, q, public = (
        getattr(keypair, "p", None),
        getattr(keypair, "q", None),
        getattr(keypair, "public_key", None),
    )
    if p is None or q is None or public is None:
        raise ConfigError(
            f"keypair must be a protocols.paillier PrivateKey or a phe private key, got {keypair!r}"
        )
    return PrivateKey(PublicKey(public.n), p, q)


def round_layout(n_clients: int, config: RoundConfig, public: PublicKey) -> tuple[FixedPoint, SlotLayout]:
    """The encoding and slot layout of a round with ``n_clients`` participants.

    Values use the same :class:`FixedPoint` as every other protocol (``value_bits``
    from the config, or the most that ``ring_bits`` allows for ``n`` clients), so
    results agree to the quantization step; a slot adds ``ceil(log2 n)`` bits.

    Raises:
        ConfigError: the layout cannot hold the sum (message says what to change), or the
            round asks for wrap-around, which packed slots cannot do.
    """
    if config.wrap:
        raise ConfigError(f"round {config.round_id}: paillier cannot wrap sums (RoundConfig.wrap): a slot "
                          "that overflows carries into its neighbour; its slots hold the exact sum "
                          "instead -- use q8/q16")
    fp = FixedPoint.for_sum(n_clients, config.clip_range, config.ring_bits, config.value_bits)
    return fp, SlotLayout.for_sum(n_clients, fp.value_bits, public.plaintext_bits)


def _take(payload: bytes, offset: int, size: int, what: str) -> tuple[bytes, int]:
    if offset + size > len(payload):
        raise DecodeError(f"{what}: message truncated")
    return payload[offset : offset + size], offset + size


def _public_key(n_raw: bytes) -> PublicKey:
    try:
        return PublicKey(int.from_bytes(n_raw, "big"))
    except ConfigError:
        raise DecodeError("public key: not a valid Paillier modulus") from None


def _ciphertext_block(values: list[MPZ], width: int) -> bytes:
    return b"".join(int(c).to_bytes(width, "big") for c in values)


def _parse_block(data: bytes, width: int, count: int, what: str) -> list[int]:
    if len(data) != width * count:
        raise DecodeError(f"{what}: {len(data)} bytes for {count} values of {width} bytes")
    return [int.from_bytes(data[i : i + width], "big") for i in range(0, len(data), width)]


def consistency_threshold(n_clients: int) -> int:
    """t': the consistency signatures a decryptor needs in the malicious-server model, ``n // 2 + 1``.

    ``n_clients`` is the number of clients the round was set up with (the same ``n``
    that sizes the slot layout, :func:`round_layout`), so every advertiser set is a
    subset of it and t' is a strict majority of the advertisers whatever advert list
    the server shows a client.

    Notes:
        The argument of :func:`protocols.secagg.share_threshold` in the malicious model
        (Bonawitz et al. 2017; Bell et al. 2020): every honest client signs at most one
        survivor set per round, and two sets of more than ``n / 2`` signers always
        share a client, so two *different* survivor sets can never both collect t'
        signatures. A server that wants the sums over S1 and S2 = S1 minus v (whose
        difference is v's input) from two decryptors therefore gets at most one. A
        smaller t' (e.g. ``threshold`` = n / 2) would let two disjoint halves each sign
        one set -- the split view that ``attacks.malicious_paillier`` runs.
    """
    if n_clients < 1:
        raise ConfigError(f"number of clients must be >= 1, got {n_clients}")
    return n_clients // 2 + 1


def _ids(ids: tuple[int, ...]) -> bytes:
    return _U32.pack(len(ids)) + struct.pack(f">{len(ids)}Q", *ids)


def _parse_ids(payload: bytes, offset: int, what: str) -> tuple[tuple[int, ...], int]:
    (count,) = _fields(_U32, payload, offset)
    raw, offset = _take(payload, offset + _U32.size, 8 * count, what)
    return tuple(struct.unpack(f">{count}Q", raw)), offset


@dataclass(frozen=True)
class Ciphertexts:
    """One client's MASKED_INPUT message, decoded (``signature`` only in the malicious model)."""

    client_id: int
    round_id: int
    count: int
    block: bytes
    """The ``count`` ciphertexts, fixed width, big endian, concatenated (what the signature hashes)."""
    signature: bytes | None = None

    def values(self, width: int) -> list[int]:
        """The ciphertexts as integers (``width`` bytes each)."""
        return _parse_block(self.block, width, self.count, f"ciphertexts of client {self.client_id}")

    def encode(self) -> bytes:
        """The wire message (:data:`KIND_SIGNED_CIPHERTEXTS` when signed)."""
        head = _IDS.pack(self.client_id, self.round_id) + _U32.pack(self.count) + self.block
        if self.signature is None:
            return frame(KIND_CIPHERTEXTS, head)
        return frame(KIND_SIGNED_CIPHERTEXTS, head + self.signature)


def decode_ciphertexts(message: bytes) -> Ciphertexts:
    """Parse a MASKED_INPUT message of either model (checks lengths only, not the signature)."""
    signed = kind_of(message) == KIND_SIGNED_CIPHERTEXTS
    payload = unframe(message, KIND_SIGNED_CIPHERTEXTS if signed else KIND_CIPHERTEXTS)
    sender, rid = _fields(_IDS, payload, 0)
    (count,) = _fields(_U32, payload, _IDS.size)
    body = payload[_IDS.size + _U32.size :]
    signature = None
    if signed:
        if len(body) < _SIG:
            raise DecodeError(f"signed ciphertexts of client {sender}: message truncated")
        body, signature = body[:-_SIG], body[-_SIG:]
    return Ciphertexts(sender, rid, count, body, signature)


def encode_aggregate(round_id: int, survivors: tuple[int, ...], product: list[Any], width: int) -> bytes:
    """The honest-but-curious UNMASK request: announced survivor ids and the product ciphertexts."""
    return frame(
        KIND_AGGREGATE,
        struct.pack(">Q", round_id) + _ids(survivors) + _U32.pack(len(product))
        + _ciphertext_block(product, width),
    )


def encode_verified_aggregate(
    round_id: int,
    survivors: tuple[int, ...],
    signatures: Mapping[int, bytes],
    ciphertexts: Mapping[int, Ciphertexts],
    count: int,
) -> bytes:
    """The malicious-model UNMASK request: S, signatures on S and every member's signed ciphertexts.

    Layout: ``round | S | signature count | (signer, Ed25519)* | count | (signature, block)``
    for each client of S in order. The decryptor multiplies the ciphertexts itself.
    """
    parts = [struct.pack(">Q", round_id), _ids(survivors), _U32.pack(len(signatures))]
    parts += [_U64.pack(signer) + sig for signer, sig in sorted(signatures.items())]
    parts.append(_U32.pack(count))
    for cid in survivors:
        c = ciphertexts[cid]
        parts += [c.signature or bytes(_SIG), c.block]
    return frame(KIND_VERIFIED_AGGREGATE, b"".join(parts))


_P = ParamSpec("_P")
_R = TypeVar("_R")
_PartyT = TypeVar("_PartyT", bound="_Party")


class _Party:
    """Terminal error state shared by both parties (h11 style).

    After any exception leaves a stage, the party remembers it and refuses every
    further call with :class:`~protocols.errors.IntegrityError`; an exception that is
    not the project's own (``cryptography``, ``gmpy2``, ``struct``, numpy, ...) leaves
    as an :class:`~protocols.errors.IntegrityError` naming its type, so a malformed
    message can never surface as a foreign exception or leave a stage half open.
    """

    _failure: str | None = None

    def _who(self) -> str:
        raise NotImplementedError

    @property
    def failed(self) -> bool:
        """Whether a stage of this party failed: it then refuses every further call."""
        return self._failure is not None


def _guarded(method: Callable[Concatenate[_PartyT, _P], _R]) -> Callable[Concatenate[_PartyT, _P], _R]:
    """Make ``method`` a stage of a :class:`_Party`: refused after a failure, failures made terminal."""
    name = method.__name__

    @functools.wraps(method)
    def stage(self: _PartyT, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._failure is not None:
            raise IntegrityError(
                f"{self._who()} refuses {name}: it failed earlier in this round ({self._failure}) "
                "and refuses every further call"
            )
        try:
            return method(self, *args, **kwargs)
        except SecureFedRecError as exc:
            self._failure = f"{type(exc).__name__} in {name}"
            raise
        except Exception as exc:  # anything foreign: a party never leaks it, nor stays open
            self._failure = f"{type(exc).__name__} in {name}"
            raise IntegrityError(
                f"{self._who()}: {name} refused a message that raised {type(exc).__name__}"
            ) from exc

    return stage


class PaillierClient(_Party):
    """One client's side of a round (sans-IO: bytes in, bytes out, one method per stage).

    Args:
        client_id, round_id: who and when (bound into every signature).
        identity: this client's long-term Ed25519 key.
        directory: the PKI, client id -> Ed25519 public key.
        randbytes: source of the round's ephemeral X25519 key (32 bytes); default: a fresh
            key from the OS. Given the same source and the same messages, a new client
            reaches the same state, so a party that keeps no objects between messages (a
            Flower node) can rebuild it by replaying the messages.
        malicious: run the malicious-server model: sign the ciphertexts, sign one survivor
            set (:meth:`consistency`) and decrypt only a verified aggregate, once
            (:meth:`decrypt`). Fixed by the client's own configuration, never by a message,
            so a server cannot downgrade it.
        n_clients: the number of clients the round was set up with (the ``n`` of
            :func:`round_layout`); needed with ``malicious`` for t' (:func:`consistency_threshold`).
        config: this client's own round configuration. With it (and ``n_clients``) the
            client derives the decryption threshold, the clip range and the slot layout
            itself and refuses a driver or server that passes weaker ones; without it,
            the ``threshold`` of :meth:`consistency` / :meth:`decrypt` and the layout of
            :meth:`masked_input` are taken from the caller and only checked for structure.
        min_key_bits: the smallest Paillier modulus this client accepts from a key holder
            (and shares as one); default :data:`~protocols.paillier.keys.MIN_KEY_BITS`.
        key_holders: the clients this client's configuration allows to hold (generate and
            deliver) the round key; ``None``: any advertiser in the verified list.

    Notes:
        A party never takes a security parameter on another party's word (Bonawitz et al.
        2017: t is fixed and known to every client). The round id, t' (from ``n_clients``),
        the threshold, the slot layout (value bits, headroom for ``n_clients`` additions,
        slot width against the key's plaintext), the clip range, the minimum key size and
        the key holder come from the arguments above; a message or call that weakens one
        raises :class:`~protocols.errors.IntegrityError`. After any failure the client is
        terminal: every further call is refused (:class:`_Party`).
    """

    def __init__(
        self,
        client_id: int,
        identity: Ed25519PrivateKey,
        directory: Mapping[int, Ed25519PublicKey],
        round_id: int,
        *,
        randbytes: Callable[[int], bytes] | None = None,
        malicious: bool = False,
        n_clients: int | None = None,
        config: RoundConfig | None = None,
        min_key_bits: int = keymod.MIN_KEY_BITS,
        key_holders: Collection[int] | None = None,
    ) -> None:
        if malicious and n_clients is None:
            raise ConfigError(f"client {client_id}: the malicious-server model needs n_clients (for t')")
        if n_clients is not None and n_clients < 1:
            raise ConfigError(f"client {client_id}: n_clients must be >= 1, got {n_clients}")
        if config is not None and config.round_id != round_id:
            raise ConfigError(f"client {client_id}: config is for round {config.round_id}, not {round_id}")
        if min_key_bits < keymod.MIN_KEY_BITS:
            raise ConfigError(
                f"client {client_id}: min_key_bits must be >= {keymod.MIN_KEY_BITS}, got {min_key_bits}"
            )
        self.client_id = client_id
        self.round_id = round_id
        self.malicious = malicious
        self.n_clients = n_clients
        self.config = config
        self.min_key_bits = min_key_bits
        self.key_holders = None if key_holders is None else frozenset(key_holders)
        self._identity = identity
        self._directory = directory
        self._randbytes = randbytes
        self._ephemeral: X25519PrivateKey | None = None
        self._adverts: dict[int, Advert] = {}
        self.keypair: PrivateKey | None = None
        self._stage = -1
        self._signed: tuple[int, ...] | None = None
        self._decrypted = False
        self._sent_count: int | None = None

    def _who(self) -> str:
        return f"round {self.round_id}: client {self.client_id}"

    def _refuse(self, why: str) -> IntegrityError:
        return IntegrityError(f"round {self.round_id}: client {self.client_id} {why}")

    def _advance(self, expected: int, name: str) -> None:
        if self._stage != expected - 1:
            raise StageError(f"client {self.client_id}, round {self.round_id}: {name} out of order")
        self._stage = expected

    def _threshold(self, passed: int | None, action: str) -> int:
        """The decryption threshold: this client's own, never lowered by the caller."""
        own = self.config.threshold if self.config is not None else None
        if own is None:
            if passed is None:
                raise ConfigError(
                    f"client {self.client_id}: {action} needs a threshold (or the client's config)"
                )
            return passed
        if passed is not None and passed < own:
            raise self._refuse(f"was told threshold {passed} to {action}, below its own threshold {own}")
        return max(own, passed or own)

    def _check_key_size(self, public: PublicKey, holder: int) -> None:
        if public.bits < self.min_key_bits:
            raise self._refuse(
                f"refuses the {public.bits}-bit Paillier key of holder {holder}: below its minimum "
                f"of {self.min_key_bits} bits"
            )

    def _check_layout(self, fp: FixedPoint, layout: SlotLayout, public: PublicKey) -> None:
        """The encoding and slot layout must be the client's own (or, without a config, sound for n)."""
        if self.config is not None and self.n_clients is not None:
            own_fp, own_layout = round_layout(self.n_clients, self.config, public)
            if fp != own_fp:
                raise self._refuse(
                    f"was handed the encoding {fp}, not its own {own_fp} (clip range, value bits, ring bits)"
                )
            if layout != own_layout:
                raise self._refuse(f"was handed the slot layout {layout}, not its own {own_layout}")
            return
        if layout.value_bits != fp.value_bits or fp.wrap:
            raise self._refuse(
                f"was handed a slot layout of {layout.value_bits} value bits for an encoding of "
                f"{fp.value_bits} bits{' that wraps' if fp.wrap else ''}"
            )
        if layout.plaintext_bits > public.plaintext_bits:
            raise self._refuse(
                f"was handed a slot layout for {layout.plaintext_bits}-bit plaintexts; the key holds "
                f"{public.plaintext_bits}"
            )
        need = math.ceil(math.log2(self.n_clients)) if self.n_clients and self.n_clients > 1 else 0
        if layout.headroom_bits < need:
            raise self._refuse(
                f"was handed a slot layout with {layout.headroom_bits} headroom bits; the sum of "
                f"{self.n_clients} clients needs {need}"
            )

    @_guarded
    def advertise(self) -> bytes:
        """ADVERTISE: a signed fresh X25519 key."""
        self._advance(0, "advertise")
        ephemeral = (X25519PrivateKey.from_private_bytes(self._randbytes(32))
                     if self._randbytes is not None else None)
        self._ephemeral, payload = keymod.make_advert(
            self._identity, self.client_id, self.round_id, ephemeral
        )
        return frame(KIND_ADVERT, payload)

    @_guarded
    def receive_adverts(self, message: bytes) -> None:
        """The server's relay of all adverts; each is checked against the directory.

        Refuses (:class:`~protocols.errors.IntegrityError`) a list that names a client
        twice, lacks this client's own advert, holds more adverts than ``n_clients`` or
        fewer than its own threshold.
        """
        self._advance(1, "receive_adverts")
        payload = unframe(message, KIND_ADVERT_LIST)
        (count,), off = _fields(_U32, payload, 0), _U32.size
        size = keymod._ADVERT.size
        if len(payload) != off + count * size:
            raise DecodeError(f"advert list of {len(payload)} bytes does not hold {count} adverts")
        adverts: dict[int, Advert] = {}
        for i in range(count):
            advert = keymod.parse_advert(
                payload[off + i * size : off + (i + 1) * size], dict(self._directory), self.round_id
            )
            if advert.client_id in adverts:
                raise self._refuse(f"received an advert list naming client {advert.client_id} twice")
            adverts[advert.client_id] = advert
        own = adverts.get(self.client_id)
        if self._ephemeral is None or own is None or own.x25519 != keymod._raw(self._ephemeral.public_key()):
            raise self._refuse("received an advert list without its own advert")
        if self.n_clients is not None and len(adverts) > self.n_clients:
            raise self._refuse(
                f"received {len(adverts)} adverts for a round set up with {self.n_clients} clients"
            )
        if self.config is not None and len(adverts) < self.config.threshold:
            raise self._refuse(
                f"received {len(adverts)} adverts, below its threshold {self.config.threshold}"
            )
        self._adverts.update(adverts)

    @_guarded
    def share_key(self, keypair: PrivateKey) -> bytes:
        """SHARE_KEYS as key holder: signed ``n`` and the sealed private key for every other advertiser.

        Raises:
            IntegrityError: this client's configuration does not let it hold the key, or the
                key is below its ``min_key_bits``.
        """
        self._advance(2, "share_key")
        if self._ephemeral is None:
            raise StageError(f"client {self.client_id}: share_key before advertise")
        if self.key_holders is not None and self.client_id not in self.key_holders:
            raise self._refuse("was asked to hold the key; its configuration names other key holders")
        self._check_key_size(keypair.public, self.client_id)
        self.keypair = keypair
        n = keypair.public.n_bytes()
        parts = [
            _IDS.pack(self.client_id, self.round_id),
            _U16.pack(len(n)),
            n,
            keymod.sign_public_key(self._identity, keypair.public, self.round_id, self.client_id),
        ]
        peers = [a for cid, a in sorted(self._adverts.items()) if cid != self.client_id]
        parts.append(_U32.pack(len(peers)))
        for peer in peers:
            sealed = keymod.seal_private_key(keypair, self._ephemeral, peer, self.round_id, self.client_id)
            parts += [struct.pack(">Q", peer.client_id), _U16.pack(len(sealed)), sealed]
        return frame(KIND_KEY_BUNDLE, b"".join(parts))

    @_guarded
    def receive_key(self, message: bytes) -> bytes:
        """SHARE_KEYS as recipient: open the private key, check it, return a signed acknowledgement.

        Refuses a delivery for another round, from itself, from a client its configuration
        does not allow to hold the key, or of a modulus below ``min_key_bits``; a refused
        delivery leaves the client terminal (it takes no second key in the round).
        """
        if self._stage != 1:
            raise StageError(f"client {self.client_id}, round {self.round_id}: receive_key out of order")
        if self._ephemeral is None:
            raise StageError(f"client {self.client_id}: receive_key before advertise")
        payload = unframe(message, KIND_KEY_DELIVERY)
        holder_id, rid = _fields(_IDS, payload, 0)
        if rid != self.round_id:
            raise self._refuse(f"got a key delivery for round {rid}")
        off = _IDS.size
        (nlen,) = _fields(_U16, payload, off)
        n_raw, off = _take(payload, off + _U16.size, nlen, "key delivery")
        sig, off = _take(payload, off, _SIG, "key delivery")
        (slen,) = _fields(_U16, payload, off)
        sealed, off = _take(payload, off + _U16.size, slen, "key delivery")
        if off != len(payload):
            raise DecodeError("key delivery: trailing bytes")
        holder = self._adverts.get(holder_id)
        identity = self._directory.get(holder_id)
        if holder is None or identity is None:
            raise IntegrityError(f"round {self.round_id}: key delivered from unknown holder {holder_id}")
        if holder_id == self.client_id:
            raise self._refuse("got a key delivery naming itself as the holder")
        if self.key_holders is not None and holder_id not in self.key_holders:
            raise self._refuse(
                f"got a key from client {holder_id}, whom its configuration does not let hold it"
            )
        public = _public_key(n_raw)
        self._check_key_size(public, holder_id)
        keymod.verify_public_key(identity, sig, public, self.round_id, holder_id)
        keypair = keymod.open_private_key(
            sealed, public, self._ephemeral, holder, self.round_id, self.client_id
        )
        ack = keymod.sign_ack(self._identity, public, self.round_id, self.client_id)
        self.keypair = keypair
        self._stage = 2
        return frame(KIND_KEY_ACK, _IDS.pack(self.client_id, self.round_id) + ack)

    @_guarded
    def masked_input(
        self,
        vector: np.ndarray,
        fp: FixedPoint,
        layout: SlotLayout,
        rng: np.random.Generator,
        pool: RandomnessPool,
    ) -> bytes:
        """MASKED_INPUT: quantize, pack and encrypt; tops the pool up online if it runs short.

        Raises:
            IntegrityError: ``fp`` or ``layout`` is not the client's own (with its config), or is
                unsound for ``n_clients`` additions (without); ``pool`` is for another key.
        """
        self._advance(3, "masked_input")
        if self.keypair is None:
            raise StageError(f"client {self.client_id}: masked_input without a key")
        public = self.keypair.public
        self._check_layout(fp, layout, public)
        if pool.public.n != public.n:
            raise self._refuse("was handed a randomness pool for another Paillier key")
        plaintexts = pack_offset(layout, fp.quantize(vector, rng))
        if len(pool) < len(plaintexts):
            pool.fill(len(plaintexts) - len(pool))
        rns = pool.take(len(plaintexts))
        cts = [encrypt_with_obfuscator(public, m, rn) for m, rn in zip(plaintexts, rns, strict=True)]
        block = _ciphertext_block(cts, public.ciphertext_bytes)
        signature = (keymod.sign_ciphertexts(self._identity, self.round_id, self.client_id, block)
                     if self.malicious else None)
        self._sent_count = len(cts)
        return Ciphertexts(self.client_id, self.round_id, len(cts), block, signature).encode()

    @_guarded
    def consistency(self, message: bytes, threshold: int | None = None) -> bytes:
        """CONSISTENCY (malicious model): sign the announced survivor set S, at most once per round.

        Signs ``(round, sorted S)`` only if S names this client, holds at least the
        threshold and t' clients, and names only advertisers. The threshold is the
        client's own (``config``); a ``threshold`` below it is refused, one above it used.

        Raises:
            IntegrityError: a second request in this round, or an S that fails a check.
        """
        if not self.malicious:
            raise StageError(f"client {self.client_id}: consistency is a stage of the malicious-server model")
        if self._signed is not None:
            raise self._refuse("already signed a survivor set in this round; refuses to sign another")
        if self._stage not in (2, 3) or self.keypair is None:
            raise StageError(f"client {self.client_id}: consistency without a key")
        payload = unframe(message, KIND_CONSISTENCY_REQUEST)
        (rid,) = _fields(_U64, payload, 0)
        survivors, off = _parse_ids(payload, _U64.size, "consistency request")
        if off != len(payload):
            raise DecodeError("consistency request: trailing bytes")
        if rid != self.round_id:
            raise self._refuse(f"was asked to sign the survivor set of round {rid}")
        self._check_survivors(survivors, self._threshold(threshold, "sign"), "sign")
        signature = keymod.sign_survivors(self._identity, self.round_id, survivors)
        self._signed = survivors
        self._stage = 4
        return frame(KIND_CONSISTENCY_SIGNATURE, _IDS.pack(self.client_id, self.round_id) + signature)

    def _check_survivors(self, survivors: tuple[int, ...], threshold: int, action: str) -> None:
        t_prime = consistency_threshold(self.n_clients or 1)
        if any(a >= b for a, b in itertools.pairwise(survivors)):
            raise self._refuse(f"refuses to {action} a survivor set that is not sorted and unique")
        if self.client_id not in survivors:
            raise self._refuse(f"refuses to {action} a survivor set without itself")
        if len(survivors) < max(threshold, t_prime):
            raise self._refuse(
                f"refuses to {action} a survivor set of {len(survivors)} clients "
                f"(threshold {threshold}, t' {t_prime})"
            )
        unknown = sorted(set(survivors) - set(self._adverts))
        if unknown:
            raise self._refuse(f"refuses to {action} a survivor set naming non-advertiser {unknown[0]}")

    @_guarded
    def decrypt(self, message: bytes, threshold: int | None = None) -> bytes:
        """UNMASK: decrypt the product of ciphertexts, if it covers at least the threshold of advertisers.

        The threshold is the client's own (``config``); a ``threshold`` below it is refused.
        In the malicious model only a verified aggregate (:func:`encode_verified_aggregate`)
        is accepted, see :meth:`_decrypt_verified`.
        """
        threshold = self._threshold(threshold, "decrypt")
        if self.malicious:
            return self._decrypt_verified(message, threshold)
        if self._stage < 2 or self.keypair is None:
            raise StageError(f"client {self.client_id}: decrypt without a key")
        self._stage = 4
        public = self.keypair.public
        payload = unframe(message, KIND_AGGREGATE)
        (rid,) = _fields(_U64, payload, 0)
        if rid != self.round_id:
            raise self._refuse(f"refuses to decrypt an aggregate of round {rid}")
        (nsurv,) = _fields(_U32, payload, 8)
        ids_raw, off = _take(payload, 12, 8 * nsurv, "aggregate")
        survivors = set(struct.unpack(f">{nsurv}Q", ids_raw))
        if len(survivors) != nsurv or len(survivors) < threshold or not survivors <= set(self._adverts):
            raise IntegrityError(
                f"round {self.round_id}: client {self.client_id} refuses to decrypt a sum announced over "
                f"{nsurv} clients (threshold {threshold})"
            )
        (count,) = _fields(_U32, payload, off)
        self._check_count(count)
        cts = _parse_block(payload[off + 4 :], public.ciphertext_bytes, count, "aggregate")
        if any(not 0 < c < public.nsquare for c in cts):
            raise self._refuse("got an aggregate ciphertext outside (0, n^2)")
        sums = [raw_decrypt(self.keypair, c) for c in cts]
        return self._plaintext_sum(sums)

    def _check_count(self, count: int) -> None:
        """An aggregate holds as many ciphertexts as this client sent (when it sent any)."""
        if self._sent_count is not None and count != self._sent_count:
            raise self._refuse(f"got an aggregate of {count} ciphertexts; it sent {self._sent_count}")

    def _plaintext_sum(self, sums: list[MPZ]) -> bytes:
        if self.keypair is None:
            raise StageError(f"client {self.client_id}: decrypt without a key")
        body = (
            struct.pack(">Q", self.round_id)
            + _U32.pack(len(sums))
            + _ciphertext_block(sums, self.keypair.public.plaintext_bytes)
        )
        return frame(KIND_PLAINTEXT_SUM, body)

    def _decrypt_verified(self, message: bytes, threshold: int) -> bytes:
        """Verified decryption (malicious model), at most once per round.

        Checks, before anything is decrypted: S is the set this client signed, holds at
        least ``threshold`` clients, and carries consistency signatures on S from at least
        t' distinct members of S (this client counts); every client of S sent ciphertexts
        signed for this round. Then multiplies them itself and decrypts the product.

        Raises:
            IntegrityError: any check fails (names this client, the round and the culprit).
        """
        if kind_of(message) != KIND_VERIFIED_AGGREGATE:
            raise self._refuse(
                "refuses to decrypt an unverified aggregate (the malicious-server model decrypts only S "
                "with its consistency signatures and every member's signed ciphertexts)"
            )
        if self._decrypted:
            raise self._refuse("already decrypted a sum in this round; refuses a second decryption")
        if self._signed is None or self.keypair is None:
            raise self._refuse("has signed no survivor set in this round; refuses to decrypt")
        public = self.keypair.public
        width = public.ciphertext_bytes
        payload = unframe(message, KIND_VERIFIED_AGGREGATE)
        (rid,) = _fields(_U64, payload, 0)
        survivors, off = _parse_ids(payload, _U64.size, "verified aggregate")
        (nsig,) = _fields(_U32, payload, off)
        off += _U32.size
        signatures: dict[int, bytes] = {}
        for _ in range(nsig):
            (signer,) = _fields(_U64, payload, off)
            sig, off = _take(payload, off + _U64.size, _SIG, "verified aggregate")
            if signer in signatures:
                raise self._refuse(f"got two consistency signatures of client {signer}")
            signatures[signer] = sig
        (count,) = _fields(_U32, payload, off)
        off += _U32.size
        self._check_count(count)
        if len(payload) - off != len(survivors) * (_SIG + count * width):
            raise DecodeError(
                f"verified aggregate: {len(payload) - off} bytes do not hold {len(survivors)} signed blocks "
                f"of {count} ciphertexts"
            )
        if rid != self.round_id:
            raise self._refuse(f"refuses to decrypt an aggregate of round {rid}")
        if survivors != self._signed:
            raise self._refuse(
                f"refuses to decrypt a sum over {len(survivors)} clients: not the survivor set it signed "
                f"({len(self._signed)} clients)"
            )
        self._check_survivors(survivors, threshold, "decrypt")
        who = f"client {self.client_id} (decryptor)"
        members = set(survivors)
        for signer, sig in sorted(signatures.items()):
            key = self._directory.get(signer)
            if signer not in members or key is None:
                raise self._refuse(f"got a consistency signature of client {signer}, not in the survivor set")
            keymod.verify_survivors(key, sig, rid, survivors, signer, who)
        t_prime = consistency_threshold(self.n_clients or 1)
        signers = set(signatures) | {self.client_id}
        if len(signers) < t_prime:
            raise self._refuse(
                f"refuses to decrypt: {len(signers)} consistency signatures on the survivor set, "
                f"t' is {t_prime}"
            )
        nsq = public.nsquare
        product: list[MPZ] = []
        for cid in survivors:
            sig, off = _take(payload, off, _SIG, "verified aggregate")
            block, off = _take(payload, off, count * width, "verified aggregate")
            key = self._directory.get(cid)
            if key is None:
                raise self._refuse(f"got ciphertexts of unenrolled client {cid}")
            keymod.verify_ciphertexts(key, sig, rid, cid, block, who)
            cts = _parse_block(block, width, count, f"ciphertexts of client {cid}")
            if any(not 0 < c < nsq for c in cts):
                raise self._refuse(f"got a ciphertext of client {cid} outside (0, n^2)")
            product = [as_mpz(c) for c in cts] if not product else [
                a * c % nsq for a, c in zip(product, cts, strict=True)]
        self._decrypted = True  # every check passed: this is the round's one decryption
        self._stage = 5
        return self._plaintext_sum([raw_decrypt(self.keypair, c) for c in product])


class PaillierServer(_Party):
    """The server's side: relays, multiplies ciphertexts, never holds the private key.

    With ``malicious=True`` (the malicious-server model) it checks and keeps every
    client's signed ciphertexts instead of multiplying them, runs the consistency round
    (:meth:`consistency_request`, :meth:`collect_signatures`) and hands the decryptor S,
    the signatures and all of S's ciphertexts (:meth:`aggregate_message`).

    Like a client, the server is terminal after any failure (an abort included): every
    further call is refused, and only the project's own exception types leave a stage.
    """

    def __init__(
        self,
        directory: Mapping[int, Ed25519PublicKey],
        config: RoundConfig,
        n_clients: int,
        *,
        malicious: bool = False,
    ) -> None:
        self.directory = directory
        self.config = config
        self.n_clients = n_clients
        self.malicious = malicious
        self.consistency_threshold = consistency_threshold(n_clients)
        """t' (malicious model): consistency signatures the decryptor needs."""
        self.advertisers: list[int] = []
        self.public: PublicKey | None = None
        self.key_holders: set[int] = set()
        self.survivors: list[int] = []
        self.signatures: dict[int, bytes] = {}
        """Consistency signatures on :attr:`survivors` (malicious model), signer -> Ed25519."""
        self._product: list[MPZ] = []
        self._signed: dict[int, Ciphertexts] = {}
        self._count = 0
        self.layout: SlotLayout | None = None

    def _who(self) -> str:
        return f"round {self.config.round_id}: server"

    def _identity(self, cid: int) -> Ed25519PublicKey:
        key = self.directory.get(cid)
        if key is None:
            raise IntegrityError(f"round {self.config.round_id}: message from unenrolled client {cid}")
        return key

    @_guarded
    def collect_adverts(self, messages: Mapping[int, bytes]) -> bytes:
        """Check the adverts and return the list every advertiser receives."""
        payloads = []
        for cid in sorted(messages):
            payload = unframe(messages[cid], KIND_ADVERT)
            advert = keymod.parse_advert(payload, dict(self.directory), self.config.round_id)
            if advert.client_id != cid:
                raise IntegrityError(
                    f"round {self.config.round_id}: client {cid} sent the advert of {advert.client_id}"
                )
            payloads.append(payload)
        self.advertisers = sorted(messages)
        return frame(KIND_ADVERT_LIST, _U32.pack(len(payloads)) + b"".join(payloads))

    @_guarded
    def relay_key(self, holder: int, message: bytes) -> dict[int, bytes]:
        """Split the holder's bundle into one delivery per recipient (public key + its sealed copy)."""
        payload = unframe(message, KIND_KEY_BUNDLE)
        hid, rid = _fields(_IDS, payload, 0)
        if hid != holder or rid != self.config.round_id:
            raise DecodeError(
                f"key bundle from {hid} for round {rid}, expected {holder} / {self.config.round_id}"
            )
        off = _IDS.size
        (nlen,) = _fields(_U16, payload, off)
        n_raw, off = _take(payload, off + _U16.size, nlen, "key bundle")
        sig, off = _take(payload, off, _SIG, "key bundle")
        public = _public_key(n_raw)
        keymod.verify_public_key(self._identity(holder), sig, public, rid, holder)
        (count,) = _fields(_U32, payload, off)
        off += _U32.size
        head = payload[: off - _U32.size]
        out: dict[int, bytes] = {}
        for _ in range(count):
            (recipient,) = _fields(_U64, payload, off)
            (slen,) = _fields(_U16, payload, off + 8)
            sealed, off = _take(payload, off + 10, slen, "key bundle")
            out[recipient] = frame(KIND_KEY_DELIVERY, head + _U16.pack(slen) + sealed)
        if off != len(payload):
            raise DecodeError("key bundle: trailing bytes")
        self.public = public
        self.key_holders = {holder}
        return out

    @_guarded
    def collect_acks(self, messages: Mapping[int, bytes]) -> None:
        """Record the clients that confirmed (signed) that they hold the key."""
        if self.public is None:
            raise StageError("collect_acks before relay_key")
        for cid, message in messages.items():
            payload = unframe(message, KIND_KEY_ACK)
            if len(payload) != _IDS.size + _SIG:
                raise DecodeError(f"key ack of client {cid}: {len(payload)} bytes")
            sender, rid = _fields(_IDS, payload, 0)
            if sender != cid or rid != self.config.round_id:
                raise DecodeError(f"key ack of client {cid} names client {sender}, round {rid}")
            keymod.verify_ack(self._identity(cid), payload[_IDS.size :], self.public, rid, cid)
            self.key_holders.add(cid)

    @_guarded
    def collect_ciphertexts(self, messages: Mapping[int, bytes]) -> None:
        """Check every client's ciphertexts and multiply them slot-wise modulo ``n^2``.

        Raises:
            AggregationAborted: fewer than ``threshold`` clients sent ciphertexts.
        """
        if self.public is None:
            raise StageError("collect_ciphertexts before the key was shared")
        abort_if_below_threshold(len(messages), self.config, Stage.MASKED_INPUT)
        if self.malicious:
            self._collect_signed(messages)
            return
        public, width = self.public, self.public.ciphertext_bytes
        product: list[MPZ] | None = None
        for cid in sorted(messages):
            if cid not in self.key_holders:
                raise IntegrityError(
                    f"round {self.config.round_id}: ciphertexts from client {cid} without a key"
                )
            payload = unframe(messages[cid], KIND_CIPHERTEXTS)
            sender, rid = _fields(_IDS, payload, 0)
            (count,) = _fields(_U32, payload, _IDS.size)
            if sender != cid or rid != self.config.round_id:
                raise DecodeError(f"ciphertexts of client {cid} name client {sender}, round {rid}")
            cts = _parse_block(payload[_IDS.size + 4 :], width, count, f"ciphertexts of client {cid}")
            if product is not None and len(cts) != len(product):
                raise DecodeError(f"client {cid} sent {len(cts)} ciphertexts, expected {len(product)}")
            nsq = public.nsquare
            if any(not 0 < c < nsq for c in cts):
                raise DecodeError(f"client {cid} sent a ciphertext outside (0, n^2)")
            if product is None:
                product = [as_mpz(c) for c in cts]
            else:
                product = [a * c % nsq for a, c in zip(product, cts, strict=True)]
        self._product = product or []
        self._count = len(self._product)
        self.survivors = sorted(messages)

    def _collect_signed(self, messages: Mapping[int, bytes]) -> None:
        """Malicious model: check each client's signed ciphertexts and keep them for the decryptor."""
        if self.public is None:
            raise StageError("collect_ciphertexts before the key was shared")
        rid, width, nsq = self.config.round_id, self.public.ciphertext_bytes, self.public.nsquare
        kept: dict[int, Ciphertexts] = {}
        count: int | None = None
        for cid in sorted(messages):
            if cid not in self.key_holders:
                raise IntegrityError(f"round {rid}: ciphertexts from client {cid} without a key")
            if kind_of(messages[cid]) != KIND_SIGNED_CIPHERTEXTS:
                raise IntegrityError(f"round {rid}: client {cid} sent unsigned ciphertexts (malicious model)")
            c = decode_ciphertexts(messages[cid])
            if c.client_id != cid or c.round_id != rid:
                raise DecodeError(
                    f"ciphertexts of client {cid} name client {c.client_id}, round {c.round_id}"
                )
            if count is not None and c.count != count:
                raise DecodeError(f"client {cid} sent {c.count} ciphertexts, expected {count}")
            if any(not 0 < v < nsq for v in c.values(width)):
                raise DecodeError(f"client {cid} sent a ciphertext outside (0, n^2)")
            keymod.verify_ciphertexts(self._identity(cid), c.signature or b"", rid, cid, c.block, "server")
            kept[cid], count = c, c.count
        self._signed = kept
        self._count = count or 0
        self.survivors = sorted(messages)

    @_guarded
    def consistency_request(self) -> bytes:
        """CONSISTENCY (malicious model): the survivor set S every survivor is asked to sign."""
        if not self.malicious:
            raise StageError("consistency_request: the honest-but-curious model has no consistency round")
        if not self.survivors:
            raise StageError("consistency_request before collect_ciphertexts")
        return frame(KIND_CONSISTENCY_REQUEST, _U64.pack(self.config.round_id) + _ids(tuple(self.survivors)))

    @_guarded
    def collect_signatures(self, messages: Mapping[int, bytes]) -> None:
        """Check the survivors' consistency signatures on S.

        Raises:
            AggregationAborted: fewer than t' (:func:`consistency_threshold`) signed.
            IntegrityError: a signature from a non-survivor or one that does not verify.
        """
        if not self.malicious or not self.survivors:
            raise StageError("collect_signatures outside the malicious model's consistency round")
        rid, survivors = self.config.round_id, tuple(self.survivors)
        signatures: dict[int, bytes] = {}
        for cid in sorted(messages):
            payload = unframe(messages[cid], KIND_CONSISTENCY_SIGNATURE)
            if len(payload) != _IDS.size + _SIG:
                raise DecodeError(f"consistency signature of client {cid}: {len(payload)} bytes")
            sender, srid = _fields(_IDS, payload, 0)
            if sender != cid or srid != rid:
                raise DecodeError(
                    f"consistency signature of client {cid} names client {sender}, round {srid}"
                )
            if cid not in self.survivors:
                raise IntegrityError(f"round {rid}: consistency signature from non-survivor {cid}")
            keymod.verify_survivors(self._identity(cid), payload[_IDS.size :], rid, survivors, cid, "server")
            signatures[cid] = payload[_IDS.size :]
        if len(signatures) < self.consistency_threshold:
            raise AggregationAborted(
                f"round {rid}: only {len(signatures)} consistency signatures at stage CONSISTENCY, t' is "
                f"{self.consistency_threshold}; round aborted, nothing revealed",
                survivors=len(signatures),
                threshold=self.consistency_threshold,
                round_id=rid,
            )
        self.signatures = signatures

    @property
    def signers(self) -> list[int]:
        """Clients whose consistency signature arrived (malicious model), sorted."""
        return sorted(self.signatures)

    @_guarded
    def aggregate_message(self) -> bytes:
        """What the decryptor receives.

        Honest-but-curious: the survivor ids and the product ciphertexts. Malicious model:
        S, the consistency signatures and every member's signed ciphertexts (|S| ciphertext
        vectors instead of one: the price of a decryptor that checks what it decrypts).
        """
        if self.public is None:
            raise StageError("aggregate_message before collect_ciphertexts")
        if self.malicious:
            if not self.signatures:
                raise StageError("aggregate_message before collect_signatures")
            return encode_verified_aggregate(
                self.config.round_id, tuple(self.survivors), self.signatures, self._signed, self._count
            )
        return encode_aggregate(
            self.config.round_id, tuple(self.survivors), self._product, self.public.ciphertext_bytes
        )

    @_guarded
    def decode_sum(self, message: bytes, fp: FixedPoint, layout: SlotLayout, length: int) -> np.ndarray:
        """Unpack the decryptor's plaintext sum into the float sum of the survivors."""
        if self.public is None:
            raise StageError("decode_sum before the key was shared")
        payload = unframe(message, KIND_PLAINTEXT_SUM)
        (rid,) = _fields(_U64, payload, 0)
        (count,) = _fields(_U32, payload, 8)
        if rid != self.config.round_id or count != self._count:
            raise DecodeError(f"plaintext sum for round {rid} with {count} values does not match the round")
        plaintexts = _parse_block(payload[12:], self.public.plaintext_bytes, count, "plaintext sum")
        sums = unpack_sum(layout, plaintexts, length, len(self.survivors))
        return sums.astype(np.float64) * fp.step


class PaillierAggregator(Aggregator):
    """Packed Paillier secure aggregation (FedMF made practical with BatchCrypt-style packing).

    Args:
        key_bits: modulus size when the key pair is generated (default 2048; see
            :mod:`protocols.paillier.keys` Notes for when to pick 3072).
        keypair: a pre-generated :class:`~protocols.paillier.raw.PrivateKey` or phe
            private key (tests; reuse across aggregators). Otherwise the first key
            holder generates one on the first round and it is reused afterwards.
        workers: processes for computing encryption randomness (1 = none).
        randbelow: injected ``randbelow(k)`` for the Paillier randomness (tests);
            default :func:`secrets.randbelow`.
        rng: generator for stochastic rounding (default: seeded from the OS), drawn by the
            senders in client-id order, one double per value; the attribute of the same
            name may be replaced between rounds (the simulator seeds it per round).
        precompute: fill every key-holding client's randomness pool before its
            update is encrypted and report that time as ``offline_seconds``; with
            ``False`` the randomness is computed inside encryption (online).
        key_holder_randomness: clients (who hold the private key) draw ``r^n`` with
            the CRT fast path; ``False`` uses the public-key computation.
        malicious: ``False`` (default): the honest-but-curious server of FedMF, the
            cheap path. ``True``: the malicious-server model -- signed ciphertexts, a
            consistency round and verified, once-per-round decryption (module docstring).
        min_key_bits: the smallest modulus the clients accept from the key holder (default:
            ``key_bits``, or the given keypair's size when that is smaller).
        key_holders: the clients allowed to hold the key (default: any); the lowest-id
            advertiser among them that answers generates or reuses it.

    Notes:
        2048-bit keys give about 112-bit security (NIST SP 800-57 Part 1), acceptable
        through 2030; choose ``key_bits=3072`` (128-bit) for updates that must stay
        private beyond 2030.

        Threat model. By default the server is assumed honest-but-curious (FedMF's
        model): every client holds the private key, so the server must never forward one
        client's ciphertexts to another, and a decryptor decrypts whatever product it is
        handed as long as the *announced* survivor list reaches ``threshold``. A
        malicious server then reads any client's update: it hands the decryptor that
        client's ciphertexts alone, or has two decryptors decrypt sums over S and
        S minus v and subtracts (``attacks.malicious_paillier`` does both).

        ``malicious=True`` closes that. Each client signs (Ed25519, its enrolment
        identity) its round, id and ``SHA-256`` of its ciphertext block; each survivor
        signs ``(round, sorted S)`` at most once per round; a decryptor decrypts only S
        carrying consistency signatures from t' = ``n // 2 + 1`` members
        (:func:`consistency_threshold`; two sets can never both collect them), only the
        S it signed itself, only with a validly signed ciphertext for every member of S
        -- multiplying them itself -- and at most once per round; anything else raises
        :class:`~protocols.errors.IntegrityError`. Cost: the decryptor downloads |S|
        ciphertext vectors instead of one product (plus 64 bytes per member and 72 per
        consistency signature) and does the |S| - 1 multiplications the server did;
        every client uploads 153 bytes more (the 64-byte signature on its ciphertexts and
        an 89-byte consistency message) and downloads S (21 + 8 |S| bytes). Measured in
        process with 20 clients and L = 10,000 (one CPU core): the decryptor's download
        grows from 88 KB to 1.71 MB (512-bit key) and from 84 KB to 1.63 MB (2048-bit),
        its decryption from 44 to 65 ms and from 0.40 to 0.43 s; the other clients' work
        is unchanged. A round also needs t' signers, so it aborts when fewer than
        ``n // 2 + 1`` clients reach the consistency round even if ``threshold`` is lower.

        Out of scope, as in FedMF: a server that colludes with a client (every client
        holds the private key). Also assumed, as in Bonawitz et al. 2017: the round's
        ``n`` is fixed at setup for every client; a server that runs one round id with
        two overlapping client populations could give each its own majority.

        Parameters are each client's own, in both models: every client is built with the
        round's config, ``n`` and ``min_key_bits`` (and ``key_holders``) and refuses a
        message or call that lowers the threshold, changes the slot layout or clip range,
        delivers a smaller key or a key from a holder its configuration does not allow,
        or names another round (:class:`PaillierClient` Notes;
        ``attacks.malicious_paillier`` runs one lie per parameter). After any failure a
        party refuses every further call.
    """

    name: ClassVar[str] = "paillier"
    secure: ClassVar[bool] = True

    def __init__(
        self,
        *,
        key_bits: int = DEFAULT_KEY_BITS,
        keypair: object | None = None,
        workers: int = 1,
        randbelow: Callable[[int], int] | None = None,
        rng: np.random.Generator | None = None,
        precompute: bool = True,
        key_holder_randomness: bool = True,
        malicious: bool = False,
        min_key_bits: int | None = None,
        key_holders: Collection[int] | None = None,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if key_bits < keymod.MIN_KEY_BITS or key_bits % 2:
            raise ConfigError(f"key_bits must be an even number >= {keymod.MIN_KEY_BITS}, got {key_bits}")
        if min_key_bits is not None and min_key_bits < keymod.MIN_KEY_BITS:
            raise ConfigError(f"min_key_bits must be >= {keymod.MIN_KEY_BITS}, got {min_key_bits}")
        if key_holders is not None and not key_holders:
            raise ConfigError("key_holders must name at least one client (or be None: any client)")
        self.key_bits = key_bits
        self.min_key_bits = min_key_bits
        self.key_holders = None if key_holders is None else frozenset(key_holders)
        self._keypair = as_private_key(keypair) if keypair is not None else None
        self.workers = workers
        self._randbelow = randbelow
        self.rng = rng if rng is not None else np.random.default_rng()
        self.precompute = precompute
        self.key_holder_randomness = key_holder_randomness
        self.malicious = malicious
        self._identities: dict[int, Ed25519PrivateKey] = {}
        self.directory: dict[int, Ed25519PublicKey] = {}
        """Enrolled clients' identity keys (the PKI every party trusts)."""
        self.pools: dict[int, RandomnessPool] = {}
        """Each client's randomness pool, kept across rounds."""
        self.last_decryptor: int | None = None

    @property
    def public_key(self) -> PublicKey | None:
        """The round key's public half, once generated."""
        return None if self._keypair is None else self._keypair.public

    def enroll(self, client_id: int) -> None:
        """Give ``client_id`` an Ed25519 identity key and publish its public half."""
        if client_id not in self._identities:
            key = Ed25519PrivateKey.generate()
            self._identities[client_id] = key
            self.directory[client_id] = key.public_key()

    def _pool(self, cid: int, keypair: PrivateKey) -> RandomnessPool:
        pool = self.pools.get(cid)
        if pool is None or pool.public.n != keypair.public.n:
            pool = RandomnessPool(
                keypair.public,
                private=keypair if self.key_holder_randomness else None,
                randbelow=self._randbelow,
                workers=self.workers,
            )
            self.pools[cid] = pool
        return pool

    def prefill(self, counts: Mapping[int, int]) -> float:
        """Top up the pools of the given clients to at least ``counts[cid]`` values; return the seconds.

        Generates the key pair first if needed (the key holder's one-time work).
        """
        t0 = time.perf_counter()
        keypair = self._ensure_keypair()
        requests = []
        for cid, count in counts.items():
            self.enroll(cid)
            pool = self._pool(cid, keypair)
            requests.append((pool, max(0, count - len(pool))))
        fill_pools(requests, workers=self.workers)
        return time.perf_counter() - t0

    def _ensure_keypair(self) -> PrivateKey:
        if self._keypair is None:
            self._keypair = keymod.generate_keypair(self.key_bits)
        return self._keypair

    def aggregate(
        self,
        inputs: Mapping[int, np.ndarray],
        config: RoundConfig,
        dropout: DropoutPlan | None = None,
    ) -> AggregationResult:
        """Run one round of packed Paillier aggregation; see the module docstring."""
        length = check_inputs(inputs, config)
        plan = dropout or {}

        def present(cid: int, stage: Stage) -> bool:
            s = plan.get(cid)
            return s is None or s > stage

        offline = 0.0
        t0 = time.perf_counter()
        keypair = self._ensure_keypair()
        offline += time.perf_counter() - t0
        if self.min_key_bits is not None and keypair.public.bits < self.min_key_bits:
            raise ConfigError(f"the {keypair.public.bits}-bit key is below min_key_bits={self.min_key_bits}")
        fp, layout = round_layout(len(inputs), config, keypair.public)  # refuses before anything is sent
        for cid in inputs:
            self.enroll(cid)

        t_clients = 0.0
        t_server = 0.0
        up: dict[int, int] = dict.fromkeys(inputs, 0)
        down: dict[int, int] = dict.fromkeys(inputs, 0)

        def client_call(cid: int, fn: Callable[..., Any], *args: Any) -> Any:
            nonlocal t_clients
            t = time.perf_counter()
            out = fn(*args)
            t_clients += time.perf_counter() - t
            if isinstance(out, bytes):
                up[cid] += len(out)
            return out

        n = len(inputs)
        server = PaillierServer(self.directory, config, n, malicious=self.malicious)
        min_key_bits = (self.min_key_bits if self.min_key_bits is not None
                        else min(self.key_bits, keypair.public.bits))  # a given keypair is the caller's
        clients = {  # each client's own configuration: the round's, n, the key size, the key holders
            cid: PaillierClient(cid, self._identities[cid], self.directory, config.round_id,
                                malicious=self.malicious, n_clients=n, config=config,
                                min_key_bits=min_key_bits, key_holders=self.key_holders)
            for cid in sorted(inputs)
        }

        # ADVERTISE
        adverts = {
            cid: client_call(cid, c.advertise) for cid, c in clients.items() if present(cid, Stage.ADVERTISE)
        }
        abort_if_below_threshold(len(adverts), config, Stage.ADVERTISE)
        t = time.perf_counter()
        advert_list = server.collect_adverts(adverts)
        t_server += time.perf_counter() - t
        for cid in adverts:
            down[cid] += len(advert_list)
            client_call(cid, clients[cid].receive_adverts, advert_list)

        # SHARE_KEYS: the lowest-id advertiser (allowed to hold it) that answers holds the key
        holder = next((cid for cid in sorted(adverts) if present(cid, Stage.SHARE_KEYS)
                       and (self.key_holders is None or cid in self.key_holders)), None)
        if holder is None:
            abort_if_below_threshold(0, config, Stage.SHARE_KEYS)
            raise AggregationAborted(  # threshold >= 1, so unreachable; kept for type checkers
                f"round {config.round_id}: no key holder",
                survivors=0,
                threshold=config.threshold,
                round_id=config.round_id,
            )
        bundle = client_call(holder, clients[holder].share_key, keypair)
        t = time.perf_counter()
        deliveries = server.relay_key(holder, bundle)
        t_server += time.perf_counter() - t
        acks = {}
        for cid, message in sorted(deliveries.items()):
            down[cid] += len(message)
            if present(cid, Stage.SHARE_KEYS):
                acks[cid] = client_call(cid, clients[cid].receive_key, message)
        t = time.perf_counter()
        server.collect_acks(acks)
        t_server += time.perf_counter() - t
        abort_if_below_threshold(len(server.key_holders), config, Stage.SHARE_KEYS)

        # offline: key holders fill their randomness pools (e.g. while they train)
        needed = layout.ciphertexts_for(length)
        senders = [cid for cid in sorted(server.key_holders) if present(cid, Stage.MASKED_INPUT)]
        if self.precompute:
            offline += self.prefill(dict.fromkeys(server.key_holders, needed))

        # MASKED_INPUT
        ciphertexts = {}
        for cid in senders:
            client_keypair = clients[cid].keypair
            if client_keypair is None:
                raise StageError(f"client {cid} has no key")
            pool = self._pool(cid, client_keypair)
            ciphertexts[cid] = client_call(
                cid, clients[cid].masked_input, inputs[cid], fp, layout, self.rng, pool
            )
        t = time.perf_counter()
        server.collect_ciphertexts(ciphertexts)  # aborts below threshold
        t_server += time.perf_counter() - t

        # CONSISTENCY (malicious model): the survivors sign S; fewer than t' signers abort
        if self.malicious:
            t = time.perf_counter()
            request = server.consistency_request()
            t_server += time.perf_counter() - t
            signatures = {}
            for cid in server.survivors:
                down[cid] += len(request)
                if present(cid, Stage.CONSISTENCY):
                    signatures[cid] = client_call(cid, clients[cid].consistency, request, config.threshold)
            t = time.perf_counter()
            server.collect_signatures(signatures)
            t_server += time.perf_counter() - t
        t = time.perf_counter()
        aggregate = server.aggregate_message()
        t_server += time.perf_counter() - t

        # UNMASK: the first key-holding client still present (and, malicious model, that signed S) decrypts
        decryptors = [cid for cid in sorted(server.key_holders) if present(cid, Stage.UNMASK)
                      and (not self.malicious or cid in server.signatures)]
        if not decryptors:
            raise AggregationAborted(
                f"round {config.round_id}: no key-holding client left to decrypt the sum; round aborted, "
                "nothing revealed",
                survivors=0,
                threshold=config.threshold,
                round_id=config.round_id,
            )
        decryptor = decryptors[0]
        down[decryptor] += len(aggregate)
        plain = client_call(decryptor, clients[decryptor].decrypt, aggregate, config.threshold)
        self.last_decryptor = decryptor
        t = time.perf_counter()
        total = server.decode_sum(plain, fp, layout, length)
        t_server += time.perf_counter() - t
        return AggregationResult(
            total=total,
            survivors=frozenset(server.survivors),
            bytes_up=up,
            bytes_down=down,
            seconds_clients=t_clients,
            seconds_server=t_server,
            offline_seconds=offline,
        )
