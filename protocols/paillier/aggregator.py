"""Packed Paillier aggregation: the server adds ciphertexts, a key-holding client decrypts the sum.

FedMF (Chai et al. 2020) encrypts every value of a client's update under a
Paillier key the server does not hold; the server multiplies ciphertexts
(adding plaintexts) and key-holding clients decrypt only the sum. One value
per ciphertext makes that slow and bulky, so this implementation packs many
fixed-point values per plaintext (BatchCrypt, :mod:`protocols.paillier.packing`),
computes the encryption randomness ahead of time
(:mod:`protocols.paillier.pool`) and decrypts with CRT (:mod:`protocols.paillier.raw`).

Round (sans-IO parties :class:`PaillierClient` and :class:`PaillierServer`,
driven in process by :class:`PaillierAggregator`):

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

A client's input is in the sum exactly when its ciphertexts reached the
server; below ``threshold`` ciphertexts the round aborts before anything is
decrypted. If the chosen decryptor is gone, the next key-holding survivor
decrypts. Key distribution and the threat model: :mod:`protocols.paillier.keys`.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

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
from protocols.errors import AggregationAborted, ConfigError, DecodeError, IntegrityError, StageError
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
from protocols.wire import frame, unframe

__all__ = ["PaillierAggregator", "PaillierClient", "PaillierServer", "as_private_key", "round_layout"]

KIND_ADVERT = 1
KIND_ADVERT_LIST = 2
KIND_KEY_BUNDLE = 3
KIND_KEY_DELIVERY = 4
KIND_KEY_ACK = 5
KIND_CIPHERTEXTS = 6
KIND_AGGREGATE = 7
KIND_PLAINTEXT_SUM = 8

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
        ConfigError: the layout cannot hold the sum (message says what to change).
    """
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


