"""Versioned, length-checked framing of protocol messages.

Every message on the wire is ``MAGIC (3) | version (1) | kind (1) | length (4, big endian) | payload``.
:func:`unframe` refuses anything else with :class:`~protocols.errors.DecodeError`,
naming what was wrong, so garbage never reaches protocol logic. :class:`Kind` is the one
registry of the secure protocols' message kinds.
"""

from __future__ import annotations

import enum
import struct
from typing import Any

import numpy as np

from protocols.errors import DecodeError

__all__ = [
    "HEADER", "MAGIC", "VERSION", "Kind", "frame", "frame_parts", "kind_of", "pack_array", "pack_uints",
    "packed_size", "uint_words", "unframe", "unframe_view", "unpack_array", "unpack_uints",
]

MAGIC = b"SFR"
VERSION = 1
HEADER = struct.Struct(">3sBBI")


class Kind(enum.IntEnum):
    """The kind byte of every SecAgg / SecAgg+ and packed-Paillier message: one table, one byte each.

    A new protocol's messages take fresh values here, so that a message of one protocol
    can never decode as another's. (The plaintext baseline and the compression codecs
    frame their own messages with private kinds.) Values are part of the wire format
    (tests/vectors/): never renumber.
    """

    # packed Paillier (protocols.paillier.messages)
    PAILLIER_ADVERT = 1
    PAILLIER_ADVERT_LIST = 2
    PAILLIER_KEY_BUNDLE = 3
    PAILLIER_KEY_DELIVERY = 4
    PAILLIER_KEY_ACK = 5
    PAILLIER_CIPHERTEXTS = 6
    PAILLIER_AGGREGATE = 7
    PAILLIER_PLAINTEXT_SUM = 8
    PAILLIER_SIGNED_CIPHERTEXTS = 9
    PAILLIER_CONSISTENCY_REQUEST = 10
    PAILLIER_CONSISTENCY_SIGNATURE = 11
    PAILLIER_VERIFIED_AGGREGATE = 12
    # SecAgg / SecAgg+ (protocols.secagg.messages)
    SECAGG_SETUP = 0x20
    SECAGG_ADVERTISE = 0x21
    SECAGG_BROADCAST = 0x22
    SECAGG_SHARES_OUT = 0x23
    SECAGG_SHARES_IN = 0x24
    SECAGG_MASKED = 0x25
    SECAGG_CONSISTENCY_REQUEST = 0x26
    SECAGG_CONSISTENCY_SIGNATURE = 0x27
    SECAGG_UNMASK_REQUEST = 0x28
    SECAGG_UNMASK_RESPONSE = 0x29
    # submodel SecAgg (protocols.submodel.messages)
    SUBMODEL_REQUEST = 0x40
    SUBMODEL_SETUP = 0x41
    SUBMODEL_SHARES_IN = 0x42
    SUBMODEL_MASKED = 0x43
    SUBMODEL_UNMASK_REQUEST = 0x44


_WORDS: dict[int, np.dtype[Any]] = {bits: np.dtype(f"<u{bits // 8}") for bits in (8, 16, 32, 64)}
"""Widths packed as whole little-endian words (the fast path)."""


def frame(kind: int, payload: bytes) -> bytes:
    """Wrap ``payload`` as a message of type ``kind`` (0..255)."""
    if not 0 <= kind <= 255:
        raise ValueError(f"message kind must fit in one byte, got {kind}")
    return HEADER.pack(MAGIC, VERSION, kind, len(payload)) + payload


def kind_of(message: bytes) -> int:
    """The message type byte of ``message`` (the header is checked again by :func:`unframe`)."""
    if len(message) < HEADER.size:
        raise DecodeError(f"message of {len(message)} bytes is shorter than the {HEADER.size}-byte header")
    kind: int = HEADER.unpack_from(message)[2]
    return kind


def unframe(message: bytes, expected_kind: int) -> bytes:
    """Check the header of ``message`` and return its payload.

    Raises:
        DecodeError: short message, wrong magic, version, kind or length.
    """
    return bytes(unframe_view(message, expected_kind))


