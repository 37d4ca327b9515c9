"""Packed Paillier aggregation: the server adds ciphertexts, a key-holding client decrypts the sum.

FedMF (Chai et al. 2020) encrypts every value of a client's update under a
Paillier key the server does not hold; the server multiplies ciphertexts
(adding plaintexts) and key-holding clients decrypt only the sum. One value
per ciphertext makes that slow and bulky, so this implementation packs many
fixed-point values per plaintext (BatchCrypt, :mod:`protocols.paillier.packing`),
computes the encryption randomness ahead of time
(:mod:`protocols.paillier.pool`) and decrypts with CRT (:mod:`protocols.paillier.raw`).

Round (sans-IO parties :class:`~protocols.paillier.client.PaillierClient` and
:class:`~protocols.paillier.server.PaillierServer`, their messages in
:mod:`protocols.paillier.messages`, driven in process by :class:`PaillierAggregator`;
this module re-exports them). Honest-but-curious server
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

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, ClassVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.base import (
    AggregationResult,
    Aggregator,
    RoundConfig,
    Stage,
    abort_if_below_threshold,
)
from protocols.errors import AggregationAborted, ConfigError, StageError
from protocols.paillier import keys as keymod
from protocols.paillier.client import PaillierClient, consistency_threshold, round_layout
from protocols.paillier.keys import DEFAULT_KEY_BITS
from protocols.paillier.messages import (
    Ciphertexts,
    decode_ciphertexts,
    encode_aggregate,
    encode_verified_aggregate,
)
from protocols.paillier.pool import RandomnessPool, fill_pools
from protocols.paillier.raw import PrivateKey, PublicKey
from protocols.paillier.server import PaillierServer
from protocols.wire import kind_of

__all__ = [  # parties and parameters are re-exported (this module is where they began); the message
    "Ciphertexts",  # kinds are in protocols.paillier.messages
    "PaillierAggregator",
    "PaillierClient",
    "PaillierServer",
    "as_private_key",
    "consistency_threshold",
    "decode_ciphertexts",
    "encode_aggregate",
    "encode_verified_aggregate",
    "kind_of",
    "round_layout",
]


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
        S minus v and subtracts (``attacks.malicious.paillier`` does both).

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
        ``attacks.malicious.paillier`` runs one lie per parameter). After any failure a
        party refuses every further call.
    """

    name: ClassVar[str] = "paillier"
    secure: ClassVar[bool] = True
    homomorphic: ClassVar[bool] = True
    threat_models: ClassVar[frozenset[str]] = frozenset({"semi-honest", "malicious"})
    """No ``supports_wrap``: a slot that overflows would carry into its neighbour (:mod:`.packing`)."""
    parallel_clients: ClassVar[bool] = True

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

    def _aggregate(
        self, inputs: Mapping[int, np.ndarray], config: RoundConfig, plan: dict[int, Stage], length: int
    ) -> AggregationResult:
        """Run one round of packed Paillier aggregation; see the module docstring."""

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
