from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import shamir
from tests.vectors import vectors

P = shamir.PRIME


def pinned_randbytes(label: str) -> Callable[[int], bytes]:
    """SHAKE-256('<label>/<call number>'), the randomness the vectors were generated with."""
    counter = [0]

    def randbytes(n: int) -> bytes:
        counter[0] += 1
        return hashlib.shake_256(f"{label}/{counter[0]}".encode()).digest(n) if n else b""

    return randbytes


def python_lagrange(xs: list[int], ys: list[int]) -> int:
    """Independent plain-Python interpolation at 0 over GF(p)."""
    total = 0
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num, den = num * xj % P, den * (xj - xi) % P
        total = (total + yi * num * pow(den, P - 2, P)) % P
    return total


def python_chunks(secret: bytes) -> list[int]:
    return [int.from_bytes(secret[i : i + 7], "little") for i in range(0, len(secret), 7)]


@vectors("shamir")
def test_known_answers(vector: dict) -> None:
    secret = bytes.fromhex(vector["secret"])
    xs, t, shares = vector["xs"], vector["threshold"], vector["shares"]
    # 1. the vector's shares interpolate (plain Python) to the secret's chunks
    chunks = python_chunks(secret)
    for k in range(len(chunks)):
        assert python_lagrange(xs[:t], [row[k] for row in shares[:t]]) == chunks[k]
        assert python_lagrange(xs[-t:], [row[k] for row in shares[-t:]]) == chunks[k]
    # 2. our split with the same pinned randomness reproduces them
    got = shamir.split(shamir.bytes_to_field(secret), xs, t, pinned_randbytes(vector["randomness"]))
    assert got.tolist() == shares
    # 3. our reconstruction agrees
    rec = shamir.reconstruct(xs[-t:], np.asarray(shares[-t:], dtype=np.uint64))
    assert shamir.field_to_bytes(rec, len(secret)) == secret


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(st.integers(0, P - 1), min_size=1, max_size=20),
    b=st.lists(st.integers(0, P - 1), min_size=1, max_size=20),
)
def test_mulmod_matches_python(a: list[int], b: list[int]) -> None:
    m = min(len(a), len(b))
    a, b = [*a[: m - 1], P - 1][:m], b[:m]
    got = shamir.mulmod(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    assert got.tolist() == [x * y % P for x, y in zip(a, b, strict=True)]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 5), t=st.integers(1, 6), m=st.integers(1, 4), batch=st.integers(0, 2))
def test_matmul_mod_matches_python(data: st.DataObject, n: int, t: int, m: int, batch: int) -> None:
    lead = (batch,) if batch else ()
    field = st.one_of(st.integers(0, P - 1), st.sampled_from([0, 1, P - 1, P - 2, 2**61 - 2**21]))
    a = np.asarray(data.draw(st.lists(field, min_size=n * t * max(batch, 1), max_size=n * t * max(batch, 1))),
                   dtype=np.uint64).reshape(*lead, n, t)
    b = np.asarray(data.draw(st.lists(field, min_size=t * m * max(batch, 1), max_size=t * m * max(batch, 1))),
                   dtype=np.uint64).reshape(*lead, t, m)
    got = shamir.matmul_mod(a, b)
    aa, bb = a.reshape(-1, n, t).tolist(), b.reshape(-1, t, m).tolist()
    want = [[[sum(x[i][k] * y[k][j] for k in range(t)) % P for j in range(m)] for i in range(n)]
            for x, y in zip(aa, bb, strict=True)]
    assert got.shape == (*lead, n, m)
    assert got.reshape(-1, n, m).tolist() == want


def test_matmul_mod_long_inner_dimension_stays_exact() -> None:
    # more terms than one exact float64 sum holds: the product is split and summed mod p
    rng = np.random.default_rng(5)
    t = 2500
    a = np.full((2, t), P - 1, dtype=np.uint64)
    a[1] = rng.integers(0, P, t, dtype=np.uint64)
    b = np.full((t, 1), P - 1, dtype=np.uint64)
    want = [sum(int(x) * (P - 1) for x in row) % P for row in a]
    assert shamir.matmul_mod(a, b)[:, 0].tolist() == want