def unframe_view(message: bytes | bytearray | memoryview, expected_kind: int) -> memoryview:
    """As :func:`unframe`, but the payload is a view into ``message`` (no copy; for large payloads)."""
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise DecodeError(f"message must be bytes, got {type(message).__name__}")
    view = memoryview(message).cast("B")
    if len(view) < HEADER.size:
        raise DecodeError(f"message of {len(view)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, kind, length = HEADER.unpack_from(view)
    if magic != MAGIC:
        raise DecodeError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise DecodeError(f"unsupported message version {version}, this code speaks {VERSION}")
    if kind != expected_kind:
        raise DecodeError(f"message kind {kind}, expected {expected_kind}")
    if length != len(view) - HEADER.size:
        raise DecodeError(
            f"header announces {length} payload bytes, message carries {len(view) - HEADER.size}"
        )
    return view[HEADER.size :]


def frame_parts(kind: int, *parts: bytes | memoryview) -> bytes:
    """:func:`frame` of the concatenation of ``parts``, copying each part once."""
    if not 0 <= kind <= 255:
        raise ValueError(f"message kind must fit in one byte, got {kind}")
    size = sum(memoryview(p).nbytes for p in parts)
    return b"".join([HEADER.pack(MAGIC, VERSION, kind, size), *parts])


def pack_array(values: np.ndarray, dtype: str) -> bytes:
    """Little-endian bytes of ``values`` as ``dtype`` (e.g. ``'<f8'``, ``'<u4'``)."""
    return np.ascontiguousarray(values, dtype=np.dtype(dtype)).tobytes()


def unpack_array(payload: bytes, dtype: str, length: int | None = None) -> np.ndarray:
    """Inverse of :func:`pack_array`; checks the byte count (and ``length`` if given)."""
    dt = np.dtype(dtype)
    if len(payload) % dt.itemsize:
        raise DecodeError(f"{len(payload)} bytes is not a whole number of {dt.itemsize}-byte values")
    arr = np.frombuffer(payload, dtype=dt)
    if length is not None and arr.size != length:
        raise DecodeError(f"expected {length} values, got {arr.size}")
    return arr


def packed_size(bits: int, length: int) -> int:
    """Bytes of :func:`pack_uints` for ``length`` values of ``bits`` bits: ``ceil(bits * length / 8)``."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64], got {bits}")
    return (bits * length + 7) // 8


def pack_uints(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers below ``2^bits`` as one little-endian bit string, ``bits`` bits each.

    Widths of 8, 16, 32 and 64 bits take the fast path (each value as one little-endian
    word, converted once from any unsigned dtype); other widths are packed bit-exactly, so
    a 17-bit ring costs 17 bits per value, not 24. The last byte is padded with zero bits.
    """
    packed_size(bits, 1)  # checks bits
    a = np.asarray(values).reshape(-1)
    if bits in _WORDS:
        if a.dtype.kind != "u" or a.dtype.itemsize > 8:
            a = a.astype(np.uint64)
        if a.dtype.itemsize * 8 > bits and (a >> a.dtype.type(bits)).any():
            raise ValueError(f"a value is not below 2^{bits}")
        packed: bytes = a.astype(_WORDS[bits], copy=False).tobytes()
        return packed
    v = np.ascontiguousarray(a, dtype="<u8")
    if (v >> np.uint64(bits)).any():
        raise ValueError(f"a value is not below 2^{bits}")
    if bits % 8 == 0:
        return np.ascontiguousarray(v.view(np.uint8).reshape(-1, 8)[:, : bits // 8]).tobytes()
    shifts = np.arange(bits, dtype=np.uint64)
    bit_matrix = ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()


def uint_words(payload: bytes | memoryview, bits: int, length: int) -> np.ndarray:
    """As :func:`unpack_uints`, without widening: for 8, 16, 32 and 64 bits a read-only view.

    The values of the fast-path widths come back as little-endian words of that width viewing
    ``payload`` (no copy: what a sum accumulates without converting first); other widths as a
    new uint64 array.
    """
    if bits not in _WORDS:
        return unpack_uints(payload, bits, length)
    size = packed_size(bits, length)
    if len(payload) != size:
        raise DecodeError(f"expected {size} bytes for {length} values of {bits} bits, got {len(payload)}")
    words: np.ndarray = np.frombuffer(payload, dtype=_WORDS[bits], count=length)
    return words


def unpack_uints(payload: bytes | memoryview, bits: int, length: int) -> np.ndarray:
    """Inverse of :func:`pack_uints`: ``length`` uint64 values; checks the size and the padding.

    Raises:
        DecodeError: wrong byte count, or non-zero padding bits.
    """
    if bits in _WORDS:
        words: np.ndarray = uint_words(payload, bits, length).astype(np.uint64)
        return words
    size = packed_size(bits, length)
    if len(payload) != size:
        raise DecodeError(f"expected {size} bytes for {length} values of {bits} bits, got {len(payload)}")
    raw = np.frombuffer(payload, dtype=np.uint8)
    if bits % 8 == 0:
        wide = np.zeros((length, 8), dtype=np.uint8)
        wide[:, : bits // 8] = raw.reshape(length, bits // 8)
        return wide.view("<u8").reshape(length).astype(np.uint64)
    flat = np.unpackbits(raw, bitorder="little")
    if flat[bits * length :].any():
        raise DecodeError("non-zero padding bits after the last value")
    bit_matrix = flat[: bits * length].reshape(length, bits).astype(np.uint64)
    out: np.ndarray = (bit_matrix << np.arange(bits, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    return out
