"""The copy-free and vectorised decoding paths agree with the field-by-field ones and refuse the same."""

from __future__ import annotations

import os

import numpy as np
import pytest

from protocols.errors import DecodeError
from protocols.secagg.messages import (
    CIPHERTEXT_BYTES,
    AdvertiseBroadcast,
    Advertisement,
    MaskedInput,
    SharesIn,
    SharesOut,
    UnmaskRequest,
)
from protocols.wire import frame, frame_parts, pack_uints, uint_words, unframe, unframe_view, unpack_uints


def test_frame_parts_is_frame_of_the_concatenation() -> None:
    parts = [b"ab", memoryview(np.arange(5, dtype="<u4")).cast("B"), b""]
    assert frame_parts(0x25, *parts) == frame(0x25, b"".join(bytes(p) for p in parts))


@pytest.mark.parametrize("message", [b"", b"SFR", frame(0x25, b"xyz")[:-1], frame(0x24, b"xyz"),
                                     b"XYZ" + frame(0x25, b"xyz")[3:]])
def test_unframe_view_refuses_what_unframe_refuses(message: bytes) -> None:
    with pytest.raises(DecodeError) as slow:
        unframe(message, 0x25)
    with pytest.raises(DecodeError) as fast:
        unframe_view(message, 0x25)
    assert str(fast.value) == str(slow.value)


@pytest.mark.parametrize("bits", [8, 16, 17, 32, 40, 64])
def test_uint_words_are_the_unpacked_values(bits: int) -> None:
    values = np.random.default_rng(bits).integers(0, 2**bits, 33, dtype=np.uint64)
    payload = pack_uints(values, bits)
    words = uint_words(payload, bits, 33)
    assert words.astype(np.uint64).tolist() == unpack_uints(payload, bits, 33).tolist() == values.tolist()
    if bits in (8, 16, 32, 64):  # a read-only view of the message, not a copy
        assert words.dtype.itemsize * 8 == bits and not words.flags.writeable
    with pytest.raises(DecodeError):
        uint_words(payload + b"\0", bits, 33)


@pytest.mark.parametrize("bits", [16, 32, 61])
def test_masked_input_words_match_decode(bits: int) -> None:
    values = np.random.default_rng(1).integers(0, 2**bits, 20, dtype=np.uint64)
    message = MaskedInput(7, bits, values).encode()
    cid, got_bits, words = MaskedInput.decode_words(message, 20)
    decoded = MaskedInput.decode(message, 20)
    assert (cid, got_bits) == (decoded.client_id, decoded.ring_bits) == (7, bits)
    assert words.astype(np.uint64).tolist() == decoded.values.tolist() == values.tolist()
    for bad, what in ((message[:12], "client_id"), (message[:17], "ring_bits"), (message[:-1], "values")):
        short = frame(0x25, bad[9:])  # the cut payload, framed again
        with pytest.raises(DecodeError, match=f"truncated at field '{what}'"):
            MaskedInput.decode(short, 20)
    with pytest.raises(DecodeError, match="1 trailing bytes"):
        MaskedInput.decode(frame(0x25, unframe(message, 0x25) + b"\0"), 20)


def _ads(n: int, signed: bool) -> tuple[Advertisement, ...]:
    sig = os.urandom(64) if signed else b""
    return tuple(Advertisement(3 * i + 1, os.urandom(32), os.urandom(32), sig) for i in range(n))


@pytest.mark.parametrize("signed", [True, False])
def test_broadcast_round_trips_and_refuses_every_truncation(signed: bool) -> None:
    ads = _ads(4, signed)
    message = AdvertiseBroadcast(ads).encode()
    assert AdvertiseBroadcast.decode(message).advertisements == ads
    body = unframe(message, 0x22)
    for cut in range(4, len(body)):
        with pytest.raises(DecodeError):
            AdvertiseBroadcast.decode(frame(0x22, body[:cut]))


def test_broadcast_refuses_a_bad_signature_length() -> None:
    body = bytearray(unframe(AdvertiseBroadcast(_ads(2, True)).encode(), 0x22))
    body[4 + 72] = 63  # the first advertisement's signature length byte
    with pytest.raises(DecodeError, match="signature length 63"):
        AdvertiseBroadcast.decode(frame(0x22, bytes(body)))


def test_record_lists_round_trip_and_refuse_disorder() -> None:
    items = tuple((5 * i + 2, os.urandom(CIPHERTEXT_BYTES)) for i in range(6))
    assert SharesIn.decode(SharesIn(items).encode()).shares == items
    assert SharesOut.decode(SharesOut(9, items).encode()) == SharesOut(9, items)
    assert SharesIn.decode(SharesIn(()).encode()).shares == ()
    swapped = unframe(SharesIn(items).encode(), 0x24)
    rec = 8 + CIPHERTEXT_BYTES
    swapped = swapped[:4] + swapped[4 + rec : 4 + 2 * rec] + swapped[4 : 4 + rec] + swapped[4 + 2 * rec :]
    with pytest.raises(DecodeError, match="not strictly increasing"):
        SharesIn.decode(frame(0x24, swapped))
    sigs = tuple((i, os.urandom(64)) for i in (1, 4, 9))
    request = UnmaskRequest((1, 4), (9,), sigs)
    assert UnmaskRequest.decode(request.encode()) == request
    with pytest.raises(DecodeError, match="trailing"):
        UnmaskRequest.decode(frame(0x28, unframe(request.encode(), 0x28) + b"\0"))
