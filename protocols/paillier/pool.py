"""Encryption randomness ``r^n mod n^2`` computed ahead of time, each value handed out once.

The obfuscator is the expensive part of Paillier encryption (one exponentiation
with an exponent of the key size modulo ``n^2``); the rest is one
multiplication. A client fills its :class:`RandomnessPool` while idle (for
example while it trains), so that encrypting its update online costs almost
nothing. Values leave the pool exactly once; the pool refuses to hand out more
than it holds rather than reuse one (two ciphertexts with the same obfuscator
reveal the difference of their plaintexts to anyone holding one of them).

Randomness comes from :mod:`secrets` unless a ``randbelow`` callable is
injected (tests). Key holders (every client in this protocol holds the private
key) use :func:`~protocols.paillier.raw.obfuscator_crt`, about 4x cheaper.
Filling can use several processes (``workers``); the random draws are made in
the calling process, so an injected ``randbelow`` stays deterministic.
"""

from __future__ import annotations

import functools
import math
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from protocols.errors import ConfigError, ProtocolError
from protocols.paillier.raw import MPZ, PrivateKey, PublicKey, as_mpz, obfuscator, obfuscator_crt

__all__ = ["RandomnessPool", "fill_pools"]

RandBelow = Callable[[int], int]
_MIN_PARALLEL = 16
"""Below this many obfuscators, starting processes costs more than it saves."""


@functools.lru_cache(maxsize=4)
def _worker_public(n: int) -> PublicKey:
    return PublicKey(n)


@functools.lru_cache(maxsize=4)
def _worker_private(p: int, q: int) -> PrivateKey:
    return PrivateKey(PublicKey(p * q), p, q)  # factors were checked where the key was made


def _public_chunk(n: int, rs: list[int]) -> list[int]:
    key = _worker_public(n)
    return [int(obfuscator(key, r)) for r in rs]


def _crt_chunk(p: int, q: int, pairs: list[tuple[int, int]]) -> list[int]:
    key = _worker_private(p, q)
    return [int(obfuscator_crt(key, yp, yq)) for yp, yq in pairs]


def _chunk(group: tuple[int, ...], items: list[Any]) -> list[int]:
    """Worker entry point: ``group`` is ``(p, q)`` (key holder) or ``(n,)``."""
    if len(group) == 2:
        return _crt_chunk(group[0], group[1], items)
    return _public_chunk(group[0], items)


class RandomnessPool:
    """Precomputed obfuscators for one client and one public key.

    Args:
        public: the Paillier public key.
        private: the private key when the client holds it (enables the CRT fast path).
        randbelow: ``randbelow(k)`` -> uniform int in ``[0, k)``; default :func:`secrets.randbelow`.
        workers: processes used by :meth:`fill` (1 = in this process).
    """

    def __init__(
        self,
        public: PublicKey,
        *,
        private: PrivateKey | None = None,
        randbelow: RandBelow | None = None,
        workers: int = 1,
    ) -> None:
        if private is not None and private.public.n != public.n:
            raise ConfigError("RandomnessPool: private key does not belong to the public key")
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.public = public
        self.private = private
        self.workers = workers
        self._randbelow: RandBelow = randbelow if randbelow is not None else secrets.randbelow
        self._values: deque[MPZ] = deque()
        self.issued = 0
        """How many values have left the pool (never to be handed out again)."""

    def __len__(self) -> int:
        return len(self._values)

    def draw(self, count: int) -> list[int] | list[tuple[int, int]]:
        """The random inputs of ``count`` obfuscators (``r`` in Z_n^*, or ``(yp, yq)`` for key holders)."""
        if self.private is not None:
            p, q = int(self.private.p), int(self.private.q)
            return [(self._randbelow(p - 1) + 1, self._randbelow(q - 1) + 1) for _ in range(count)]
        n = int(self.public.n)
        rs: list[int] = []
        while len(rs) < count:
            r = self._randbelow(n - 1) + 1
            if math.gcd(r, n) == 1:
                rs.append(r)
        return rs

    def extend(self, values: Sequence[MPZ]) -> None:
        """Add obfuscators computed elsewhere (by :func:`fill_pools`)."""
        self._values.extend(as_mpz(v) for v in values)

    def fill(self, count: int) -> None:
        """Compute ``count`` more obfuscators (using :attr:`workers` processes)."""
        fill_pools([(self, count)], workers=self.workers)

    def take(self, count: int) -> list[MPZ]:
        """Remove and return ``count`` obfuscators, each handed out once.

        Raises:
            ProtocolError: fewer than ``count`` left (never reuses a value).
        """
        if count > len(self._values):
            raise ProtocolError(
                f"randomness pool holds {len(self._values)} obfuscators, {count} requested; "
                "fill it first (values are never reused)"
            )
        out = [self._values.popleft() for _ in range(count)]
        self.issued += count
        return out


def fill_pools(requests: Sequence[tuple[RandomnessPool, int]], workers: int = 1) -> None:
    """Fill several pools with one batch of work spread over ``workers`` processes.

    All draws of pools that share a key are pooled and split into a few large
    chunks, so many simulated clients filling at once cost one process start-up.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    for _pool, count in requests:
        if count < 0:
            raise ConfigError(f"cannot add {count} values to a randomness pool")
    draws = [(pool, pool.draw(count)) for pool, count in requests if count > 0]
    total = sum(len(d) for _, d in draws)
    if workers == 1 or total < _MIN_PARALLEL:
        for pool, d in draws:
            if pool.private is not None:
                pool.extend([obfuscator_crt(pool.private, yp, yq) for yp, yq in d])  # type: ignore[misc]
            else:
                pool.extend([obfuscator(pool.public, r) for r in d])  # type: ignore[arg-type]
        return
    groups: dict[tuple[int, ...], list[tuple[RandomnessPool, list[Any]]]] = {}
    for pool, d in draws:
        group: tuple[int, ...]
        if pool.private is not None:
            group = (int(pool.private.p), int(pool.private.q))
        else:
            group = (int(pool.public.n),)
        groups.setdefault(group, []).append((pool, list(d)))
    with ProcessPoolExecutor(max_workers=workers) as executor:
        for group, members in groups.items():
            flat = [x for _, d in members for x in d]
            size = -(-len(flat) // (2 * workers))
            futures = [executor.submit(_chunk, group, flat[i : i + size]) for i in range(0, len(flat), size)]
            results = [v for f in futures for v in f.result()]
            offset = 0
            for pool, d in members:
                pool.extend(results[offset : offset + len(d)])
                offset += len(d)
