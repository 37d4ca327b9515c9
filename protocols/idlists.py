"""Strictly increasing id lists as LEB128 varint gaps: the one codec of every id list on the wire.

A list of strictly increasing integers ``v_0 < v_1 < ...`` in ``[0, maximum]`` is

    count (u32, big endian) | byte length (u32, big endian) | varints

where the varints are the gaps ``v_0 + 1, v_1 - v_0, v_2 - v_1, ...`` (every gap at least 1),
each in LEB128: seven bits a byte, least significant first, the high bit set on every byte
but the last. SecAgg's client-id lists (u64 ids up to ``2^63 - 1``: :data:`MAX_ID`) and
submodel SecAgg's row sets (u32 rows: :data:`MAX_ROW`) use it; the ids of a round are
dense, so a gap takes one byte where a u64 takes eight.

There is one encoding of each list (what signatures and digests bind), and the decoder
accepts nothing else: it refuses, with :class:`~protocols.errors.DecodeError`, a varint
with a padding byte or longer than the longest gap needs, a zero gap, a value above the
maximum, another number of varints than the count, and a byte length beyond the bytes
that remain or one that ``count`` varints cannot fill. The count is at most the byte length,
and the byte length at most what remains, before anything is allocated: a count cannot make
the decoder do more work than the message's bytes allow.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from protocols.errors import DecodeError

__all__ = [
    "HEADER", "MAX_ID", "MAX_ROW", "decode_increasing", "decode_lists", "encode_increasing",
    "read_header", "read_increasing", "varint_bytes",
]

MAX_ID = (1 << 63) - 1
"""Client ids are u64 on the wire, below 2^63 (a signed 64-bit integer holds every one)."""
MAX_ROW = (1 << 32) - 1
"""Row ids are u32 on the wire."""
HEADER = struct.Struct(">II")
"""A list's count and byte length."""


def varint_bytes(maximum: int) -> int:
    """Bytes of the longest varint in a list of values up to ``maximum``: that of the gap ``maximum + 1``."""
    if not 0 <= maximum <= MAX_ID:
        raise ValueError(f"maximum must be in [0, 2^63 - 1], got {maximum}")
    return -(-(maximum + 1).bit_length() // 7)


def encode_increasing(values: Sequence[int] | np.ndarray, maximum: int) -> bytes:
    """The canonical encoding of the strictly increasing integers ``values``, each in ``[0, maximum]``.

    Raises:
        ValueError: ``values`` not a 1-D sequence of integers, out of range or not strictly increasing.
    """
    longest = varint_bytes(maximum)
    try:
        arr = np.asarray(values)
    except OverflowError:
        raise ValueError(f"values must be integers in [0, {maximum}]") from None
    if arr.ndim != 1:
        raise ValueError("values must be one-dimensional")
    if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > maximum):
        raise ValueError(f"values must be integers in [0, {maximum}]")
    v = arr.astype(np.uint64)
    if v.size > 1 and not (v[1:] > v[:-1]).all():
        raise ValueError("values must be strictly increasing")
    gaps = np.diff(v, prepend=np.uint64(0))
    if gaps.size:
        gaps[0] += np.uint64(1)
    widths = np.ones(gaps.size, dtype=np.int64)
    for j in range(1, longest):
        widths += gaps >= np.uint64(1 << (7 * j))
    starts = np.cumsum(widths) - widths
    out = np.zeros(int(widths.sum()), dtype=np.uint8)
    for j in range(longest):
        at = widths > j
        if not at.any():
            break
        more = np.where(widths[at] > j + 1, np.uint64(0x80), np.uint64(0))
        out[starts[at] + j] = ((gaps[at] >> np.uint64(7 * j)) & np.uint64(0x7F)) | more
    return HEADER.pack(gaps.size, out.size) + out.tobytes()


def read_header(data: bytes | memoryview, pos: int, maximum: int) -> tuple[int, int]:
    """The count and byte length of the list at ``pos`` of ``data``, checked against the bytes after it.

    Raises:
        DecodeError: a truncated header, a byte length beyond the bytes that remain, or a count
            that the byte length cannot hold (more values than bytes, or fewer values than the
            longest varints need).
    """
    if not 0 <= pos <= len(data) - HEADER.size:
        raise DecodeError("truncated list header")
    count, size = HEADER.unpack_from(data, pos)
    if size > len(data) - pos - HEADER.size or count > size or size > varint_bytes(maximum) * count:
        raise DecodeError(f"announces {count} values in {size} bytes, which cannot be")
    return int(count), int(size)