class PaillierClient:
    """One client's side of a round (sans-IO: bytes in, bytes out, one method per stage).

    Args:
        client_id, round_id: who and when (bound into every signature).
        identity: this client's long-term Ed25519 key.
        directory: the PKI, client id -> Ed25519 public key.
        randbytes: source of the round's ephemeral X25519 key (32 bytes); default: a fresh
            key from the OS. Given the same source and the same messages, a new client
            reaches the same state, so a party that keeps no objects between messages (a
            Flower node) can rebuild it by replaying the messages.
    """

    def __init__(
        self,
        client_id: int,
        identity: Ed25519PrivateKey,
        directory: Mapping[int, Ed25519PublicKey],
        round_id: int,
        *,
        randbytes: Callable[[int], bytes] | None = None,
    ) -> None:
        self.client_id = client_id
        self.round_id = round_id
        self._identity = identity
        self._directory = directory
        self._randbytes = randbytes
        self._ephemeral: X25519PrivateKey | None = None
        self._adverts: dict[int, Advert] = {}
        self.keypair: PrivateKey | None = None
        self._stage = -1

    def _advance(self, expected: int, name: str) -> None:
        if self._stage != expected - 1:
            raise StageError(f"client {self.client_id}, round {self.round_id}: {name} out of order")
        self._stage = expected

    def advertise(self) -> bytes:
        """ADVERTISE: a signed fresh X25519 key."""
        self._advance(0, "advertise")
        ephemeral = (X25519PrivateKey.from_private_bytes(self._randbytes(32))
                     if self._randbytes is not None else None)
        self._ephemeral, payload = keymod.make_advert(
            self._identity, self.client_id, self.round_id, ephemeral
        )
        return frame(KIND_ADVERT, payload)

    def receive_adverts(self, message: bytes) -> None:
        """The server's relay of all adverts; each is checked against the directory."""
        self._advance(1, "receive_adverts")
        payload = unframe(message, KIND_ADVERT_LIST)
        (count,), off = _fields(_U32, payload, 0), _U32.size
        size = keymod._ADVERT.size
        if len(payload) != off + count * size:
            raise DecodeError(f"advert list of {len(payload)} bytes does not hold {count} adverts")
        for i in range(count):
            advert = keymod.parse_advert(
                payload[off + i * size : off + (i + 1) * size], dict(self._directory), self.round_id
            )
            self._adverts[advert.client_id] = advert

    def share_key(self, keypair: PrivateKey) -> bytes:
        """SHARE_KEYS as key holder: signed ``n`` and the sealed private key for every other advertiser."""
        self._advance(2, "share_key")
        if self._ephemeral is None:
            raise StageError(f"client {self.client_id}: share_key before advertise")
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

    def receive_key(self, message: bytes) -> bytes:
        """SHARE_KEYS as recipient: open the private key, check it, return a signed acknowledgement."""
        self._advance(2, "receive_key")
        if self._ephemeral is None:
            raise StageError(f"client {self.client_id}: receive_key before advertise")
        payload = unframe(message, KIND_KEY_DELIVERY)
        holder_id, rid = _fields(_IDS, payload, 0)
        if rid != self.round_id:
            raise DecodeError(f"key delivery for round {rid}, this is round {self.round_id}")
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
        public = _public_key(n_raw)
        keymod.verify_public_key(identity, sig, public, self.round_id, holder_id)
        self.keypair = keymod.open_private_key(
            sealed, public, self._ephemeral, holder, self.round_id, self.client_id
        )
        ack = keymod.sign_ack(self._identity, public, self.round_id, self.client_id)
        return frame(KIND_KEY_ACK, _IDS.pack(self.client_id, self.round_id) + ack)

    def masked_input(
        self,
        vector: np.ndarray,
        fp: FixedPoint,
        layout: SlotLayout,
        rng: np.random.Generator,
        pool: RandomnessPool,
    ) -> bytes:
        """MASKED_INPUT: quantize, pack and encrypt; tops the pool up online if it runs short."""
        self._advance(3, "masked_input")
        if self.keypair is None:
            raise StageError(f"client {self.client_id}: masked_input without a key")
        public = self.keypair.public
        plaintexts = pack_offset(layout, fp.quantize(vector, rng))
        if len(pool) < len(plaintexts):
            pool.fill(len(plaintexts) - len(pool))
        rns = pool.take(len(plaintexts))
        cts = [encrypt_with_obfuscator(public, m, rn) for m, rn in zip(plaintexts, rns, strict=True)]
        head = _IDS.pack(self.client_id, self.round_id) + _U32.pack(len(cts))
        return frame(KIND_CIPHERTEXTS, head + _ciphertext_block(cts, public.ciphertext_bytes))

    def decrypt(self, message: bytes, threshold: int) -> bytes:
        """UNMASK: decrypt the product of ciphertexts, if it covers at least ``threshold`` advertisers."""
        if self._stage < 2 or self.keypair is None:
            raise StageError(f"client {self.client_id}: decrypt without a key")
        self._stage = 4
        public = self.keypair.public
        payload = unframe(message, KIND_AGGREGATE)
        (rid,) = _fields(_U64, payload, 0)
        if rid != self.round_id:
            raise DecodeError(f"aggregate for round {rid}, this is round {self.round_id}")
        (nsurv,) = _fields(_U32, payload, 8)
        ids_raw, off = _take(payload, 12, 8 * nsurv, "aggregate")
        survivors = set(struct.unpack(f">{nsurv}Q", ids_raw))
        if len(survivors) != nsurv or len(survivors) < threshold or not survivors <= set(self._adverts):
            raise IntegrityError(
                f"round {self.round_id}: client {self.client_id} refuses to decrypt a sum announced over "
                f"{nsurv} clients (threshold {threshold})"
            )
        (count,) = _fields(_U32, payload, off)
        cts = _parse_block(payload[off + 4 :], public.ciphertext_bytes, count, "aggregate")
        sums = [raw_decrypt(self.keypair, c) for c in cts]
        body = (
            struct.pack(">Q", self.round_id)
            + _U32.pack(count)
            + _ciphertext_block(sums, public.plaintext_bytes)
        )
        return frame(KIND_PLAINTEXT_SUM, body)


