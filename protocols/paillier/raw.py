"""Raw Paillier arithmetic on gmpy2 integers.

.. warning::
   This is a hazardous-materials layer, like ``phe``'s ``raw_encrypt`` and
   pyca/cryptography's ``hazmat``. Nothing here encodes values, checks that a
   plaintext sum stays below ``n``, stops randomness from being reused or
   decides who may decrypt what. Reusing an obfuscator ``r^n`` for two
   plaintexts leaks their difference's ciphertext relation; decrypting a single
   client's ciphertext reveals its update. Use
   :class:`protocols.paillier.PaillierAggregator` unless you are building a
   protocol and know exactly which of these guarantees you now owe.
   Exponentiations use GMP's ``mpz_powm``, which is not constant-time (as in
   phe): a co-located attacker timing a key holder could learn about ``p, q``.

The scheme (Paillier 1999) with ``g = n + 1``:

- encryption ``c = (1 + m n) * r^n mod n^2`` for ``m`` in ``[0, n)`` and ``r``
  in ``Z_n^*`` (:func:`raw_encrypt`); ``r^n mod n^2`` is the *obfuscator* and
  can be computed ahead of time (:func:`obfuscator`), after which encryption
  is one multiplication (:func:`encrypt_with_obfuscator`);
- addition of plaintexts is multiplication of ciphertexts mod ``n^2``
  (:func:`raw_add`);
- decryption with the factors ``p, q`` by the Chinese remainder theorem
  (:func:`raw_decrypt`), as in phe: ``m_p = L_p(c^(p-1) mod p^2) h_p mod p``
  with ``L_p(x) = (x - 1) / p`` and ``h_p = L_p(g^(p-1) mod p^2)^-1 mod p``,
  likewise for ``q``, then ``m = CRT(m_p, m_q)``.

Key holders (who know ``p, q``) can draw obfuscators faster with
:func:`obfuscator_crt`: the ``n``-th residues modulo ``p^2`` are exactly the
subgroup of order ``p - 1``, whose elements are ``y^p mod p^2`` for ``y`` in
``Z_p^*`` (a bijection, since ``y^p = y mod p``); combining one such element
modulo ``p^2`` and one modulo ``q^2`` by CRT gives an ``n``-th residue modulo
``n^2`` with exactly the distribution of ``r^n`` for uniform ``r``, at the cost
of two 1024-bit exponentiations modulo 2048-bit numbers instead of one
2048-bit exponentiation modulo a 4096-bit number (about 4x less work at
2048-bit keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocols.errors import ConfigError, DecodeError

try:
    import gmpy2
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "protocols.paillier needs gmpy2 (and phe for key generation): pip install securefedrec[paillier]"
    ) from exc

__all__ = [
    "MPZ",
    "PrivateKey",
    "PublicKey",
    "as_mpz",
    "encrypt_with_obfuscator",
    "obfuscator",
    "obfuscator_crt",
    "raw_add",
    "raw_decrypt",
    "raw_encrypt",
]

MPZ = Any
"""A ``gmpy2.mpz`` (gmpy2 ships no type stubs)."""


@dataclass(frozen=True)
class PublicKey:
    """A Paillier public key ``n`` (with ``g = n + 1``) and its derived constants."""

    n: MPZ
    nsquare: MPZ = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = gmpy2.mpz(self.n)
        if n < 15 or n % 2 == 0:
            raise ConfigError(f"Paillier modulus must be an odd composite >= 15, got {int(n)}")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "nsquare", n * n)

    @property
    def bits(self) -> int:
        """Bit length of ``n`` (the key size)."""
        return int(gmpy2.bit_length(self.n))

    @property
    def plaintext_bits(self) -> int:
        """Bits a plaintext may use so that it is always below ``n``: ``bits - 1``."""
        return self.bits - 1

    @property
    def ciphertext_bytes(self) -> int:
        """Bytes of one ciphertext (an element of ``Z_{n^2}``) on the wire."""
        return (int(gmpy2.bit_length(self.nsquare)) + 7) // 8

    @property
    def plaintext_bytes(self) -> int:
        """Bytes of one plaintext (an element of ``Z_n``) on the wire."""
        return (self.bits + 7) // 8

    def n_bytes(self) -> bytes:
        """``n`` as big-endian bytes (fixed width :attr:`plaintext_bytes`)."""
        return int(self.n).to_bytes(self.plaintext_bytes, "big")


@dataclass(frozen=True)
class PrivateKey:
    """A Paillier private key: the factors ``p, q`` of ``n`` and the CRT constants."""

    public: PublicKey
    p: MPZ
    q: MPZ
    psquare: MPZ = field(init=False, repr=False)
    qsquare: MPZ = field(init=False, repr=False)
    hp: MPZ = field(init=False, repr=False)
    hq: MPZ = field(init=False, repr=False)
    p_inverse: MPZ = field(init=False, repr=False)
    psquare_inverse: MPZ = field(init=False, repr=False)

    def __post_init__(self) -> None:
        p, q = gmpy2.mpz(self.p), gmpy2.mpz(self.q)
        if p == q or p * q != self.public.n:
            raise ConfigError("Paillier private key: p * q must equal n with p != q")
        if p > q:  # a canonical order keeps the CRT constants (and the wire form) unique
            p, q = q, p
        psq, qsq = p * p, q * q
        g = self.public.n + 1
        set_ = object.__setattr__
        set_(self, "p", p)
        set_(self, "q", q)
        set_(self, "psquare", psq)
        set_(self, "qsquare", qsq)
        set_(self, "hp", gmpy2.invert((gmpy2.powmod(g, p - 1, psq) - 1) // p, p))
        set_(self, "hq", gmpy2.invert((gmpy2.powmod(g, q - 1, qsq) - 1) // q, q))
        set_(self, "p_inverse", gmpy2.invert(p, q))
        set_(self, "psquare_inverse", gmpy2.invert(psq, qsq))

    @classmethod
    def from_factors(cls, p: int, q: int) -> PrivateKey:
        """The key pair with ``n = p q`` (``p, q`` distinct primes)."""
        p_, q_ = gmpy2.mpz(p), gmpy2.mpz(q)
        if not (gmpy2.is_prime(p_) and gmpy2.is_prime(q_)):
            raise ConfigError("Paillier private key: p and q must be prime")
        return cls(PublicKey(p_ * q_), p_, q_)


def raw_encrypt(public: PublicKey, m: int, r: int) -> MPZ:
    """``(1 + m n) r^n mod n^2`` for ``0 <= m < n`` and ``r`` in ``Z_n^*`` (hazmat: r must be fresh)."""
    return encrypt_with_obfuscator(public, m, obfuscator(public, r))


def obfuscator(public: PublicKey, r: int) -> MPZ:
    """``r^n mod n^2``; refuses ``r`` outside ``Z_n^*``."""
    r_ = gmpy2.mpz(r)
    if not 0 < r_ < public.n or gmpy2.gcd(r_, public.n) != 1:
        raise ConfigError("Paillier randomness r must be in Z_n^* (0 < r < n, gcd(r, n) = 1)")
    return gmpy2.powmod(r_, public.n, public.nsquare)


def obfuscator_crt(private: PrivateKey, yp: int, yq: int) -> MPZ:
    """The ``n``-th residue mod ``n^2`` that is ``yp^p mod p^2`` and ``yq^q mod q^2`` (key holders only).

    ``yp`` uniform in ``[1, p)`` and ``yq`` uniform in ``[1, q)`` give the same
    distribution as ``r^n mod n^2`` for uniform ``r`` (see the module docstring).
    """
    yp_, yq_ = gmpy2.mpz(yp), gmpy2.mpz(yq)
    if not (0 < yp_ < private.p and 0 < yq_ < private.q):
        raise ConfigError("key-holder randomness must satisfy 0 < yp < p and 0 < yq < q")
    a = gmpy2.powmod(yp_, private.p, private.psquare)
    b = gmpy2.powmod(yq_, private.q, private.qsquare)
    return a + ((b - a) * private.psquare_inverse % private.qsquare) * private.psquare


def encrypt_with_obfuscator(public: PublicKey, m: int, rn: MPZ) -> MPZ:
    """``(1 + m n) * rn mod n^2``: online encryption with a precomputed obfuscator ``rn = r^n``."""
    m_ = gmpy2.mpz(m)
    if not 0 <= m_ < public.n:
        raise ConfigError(
            f"Paillier plaintext must be in [0, n), got a {int(gmpy2.bit_length(m_))}-bit value"
        )
    return (m_ * public.n + 1) * rn % public.nsquare


def raw_add(public: PublicKey, c1: MPZ, c2: MPZ) -> MPZ:
    """Ciphertext of the sum of the plaintexts of ``c1`` and ``c2`` (mod ``n``)."""
    return c1 * c2 % public.nsquare


def raw_decrypt(private: PrivateKey, c: MPZ) -> MPZ:
    """The plaintext of ``c`` in ``[0, n)``, by CRT over ``p^2`` and ``q^2``."""
    c_ = gmpy2.mpz(c)
    if not 0 < c_ < private.public.nsquare:
        raise DecodeError("Paillier ciphertext out of range (0, n^2)")
    p, q = private.p, private.q
    mp = (gmpy2.powmod(c_ % private.psquare, p - 1, private.psquare) - 1) // p * private.hp % p
    mq = (gmpy2.powmod(c_ % private.qsquare, q - 1, private.qsquare) - 1) // q * private.hq % q
    return mp + ((mq - mp) * private.p_inverse % q) * p


def as_mpz(value: int) -> MPZ:
    """``value`` as a gmpy2 integer."""
    return gmpy2.mpz(value)


def to_bytes(value: MPZ, width: int) -> bytes:
    """``value`` as ``width`` big-endian bytes."""
    return int(value).to_bytes(width, "big")


def from_bytes(data: bytes) -> MPZ:
    """Inverse of :func:`to_bytes`."""
    return gmpy2.mpz(int.from_bytes(data, "big"))
