"""Wire messages of a packed-Paillier round: kinds, fixed-width encodings, the parsers both parties use.

Every message is a :mod:`protocols.wire` frame (version, kind, length); integers are big
endian, ciphertexts fixed width (``PublicKey.ciphertext_bytes``). Parsers check lengths and
raise :class:`~protocols.errors.DecodeError`; what a message *means* (rounds, thresholds,
signatures) is checked by the receiving party (:mod:`protocols.paillier.client`,
:mod:`protocols.paillier.server`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocols.errors import ConfigError, DecodeError
from protocols.paillier.raw import MPZ, PublicKey
from protocols.wire import Kind, frame, kind_of, unframe

__all__ = [
    "KIND_ADVERT",
    "KIND_ADVERT_LIST",
    "KIND_AGGREGATE",
    "KIND_CIPHERTEXTS",
    "KIND_CONSISTENCY_REQUEST",
    "KIND_CONSISTENCY_SIGNATURE",
    "KIND_KEY_ACK",
    "KIND_KEY_BUNDLE",
    "KIND_KEY_DELIVERY",
    "KIND_PLAINTEXT_SUM",
    "KIND_SIGNED_CIPHERTEXTS",
    "KIND_VERIFIED_AGGREGATE",
    "Ciphertexts",
    "decode_ciphertexts",
    "encode_aggregate",
    "encode_verified_aggregate",
]

# the kind bytes, from the one registry (protocols.wire.Kind); the short names are this package's
KIND_ADVERT = Kind.PAILLIER_ADVERT
KIND_ADVERT_LIST = Kind.PAILLIER_ADVERT_LIST
KIND_KEY_BUNDLE = Kind.PAILLIER_KEY_BUNDLE
KIND_KEY_DELIVERY = Kind.PAILLIER_KEY_DELIVERY
KIND_KEY_ACK = Kind.PAILLIER_KEY_ACK
KIND_CIPHERTEXTS = Kind.PAILLIER_CIPHERTEXTS
KIND_AGGREGATE = Kind.PAILLIER_AGGREGATE
KIND_PLAINTEXT_SUM = Kind.PAILLIER_PLAINTEXT_SUM
KIND_SIGNED_CIPHERTEXTS = Kind.PAILLIER_SIGNED_CIPHERTEXTS
KIND_CONSISTENCY_REQUEST = Kind.PAILLIER_CONSISTENCY_REQUEST
KIND_CONSISTENCY_SIGNATURE = Kind.PAILLIER_CONSISTENCY_SIGNATURE
KIND_VERIFIED_AGGREGATE = Kind.PAILLIER_VERIFIED_AGGREGATE

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