class PaillierServer:
    """The server's side: relays, multiplies ciphertexts, never holds the private key."""

    def __init__(
        self, directory: Mapping[int, Ed25519PublicKey], config: RoundConfig, n_clients: int
    ) -> None:
        self.directory = directory
        self.config = config
        self.n_clients = n_clients
        self.advertisers: list[int] = []
        self.public: PublicKey | None = None
        self.key_holders: set[int] = set()
        self.survivors: list[int] = []
        self._product: list[MPZ] = []
        self.layout: SlotLayout | None = None

    def _identity(self, cid: int) -> Ed25519PublicKey:
        key = self.directory.get(cid)
        if key is None:
            raise IntegrityError(f"round {self.config.round_id}: message from unenrolled client {cid}")
        return key

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

    def collect_ciphertexts(self, messages: Mapping[int, bytes]) -> None:
        """Check every client's ciphertexts and multiply them slot-wise modulo ``n^2``.

        Raises:
            AggregationAborted: fewer than ``threshold`` clients sent ciphertexts.
        """
        if self.public is None:
            raise StageError("collect_ciphertexts before the key was shared")
        abort_if_below_threshold(len(messages), self.config, Stage.MASKED_INPUT)
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
        self.survivors = sorted(messages)

    def aggregate_message(self) -> bytes:
        """What the decryptor receives: the survivor ids and the product ciphertexts."""
        if self.public is None:
            raise StageError("aggregate_message before collect_ciphertexts")
        body = (
            struct.pack(">Q", self.config.round_id)
            + _U32.pack(len(self.survivors))
            + struct.pack(f">{len(self.survivors)}Q", *self.survivors)
            + _U32.pack(len(self._product))
            + _ciphertext_block(self._product, self.public.ciphertext_bytes)
        )
        return frame(KIND_AGGREGATE, body)

    def decode_sum(self, message: bytes, fp: FixedPoint, layout: SlotLayout, length: int) -> np.ndarray:
        """Unpack the decryptor's plaintext sum into the float sum of the survivors."""
        if self.public is None:
            raise StageError("decode_sum before the key was shared")
        payload = unframe(message, KIND_PLAINTEXT_SUM)
        (rid,) = _fields(_U64, payload, 0)
        (count,) = _fields(_U32, payload, 8)
        if rid != self.config.round_id or count != len(self._product):
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

    Notes:
        2048-bit keys give about 112-bit security (NIST SP 800-57 Part 1), acceptable
        through 2030; choose ``key_bits=3072`` (128-bit) for updates that must stay
        private beyond 2030. The server is assumed honest-but-curious (FedMF's model):
        every client holds the private key, so the server must never forward one
        client's ciphertexts to another (see :mod:`protocols.paillier.keys`).
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
    ) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if key_bits < keymod.MIN_KEY_BITS or key_bits % 2:
            raise ConfigError(f"key_bits must be an even number >= {keymod.MIN_KEY_BITS}, got {key_bits}")
        self.key_bits = key_bits
        self._keypair = as_private_key(keypair) if keypair is not None else None
        self.workers = workers
        self._randbelow = randbelow
        self.rng = rng if rng is not None else np.random.default_rng()
        self.precompute = precompute
        self.key_holder_randomness = key_holder_randomness
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

        server = PaillierServer(self.directory, config, len(inputs))
        clients = {
            cid: PaillierClient(cid, self._identities[cid], self.directory, config.round_id)
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

        # SHARE_KEYS: the lowest-id advertiser that answers holds the key
        holder = next((cid for cid in sorted(adverts) if present(cid, Stage.SHARE_KEYS)), None)
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
        aggregate = server.aggregate_message()
        t_server += time.perf_counter() - t

        # UNMASK: the first key-holding client still present decrypts
        decryptors = [cid for cid in sorted(server.key_holders) if present(cid, Stage.UNMASK)]
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
