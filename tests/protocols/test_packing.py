"""Bit-exact packing of ring elements (protocols.wire.pack_uints / unpack_uints)."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.errors import DecodeError
from protocols.secagg.messages import MaskedInput
from protocols.wire import frame, kind_of, pack_uints, packed_size, unframe, unpack_uints


@pytest.mark.parametrize("bits", list(range(1, 65)))
def test_round_trip_at_every_width(bits: int) -> None:
    rng = np.random.default_rng(bits)
    hi = np.iinfo(np.uint64).max if bits == 64 else (1 << bits) - 1
    values = rng.integers(0, hi, size=37, dtype=np.uint64, endpoint=True)
    values[:2] = [0, hi]
    payload = pack_uints(values, bits)
    assert len(payload) == packed_size(bits, 37) == (37 * bits + 7) // 8
    np.testing.assert_array_equal(unpack_uints(payload, bits, 37), values)


def test_odd_width_costs_its_bits_not_whole_bytes() -> None:
    # a 17-bit ring (q8 with 257..512 clients) was 3 bytes per value with byte packing
    assert len(pack_uints(np.zeros(1000, np.uint64), 17)) == 2125


def test_refuses_values_too_wide_bad_sizes_and_padding() -> None:
    with pytest.raises(ValueError, match="not below 2\\^5"):
        pack_uints(np.array([32], np.uint64), 5)
    payload = pack_uints(np.array([1, 2, 3], np.uint64), 5)  # 15 bits in 2 bytes, 1 padding bit
    with pytest.raises(DecodeError, match="expected 2 bytes"):
        unpack_uints(payload + b"\0", 5, 3)
    with pytest.raises(DecodeError, match="padding"):
        unpack_uints(payload[:1] + bytes([payload[1] | 0x80]), 5, 3)


def test_masked_input_is_packed_at_ring_bits() -> None:
    values = np.arange(100, dtype=np.uint64) * 1000
    msg = MaskedInput(7, 17, values).encode()
    back = MaskedInput.decode(msg, 100)
    np.testing.assert_array_equal(back.values, values)
    assert len(msg) == 9 + 8 + 1 + (17 * 100 + 7) // 8
    short = frame(kind_of(msg), unframe(msg, kind_of(msg))[:-1])  # a well-framed message, one byte short
    with pytest.raises(DecodeError, match="masked input: truncated at field 'values'"):
        MaskedInput.decode(short, 100)


@pytest.mark.parametrize("bits", [8, 16, 32, 64])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int64])
def test_word_widths_take_any_integer_dtype(bits: int, dtype: type) -> None:
    # the fast path converts once from the caller's dtype; the bytes are those of the uint64 values
    top = min(np.iinfo(dtype).max, np.iinfo(np.uint64).max if bits == 64 else (1 << bits) - 1)
    values = np.random.default_rng(bits).integers(0, top, size=41, dtype=dtype, endpoint=True)
    payload = pack_uints(values, bits)
    assert payload == pack_uints(values.astype(np.uint64), bits)
    assert len(payload) == packed_size(bits, 41)
    back = unpack_uints(payload, bits, 41)
    assert back.dtype == np.uint64
    np.testing.assert_array_equal(back, values.astype(np.uint64))


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_word_widths_refuse_values_too_wide(bits: int) -> None:
    with pytest.raises(ValueError, match=f"not below 2\\^{bits}"):
        pack_uints(np.array([1, 1 << bits], np.uint64), bits)
    with pytest.raises(ValueError, match=f"not below 2\\^{bits}"):
        pack_uints(np.array([-1], np.int64), bits)
