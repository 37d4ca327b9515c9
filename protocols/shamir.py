"""HAZMAT -- raw Shamir secret sharing over GF(2^61 - 1), vectorised with numpy.

Use :mod:`protocols.secagg`, which picks the threshold, the share holders and
encrypts every share to its holder. Fewer than ``threshold`` shares of a
secret reveal nothing about it; ``threshold`` shares reveal it completely, so
who receives which share is the caller's security decision.

A byte string is cut into 7-byte little-endian chunks, each an element of the
prime field p = 2^61 - 1 (a Mersenne prime, so reduction is shifts and
masks); a 32-byte secret is 5 field elements. :func:`split` shares many field
elements at once with one random polynomial each, evaluated at the holders'
nonzero x-coordinates as one product of the power matrix and the coefficients
(:func:`matmul_mod`, exact limb arithmetic); :func:`reconstruct` interpolates
at 0 (Lagrange) for a batch of secrets.

Notes:
    Coefficients are drawn uniformly from the field by rejection sampling
    from injected random bytes (``randbytes``), never from numpy's generators.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "CHUNK_BYTES",
    "PRIME",
    "bytes_to_field",
    "field_to_bytes",
    "lagrange_at_zero",
    "matmul_mod",
    "mulmod",
    "random_field",
    "reconstruct",
    "reconstruct_batch",
    "split",
]

PRIME = (1 << 61) - 1
"""The field modulus, 2^61 - 1."""
CHUNK_BYTES = 7
"""Bytes of secret per field element (56 bits < 61)."""

_P = np.uint64(PRIME)
_S61 = np.uint64(61)
_S32 = np.uint64(32)
_S29 = np.uint64(29)
_LO32 = np.uint64(0xFFFFFFFF)
_LO29 = np.uint64((1 << 29) - 1)
_THREE = np.uint64(3)
_TWO = np.uint64(2)
_S21 = np.uint64(21)
_S42 = np.uint64(42)
_LIMB = np.uint64((1 << 21) - 1)
_MAX_TERMS = 1 << 10


def _reduce(x: np.ndarray) -> np.ndarray:
    """x mod p for uint64 x (any value < 2^64)."""
    r = (x & _P) + (x >> _S61)
    return np.where(r >= _P, r - _P, r)


def mulmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise ``a * b mod p`` for uint64 arrays with entries in [0, p); broadcasts."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    a0, a1 = a & _LO32, a >> _S32  # a1 < 2^29
    b0, b1 = b & _LO32, b >> _S32
    # a*b = a1*b1*2^64 + (a1*b0 + a0*b1)*2^32 + a0*b0, and 2^61 = 1 (mod p)
    high = (a1 * b1) << _THREE  # 2^64 = 8 (mod p); < 2^61
    mid = a1 * b0 + a0 * b1  # < 2^62
    mid = (mid >> _S29) + ((mid & _LO29) << _S32)  # mid*2^32 = (mid>>29)*2^61 + (mid&(2^29-1))*2^32
    low = _reduce(a0 * b0)
    return _reduce(_reduce(high + mid) + low)


def random_field(shape: tuple[int, ...], randbytes: Callable[[int], bytes]) -> np.ndarray:
    """Uniform field elements of ``shape`` from ``randbytes`` (rejection sampling of 61-bit values)."""
    count = int(np.prod(shape, dtype=np.int64))
    out = np.frombuffer(randbytes(8 * count), dtype="<u8").astype(np.uint64) & _P
    bad = out == _P
    while bad.any():  # probability 2^-61 per element
        k = int(bad.sum())
        out[bad] = np.frombuffer(randbytes(8 * k), dtype="<u8").astype(np.uint64) & _P
        bad = out == _P
    return out.reshape(shape)


def bytes_to_field(secret: bytes) -> np.ndarray:
    """Cut ``secret`` into 7-byte little-endian chunks: field elements (uint64)."""
    n = -(-len(secret) // CHUNK_BYTES)
    padded = bytes(secret) + bytes(n * CHUNK_BYTES - len(secret))
    raw = np.frombuffer(padded, dtype=np.uint8).reshape(n, CHUNK_BYTES)
    wide = np.zeros((n, 8), dtype=np.uint8)
    wide[:, :CHUNK_BYTES] = raw
    return wide.view("<u8").reshape(n).astype(np.uint64)


def field_to_bytes(elements: np.ndarray, nbytes: int) -> bytes:
    """Inverse of :func:`bytes_to_field` for a secret of ``nbytes`` bytes.

    Raises:
        ValueError: an element does not fit in a 7-byte chunk (wrong shares).
    """
    e = np.asarray(elements, dtype=np.uint64)
    if e.size != -(-nbytes // CHUNK_BYTES):
        raise ValueError(f"{e.size} field elements cannot hold a {nbytes}-byte secret")
    if (e >> np.uint64(8 * CHUNK_BYTES)).any():
        raise ValueError("reconstructed value is not a valid secret chunk")
    data = e.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :CHUNK_BYTES].tobytes()
    if any(data[nbytes:]):
        raise ValueError("reconstructed value is not a valid secret chunk")
    return data[:nbytes]


def split(
    secrets: np.ndarray, xs: Sequence[int], threshold: int, randbytes: Callable[[int], bytes]
) -> np.ndarray:
    """Share each field element of ``secrets`` (shape ``(m,)``) at the points ``xs``.

    Returns an array of shape ``(len(xs), m)``: row i holds the shares for x = xs[i].
    Any ``threshold`` rows reconstruct ``secrets``; fewer reveal nothing.

    Raises:
        ValueError: threshold outside [1, len(xs)], an x that is 0, repeated or not < p,
            or a secret not below p.
    """
    s = np.asarray(secrets, dtype=np.uint64).reshape(-1)
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}], got {threshold}")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct integers in [1, p)")
    if (s >= _P).any():
        raise ValueError("secrets must be field elements below p")
    coeffs = random_field((threshold - 1, s.size), randbytes)
    # f(x) = s + sum_k coeffs[k] x^(k+1): the shares are the power matrix times the coefficients
    poly = np.concatenate([s[None, :], coeffs])
    return matmul_mod(_powers(xs, threshold), poly)


def _powers(xs: Sequence[int], count: int) -> np.ndarray:
    """``x^k mod p`` for each x of ``xs`` and k < ``count``: shape ``(len(xs), count)``."""
    rows = []
    for x in xs:
        row, v = [1] * count, 1
        for k in range(1, count):
            v = v * x % PRIME
            row[k] = v
        rows.append(row)
    return np.asarray(rows, dtype=np.uint64).reshape(len(xs), count)


def _shift_mod(x: np.ndarray, k: int) -> np.ndarray:
    """``x * 2^k mod p`` for uint64 ``x`` below 2^58 and 0 < k < 61 (2^61 = 1 mod p)."""
    return _reduce(((x << np.uint64(k)) & _P) + (x >> np.uint64(61 - k)))


def matmul_mod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b mod p`` for field elements (uint64 below p), batched over leading axes like ``np.matmul``.

    Each element is cut into three 21-bit limbs; the nine limb products are one float64
    matrix product whose every sum stays below 2^53 (at most 2^10 terms of 2^42 each), so
    it is exact, and the limbs are recombined with ``2^61 = 1 (mod p)``.
    """
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    terms = a.shape[-1]
    if terms > _MAX_TERMS:  # keep every float sum exact: split the inner dimension
        out = matmul_mod(a[..., :_MAX_TERMS], b[..., :_MAX_TERMS, :])
        return _reduce(out + matmul_mod(a[..., _MAX_TERMS:], b[..., _MAX_TERMS:, :]))
    n, m = a.shape[-2], b.shape[-1]
    al = np.stack([a & _LIMB, (a >> _S21) & _LIMB, a >> _S42], axis=-3).astype(np.float64)
    bl = np.concatenate([b & _LIMB, (b >> _S21) & _LIMB, b >> _S42], axis=-1).astype(np.float64)
    lead = al.shape[:-3]
    r = np.matmul(al.reshape(*lead, 3 * n, terms), bl).astype(np.uint64).reshape(*lead, 3, n, 3, m)
    # limb pair (i, j) carries weight 2^(21 (i + j)); 2^63 = 4 and 2^84 = 2^23 (mod p)
    t0 = r[..., 0, :, 0, :]
    t1 = r[..., 0, :, 1, :] + r[..., 1, :, 0, :]
    t2 = r[..., 0, :, 2, :] + r[..., 1, :, 1, :] + r[..., 2, :, 0, :]
    t3 = r[..., 1, :, 2, :] + r[..., 2, :, 1, :]
    t4 = r[..., 2, :, 2, :]
    total = _reduce(t0) + _shift_mod(t1, 21) + _shift_mod(t2, 42) + _reduce(t3 << _TWO) + _shift_mod(t4, 23)
    return _reduce(total)


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients l_i with f(0) = sum_i l_i f(x_i) for any polynomial of degree < len(xs)."""
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct integers in [1, p)")
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return out


def _lagrange_batch(xs: np.ndarray) -> np.ndarray:
    """:func:`lagrange_at_zero` of every row of ``xs`` (shape ``(B, t)``), vectorised over the batch.

    ``l_i = N / q_i`` with ``N`` the product of the row and ``q_i = x_i prod_{j != i} (x_j - x_i)``;
    the ``q_i`` of a row are inverted together (Montgomery's trick: one modular inverse per row).
    """
    if xs.size and (np.any(xs <= 0) or np.any(xs >= PRIME)):
        raise ValueError("share points must be distinct integers in [1, p)")
    x = np.asarray(xs, dtype=np.uint64)
    rows, t = x.shape
    if t > 1 and np.any(np.diff(np.sort(x, axis=1), axis=1) == 0):
        raise ValueError("share points must be distinct integers in [1, p)")
    if rows == 0 or t == 0:
        return np.zeros((rows, t), dtype=np.uint64)
    diff = _reduce(x[:, None, :] + (_P - x[:, :, None]))  # [b, i, j] = x_j - x_i mod p
    diag = np.arange(t)
    diff[:, diag, diag] = x  # so that row i multiplies to q_i
    q = diff[:, :, 0]
    total = x[:, 0]
    for j in range(1, t):
        q = mulmod(q, diff[:, :, j])
        total = mulmod(total, x[:, j])
    prefix = np.empty_like(q)
    prefix[:, 0] = q[:, 0]
    for k in range(1, t):
        prefix[:, k] = mulmod(prefix[:, k - 1], q[:, k])
    inv = np.asarray([pow(int(v), -1, PRIME) for v in prefix[:, -1]], dtype=np.uint64)
    inv_q = np.empty_like(q)
    for k in range(t - 1, 0, -1):
        inv_q[:, k] = mulmod(inv, prefix[:, k - 1])
        inv = mulmod(inv, q[:, k])
    inv_q[:, 0] = inv
    out: np.ndarray = mulmod(total[:, None], inv_q)
    return out


def reconstruct(xs: Sequence[int], shares: np.ndarray) -> np.ndarray:
    """Interpolate at 0: ``shares`` has shape ``(len(xs), m)``; returns the ``m`` secrets.

    Exactly ``threshold`` shares must be given (more also work); fewer give garbage.
    """
    out: np.ndarray = reconstruct_batch(np.asarray([list(xs)], dtype=np.int64), np.asarray(shares)[None])[0]
    return out


def reconstruct_batch(xs: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Interpolate many secrets at once.

    Args:
        xs: shape ``(B, t)``: the share points of each of B secrets.
        shares: shape ``(B, t, m)``: the shares (field elements).

    Returns:
        shape ``(B, m)``: the reconstructed field elements.
    """
    xs = np.asarray(xs)
    ys = np.asarray(shares, dtype=np.uint64)
    if xs.ndim != 2 or ys.ndim != 3 or ys.shape[:2] != xs.shape:
        raise ValueError(f"shapes do not match: xs {xs.shape}, shares {ys.shape}")
    if (ys >= _P).any():
        raise ValueError("shares must be field elements below p")
    lam = _lagrange_batch(xs)
    out: np.ndarray = matmul_mod(lam[:, None, :], ys)[:, 0, :]
    return out