def test_large_share_points_use_the_general_path() -> None:
    secret = bytes(range(32))
    xs = [2**40 + 1, 2**50 + 3, 5]
    shares = shamir.split(shamir.bytes_to_field(secret), xs, 2, os.urandom)
    assert shamir.field_to_bytes(shamir.reconstruct(xs[:2], shares[:2]), 32) == secret


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=40),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_any_threshold_subset_reconstructs(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True))
    shares = shamir.split(shamir.bytes_to_field(secret), xs, t, os.urandom)
    pick = data.draw(st.permutations(range(n)))[:t]
    rec = shamir.reconstruct([xs[i] for i in pick], shares[pick])
    assert shamir.field_to_bytes(rec, len(secret)) == secret


def test_fewer_than_threshold_shares_give_garbage() -> None:
    secret = bytes(range(32))
    shares = shamir.split(shamir.bytes_to_field(secret), [1, 2, 3, 4], 3, os.urandom)
    rec = shamir.reconstruct([1, 2], shares[:2])
    # t - 1 shares leave the secret uniform: the interpolation at 0 misses it (2^-56 per element)
    assert not np.array_equal(np.asarray(rec), np.asarray(shamir.bytes_to_field(secret)))


def test_batch_reconstruction() -> None:
    secrets = [os.urandom(32) for _ in range(5)]
    xs = np.asarray([[1, 3, 4], [2, 3, 5], [1, 2, 3], [7, 8, 9], [4, 5, 6]])
    ys = []
    for s, row in zip(secrets, xs, strict=True):
        sh = shamir.split(shamir.bytes_to_field(s), list(range(1, 10)), 3, os.urandom)
        ys.append(sh[row - 1])
    out = shamir.reconstruct_batch(xs, np.asarray(ys))
    assert [shamir.field_to_bytes(o, 32) for o in out] == secrets


def test_coefficients_come_from_randbytes_only() -> None:
    s = shamir.bytes_to_field(b"k" * 32)
    a = shamir.split(s, [1, 2, 3], 2, pinned_randbytes("x"))
    b = shamir.split(s, [1, 2, 3], 2, pinned_randbytes("x"))
    c = shamir.split(s, [1, 2, 3], 2, pinned_randbytes("y"))
    assert (a == b).all() and (a != c).any()


@pytest.mark.parametrize(
    ("xs", "t"), [([1, 2], 3), ([1, 2], 0), ([0, 1], 1), ([1, 1], 1), ([P, 1], 1)]
)
def test_split_rejects_bad_parameters(xs: list[int], t: int) -> None:
    with pytest.raises(ValueError):
        shamir.split(np.zeros(2, dtype=np.uint64), xs, t, os.urandom)


def test_rejects_values_outside_the_field() -> None:
    with pytest.raises(ValueError):
        shamir.split(np.asarray([P], dtype=np.uint64), [1, 2], 1, os.urandom)
    with pytest.raises(ValueError):
        shamir.reconstruct([1], np.asarray([[P]], dtype=np.uint64))


def test_docstring_opens_with_hazmat_warning() -> None:
    assert (shamir.__doc__ or "").startswith("HAZMAT")


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.lists(st.integers(1, P - 1), min_size=1, max_size=8, unique=True),
                     min_size=1, max_size=4))
def test_batched_lagrange_matches_the_scalar_one(rows: list[list[int]]) -> None:
    t = min(len(r) for r in rows)
    xs = [r[:t] for r in rows]
    got = shamir._lagrange_batch(np.asarray(xs, dtype=np.uint64))
    assert got.tolist() == [shamir.lagrange_at_zero(r) for r in xs]


@pytest.mark.parametrize("xs", [[[1, 2, 2]], [[0, 1, 2]], [[1, 2, P]]])
def test_batched_reconstruction_refuses_bad_share_points(xs: list[list[int]]) -> None:
    with pytest.raises(ValueError, match="distinct integers"):
        shamir.reconstruct_batch(np.asarray(xs, dtype=np.uint64), np.zeros((1, 3, 2), dtype=np.uint64))
