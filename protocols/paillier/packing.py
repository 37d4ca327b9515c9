"""Slot layout and vectorised packing of many fixed-point values into one Paillier plaintext.

BatchCrypt (Zhang et al., USENIX ATC 2020) packs many quantized values into one
plaintext so that one ciphertext carries them all. Here a signed value ``x`` of
``v`` bits (``|x| <= 2^(v-1) - 1``, from :meth:`protocols.encoding.FixedPoint.quantize`)
is shifted by ``offset = 2^(v-1) - 1`` into ``[0, 2^v - 2]``; a slot holds
``v + ceil(log2 n)`` bits, so the sum of ``n`` clients' slots (at most
``n (2^v - 2) < 2^(v + ceil(log2 n))``) never carries into the next slot, and
the packed plaintext (at most ``plaintext_bits`` bits, below ``n``) never wraps
modulo the Paillier modulus. After decryption, slot ``i`` holds
``sum_k x_k[i] + count * offset``; :func:`unpack_sum` subtracts the offset.

Slot ``j`` of ciphertext ``i`` holds vector coordinate ``i * slots + j`` in bits
``[j w, (j + 1) w)`` of the plaintext integer (little-endian slot order).
Packing goes through numpy bit arrays and ``int.from_bytes`` (or byte views
when ``w`` is a multiple of 8): one Python step per ciphertext, none per value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protocols.errors import ConfigError, DecodeError

__all__ = ["SlotLayout", "pack", "pack_offset", "unpack", "unpack_sum"]

MAX_SLOT_BITS = 64
"""Slots are handled as uint64 in numpy."""


@dataclass(frozen=True)
class SlotLayout:
    """How many ``slot_bits``-wide slots of ``value_bits`` values fit in one plaintext."""

    value_bits: int
    headroom_bits: int
    plaintext_bits: int

    def __post_init__(self) -> None:
        if self.value_bits < 2:
            raise ConfigError(f"value_bits must be >= 2, got {self.value_bits}")
        if self.headroom_bits < 0:
            raise ConfigError(f"headroom_bits must be >= 0, got {self.headroom_bits}")
        if self.slot_bits > MAX_SLOT_BITS:
            raise ConfigError(
                f"a slot of value_bits={self.value_bits} + headroom {self.headroom_bits} = "
                f"{self.slot_bits} bits exceeds {MAX_SLOT_BITS}; lower value_bits or use fewer clients"
            )
        if self.slot_bits > self.plaintext_bits:
            raise ConfigError(
                f"a slot of value_bits={self.value_bits} + headroom {self.headroom_bits} = "
                f"{self.slot_bits} bits does not fit a {self.plaintext_bits}-bit plaintext: "
                f"use a larger key, lower value_bits or use fewer clients"
            )

    @classmethod
    def for_sum(cls, n: int, value_bits: int, plaintext_bits: int) -> SlotLayout:
        """The layout for summing ``n`` clients' values of ``value_bits`` bits.

        Raises:
            ConfigError: ``n < 1`` or a slot does not fit the plaintext (the message
                names what to change).
        """
        if n < 1:
            raise ConfigError(f"number of clients must be >= 1, got {n}")
        return cls(
            value_bits=value_bits,
            headroom_bits=math.ceil(math.log2(n)) if n > 1 else 0,
            plaintext_bits=plaintext_bits,
        )

    @property
    def slot_bits(self) -> int:
        """Width w of one slot: value bits plus headroom for the sum."""
        return self.value_bits + self.headroom_bits

    @property
    def slots(self) -> int:
        """Values per plaintext (per ciphertext)."""
        return self.plaintext_bits // self.slot_bits

    @property
    def offset(self) -> int:
        """Added to each signed value so that it is non-negative: ``2^(v-1) - 1``."""
        return (1 << (self.value_bits - 1)) - 1

    @property
    def max_clients(self) -> int:
        """The most clients whose sum fits a slot."""
        return ((1 << self.slot_bits) - 1) // (2 * self.offset)

    @property
    def packed_bytes(self) -> int:
        """Bytes that hold the used bits of one plaintext."""
        return (self.slots * self.slot_bits + 7) // 8

    def ciphertexts_for(self, length: int) -> int:
        """Plaintexts (ciphertexts) needed for a vector of ``length`` values."""
        return -(-length // self.slots)


def pack_offset(layout: SlotLayout, quantized: np.ndarray) -> list[int]:
    """Pack signed values (``|x| <= 2^(v-1) - 1``) after adding the offset.

    Raises:
        ConfigError: a value outside the signed ``value_bits`` range.
    """
    q = np.asarray(quantized, dtype=np.int64)
    if q.size and int(np.max(np.abs(q))) > layout.offset:
        raise ConfigError(f"a value exceeds the signed {layout.value_bits}-bit range of the slot layout")
    return pack(layout, (q + layout.offset).astype(np.uint64))


def pack(layout: SlotLayout, values: np.ndarray) -> list[int]:
    """Pack non-negative slot values (each below ``2^slot_bits``) into plaintext integers."""
    u = np.ascontiguousarray(values, dtype=np.uint64).ravel()
    w, slots = layout.slot_bits, layout.slots
    if w < 64 and u.size and int(u.max()) >> w:
        raise ConfigError(f"a slot value does not fit {w} bits")
    count = layout.ciphertexts_for(u.size)
    padded = np.zeros(count * slots, dtype=np.uint64)
    padded[: u.size] = u
    if w % 8 == 0:
        rows = padded.astype("<u8").view(np.uint8).reshape(count * slots, 8)[:, : w // 8]
        data = rows.reshape(count, slots * (w // 8))
    else:
        shifts = np.arange(w, dtype=np.uint64)
        bits = ((padded[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        data = np.packbits(bits.reshape(count, slots * w), axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in data]


def unpack(layout: SlotLayout, plaintexts: Sequence[int], length: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``length`` slot values (uint64).

    Raises:
        DecodeError: too few plaintexts for ``length``, or a plaintext wider than the layout.
    """
    count = layout.ciphertexts_for(length)
    if len(plaintexts) != count:
        raise DecodeError(f"expected {count} plaintexts for {length} values, got {len(plaintexts)}")
    w, slots, nbytes = layout.slot_bits, layout.slots, layout.packed_bytes
    try:
        raw = b"".join(int(m).to_bytes(nbytes, "little") for m in plaintexts)
    except OverflowError:
        raise DecodeError("a plaintext is wider than the slot layout allows") from None
    data = np.frombuffer(raw, dtype=np.uint8).reshape(count, nbytes)
    if w % 8 == 0:
        b = w // 8
        cells = np.zeros((count * slots, 8), dtype=np.uint8)
        cells[:, :b] = data[:, : slots * b].reshape(count * slots, b)
        values = cells.view("<u8").ravel()
    else:
        bits = np.unpackbits(data, axis=1, bitorder="little")[:, : slots * w].reshape(count * slots, w)
        weights = np.left_shift(np.uint64(1), np.arange(w, dtype=np.uint64))
        values = (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    if (slots * w) % 8 and len(plaintexts) and any(int(m) >> (slots * w) for m in plaintexts):
        raise DecodeError("a plaintext is wider than the slot layout allows")
    return np.asarray(values[:length], dtype=np.uint64)


def unpack_sum(layout: SlotLayout, plaintexts: Sequence[int], length: int, count: int) -> np.ndarray:
    """Signed per-coordinate sums (int64) of ``count`` packed, offset vectors.

    Raises:
        DecodeError: ``count`` is not in ``[1, layout.max_clients]`` or the plaintexts do not fit.
    """
    if not 1 <= count <= layout.max_clients:
        raise DecodeError(f"sum of {count} clients is outside the layout's range [1, {layout.max_clients}]")
    slots = unpack(layout, plaintexts, length)
    # exact modulo 2^64, and the true sum fits int64 (|sum| <= count * offset < 2^63)
    return (slots - np.uint64(count * layout.offset)).view(np.int64)