def read_increasing(data: bytes, pos: int, maximum: int) -> tuple[np.ndarray, int]:
    """The list at ``pos`` of ``data`` (int64 values) and the position after it; raises DecodeError."""
    count, size = read_header(data, pos, maximum)
    start = pos + HEADER.size
    raw = np.frombuffer(data, dtype=np.uint8, count=size, offset=start)
    return decode_increasing(raw, count, maximum), start + size


def decode_increasing(data: np.ndarray, count: int, maximum: int) -> np.ndarray:
    """The ``count`` values (int64) whose varint gaps are exactly ``data`` (uint8); raises DecodeError."""
    counts, sizes = np.array([count], dtype=np.int64), np.array([data.size], dtype=np.int64)
    return decode_lists(data, counts, sizes, maximum)


def decode_lists(data: np.ndarray, counts: np.ndarray, sizes: np.ndarray, maximum: int) -> np.ndarray:
    """The values (int64) of several lists, one after another (``counts`` each), in one vectorized pass.

    ``data`` holds the lists' varint bytes one after another, ``sizes`` bytes each (a client
    decodes every requester's row set of a table at once). Every list is checked as
    :func:`decode_increasing` checks one; raises DecodeError.
    """
    longest = varint_bytes(maximum)
    if not counts.size:
        if data.size:
            raise DecodeError("list bytes without a list")
        return np.zeros(0, dtype=np.int64)
    ends = data < 0x80  # the last byte of each varint
    stops = np.flatnonzero(ends)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    # each list holds exactly its count of varints, and no varint runs into the next list
    if np.any(np.searchsorted(stops, bounds[1:]) - np.searchsorted(stops, bounds[:-1]) != counts) or (
            data.size and not ends[-1]) or np.any(~ends[bounds[1:][sizes > 0] - 1]):
        raise DecodeError("a list holds another number of values than it announces")
    gaps = _varints(data, ends, stops, longest)
    if not gaps.size:
        return np.zeros(0, dtype=np.int64)
    if gaps.min() < 1:
        raise DecodeError("a zero gap: the values are not strictly increasing")
    if gaps.max() > maximum + 1:
        raise DecodeError(f"a gap above {maximum + 1}: a value above {maximum}")
    # All arithmetic is mod 2^64. Within a list, a value at most `maximum` plus a gap at most
    # `maximum + 1` is below 2^64 + 1: a sum that wraps is exactly 2^64, the value 2^64 - 1, refused
    # below; the running sum over several lists may wrap, the differences are exact.
    total = np.cumsum(gaps)
    starts = np.cumsum(counts) - counts  # each list's first value
    before = np.concatenate([np.zeros(1, dtype=np.uint64), total])[starts]  # the running sum before each list
    values = total - np.repeat(before, counts) - np.uint64(1)
    if values.max() > maximum:
        raise DecodeError(f"a value above {maximum}")
    out: np.ndarray = values.view(np.int64)  # every value is at most 2^63 - 1
    return out


def _varints(data: np.ndarray, ends: np.ndarray, stops: np.ndarray, longest: int) -> np.ndarray:
    """The values (uint64) of the LEB128 varints in ``data``, whose last bytes are at ``stops``.

    Refuses a padding byte (a zero last byte after a continuation byte), a varint of more
    than ``longest`` bytes, and one whose value does not fit in 64 bits.
    """
    if not stops.size:
        return np.zeros(0, dtype=np.uint64)
    pair = data.astype(np.int32) << 8  # each byte beside the one before it, kept at the last bytes only
    pair[1:] |= data[:-1]
    pair = pair[ends]
    high, two = pair >> 8, (pair & 0x80) != 0  # two: a continuation byte precedes this last byte
    if np.any(two & (high == 0)):
        raise DecodeError("a gap is not a canonical varint (a padding byte)")
    if data.size - stops.size == int(np.count_nonzero(two)):  # every varint one or two bytes: the fast path
        out: np.ndarray = np.where(two, (high << 7) | (pair & 0x7F), high).astype(np.uint64)
        return out
    first = np.ones(data.size, dtype=bool)  # the first byte of each varint
    first[1:] = ends[:-1]
    at = np.arange(data.size, dtype=np.int64)
    depth = at - np.maximum.accumulate(np.where(first, at, 0))  # the byte's place in its varint
    if int(depth.max()) >= longest:
        raise DecodeError(f"a gap is longer than {longest} bytes")
    room = 64 - 7 * (longest - 1)  # bits of a 64-bit value left to the last possible byte
    if room < 7 and np.any((data[depth == longest - 1] & 0x7F) >> room):
        raise DecodeError("a gap beyond 2^64")
    low = (data & 0x7F).astype(np.uint64) << (7 * depth).astype(np.uint64)
    return np.diff(np.cumsum(low)[stops], prepend=np.uint64(0))  # mod 2^64: each varint's exact value
