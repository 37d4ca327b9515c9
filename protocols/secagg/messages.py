"""Binary encodings of the SecAgg / SecAgg+ messages.

Every message is a :func:`protocols.wire.frame` (magic, version, kind, length)
around a payload of fixed-width big-endian fields; lists carry a count that
is checked against the bytes that remain *before* anything is allocated, and
trailing bytes are refused. Client-id lists (the setup's clients, the survivors,
the dropped, the peers of an unmask response) are :mod:`protocols.idlists`
lists: strictly increasing ids as varint gaps, about a byte an id, in one
canonical encoding (which the consistency signatures bind). Any violation
raises :class:`~protocols.errors.DecodeError`.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from protocols.errors import DecodeError
from protocols.idlists import MAX_ID, encode_increasing, read_increasing
from protocols.wire import (
    Kind,
    frame,
    frame_parts,
    pack_uints,
    packed_size,
    uint_words,
    unframe,
    unframe_view,
)

__all__ = [
    "CIPHERTEXT_BYTES",
    "KEY_BYTES",
    "MAX_ID",
    "SHARE_ELEMENTS",
    "SIGNATURE_BYTES",
    "AdvertiseBroadcast",
    "Advertisement",
    "ConsistencyRequest",
    "ConsistencySignature",
    "MaskedInput",
    "Setup",
    "SharesIn",
    "SharesOut",
    "UnmaskRequest",
    "UnmaskResponse",
    "encode_ids",
]

KEY_BYTES = 32
"""X25519 and Ed25519 public keys."""
SIGNATURE_BYTES = 64
"""Ed25519 signatures."""
SHARE_ELEMENTS = 5
"""Field elements in the share of one 32-byte secret (7 bytes per element)."""
SHARE_PLAINTEXT_BYTES = 16 + 2 * SHARE_ELEMENTS * 8
"""sender, recipient, key-share and self-mask-share elements."""
CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + 16
"""AES-GCM adds a 16-byte tag."""

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_MASKED_HEAD = struct.Struct(">QB")


class _Reader:
    """Sequential, bounds-checked reads; every failure is a DecodeError naming the field."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def _take(self, n: int, name: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DecodeError(f"{self.what}: truncated at field {name!r}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, name: str) -> int:
        return int(_U8.unpack(self._take(1, name))[0])

    def u32(self, name: str) -> int:
        return int(_U32.unpack(self._take(4, name))[0])

    def u64(self, name: str) -> int:
        return int(_U64.unpack(self._take(8, name))[0])

    def f64(self, name: str) -> float:
        return float(_F64.unpack(self._take(8, name))[0])

    def raw(self, n: int, name: str) -> bytes:
        return self._take(n, name)

    def count(self, item_bytes: int, name: str) -> int:
        """A u32 count of items of ``item_bytes`` each, checked against what remains."""
        n = self.u32(name)
        if n * item_bytes > len(self.data) - self.pos:
            raise DecodeError(f"{self.what}: {name} announces {n} items, too few bytes remain")
        return n

    def ids(self, name: str) -> tuple[int, ...]:
        """A client-id list (:func:`encode_ids`)."""
        try:
            ids, self.pos = read_increasing(self.data, self.pos, MAX_ID)
        except DecodeError as exc:
            raise DecodeError(f"{self.what}: {name}: {exc}") from None
        return tuple(ids.tolist())

    def records(self, n: int, item_bytes: int) -> tuple[np.ndarray, list[bytes]]:
        """``n`` records of a u64 id and ``item_bytes`` raw bytes: the ids (uint64) and the items.

        The caller has checked ``n`` with :meth:`count` (at least ``n`` whole records remain).
        """
        size = 8 + item_bytes
        start, data = self.pos, self.data
        ids = np.ndarray((n,), dtype=">u8", buffer=data, offset=start, strides=(size,)).astype(np.uint64)
        items = [data[p + 8 : p + size] for p in range(start, start + n * size, size)]
        self.pos = start + n * size
        return ids, items

    def done(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{self.what}: {len(self.data) - self.pos} trailing bytes")


def _increasing(ids: list[int] | tuple[int, ...]) -> bool:
    return all(ids[i] < ids[i + 1] for i in range(len(ids) - 1))


def encode_ids(ids: tuple[int, ...] | list[int]) -> bytes:
    """Strictly increasing client ids in ``[0, 2^63 - 1]`` as a :mod:`protocols.idlists` list.

    The one canonical encoding, which the consistency signatures bind (the decoder accepts no other).
    """
    return encode_increasing(ids, MAX_ID)


def _check_id(cid: int, name: str) -> None:
    if not 0 <= cid <= MAX_ID:
        raise ValueError(f"{name} must be in [0, 2^63 - 1], got {cid}")


@dataclass(frozen=True)
class Setup:
    """Server -> each client: the round's parameters and the graph seed."""

    round_id: int
    client_id: int
    length: int
    ring_bits: int
    value_bits: int
    clip_range: float
    threshold: int
    share_threshold: int
    degree: int
    malicious: bool
    graph_seed: bytes
    client_ids: tuple[int, ...]
    wrap: bool = False
    """Modular clipping (``RoundConfig.wrap``); one flags byte carries it with ``malicious``."""

    def encode(self) -> bytes:
        """Framed bytes."""
        _check_id(self.client_id, "client_id")
        body = (
            _U64.pack(self.round_id) + _U64.pack(self.client_id) + _U32.pack(self.length)
            + _U8.pack(self.ring_bits) + _U8.pack(self.value_bits) + _F64.pack(self.clip_range)
            + _U32.pack(self.threshold) + _U32.pack(self.share_threshold) + _U32.pack(self.degree)
            + _U8.pack(int(self.malicious) | int(self.wrap) << 1)  # flags
            + self.graph_seed + encode_ids(self.client_ids)
        )
        return frame(Kind.SECAGG_SETUP, body)

    @classmethod
    def decode(cls, message: bytes) -> Setup:
        """Parse and range-check; raises DecodeError."""
        r = _Reader(unframe(message, Kind.SECAGG_SETUP), "setup")
        round_id, client_id, length = r.u64("round_id"), r.u64("client_id"), r.u32("length")
        ring_bits, value_bits, clip_range = r.u8("ring_bits"), r.u8("value_bits"), r.f64("clip_range")
        threshold, share_threshold, degree = r.u32("threshold"), r.u32("share_threshold"), r.u32("degree")
        flags = r.u8("flags")
        if flags > 3:
            raise DecodeError(f"setup: unknown flags {flags:#x}")
        out = cls(
            round_id=round_id, client_id=client_id, length=length, ring_bits=ring_bits, value_bits=value_bits,
            clip_range=clip_range, threshold=threshold, share_threshold=share_threshold, degree=degree,
            malicious=bool(flags & 1), graph_seed=r.raw(32, "graph_seed"), client_ids=r.ids("client_ids"),
            wrap=bool(flags & 2),
        )
        r.done()
        n = len(out.client_ids)
        if not 8 <= out.ring_bits <= 64 or not 2 <= out.value_bits <= min(out.ring_bits, 52):
            raise DecodeError(f"setup: bad ring_bits {out.ring_bits} / value_bits {out.value_bits}")
        if not (math.isfinite(out.clip_range) and out.clip_range > 0):
            raise DecodeError("setup: clip_range must be positive and finite")
        if out.client_id not in out.client_ids or out.round_id > MAX_ID:
            raise DecodeError("setup: the recipient is not among the round's clients")
        if not (1 <= out.threshold <= n and 1 <= out.degree <= max(n - 1, 1)):
            raise DecodeError("setup: threshold or degree out of range")
        if not 1 <= out.share_threshold <= out.degree + 1:
            raise DecodeError("setup: share threshold out of range")
        return out


@dataclass(frozen=True)
class Advertisement:
    """Client -> server: its two X25519 public keys, signed in the malicious model."""

    client_id: int
    c_pk: bytes
    s_pk: bytes
    signature: bytes = b""

    @functools.cached_property
    def _body(self) -> bytes:
        """The encoded fields (checked once: a server forwards each advertisement to every neighbour)."""
        _check_id(self.client_id, "client_id")
        if len(self.c_pk) != KEY_BYTES or len(self.s_pk) != KEY_BYTES:
            raise ValueError("public keys must be 32 bytes")
        if len(self.signature) not in (0, SIGNATURE_BYTES):
            raise ValueError("signature must be empty or 64 bytes")
        return (
            _U64.pack(self.client_id) + self.c_pk + self.s_pk + _U8.pack(len(self.signature))
            + self.signature
        )

    def encode(self) -> bytes:
        """Framed bytes."""
        return frame(Kind.SECAGG_ADVERTISE, self._body)

    @classmethod
    def _read(cls, r: _Reader) -> Advertisement:
        cid = r.u64("client_id")
        c_pk, s_pk = r.raw(KEY_BYTES, "c_pk"), r.raw(KEY_BYTES, "s_pk")
        n = r.u8("signature length")
        if n not in (0, SIGNATURE_BYTES):
            raise DecodeError(f"{r.what}: signature length {n}")
        return cls(cid, c_pk, s_pk, r.raw(n, "signature"))

    @classmethod
    def decode(cls, message: bytes) -> Advertisement:
        """Parse; raises DecodeError."""
        r = _Reader(unframe(message, Kind.SECAGG_ADVERTISE), "advertisement")
        out = cls._read(r)
        r.done()
        return out


@dataclass(frozen=True)
class AdvertiseBroadcast:
    """Server -> client: the advertisements of its neighbours that advertised."""

    advertisements: tuple[Advertisement, ...]

    def encode(self) -> bytes:
        """Framed bytes."""
        ids = [a.client_id for a in self.advertisements]
        if not _increasing(ids):
            raise ValueError("advertisements must be sorted by client id, without repeats")
        body = _U32.pack(len(self.advertisements)) + b"".join(a._body for a in self.advertisements)
        return frame(Kind.SECAGG_BROADCAST, body)

    @classmethod
    def decode(cls, message: bytes) -> AdvertiseBroadcast:
        """Parse; raises DecodeError."""
        r = _Reader(unframe(message, Kind.SECAGG_BROADCAST), "advertise broadcast")
        n = r.count(8 + 2 * KEY_BYTES + 1, "advertisements")
        ads = tuple(_read_advertisements(r, n))
        r.done()
        ids = [a.client_id for a in ads]
        if not _increasing(ids):
            raise DecodeError("advertise broadcast: ids not strictly increasing")
        return cls(ads)


_AD_HEAD = 8 + 2 * KEY_BYTES + 1
"""client id, the two keys and the signature length."""


def _read_advertisements(r: _Reader, n: int) -> list[Advertisement]:
    """``n`` advertisements from ``r`` as :meth:`Advertisement._read` reads them, without a call per field."""
    data, pos, end, out = r.data, r.pos, len(r.data), []
    for _ in range(n):
        sig_len = data[pos + _AD_HEAD - 1] if pos + _AD_HEAD <= end else -1
        if sig_len not in (0, SIGNATURE_BYTES) or pos + _AD_HEAD + sig_len > end:
            r.pos = pos  # the field-by-field reader names what is wrong
            Advertisement._read(r)
            raise DecodeError(f"{r.what}: malformed advertisement")  # not reached
        (cid,) = _U64.unpack_from(data, pos)
        stop = pos + _AD_HEAD + sig_len
        c_pk, s_pk = pos + 8, pos + 8 + KEY_BYTES
        signature = data[pos + _AD_HEAD : stop]
        out.append(Advertisement(cid, data[c_pk:s_pk], data[s_pk : s_pk + KEY_BYTES], signature))
        pos = stop
    r.pos = pos
    return out


def _encode_ct_list(kind: int, head: bytes, items: tuple[tuple[int, bytes], ...]) -> bytes:
    ids = [i for i, _ in items]
    if not _increasing(ids):
        raise ValueError("entries must be sorted by client id, without repeats")
    if any(len(ct) != CIPHERTEXT_BYTES for _, ct in items):
        raise ValueError(f"ciphertexts must be {CIPHERTEXT_BYTES} bytes")
    body = head + _U32.pack(len(items)) + b"".join(_U64.pack(i) + ct for i, ct in items)
    return frame(kind, body)


def _decode_ct_list(r: _Reader) -> tuple[tuple[int, bytes], ...]:
    n = r.count(8 + CIPHERTEXT_BYTES, "entries")
    ids, items = r.records(n, CIPHERTEXT_BYTES)
    r.done()
    if n > 1 and not (ids[1:] > ids[:-1]).all():
        raise DecodeError(f"{r.what}: peer ids not strictly increasing")
    return tuple(zip(ids.tolist(), items, strict=True))


@dataclass(frozen=True)
class SharesOut:
    """Client -> server: one encrypted share bundle per neighbour (recipient id, ciphertext)."""

    client_id: int
    shares: tuple[tuple[int, bytes], ...]

    def encode(self) -> bytes:
        """Framed bytes."""
        return _encode_ct_list(Kind.SECAGG_SHARES_OUT, _U64.pack(self.client_id), self.shares)

    @classmethod
    def decode(cls, message: bytes) -> SharesOut:
        """Parse; raises DecodeError."""
        r = _Reader(unframe(message, Kind.SECAGG_SHARES_OUT), "shares out")
        cid = r.u64("client_id")
        return cls(cid, _decode_ct_list(r))


@dataclass(frozen=True)
class SharesIn:
    """Server -> client: the share bundles addressed to it (sender id, ciphertext)."""

    shares: tuple[tuple[int, bytes], ...]

    def encode(self) -> bytes:
        """Framed bytes."""
        return _encode_ct_list(Kind.SECAGG_SHARES_IN, b"", self.shares)

    @classmethod
    def decode(cls, message: bytes) -> SharesIn:
        """Parse; raises DecodeError."""
        return cls(_decode_ct_list(_Reader(unframe(message, Kind.SECAGG_SHARES_IN), "shares in")))


@dataclass(frozen=True)
class MaskedInput:
    """Client -> server: the masked vector in Z_{2^b}, b bits per value, packed (``ceil(b L / 8)`` bytes)."""

    client_id: int
    ring_bits: int
    values: np.ndarray = field(repr=False)

    def encode(self) -> bytes:
        """Framed bytes."""
        head = _U64.pack(self.client_id) + _U8.pack(self.ring_bits)
        return frame_parts(Kind.SECAGG_MASKED, head, pack_uints(self.values, self.ring_bits))

    @classmethod
    def decode(cls, message: bytes, length: int) -> MaskedInput:
        """Parse a vector of exactly ``length`` values below 2^ring_bits; raises DecodeError."""
        cid, bits, words = cls.decode_words(message, length)
        return cls(cid, bits, words.astype(np.uint64))

    @staticmethod
    def decode_words(message: bytes, length: int) -> tuple[int, int, np.ndarray]:
        """As :meth:`decode`, but return ``(client_id, ring_bits, values)`` without converting the values.

        For ring widths of 8, 16, 32 and 64 bits the values are a read-only view of
        ``message`` as little-endian words of that width (no copy: what a server adds
        into its sum); other widths come back as uint64. Raises DecodeError.
        """
        view = unframe_view(message, Kind.SECAGG_MASKED)  # the values stay in the message's buffer
        for name, end in (("client_id", 8), ("ring_bits", 9)):
            if len(view) < end:
                raise DecodeError(f"masked input: truncated at field {name!r}")
        cid, bits = _MASKED_HEAD.unpack_from(view)
        if not 8 <= bits <= 64:
            raise DecodeError(f"masked input: ring_bits {bits}")
        end = _MASKED_HEAD.size + packed_size(bits, length)
        if len(view) < end:
            raise DecodeError("masked input: truncated at field 'values'")
        try:
            values = uint_words(view[_MASKED_HEAD.size : end], bits, length)
        except DecodeError as exc:
            raise DecodeError(f"masked input: {exc}") from None
        if len(view) != end:
            raise DecodeError(f"masked input: {len(view) - end} trailing bytes")
        return int(cid), int(bits), values


@dataclass(frozen=True)
class ConsistencyRequest:
    """Server -> client (malicious model): the set U3 of clients whose masked input arrived."""

    survivors: tuple[int, ...]

    def encode(self) -> bytes:
        """Framed bytes."""
        return frame(Kind.SECAGG_CONSISTENCY_REQUEST, encode_ids(self.survivors))

    @classmethod
    def decode(cls, message: bytes) -> ConsistencyRequest:
        """Parse; raises DecodeError."""
        r = _Reader(unframe(message, Kind.SECAGG_CONSISTENCY_REQUEST), "consistency request")
        out = cls(r.ids("survivors"))
        r.done()
        return out


@dataclass(frozen=True)
class ConsistencySignature:
    """Client -> server (malicious model): its Ed25519 signature on (round, U3)."""

    client_id: int
    signature: bytes

    def encode(self) -> bytes:
        """Framed bytes."""
        if len(self.signature) != SIGNATURE_BYTES:
            raise ValueError("signature must be 64 bytes")
        return frame(Kind.SECAGG_CONSISTENCY_SIGNATURE, _U64.pack(self.client_id) + self.signature)

    @classmethod
    def decode(cls, message: bytes) -> ConsistencySignature:
        """Parse; raises DecodeError."""
        r = _Reader(unframe(message, Kind.SECAGG_CONSISTENCY_SIGNATURE), "consistency signature")
        out = cls(r.u64("client_id"), r.raw(SIGNATURE_BYTES, "signature"))
        r.done()
        return out


@dataclass(frozen=True)
class UnmaskRequest:
    """Server -> client: whose self-mask shares (survivors) and key shares (dropped) to reveal.

    In the malicious model it also carries the neighbours' signatures on U3.
    """

    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()

    def encode(self) -> bytes:
        """Framed bytes."""
        ids = [i for i, _ in self.signatures]
        if not _increasing(ids):
            raise ValueError("signatures must be sorted by client id, without repeats")
        sigs = _U32.pack(len(self.signatures)) + b"".join(_U64.pack(i) + s for i, s in self.signatures)
        return frame(Kind.SECAGG_UNMASK_REQUEST, encode_ids(self.survivors) + encode_ids(self.dropped) + sigs)

    @classmethod
    def decode(cls, message: bytes) -> UnmaskRequest:
        """Parse; raises DecodeError."""
        r = _Reader(unframe(message, Kind.SECAGG_UNMASK_REQUEST), "unmask request")
        survivors, dropped = r.ids("survivors"), r.ids("dropped")
        n = r.count(8 + SIGNATURE_BYTES, "signatures")
        ids, items = r.records(n, SIGNATURE_BYTES)
        r.done()
        if n > 1 and not (ids[1:] > ids[:-1]).all():
            raise DecodeError("unmask request: signer ids not strictly increasing")
        return cls(survivors, dropped, tuple(zip(ids.tolist(), items, strict=True)))


def _encode_share_block(ids: tuple[int, ...], shares: np.ndarray) -> bytes:
    arr = np.asarray(shares, dtype=np.uint64).reshape(len(ids), SHARE_ELEMENTS)
    return encode_ids(ids) + arr.astype(">u8").tobytes()


def _decode_share_block(r: _Reader, name: str) -> tuple[tuple[int, ...], np.ndarray]:
    ids = r.ids(name)
    raw = r.raw(8 * SHARE_ELEMENTS * len(ids), name)
    return ids, np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(ids), SHARE_ELEMENTS)


@dataclass(frozen=True)
class UnmaskResponse:
    """Client -> server: self-mask shares of survivors and mask-key shares of dropped clients."""

    client_id: int
    self_mask_peers: tuple[int, ...]
    self_mask_shares: np.ndarray = field(repr=False)
    key_peers: tuple[int, ...]
    key_shares: np.ndarray = field(repr=False)

    def encode(self) -> bytes:
        """Framed bytes."""
        return frame(
            Kind.SECAGG_UNMASK_RESPONSE,
            _U64.pack(self.client_id)
            + _encode_share_block(self.self_mask_peers, self.self_mask_shares)
            + _encode_share_block(self.key_peers, self.key_shares),
        )

    @classmethod
    def decode(cls, message: bytes) -> UnmaskResponse:
        """Parse; raises DecodeError."""
        r = _Reader(unframe(message, Kind.SECAGG_UNMASK_RESPONSE), "unmask response")
        cid = r.u64("client_id")
        sp, ss = _decode_share_block(r, "self-mask shares")
        kp, ks = _decode_share_block(r, "key shares")
        r.done()
        return cls(cid, sp, ss, kp, ks)
