"""Binary encodings of the messages submodel SecAgg adds to SecAgg's, or wraps around them.

``RowRequest`` (client -> server) carries the client's reported row set;
``SubmodelSetup`` (server -> client) carries SecAgg's :class:`~protocols.secagg.messages.Setup`
for this client and the table of every requesting client's row set;
``SubmodelSharesIn`` carries SecAgg's ``SharesIn`` and U2, the clients that shared keys
(every client masks with each of them on their rows in common); ``SubmodelMasked``
carries SecAgg's ``MaskedInput`` and the client's signature on U2 (malicious model);
``SubmodelUnmaskRequest`` carries SecAgg's ``UnmaskRequest``, U3 and the signatures on U2
of the survivors whose self-mask shares it asks for. All are
:func:`protocols.wire.frame` d; row sets (strictly increasing u32 rows) and client-id
lists (strictly increasing u64 ids) are :mod:`protocols.idlists` lists: a u32 count, a
u32 byte length and the gaps as LEB128 varints; counts are checked against the bytes
that remain before anything is allocated, and trailing bytes are refused. Any violation
raises :class:`~protocols.errors.DecodeError`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from protocols.errors import DecodeError
from protocols.idlists import (
    HEADER,
    MAX_ID,
    MAX_ROW,
    decode_lists,
    encode_increasing,
    read_header,
    read_increasing,
)
from protocols.secagg.messages import encode_ids
from protocols.wire import Kind, frame, frame_parts, unframe, unframe_view

__all__ = [
    "MAX_ROWS",
    "RowRequest",
    "SubmodelMasked",
    "SubmodelSetup",
    "SubmodelSharesIn",
    "SubmodelUnmaskRequest",
    "ids_digest",
    "mask_view_payload",
    "raw_table_digest",
    "table_digest",
    "table_entries",
    "table_flat",
    "table_subset",
]

MAX_ROWS = MAX_ROW
"""Row ids are u32 on the wire."""
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class _Cursor:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int, name: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DecodeError(f"{self.what}: truncated at field {name!r}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self, name: str) -> int:
        return int(_U32.unpack(self.take(4, name))[0])

    def u64(self, name: str) -> int:
        return int(_U64.unpack(self.take(8, name))[0])

    def rows_header(self, name: str) -> tuple[int, int]:
        """A row list's count and byte length, checked against the bytes that remain; skips the bytes."""
        try:
            n, size = read_header(self.data, self.pos, MAX_ROW)
        except DecodeError as exc:
            raise DecodeError(f"{self.what}: {name}: {exc}") from None
        self.pos += HEADER.size + size
        return n, size

    def rows(self, name: str) -> np.ndarray:
        """A row set (int64)."""
        try:
            rows, self.pos = read_increasing(self.data, self.pos, MAX_ROW)
        except DecodeError as exc:
            raise DecodeError(f"{self.what}: {name}: {exc}") from None
        return rows

    def ids(self, name: str) -> tuple[int, ...]:
        """A client-id list."""
        try:
            ids, self.pos = read_increasing(self.data, self.pos, MAX_ID)
        except DecodeError as exc:
            raise DecodeError(f"{self.what}: {name}: {exc}") from None
        return tuple(ids.tolist())

    def done(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{self.what}: {len(self.data) - self.pos} trailing bytes")


def _encode_rows(rows: np.ndarray) -> bytes:
    """A row set as a :mod:`protocols.idlists` list.

    A reported set is a few thousand rows spread over the catalogue: its gaps take one or
    two bytes where a u32 takes four (the set is about 3 % of a client's upload at eps 4).
    """
    try:
        return encode_increasing(rows, MAX_ROW)
    except ValueError as exc:
        raise ValueError(f"rows: {exc}") from None


@dataclass(frozen=True)
class RowRequest:
    """Client -> server: the client's reported (randomized-response) row set, and the catalogue size."""

    client_id: int
    num_rows: int
    rows: np.ndarray = field(repr=False)

    def encode(self) -> bytes:
        """Framed bytes."""
        if not 0 <= self.client_id <= MAX_ID or not 0 <= self.num_rows <= MAX_ROWS:
            raise ValueError("client id or num_rows out of range")
        return frame(Kind.SUBMODEL_REQUEST,
                     _U64.pack(self.client_id) + _U32.pack(self.num_rows) + _encode_rows(self.rows))

    @classmethod
    def decode(cls, message: bytes) -> RowRequest:
        """Parse; raises DecodeError (also for a row at or beyond ``num_rows``)."""
        r = _Cursor(unframe(message, Kind.SUBMODEL_REQUEST), "row request")
        cid, num_rows, rows = r.u64("client_id"), r.u32("num_rows"), r.rows("rows")
        r.done()
        if cid > MAX_ID:
            raise DecodeError("row request: client id above 2^63 - 1")
        if rows.size and rows[-1] >= num_rows:
            raise DecodeError(f"row request: row {int(rows[-1])} outside the {num_rows} rows")
        return cls(cid, num_rows, rows)


@dataclass(frozen=True)
class SubmodelSetup:
    """Server -> client: its SecAgg setup (raw bytes) and every requesting client's row set."""

    setup: bytes
    table: Mapping[int, np.ndarray] = field(repr=False)
    raw_table: bytes = field(default=b"", repr=False, compare=False)
    """The table's bytes as received (:meth:`decode` only): what :func:`table_subset` reads."""

    def encode(self) -> bytes:
        """Framed bytes."""
        return self.encode_parts(self.setup, self.encode_table(self.table))

    @staticmethod
    def encode_table(table: Mapping[int, np.ndarray]) -> bytes:
        """The table's part of the message (the same for every recipient: encode it once per round)."""
        ids = sorted(table)
        return b"".join([_U32.pack(len(ids)), *(_U64.pack(c) + _encode_rows(table[c]) for c in ids)])

    @staticmethod
    def encode_parts(setup: bytes, table: bytes) -> bytes:
        """Framed bytes from a setup and an :meth:`encode_table` result."""
        return frame(Kind.SUBMODEL_SETUP, _U32.pack(len(setup)) + setup + table)

    @classmethod
    def decode(cls, message: bytes) -> SubmodelSetup:
        """Parse, every set decoded; raises DecodeError."""
        setup, raw = cls.split(message)
        entries = table_entries(raw)
        return cls(setup, table_subset(raw, entries, entries), raw)

    @staticmethod
    def split(message: bytes) -> tuple[bytes, bytes]:
        """The setup's bytes and the table's bytes, unparsed (see :func:`table_entries`)."""
        r = _Cursor(unframe(message, Kind.SUBMODEL_SETUP), "submodel setup")
        setup = r.take(r.u32("setup length"), "setup")
        return setup, r.data[r.pos :]


def table_digest(table: Mapping[int, np.ndarray]) -> bytes:
    """SHA-256 of the canonical encoding of a row table (bound into the consistency signatures)."""
    return raw_table_digest(SubmodelSetup.encode_table(table))


def raw_table_digest(raw_table: bytes) -> bytes:
    """:func:`table_digest` from a table's encoding (canonical: the decoder refuses any other)."""
    return hashlib.sha256(b"securefedrec/submodel/v1/table" + raw_table[4:]).digest()


def table_entries(raw_table: bytes) -> dict[int, tuple[int, int, int]]:
    """client id -> (rows, first byte, end byte) of its set in a table's bytes; the headers only.

    Raises DecodeError for a malformed table (ids not increasing, counts that do not fit,
    trailing bytes); the varints themselves are checked when decoded (:func:`table_subset`).
    """
    r = _Cursor(raw_table, "row table")
    n = r.u32("table entries")
    if 16 * n > len(r.data) - r.pos:
        raise DecodeError(f"row table: {n} entries, too few bytes remain")
    out: dict[int, tuple[int, int, int]] = {}
    last = -1
    for _ in range(n):
        cid = r.u64("client_id")
        if cid <= last or cid > MAX_ID:
            raise DecodeError("row table: ids not strictly increasing")
        last = cid
        count, size = r.rows_header("rows")
        out[cid] = (count, r.pos - size, r.pos)
    r.done()
    return out


def table_subset(raw_table: bytes, wanted: Iterable[int],
                 entries: Mapping[int, tuple[int, int, int]] | None = None) -> dict[int, np.ndarray]:
    """The row sets of the clients ``wanted`` from a table's bytes (:attr:`SubmodelSetup.raw_table`).

    A client keeps the table's compact bytes rather than every decoded set, and decodes the
    sets when it needs them. ``entries``: :func:`table_entries` of the table, if known. Raises
    DecodeError (also for a client not in the table).
    """
    ids, counts, rows = table_flat(raw_table, wanted, entries)
    return dict(zip(ids.tolist(), np.split(rows, np.cumsum(counts)[:-1]) if ids.size else [], strict=True))


def table_flat(raw_table: bytes, wanted: Iterable[int],
               entries: Mapping[int, tuple[int, int, int]] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As :func:`table_subset`, flat: the ids (ascending), their set sizes, and all rows one after another."""
    where = entries if entries is not None else table_entries(raw_table)
    ids = sorted(set(wanted))
    missing = [c for c in ids if c not in where]
    if missing:
        raise DecodeError(f"row table: no set for clients {missing[:5]}")
    spans = [where[c] for c in ids]
    raw = np.frombuffer(b"".join(raw_table[a:b] for _, a, b in spans), dtype=np.uint8)
    counts = np.array([c for c, _, _ in spans], dtype=np.int64)
    if not counts.size:
        return np.zeros(0, dtype=np.int64), counts, np.zeros(0, dtype=np.int64)
    try:
        rows = decode_lists(raw, counts, np.array([b - a for _, a, b in spans], dtype=np.int64), MAX_ROW)
    except DecodeError as exc:
        raise DecodeError(f"row table: {exc}") from None
    return np.array(ids, dtype=np.int64), counts, rows


def ids_digest(ids: tuple[int, ...]) -> bytes:
    """SHA-256 of the canonical encoding of a set of client ids (sorted tuple), e.g. U2."""
    return hashlib.sha256(b"securefedrec/submodel/v1/ids" + encode_ids(ids)).digest()


def mask_view_payload(round_id: int, client_id: int, u2: tuple[int, ...]) -> bytes:
    """What a client signs with its masked input (malicious model): the U2 it masked against."""
    return b"securefedrec/submodel/v1/masked" + _U64.pack(round_id) + _U64.pack(client_id) + ids_digest(u2)


@dataclass(frozen=True)
class SubmodelSharesIn:
    """Server -> client: SecAgg's ``SharesIn`` (raw bytes) and U2, every client that shared keys."""

    shares_in: bytes = field(repr=False)
    u2: tuple[int, ...]

    def encode(self) -> bytes:
        """Framed bytes."""
        return frame(Kind.SUBMODEL_SHARES_IN, _U32.pack(len(self.shares_in)) + self.shares_in
                     + encode_ids(self.u2))

    @classmethod
    def decode(cls, message: bytes) -> SubmodelSharesIn:
        """Parse; raises DecodeError."""
        r = _Cursor(unframe(message, Kind.SUBMODEL_SHARES_IN), "submodel shares in")
        inner = r.take(r.u32("shares length"), "shares")
        u2 = r.ids("u2")
        r.done()
        return cls(inner, u2)


@dataclass(frozen=True)
class SubmodelMasked:
    """Client -> server: SecAgg's ``MaskedInput`` (raw bytes) and a signature on U2 (empty if semi-honest)."""

    signature: bytes
    masked: bytes = field(repr=False)

    def encode(self) -> bytes:
        """Framed bytes (the masked vector is copied once)."""
        if len(self.signature) not in (0, 64):
            raise ValueError("signature must be 64 bytes or empty")
        return frame_parts(Kind.SUBMODEL_MASKED, bytes([len(self.signature)]), self.signature, self.masked)

    @classmethod
    def decode(cls, message: bytes) -> SubmodelMasked:
        """Parse; raises DecodeError."""
        view = unframe_view(message, Kind.SUBMODEL_MASKED)
        if len(view) < 1 or view[0] not in (0, 64) or len(view) < 1 + view[0]:
            raise DecodeError("submodel masked input: bad or truncated signature")
        return cls(bytes(view[1 : 1 + view[0]]), bytes(view[1 + view[0] :]))


@dataclass(frozen=True)
class SubmodelUnmaskRequest:
    """Server -> client: SecAgg's ``UnmaskRequest`` (raw bytes), U3, and survivors' signatures on U2.

    ``mask_signatures`` holds, for each survivor whose self-mask share is asked for, its
    signature from :class:`SubmodelMasked` (malicious model; empty when semi-honest).
    """

    request: bytes = field(repr=False)
    u3: tuple[int, ...]
    mask_signatures: tuple[tuple[int, bytes], ...] = ()

    def encode(self) -> bytes:
        """Framed bytes."""
        ids = tuple(c for c, _ in self.mask_signatures)
        if any(len(s) != 64 for _, s in self.mask_signatures):
            raise ValueError("signatures must be 64 bytes")
        sigs = encode_ids(ids) + b"".join(s for _, s in self.mask_signatures)
        return frame(Kind.SUBMODEL_UNMASK_REQUEST,
                     _U32.pack(len(self.request)) + self.request + encode_ids(self.u3) + sigs)

    @classmethod
    def decode(cls, message: bytes) -> SubmodelUnmaskRequest:
        """Parse; raises DecodeError."""
        r = _Cursor(unframe(message, Kind.SUBMODEL_UNMASK_REQUEST), "submodel unmask request")
        inner = r.take(r.u32("request length"), "request")
        u3, signers = r.ids("u3"), r.ids("signers")
        sigs = tuple((c, r.take(64, "signature")) for c in signers)
        r.done()
        return cls(inner, u3, sigs)
