"""The client's side of a packed-Paillier round (sans-IO), and the parameters it derives itself.

See :mod:`protocols.paillier.aggregator` for the round; :class:`PaillierClient` Notes for
which parameters are the client's own and how a lie about one is refused.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable, Collection, Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocols.base import RoundConfig
from protocols.encoding import FixedPoint
from protocols.errors import ConfigError, DecodeError, IntegrityError, StageError
from protocols.paillier import keys as keymod
from protocols.paillier.keys import Advert
from protocols.paillier.messages import (
    _IDS,
    _SIG,
    _U16,
    _U32,
    _U64,
    KIND_ADVERT,
    KIND_ADVERT_LIST,
    KIND_AGGREGATE,
    KIND_CONSISTENCY_REQUEST,
    KIND_CONSISTENCY_SIGNATURE,
    KIND_KEY_ACK,
    KIND_KEY_BUNDLE,
    KIND_KEY_DELIVERY,
    KIND_PLAINTEXT_SUM,
    KIND_VERIFIED_AGGREGATE,
    Ciphertexts,
    _ciphertext_block,
    _fields,
    _parse_block,
    _parse_ids,
    _public_key,
    _take,
)
from protocols.paillier.packing import SlotLayout, pack_offset
from protocols.paillier.party import Party, consistency_threshold, guarded, round_layout
from protocols.paillier.pool import RandomnessPool
from protocols.paillier.raw import MPZ, PrivateKey, PublicKey, as_mpz, encrypt_with_obfuscator, raw_decrypt
from protocols.wire import frame, kind_of, unframe

__all__ = ["PaillierClient", "consistency_threshold", "round_layout"]  # the last two from party.py


class PaillierClient(Party):
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
        terminal: every further call is refused (:class:`~protocols.paillier.party.Party`).
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

    @guarded
    def advertise(self) -> bytes:
        """ADVERTISE: a signed fresh X25519 key."""
        self._advance(0, "advertise")
        ephemeral = (X25519PrivateKey.from_private_bytes(self._randbytes(32))
                     if self._randbytes is not None else None)
        self._ephemeral, payload = keymod.make_advert(
            self._identity, self.client_id, self.round_id, ephemeral
        )
        return frame(KIND_ADVERT, payload)

    @guarded
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

    @guarded
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

    @guarded
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

    @guarded
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

    @guarded
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

    @guarded
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
