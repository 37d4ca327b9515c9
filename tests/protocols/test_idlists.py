"""protocols.idlists: strictly increasing ids as varint gaps, and the messages that use it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import DecodeError
from protocols.idlists import (
    HEADER,
    MAX_ID,
    MAX_ROW,
    decode_lists,
    encode_increasing,
    read_increasing,
    varint_bytes,
)
from protocols.secagg import messages as m
from protocols.submodel.messages import RowRequest, SubmodelSharesIn, ids_digest
from protocols.wire import Kind, frame


def _decode(count: int, raw: list[int], maximum: int = MAX_ID) -> list[int]:
    """A list whose header announces ``count`` values in the bytes ``raw``."""
    values, end = read_increasing(HEADER.pack(count, len(raw)) + bytes(raw), 0, maximum)
    assert end == HEADER.size + len(raw)
    out: list[int] = values.tolist()
    return out


@pytest.mark.parametrize("maximum", [MAX_ID, MAX_ROW])
def test_edge_lists_round_trip(maximum: int) -> None:
    for values in ([], [0], [maximum], [0, maximum], [maximum - 2, maximum - 1, maximum], list(range(300))):
        raw = encode_increasing(values, maximum)
        assert _decode(len(values), list(raw[HEADER.size :]), maximum) == values
    assert encode_increasing([], maximum) == bytes(8)  # count 0, no bytes


IDS = st.integers(0, MAX_ID) | st.integers(MAX_ID - 2000, MAX_ID) | st.integers(0, 3000)


@settings(max_examples=200, deadline=None)
@given(ids=st.sets(IDS, max_size=60))
def test_random_id_sets_round_trip(ids: set[int]) -> None:
    values = sorted(ids)
    raw = encode_increasing(values, MAX_ID)
    got, end = read_increasing(raw + b"tail", 0, MAX_ID)
    assert got.tolist() == values and end == len(raw)
    request = m.ConsistencyRequest(tuple(values)).encode()
    assert m.ConsistencyRequest.decode(request).survivors == tuple(values)


def test_random_row_sets_round_trip_through_several_lists_at_once() -> None:
    rng = np.random.default_rng(5)
    shapes = ((2**32, 50), (300, 200), (2**32, 1), (9, 0))
    lists = [np.unique(rng.integers(0, top, size)) for top, size in shapes]
    raws = [encode_increasing(v, MAX_ROW)[HEADER.size :] for v in lists]
    data = np.frombuffer(b"".join(raws), dtype=np.uint8)
    counts = np.array([v.size for v in lists])
    got = decode_lists(data, counts, np.array([len(r) for r in raws]), MAX_ROW)
    np.testing.assert_array_equal(got, np.concatenate(lists))


def test_dense_ids_take_a_byte_each() -> None:
    assert len(m.encode_ids(list(range(943)))) == 8 + 943  # the u64 lists took 4 + 8 * 943
    assert varint_bytes(MAX_ID) == 10 and varint_bytes(MAX_ROW) == 5


@pytest.mark.parametrize("bad", [[1, 1], [3, 2], [-1], [MAX_ID + 1], [2**64], [1.5], [True]])
def test_encoder_refuses_what_it_cannot_encode(bad: list[object]) -> None:
    with pytest.raises(ValueError, match=r"increasing|integers"):
        encode_increasing(bad, MAX_ID)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        m.encode_ids(bad)  # type: ignore[arg-type]


# Each refusal below is reached by no other check: without its own check the list would decode
# (to wrong values) or fail with another message or error type.
LONG = [0x81] + [0x80] * 9 + [0x01]  # 1 + 2^70: eleven bytes, one more than any id gap needs


@pytest.mark.parametrize(("count", "raw", "maximum", "why"), [
    (1, [0x81, 0x00], MAX_ID, "padding byte"),  # the gap 1 in two bytes: not canonical
    (2, [*LONG, 0x01], MAX_ID, "longer than 10 bytes"),  # fits the byte length, too long a varint
    (1, [0x81] + [0x80] * 8 + [0x02], MAX_ID, "beyond 2"),  # 1 + 2^64: wraps to 1 in 64 bits
    (2, [0x01, 0x00], MAX_ID, "zero gap"),  # ids 0, 0
    (2, [0x03, *[0xFF] * 9, 0x01], MAX_ID, "a gap above"),  # 2, then a gap of 2^64 - 1: would wrap to 1
    (2, [0x80, 0x80, 0x80, 0x80, 0x10, 0x01], MAX_ROW, "a value above 4294967295"),  # 2^32 - 1, then 2^32
    (1, [0x81, 0x80, 0x80, 0x80, 0x10], MAX_ROW, "a gap above 4294967296"),  # the gap 2^32 + 1
    (1, [0x01, 0x01], MAX_ID, "another number"),  # two varints, one announced
    (2, [0x81, 0x01], MAX_ID, "another number"),  # one varint (129), two announced
    (1, [0x01, 0x81], MAX_ID, "another number"),  # the last varint runs past the list
    (3, [1, 1], MAX_ID, "3 values in 2 bytes"),  # more values than bytes
    (1, [0x81, 0x80, 0x80, 0x80, 0x80, 0x01], MAX_ROW, "1 values in 6 bytes"),  # more bytes than a row needs
])
def test_malformed_lists_are_refused_by_their_own_check(count: int, raw: list[int], maximum: int,
                                                         why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        _decode(count, raw, maximum)


def test_a_list_header_is_checked_against_the_bytes_that_remain() -> None:
    with pytest.raises(DecodeError, match="truncated list header"):
        read_increasing(bytes(7), 0, MAX_ID)
    with pytest.raises(DecodeError, match="1 values in 2 bytes"):
        read_increasing(HEADER.pack(1, 2) + b"\x01", 0, MAX_ID)  # one byte short
    with pytest.raises(DecodeError, match="which cannot be"):
        read_increasing(HEADER.pack(2**32 - 1, 2**32 - 1) + bytes(100), 0, MAX_ID)  # allocates nothing


def test_messages_name_the_list_at_fault() -> None:
    no_signatures = bytes(4)
    zero_gap = HEADER.pack(2, 2) + b"\x08\x00"  # ids 7, 7
    with pytest.raises(DecodeError, match="unmask request: dropped: a zero gap"):
        m.UnmaskRequest.decode(frame(Kind.SECAGG_UNMASK_REQUEST, m.encode_ids((1, 2)) + zero_gap + bytes(4)))
    good = m.encode_ids((1, 2)) + m.encode_ids((7,)) + no_signatures
    assert m.UnmaskRequest.decode(frame(Kind.SECAGG_UNMASK_REQUEST, good)).dropped == (7,)
    with pytest.raises(DecodeError, match="consistency request: 1 trailing bytes"):
        m.ConsistencyRequest.decode(frame(Kind.SECAGG_CONSISTENCY_REQUEST, m.encode_ids((4, 9)) + b"\x00"))
    with pytest.raises(DecodeError, match="consistency request: survivors: truncated list header"):
        m.ConsistencyRequest.decode(frame(Kind.SECAGG_CONSISTENCY_REQUEST, m.encode_ids((4, 9))[:7]))
    with pytest.raises(DecodeError, match="submodel shares in: u2: a gap is not a canonical varint"):
        SubmodelSharesIn.decode(frame(Kind.SUBMODEL_SHARES_IN, bytes(4) + HEADER.pack(1, 2) + b"\x85\x00"))
    with pytest.raises(DecodeError, match="row request: rows: a zero gap"):
        RowRequest.decode(frame(Kind.SUBMODEL_REQUEST, bytes(8) + (9).to_bytes(4, "big") + zero_gap))


def test_the_signed_encodings_are_the_canonical_lists() -> None:
    """The consistency signatures and the U2 digest bind the one encoding each decoder accepts."""
    ids = (3, 8, 2**40, MAX_ID)
    assert m.encode_ids(ids) == encode_increasing(ids, MAX_ID) == m.ConsistencyRequest(ids).encode()[9:]
    assert ids_digest(ids) != ids_digest((3, 8, 2**40))
    rows = np.array([0, 7, 2**20])
    assert RowRequest(1, 2**21, rows).encode()[9 + 12 :] == encode_increasing(rows, MAX_ROW)


def test_bytes_without_a_list_are_refused() -> None:
    with pytest.raises(DecodeError, match="list bytes without a list"):
        decode_lists(np.array([1], dtype=np.uint8), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64),
                     MAX_ID)
    none = np.zeros(0, dtype=np.int64)
    assert decode_lists(np.zeros(0, dtype=np.uint8), none, none, MAX_ID).size == 0
