from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import prg
from tests.vectors import vectors


def reference_expand(seed: bytes, length: int, ring_bits: int) -> list[int]:
    """Independent computation: raw AES-256-CTR keystream, plain-Python little-endian words."""
    w = 4 if ring_bits <= 32 else 8
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = enc.update(bytes(w * length)) + enc.finalize()
    return [int.from_bytes(stream[w * i : w * i + w], "little") % (1 << ring_bits) for i in range(length)]


@vectors("prg")
def test_known_answers(vector: dict) -> None:
    seed = bytes.fromhex(vector["seed"])
    got = prg.expand(seed, vector["length"], vector["ring_bits"])
    assert got.dtype == np.uint64
    assert [int(v) for v in got] == vector["values"]
    assert vector["values"] == reference_expand(seed, vector["length"], vector["ring_bits"])


@settings(max_examples=30, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), length=st.integers(0, 70), bits=st.integers(1, 64))
def test_expand_matches_reference(seed: bytes, length: int, bits: int) -> None:
    assert [int(v) for v in prg.expand(seed, length, bits)] == reference_expand(seed, length, bits)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32), length=st.integers(1, 50),
    bits=st.sampled_from([17, 32, 33, 64]),
)
def test_expander_adds_and_subtracts_mod_the_word(seed: bytes, length: int, bits: int) -> None:
    exp = prg.MaskExpander(length, bits)
    assert exp.dtype == (np.uint32 if bits <= 32 else np.uint64)
    start = np.arange(length, dtype=np.uint64) * 12345
    acc = exp.accumulator(start)
    exp.add(acc, seed)
    mask = (1 << bits) - 1
    want = [(int(a) + int(b)) & mask for a, b in zip(start, prg.expand(seed, length, bits), strict=True)]
    assert [int(v) & mask for v in acc] == want
    exp.subtract(acc, seed)
    assert [int(v) for v in acc] == [int(v) & ((1 << 8 * exp.dtype.itemsize) - 1) for v in start]
    with pytest.raises(ValueError, match="accumulator"):
        exp.add(np.zeros(length + 1, dtype=exp.dtype), seed)


def test_different_seeds_give_different_masks() -> None:
    a = prg.expand(bytes(32), 64)
    b = prg.expand(bytes(31) + b"\x01", 64)
    assert (a != b).any()


def test_keystream_prefix_is_stable() -> None:
    seed = bytes(range(32))
    assert prg.keystream(seed, 100)[:40] == prg.keystream(seed, 40)


@pytest.mark.parametrize("seed", [b"", bytes(16), bytes(33)])
def test_rejects_short_or_long_seeds(seed: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        prg.expand(seed, 4)
    with pytest.raises(ValueError, match="32 bytes"):
        prg.MaskExpander(4).add(np.zeros(4, dtype=np.uint64), seed)


def test_rejects_bad_ring_bits() -> None:
    with pytest.raises(ValueError, match="ring_bits"):
        prg.expand(bytes(32), 4, 65)


def test_docstring_opens_with_hazmat_warning() -> None:
    assert (prg.__doc__ or "").startswith("HAZMAT")
