"""The content model (--model content): its math against a plain reference, what its delta touches,
cold items, its refusals, and cold_rmse in the evaluation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from attacks import RatedItemsAttack
from securefedrec import ExperimentConfig, Simulation
from securefedrec.data import Dataset, Ratings, synthetic
from securefedrec.data.features import synthetic_features
from securefedrec.errors import ConfigError
from securefedrec.metrics import evaluate
from securefedrec.models.base import RatingsByUser
from securefedrec.models.content import ContentHyper, ContentModel
from securefedrec.models.implicit import ImplicitHyper
from securefedrec.models.mf import solve_users
from securefedrec.models.pool import ClientPool

SMALL: dict[str, Any] = dict(synthetic_users=60, synthetic_items=40, synthetic_ratings_per_user=10,
                             factors=4, device="cpu", sample_rate=1.0, rounds=2, seed=3, model="content",
                             protocol="plaintext")


def _features(items: int, feats: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(items, feats)) * (rng.random((items, feats)) < 0.4)
    return X.astype(np.float32)


def _ratings(users: int, items: int, per_user: int, seed: int) -> Ratings:
    rng = np.random.default_rng(seed)
    u = np.repeat(np.arange(users), per_user)
    i = np.concatenate([rng.choice(items, per_user, replace=False) for _ in range(users)])
    r = rng.integers(1, 6, len(u)).astype(np.float32)
    return Ratings(u, i, r, np.zeros(len(u), np.int64))


def test_one_explicit_epoch_is_a_gradient_step_on_the_clients_mean_loss() -> None:
    """Against a dense reference written out here: the full feature matrix, autograd on W, w, mu."""
    X = _features(12, 5, seed=0)
    model = ContentModel(X, ContentHyper(factors=3))
    ratings = _ratings(4, 12, 5, seed=1)
    data = RatingsByUser(ratings, 4)
    g = model.init_global((1.0, 5.0), torch.Generator().manual_seed(0))
    g[: 5 * 3] = torch.randn(15, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    clients = [np.array([0, 2]), np.array([1]), np.array([3])]
    trained = model.train(g, data, clients, 1, 0.5, torch.device("cpu"), torch.float64,
                          local=model.init_local(4, torch.float64, torch.Generator()),
                          generator=torch.Generator())
    Xt = torch.as_tensor(X, dtype=torch.float64)
    h = model.hyper
    for c, users in enumerate(clients):
        vec = g.clone().requires_grad_()
        W, w, mu = model.layout.split(vec)
        Q, b = Xt @ W, Xt @ w
        batch = data.padded(users, torch.device("cpu"), torch.float64)
        p, bu = solve_users(Q.detach(), b.detach(), mu.detach(), batch, h.lam_user)
        q, bi = Q[batch.items], b[batch.items]
        err = (batch.ratings - mu - bu[:, None] - bi - (q * p[:, None, :]).sum(-1)) * batch.mask
        loss = 0.5 * ((err**2).sum() + h.lam_item * ((q**2).sum(-1) * batch.mask).sum()
                      + h.lam_bias * ((bi**2) * batch.mask).sum()) / batch.mask.sum()
        (grad,) = torch.autograd.grad(loss, vec)
        torch.testing.assert_close(trained.deltas[c], -0.5 * grad)
    assert (trained.deltas.abs().sum(1) > 0).all()


def test_item_weighting_is_a_step_on_each_items_mean_loss_and_reports_the_shares() -> None:
    """``--content-weighting item``: the clients' mean delta is the gradient step on the mean over items of
    each item's mean loss (every item once), the weights read from the shares in the vector; the shares'
    delta is the clients' indicators less the public shares."""
    X = _features(12, 5, seed=0)
    model = ContentModel(X, ContentHyper(factors=3, item_weighting=True))
    ratings = _ratings(6, 12, 5, seed=1)
    data = RatingsByUser(ratings, 6)
    g = model.init_global((1.0, 5.0), torch.Generator().manual_seed(0))
    g[: 5 * 3] = torch.randn(15, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    counts = np.bincount(ratings.items, minlength=12)
    assert model.length == model.layout.length + 12 and counts.min() > 0
    shares = model.shares(g)
    assert shares is not None and (shares == 0).all() and model.item_weights(g) is None
    shares[:] = torch.as_tensor(counts / 6)  # the true shares (every client one user)
    clients = [np.array([u]) for u in range(6)]
    trained = model.train(g, data, clients, 1, 0.5, torch.device("cpu"), torch.float64,
                          local=model.init_local(6, torch.float64, torch.Generator()),
                          generator=torch.Generator())
    Xt = torch.as_tensor(X, dtype=torch.float64)
    h = model.hyper
    vec = g.clone().requires_grad_()
    W, w, mu = model.layout.split(vec)
    Q, b = Xt @ W, Xt @ w
    per_item = torch.zeros(12, dtype=torch.float64)
    for u in range(6):
        batch = data.padded(np.array([u]), torch.device("cpu"), torch.float64)
        p, bu = solve_users(Q.detach(), b.detach(), mu.detach(), batch, h.lam_user)
        q, bi = Q[batch.items[0]], b[batch.items[0]]
        err = batch.ratings[0] - mu - bu[0] - bi - (q * p[0]).sum(-1)
        terms = 0.5 * (err**2 + h.lam_item * (q**2).sum(-1) + h.lam_bias * bi**2)
        per_item = per_item.index_add(0, batch.items[0], terms)
    loss = (per_item / torch.as_tensor(counts, dtype=torch.float64)).mean()  # each item's mean, then items
    (grad,) = torch.autograd.grad(loss, vec)
    L = model.layout.length
    torch.testing.assert_close(trained.deltas[:, :L].mean(0), -0.5 * grad[:L])
    indicators = np.zeros((6, 12))
    indicators[ratings.users, ratings.items] = 1
    torch.testing.assert_close(trained.deltas[:, L:], torch.as_tensor(indicators - counts / 6))
    with pytest.raises(ConfigError, match="content-weighting"):
        ContentHyper(item_weighting=True, implicit=ImplicitHyper())


def test_a_delta_touches_only_the_features_of_the_clients_items() -> None:
    """What a content update reveals: the features of the rated items (rows of W and w), no item index."""
    X = np.zeros((6, 4), np.float32)
    X[0, 0] = X[1, 1] = X[2, 1] = X[3, 2] = X[4, 3] = X[5, 3] = 1.0
    model = ContentModel(X, ContentHyper(factors=2))
    ratings = Ratings(np.array([0, 0, 1]), np.array([1, 2, 4]), np.array([5.0, 4.0, 2.0], np.float32),
                      np.zeros(3, np.int64))
    g = model.init_global((1.0, 5.0), torch.Generator().manual_seed(0))
    pool = ClientPool(ratings, 2, model, device=torch.device("cpu"))
    deltas = pool.train([0, 1], g, 2, 0.5, torch.Generator())
    W, w, mu = model.layout.split(deltas)
    assert W[0].abs().sum(1).nonzero().flatten().tolist() == [1]
    assert W[1].abs().sum(1).nonzero().flatten().tolist() == [3]
    assert w[0].nonzero().flatten().tolist() == [1] and w[1].nonzero().flatten().tolist() == [3]
    assert (mu != 0).all()


def test_batched_clients_equal_one_client_at_a_time() -> None:
    X = _features(15, 6, seed=2)
    for hyper in (ContentHyper(factors=3), ContentHyper(factors=3, implicit=ImplicitHyper(negatives=2))):
        model = ContentModel(X, hyper)
        ratings = _ratings(5, 15, 4, seed=3)
        g = model.init_global((1.0, 5.0), torch.Generator().manual_seed(0))
        together = ClientPool(ratings, 5, model, device=torch.device("cpu"), groups=[[0, 1], [2], [3, 4]])
        both = together.train([0, 1, 2], g, 2, 0.3, torch.Generator().manual_seed(7))
        alone = ClientPool(ratings, 5, model, device=torch.device("cpu"), groups=[[0, 1], [2], [3, 4]])
        if hyper.implicit is None:  # explicit: no draw, any order
            for c in (2, 0, 1):
                torch.testing.assert_close(alone.train([c], g, 2, 0.3, torch.Generator()), both[c : c + 1])
        assert both.shape == (3, model.length) and torch.isfinite(both).all()


def _with_cold_items(data: Dataset, cold: np.ndarray) -> Dataset:
    """``data`` with every training rating of the items ``cold`` moved to the test part."""
    moved = np.isin(data.train.items, cold)
    return replace(data, train=data.train.subset(~moved),
                   test=Ratings.concat([data.test, data.train.subset(moved)]))


def test_content_learns_cold_items_that_mf_predicts_from_biases(tmp_path: Path) -> None:
    """Items never rated in training: content's features (noisy copies of the generator's item
    factors, through --item-features) beat MF, whose cold rows training never touched."""
    users, items, per_user = 150, 60, 12
    path = tmp_path / "features.csv"
    feats = synthetic_features(users, items, per_user, seed=3)
    path.write_text("".join(f"{i},{name},{feats.matrix[i, j]}\n"
                            for i in range(items) for j, name in enumerate(feats.names)))
    data = _with_cold_items(synthetic(users, items, per_user, seed=3), np.arange(0, items, 6))
    cfg = ExperimentConfig(**{**SMALL, "synthetic_users": users, "synthetic_items": items,
                              "synthetic_ratings_per_user": per_user, "rounds": 10,
                              "item_features": str(path), "server_lr": 0.1})
    content = Simulation(cfg, dataset=data).run(progress=False)["final"]
    mf = Simulation(cfg.replace(model="mf", item_features=None, server_lr=None), dataset=data).run(
        progress=False)["final"]
    assert content["cold_ratings"] == mf["cold_ratings"] > 50
    assert content["cold_rmse"] < mf["cold_rmse"] - 0.03  # measured: 0.82 against 0.88


def test_implicit_content_trains_and_ranks() -> None:
    cfg = ExperimentConfig(**{**SMALL, "feedback": "implicit", "split": "loo", "rounds": 3})
    sim = Simulation(cfg)
    before = sim.pool.local["user_factors"].clone()
    report = sim.run(progress=False)
    assert report["final"]["hr@10"] is not None and report["final"]["cold_rmse"] is None
    assert not torch.equal(before, sim.pool.local["user_factors"])  # the kept local part trained


def test_implicit_resume_replays_the_uninterrupted_run(tmp_path: Path) -> None:
    cfg = ExperimentConfig(**{**SMALL, "feedback": "implicit", "split": "loo", "rounds": 3})
    whole = Simulation(cfg)
    whole.run(progress=False)
    ckpt = tmp_path / "run.npz"
    Simulation(cfg.replace(rounds=1)).run(checkpoint=ckpt, progress=False)
    resumed = Simulation(cfg)
    resumed.load_checkpoint(ckpt)
    resumed.run(progress=False)
    np.testing.assert_array_equal(resumed.global_vec, whole.global_vec)
    for name, value in whole.pool.local.items():
        torch.testing.assert_close(resumed.pool.local[name], value, rtol=0, atol=0)


def test_item_rows_refuse_and_so_do_the_attacks_that_read_them() -> None:
    cfg = ExperimentConfig(**SMALL)
    sim = Simulation(cfg)
    with pytest.raises(ConfigError, match="no per-item coordinates"):
        sim.model.item_rows(sim.global_vec)
    data = synthetic(60, 40, 10, seed=3)
    with pytest.raises(ConfigError, match="no per-item coordinates"):
        RatedItemsAttack().run(cfg.replace(rounds=1), dataset=data)


def test_synthetic_features_need_the_configured_data_set(tmp_path: Path) -> None:
    cfg = ExperimentConfig(**SMALL)
    with pytest.raises(ConfigError, match="not the one --synthetic-users"):
        Simulation(cfg, dataset=synthetic(60, 40, 10, seed=4))
    path = tmp_path / "f.csv"
    path.write_text("".join(f"{i},g{i % 3}\n" for i in range(40)))
    sim = Simulation(cfg.replace(item_features=str(path)), dataset=synthetic(60, 40, 10, seed=4))
    assert sim.model.length == 3 * (4 + 1) + 1
    with pytest.raises(ConfigError, match="only"):
        ContentHyper(implicit=ImplicitHyper(optimizer="adam"))


def test_cold_rmse_is_the_rmse_of_the_test_ratings_of_untrained_items() -> None:
    data = _with_cold_items(synthetic(80, 60, 8, seed=1), np.arange(0, 60, 7))
    model = ContentModel(_features(60, 5, seed=4), ContentHyper(factors=3))
    g = model.init_global(data.scale, torch.Generator().manual_seed(0))
    train = RatingsByUser(data.train, data.num_users)
    seen = np.zeros(data.num_items, bool)
    seen[data.train.items] = True
    cold = ~seen[data.test.items]
    assert cold.any() and not cold.all()
    ev = evaluate(g, model, train, data.test, data.scale)
    only_cold = evaluate(g, model, train, data.test.subset(cold), data.scale)
    assert ev.cold_ratings == int(cold.sum())
    assert ev.cold_rmse == pytest.approx(only_cold.rmse, rel=1e-6)
    assert ev.cold_rmse != pytest.approx(ev.rmse, rel=1e-3)
    warm = evaluate(g, model, train, data.test.subset(~cold), data.scale)
    assert warm.cold_rmse is None and warm.cold_ratings == 0
    assert ev.as_dict()["cold_rmse"] == ev.cold_rmse
