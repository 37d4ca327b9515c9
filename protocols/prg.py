"""HAZMAT -- low-level mask PRG. Misuse (reusing a seed for two masks) breaks secrecy.

Use :mod:`protocols.secagg` instead; it derives every seed with HKDF, binds it
to the round and the pair of clients, and never reuses one.

The PRG is AES-256 in counter mode with an all-zero initial counter block,
keyed directly by a 256-bit secret seed: the keystream *is* the mask. One
seed expands to one mask vector of ``length`` ring elements: ``word_bytes(b)``
keystream bytes per element (4 when ``b <= 32``, else 8), read little-endian
and reduced modulo ``2^b`` with a bit mask -- uniform, because ``2^b`` divides
``2^32`` (or ``2^64``).

Notes:
    Threat: a predictable or low-entropy mask reveals the masked input.
    Flower's SecAgg+ folds its 32-byte seed into 32 bits and seeds NumPy's
    Mersenne Twister (2^32 candidate masks, and MT19937's state is recoverable
    from its output). Here the mask is a block-cipher keystream under a
    256-bit key, so distinguishing it from uniform is as hard as breaking AES.
    A single key encrypts at most ``8 * length`` bytes of counter blocks,
    far below the 2^64-block bound for AES-CTR.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["SEED_BYTES", "MaskExpander", "expand", "keystream", "word_bytes"]

SEED_BYTES = 32
"""Seeds are 256-bit AES keys."""

_ZERO_COUNTER = bytes(16)


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes")


def keystream(seed: bytes, nbytes: int) -> bytes:
    """The first ``nbytes`` bytes of the AES-256-CTR keystream under ``seed`` (counter starts at 0)."""
    _check_seed(seed)
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    encryptor = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_COUNTER)).encryptor()
    return encryptor.update(bytes(nbytes)) + encryptor.finalize()


def _ring_mask(ring_bits: int) -> np.uint64:
    if not 1 <= ring_bits <= 64:
        raise ValueError(f"ring_bits must be in [1, 64], got {ring_bits}")
    return np.uint64((1 << ring_bits) - 1)


def word_bytes(ring_bits: int) -> int:
    """Keystream bytes per ring element: 4 for rings up to 2^32, else 8."""
    _ring_mask(ring_bits)
    return 4 if ring_bits <= 32 else 8


def expand(seed: bytes, length: int, ring_bits: int = 64) -> np.ndarray:
    """Expand ``seed`` into ``length`` uniform elements of Z_{2^ring_bits} (uint64 array)."""
    mask = _ring_mask(ring_bits)
    w = word_bytes(ring_bits)
    out = np.frombuffer(keystream(seed, w * length), dtype=f"<u{w}").astype(np.uint64)
    out &= mask
    return out


class MaskExpander:
    """Adds or subtracts PRG masks of one length into accumulators, reusing buffers.

    Accumulators have dtype :attr:`dtype` (uint32 for rings up to 2^32, else
    uint64); arithmetic wraps modulo 2^32 or 2^64, and the caller reduces the
    final value with ``& (2^b - 1)`` -- exact because 2^b divides the word size.
    ``add``/``subtract`` use the same words as :func:`expand` (before its
    reduction). This is the fast path: one AES-CTR call writes the keystream
    into a preallocated buffer that numpy views without copying.
    """

    def __init__(self, length: int, ring_bits: int = 64) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        w = word_bytes(ring_bits)
        self.length = length
        self.dtype = np.dtype(np.uint32 if w == 4 else np.uint64)
        """dtype of the accumulators this expander works on."""
        self._zeros = bytes(w * length)
        self._buf = bytearray(w * length + 15)
        self._view = np.frombuffer(self._buf, dtype=f"<u{w}", count=length)

    def accumulator(self, values: np.ndarray | None = None) -> np.ndarray:
        """A fresh accumulator (a copy of ``values``, or zeros) of the right dtype."""
        if values is None:
            return np.zeros(self.length, dtype=self.dtype)
        return np.asarray(values).astype(self.dtype)

    def _fill(self, seed: bytes) -> np.ndarray:
        _check_seed(seed)
        encryptor = Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_COUNTER)).encryptor()
        encryptor.update_into(self._zeros, self._buf)
        return self._view

    def _check(self, acc: np.ndarray) -> None:
        if acc.dtype != self.dtype or acc.shape != (self.length,):
            raise ValueError(f"accumulator must be {self.dtype} of length {self.length}")

    def add(self, acc: np.ndarray, seed: bytes) -> None:
        """``acc += PRG(seed)`` modulo the word size, in place."""
        self._check(acc)
        np.add(acc, self._fill(seed), out=acc)

    def subtract(self, acc: np.ndarray, seed: bytes) -> None:
        """``acc -= PRG(seed)`` modulo the word size, in place."""
        self._check(acc)
        np.subtract(acc, self._fill(seed), out=acc)
