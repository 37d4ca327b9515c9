"""The lazily generated catalogue at scale and the streamed round."""

from __future__ import annotations

import numpy as np
import pytest

from securefedrec.data.scale import ScaleCatalog
from securefedrec.errors import ConfigError
from securefedrec.server.scale import ScaleModel, local_update, run_scale_round, stream_updates


def test_a_users_history_is_the_same_at_every_call_and_distinct() -> None:
    cat = ScaleCatalog(users=10**6, items=10**5, seed=4)
    a, b = cat.history(123_456), cat.history(123_456)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.ratings, b.ratings)
    assert np.all(np.diff(a.items) > 0) and a.items.max() < 10**5
    assert np.all((a.ratings >= 1) & (a.ratings <= 5))
    assert not np.array_equal(a.items, cat.history(123_457).items)


def test_popularity_is_zipf_and_histories_are_long_tailed() -> None:
    cat = ScaleCatalog(users=10**6, items=2000, seed=1, history_median=20, history_sigma=1.0)
    lengths = np.array([cat.history(u).items.size for u in range(400)])
    assert np.median(lengths) == pytest.approx(20, rel=0.25)
    assert lengths.max() > 5 * np.median(lengths)  # the long tail
    counts = np.bincount(np.concatenate([cat.history(u).items for u in range(400)]), minlength=2000)
    head, tail = counts[:20].mean(), counts[1000:].mean()
    assert head > 20 * tail  # Zipf(1): item 10 is ~100x as popular as item 1000


def test_sampling_follows_the_rate_and_the_seed() -> None:
    cat = ScaleCatalog(users=10**6, items=100)
    s = cat.sample(3, 1e-3)
    assert abs(s.size - 1000) < 5 * np.sqrt(1000) and np.all(np.diff(s) > 0)
    assert np.array_equal(s, cat.sample(3, 1e-3)) and not np.array_equal(s, cat.sample(4, 1e-3))


@pytest.mark.parametrize("bad", [{"users": 0}, {"items": 0}, {"zipf": -1.0}, {"history_median": 0.5}])
def test_bad_catalogues_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ScaleCatalog(**{"users": 10, "items": 10, **bad})  # type: ignore[arg-type]


def test_local_update_lowers_the_clients_error() -> None:
    cat = ScaleCatalog(users=100, items=50, seed=2, history_median=30, noise=0.0)
    model = ScaleModel.init(50, 8)
    h = cat.history(7)

    def loss(m: ScaleModel) -> float:
        q, b = m.factors[h.items].astype(float), m.biases[h.items]
        target = h.ratings - m.mean - b
        p = np.linalg.solve(q.T @ q + 0.1 * np.eye(8), q.T @ target)
        return float(np.mean((target - q @ p) ** 2))

    before = loss(model)
    step = local_update(model, h.items, h.ratings, lr=0.5)
    model.factors[h.items] += step[:, :8].astype(np.float32)
    model.biases[h.items] += step[:, 8].astype(np.float32)
    assert loss(model) < before


def test_streamed_chunks_cover_the_sample_once() -> None:
    cat = ScaleCatalog(users=1000, items=40, history_median=5)
    model = ScaleModel.init(40, 4)
    users = cat.sample(0, 0.05)
    parts = list(stream_updates(cat, model, users, chunk=7))
    assert all(len(p) <= 7 for p in parts)
    assert sorted(u for p in parts for u in p) == users.tolist()


def test_secure_round_equals_the_plaintext_round_on_non_thin_rows() -> None:
    cat = ScaleCatalog(users=2000, items=30, seed=5, history_median=8)
    plain, secure = ScaleModel.init(30, 4), ScaleModel.init(30, 4)
    a = run_scale_round(cat, plain, 0, 0.01, secure=False, chunk=5)
    b = run_scale_round(cat, secure, 0, 0.01, secure=True, chunk=5, item_epsilon=50.0)
    assert a["clients"] == b["clients"] > 10
    assert b["rows_reported"] < 30 and b["bytes_up"] > 0 and b["peak_gib"] > 0
    # epsilon 50: each reported set is the true one; a row held by >= 2 clients gets the same update
    # (up to quantization), a row held by one is thin: never sent, left as it was
    holders = np.bincount(np.concatenate([cat.history(u).items for u in cat.sample(0, 0.01)]), minlength=30)
    start = ScaleModel.init(30, 4).factors
    ok, thin = holders >= 2, holders == 1
    assert ok.sum() > 10 and thin.any()
    np.testing.assert_allclose(secure.factors[ok], plain.factors[ok], rtol=0, atol=1e-5)
    assert np.array_equal(secure.factors[thin], start[thin])
    assert not np.allclose(plain.factors[thin], start[thin])
