"""Versioned, length-checked framing of protocol messages.

Every message on the wire is ``MAGIC (3) | version (1) | kind (1) | length (4, big endian) | payload``.
:func:`unframe` refuses anything else with :class:`~protocols.errors.DecodeError`,
naming what was wrong, so garbage never reaches protocol logic.
"""

from __future__ import annotations

import struct

import numpy as np

from protocols.errors import DecodeError

__all__ = ["HEADER", "MAGIC", "VERSION", "frame", "kind_of", "pack_array", "unframe", "unpack_array"]

MAGIC = b"SFR"
VERSION = 1
HEADER = struct.Struct(">3sBBI")


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
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise DecodeError(f"message must be bytes, got {type(message).__name__}")
    if not isinstance(message, bytes):
        message = bytes(message)
    if len(message) < HEADER.size:
        raise DecodeError(f"message of {len(message)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, kind, length = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise DecodeError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise DecodeError(f"unsupported message version {version}, this code speaks {VERSION}")
    if kind != expected_kind:
        raise DecodeError(f"message kind {kind}, expected {expected_kind}")
    if length != len(message) - HEADER.size:
        raise DecodeError(
            f"header announces {length} payload bytes, message carries {len(message) - HEADER.size}"
        )
    return message[HEADER.size :]


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
