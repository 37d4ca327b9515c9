"""The server's side of a packed-Paillier round (sans-IO): relays, multiplies, never holds the key."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocols.base import RoundConfig, Stage, abort_if_below_threshold
from protocols.encoding import FixedPoint
from protocols.errors import AggregationAborted, DecodeError, IntegrityError, StageError
from protocols.paillier import keys as keymod
from protocols.paillier.messages import (
    _IDS,
    _SIG,
    _U16,
    _U32,
    _U64,
    KIND_ADVERT,
    KIND_ADVERT_LIST,
    KIND_CIPHERTEXTS,
    KIND_CONSISTENCY_REQUEST,
    KIND_CONSISTENCY_SIGNATURE,
    KIND_KEY_ACK,
    KIND_KEY_BUNDLE,
    KIND_KEY_DELIVERY,
    KIND_PLAINTEXT_SUM,
    KIND_SIGNED_CIPHERTEXTS,
    Ciphertexts,
    _fields,
    _ids,
    _parse_block,
    _public_key,
    _take,
    decode_ciphertexts,
    encode_aggregate,
    encode_verified_aggregate,
)
from protocols.paillier.packing import SlotLayout, unpack_sum
from protocols.paillier.party import Party, consistency_threshold, guarded
from protocols.paillier.raw import MPZ, PublicKey, as_mpz
from protocols.wire import frame, kind_of, unframe

__all__ = ["PaillierServer"]


class PaillierServer(Party):
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

    @guarded
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

    @guarded
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

    @guarded
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

    @guarded
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

    @guarded
    def consistency_request(self) -> bytes:
        """CONSISTENCY (malicious model): the survivor set S every survivor is asked to sign."""
        if not self.malicious:
            raise StageError("consistency_request: the honest-but-curious model has no consistency round")
        if not self.survivors:
            raise StageError("consistency_request before collect_ciphertexts")
        return frame(KIND_CONSISTENCY_REQUEST, _U64.pack(self.config.round_id) + _ids(tuple(self.survivors)))

    @guarded
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

    @guarded
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

    @guarded
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
