"""The popularity model and model fusion (issue #17): the counts from the secure sum, one vector for
every member, stacking on held-out data, the personal weights and the prior's gradient, the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from securefedrec import ExperimentConfig, Simulation
from securefedrec.cli import main
from securefedrec.data import Ratings
from securefedrec.errors import ConfigError
from securefedrec.models import fusion
from securefedrec.models.base import RatingsByUser
from securefedrec.models.fusion import GRAM, HOLDOUT, MOMENT, OFFSET, PRIOR_SCALE, Fusion, holdout_flags
from securefedrec.models.mf import MF
from securefedrec.models.popularity import Popularity

SMALL: dict[str, Any] = dict(synthetic_users=40, synthetic_items=30, synthetic_ratings_per_user=20, factors=4,
                             device="cpu", sample_rate=1.0, rounds=2, seed=2, protocol="plaintext")


def _config(**changes: Any) -> ExperimentConfig:
    return ExperimentConfig(**{**SMALL, **changes})


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(5)


def _train_once(sim: Simulation) -> tuple[torch.Tensor, Any]:
    """The deltas of every client from the current global vector, drawing from :func:`_generator`."""
    g = torch.from_numpy(sim.global_vec.copy())
    deltas = sim.pool.train(list(range(sim.pool.num_clients)), g, 1, sim.config.model.local_lr, _generator())
    return deltas, g


# ---- popularity
def test_popularity_after_one_fedavg_round_is_the_exact_share_and_mean_of_the_clients() -> None:
    sim = Simulation(_config(model="popularity", rounds=1, server_optimizer="fedavg", server_lr=1.0))
    sim.run(progress=False)
    train = sim.dataset.train
    n_users, n_items = sim.dataset.num_users, sim.dataset.num_items
    rows = sim.global_vec.reshape(n_items, 2)
    counts = np.bincount(train.items, minlength=n_items)
    np.testing.assert_allclose(rows[:, 0], counts / n_users, atol=1e-6)
    lo, hi = sim.dataset.scale
    z = (train.ratings - (lo + hi) / 2) / ((hi - lo) / 2)
    sums = np.bincount(train.items, z, minlength=n_items)
    np.testing.assert_allclose(rows[:, 1], sums / n_users, atol=1e-6)
    # a popular item's mean is close to its sample mean (shrinkage is a tenth of the average count)
    model = sim.model
    assert isinstance(model, Popularity)
    means = model.item_means(torch.from_numpy(sim.global_vec)).numpy()
    top = int(counts.argmax())
    sample = train.ratings[train.items == top].mean()
    assert abs(means[top] - sample) < 0.1 * abs(sample - train.ratings.mean()) + 1e-3


def test_popularity_scores_rank_items_by_their_share_and_an_unrated_item_gets_the_items_mean() -> None:
    model = Popularity(3, explicit=True)
    model.use_scale((1.0, 5.0))
    g = torch.tensor([0.5, 0.5, 0.1, -0.1, 0.0, 0.0], dtype=torch.float64)  # item 2: nobody
    local = {"user_offset": torch.zeros(2, dtype=torch.float64)}
    assert model.scores(g, local).tolist() == [[0.5, 0.1, 0.0]] * 2
    assert model.unrated(g).tolist() == [False, False, True]
    means = model.item_means(g)
    global_mean = 3.0 + 2.0 * (0.5 - 0.1) / 0.6  # of the ratings: the popular item 0 counts 5 times
    assert means[0].item() > global_mean > means[1].item()
    # the unrated item gets the mean of the two rated items' means (each once), not the ratings' mean
    assert means[2].item() == pytest.approx((means[0].item() + means[1].item()) / 2)
    assert means[2].item() < global_mean - 0.1


def test_a_popularity_delta_is_the_indicator_less_the_public_global_row() -> None:
    sim = Simulation(_config(model="popularity", feedback="implicit", split="loo"))
    sim.global_vec[:] = np.linspace(0.1, 0.5, sim.model.length)
    deltas, g = _train_once(sim)
    rows = sim.model.item_rows(deltas[0].numpy())
    touched = np.zeros(sim.dataset.num_items, bool)
    touched[sim.pool.data.user_items(0)] = True
    g_rows = sim.model.item_rows(g.numpy())
    np.testing.assert_allclose(rows[~touched], -g_rows[~touched])
    np.testing.assert_allclose(rows[touched], 1 - g_rows[touched])


# ---- fusion: one vector, stacking
def test_the_fused_vector_is_the_members_vectors_then_the_prior() -> None:
    sim = Simulation(_config(fusion="mf,popularity"))
    model = sim.model
    assert isinstance(model, Fusion)
    mf, pop = model.members
    assert model.length == mf.length + pop.length + 3
    prior = model.prior(torch.from_numpy(sim.global_vec))
    assert prior.tolist() == [0.0, 0.5, 0.5]
    assert model.item_rows(sim.global_vec).shape == (sim.dataset.num_items, 4 + 1 + 2)
    assert sum(model.shares().values()) == pytest.approx(1.0)


def test_members_train_on_everything_but_the_held_out_ratings_and_as_they_would_alone() -> None:
    sim = Simulation(_config(fusion="mf,popularity"))
    model = sim.model
    assert isinstance(model, Fusion)
    members_data, held = model.split(sim.pool.data)
    np.testing.assert_array_equal(held.counts, np.floor(HOLDOUT * sim.pool.data.counts))
    np.testing.assert_array_equal(members_data.counts + held.counts, sim.pool.data.counts)
    for u in range(sim.dataset.num_users):  # disjoint, and together the user's ratings
        both = np.concatenate([members_data.user_items(u), held.user_items(u)])
        assert sorted(both.tolist()) == sorted(sim.pool.data.user_items(u).tolist())
    deltas, g = _train_once(sim)
    mf = model.members[0]
    assert isinstance(mf, MF)
    clients = [np.array([u]) for u in range(sim.dataset.num_users)]
    alone = mf.train(model.part(g, 0), members_data, clients, 1, sim.config.model.local_lr,
                     torch.device("cpu"), torch.float32, local={}, generator=torch.Generator())
    torch.testing.assert_close(model.part(deltas, 0), alone.deltas)


def test_the_holdout_is_a_seeded_share_of_each_user() -> None:
    ratings = Ratings(np.repeat(np.arange(3), [5, 20, 31]), np.arange(56) % 40, np.ones(56, np.float32),
                      np.zeros(56, np.int64))
    data = RatingsByUser(ratings, 3)
    flags = holdout_flags(data, 0.1, seed=0)
    assert [int(flags[data.indptr[u] : data.indptr[u + 1]].sum()) for u in range(3)] == [0, 2, 3]
    np.testing.assert_array_equal(flags, holdout_flags(data, 0.1, seed=0))
    assert not np.array_equal(flags, holdout_flags(data, 0.1, seed=1))


def test_with_a_validation_split_the_weights_are_fitted_on_it_and_the_members_train_on_everything() -> None:
    sim = Simulation(_config(fusion="implicit-mf,popularity", feedback="implicit", split="loo"))
    model = sim.model
    assert isinstance(model, Fusion)
    members_data, held = model.split(sim.pool.data)
    assert members_data is sim.pool.data
    np.testing.assert_array_equal(held.counts, np.bincount(sim.dataset.validation.users,
                                                           minlength=sim.dataset.num_users))


# ---- the weights
def _explicit_objective(model: Fusion, sim: Simulation, g: torch.Tensor, user: int,
                        w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean half squared error on the user's held-out ratings, their sum weighted ``1 - fusion.MEMORY`` (one
    round's share of the statistics' moving average) + reg/2 ||w - prior||^2)."""
    _, held = model.split(sim.pool.data)
    batch = held.padded(np.array([user]), torch.device("cpu"), torch.float64)
    local = {k: v[[user]].to(torch.float64) for k, v in sim.pool.local.items()}
    X = model._features(g, local, batch.items)[0]
    lo, hi = sim.dataset.scale
    y = (batch.ratings[0] - (lo + hi) / 2) / ((hi - lo) / 2)
    err = y - X @ w
    prior = model.prior(g)
    held_out = (1 - fusion.MEMORY) * 0.5 * (err**2).sum()
    return 0.5 * (err**2).mean(), held_out + model.reg / 2 * ((w - prior) ** 2).sum()


def test_explicit_personal_weights_minimise_the_held_out_error_and_the_prior_descends_it() -> None:
    sim = Simulation(_config(fusion="mf,popularity", fusion_lr=0.5))
    model = sim.model
    assert isinstance(model, Fusion)
    sim.run_round()  # members and prior away from their start
    sim.pool.local[GRAM].zero_()  # forget the held-out statistics of the first round
    sim.pool.local[MOMENT].zero_()
    deltas, g = _train_once(sim)
    g64 = g.to(torch.float64)
    user = int(np.argmax(model.split(sim.pool.data)[1].counts))  # the most held-out ratings
    w = (model.prior(g64) + sim.pool.local[OFFSET][user].to(torch.float64)).requires_grad_(True)
    _, objective = _explicit_objective(model, sim, g64, user, w)
    (grad_w,) = torch.autograd.grad(objective, w)
    assert grad_w.abs().max() < 1e-3  # the ridge solution
    prior = model.prior(g64).clone().requires_grad_(True)
    mean_loss, _ = _explicit_objective(model, sim, g64, user, prior)
    (grad_prior,) = torch.autograd.grad(mean_loss, prior)
    sent = deltas[user, model.starts[-1] :].to(torch.float64)  # -lr * d loss / d coordinate
    torch.testing.assert_close(sent, -0.5 * PRIOR_SCALE * grad_prior, atol=1e-5, rtol=1e-4)
    assert grad_prior.abs().max() > 1e-3


def test_an_item_nobody_rated_is_scored_by_the_members_that_can() -> None:
    """Where the secure counts read 0, MF's untrained row is replaced by the cold members' mean; elsewhere,
    and in a fusion without counts, every member scores the item itself."""
    sim = Simulation(_config(fusion="mf,popularity"))
    sim.run_round()
    model = sim.model
    assert isinstance(model, Fusion)
    g = torch.from_numpy(sim.global_vec.copy())
    pop = model.part(g, 1).view(-1, 2)
    cold, warm = 0, 1
    pop[cold] = 0.0  # nobody rated item 0
    assert model.unrated(g) is not None and model.unrated(g)[cold] and not model.unrated(g)[warm]
    local = {k: v[:5].to(torch.float64) for k, v in sim.pool.local.items()}
    items = torch.tensor([[cold, warm]] * 5)
    x = model._features(g, local, items)  # (B, 2, (1, mf, popularity))
    torch.testing.assert_close(x[:, 0, 1], x[:, 0, 2])  # MF's feature on the cold item: popularity's
    assert float((x[:, 1, 1] - x[:, 1, 2]).abs().max()) > 1e-3  # on a rated item its own
    mf = model.members[0]
    alone = mf.predict(model.part(g, 0), model.member_local(local, 0), items, sim.dataset.scale)
    centre, half = model._centre_half()
    assert float(((alone[:, 0] - centre) / half - x[:, 0, 1]).abs().max()) > 1e-3
    # content (rated by rating) carries no counts: nothing to go by, MF's row stays
    plain = Simulation(_config(fusion="mf,content"))
    assert isinstance(plain.model, Fusion) and plain.model.unrated(torch.from_numpy(plain.global_vec)) is None
    weighted = Simulation(_config(fusion="mf,content", content_weighting="item"))
    weighted.run_round()
    assert isinstance(weighted.model, Fusion)
    found = weighted.model.unrated(torch.from_numpy(weighted.global_vec))
    rated = np.zeros(weighted.dataset.num_items, bool)
    rated[weighted.model.split(weighted.pool.data)[0].items] = True
    assert found is not None and found.numpy().tolist() == (~rated).tolist()


def test_explicit_personal_weights_rest_on_the_averaged_held_out_statistics_of_every_round() -> None:
    sim = Simulation(_config(fusion="mf,popularity"))
    model = sim.model
    assert isinstance(model, Fusion)
    sim.run_round()
    kept_gram, kept_moment = sim.pool.local[GRAM].clone(), sim.pool.local[MOMENT].clone()
    _train_once(sim)
    user = int(np.argmax(model.split(sim.pool.data)[1].counts))
    gram, moment = sim.pool.local[GRAM][user].double(), sim.pool.local[MOMENT][user].double()
    kept = fusion.MEMORY * kept_gram[user].double()
    assert float((gram - kept).abs().max()) > 1e-3  # this round's ratings added
    prior = model.prior(torch.from_numpy(sim.global_vec))
    eye = torch.eye(3, dtype=torch.float64)
    expected = torch.linalg.solve(gram + model.reg * eye, moment + model.reg * prior)
    torch.testing.assert_close(prior + sim.pool.local[OFFSET][user].double(), expected, atol=1e-4, rtol=1e-4)
    assert float(kept_moment.abs().max()) > 0


def test_each_held_out_rating_counts_at_most_once_however_many_rounds_it_is_fitted_on() -> None:
    """The holdout is the same every round: its statistics are a moving average, not a sum (a sum
    counted ~8 held-out ratings like 80 after many rounds, and ``reg`` weighed for a tenth of itself)."""
    rounds = 4
    sim = Simulation(_config(fusion="mf,popularity", rounds=rounds))
    sim.run(progress=False)
    model = sim.model
    assert isinstance(model, Fusion)
    held = model.split(sim.pool.data)[1].counts
    assert held.max() >= 2
    # the intercept feature is 1 on every held-out rating: X^T X [0, 0] is their (weighted) count
    count = sim.pool.local[GRAM][:, 0, 0].double().numpy()
    np.testing.assert_allclose(count, held * (1 - fusion.MEMORY**rounds), rtol=1e-5)
    assert (count <= held + 1e-6).all()


def test_with_fusion_a_member_flag_is_checked_against_the_members() -> None:
    loo = {"feedback": "implicit", "split": "loo"}
    config = ExperimentConfig.from_mapping({**loo, "fusion": "ncf,popularity", "mlp_layers": "8,4"})
    assert config.model.fusion == "ncf,popularity"
    with pytest.raises(ConfigError, match=r"mlp_layers.*--fusion.*'implicit-mf,popularity'"):
        ExperimentConfig.from_mapping({**loo, "fusion": "implicit-mf,popularity", "mlp_layers": "8,4"})
    with pytest.raises(ConfigError, match="weight_decay"):  # no member samples negatives
        ExperimentConfig.from_mapping({"fusion": "mf,popularity", "weight_decay": 0.0})


def test_the_pull_toward_the_prior_defaults_by_feedback_and_a_given_one_wins() -> None:
    loo: dict[str, Any] = {"feedback": "implicit", "split": "loo"}
    cases = (({}, 100.0), (loo, 2.0), ({"fusion_reg": 7.0}, 7.0), ({**loo, "fusion_reg": 7.0}, 7.0))
    for changes, reg in cases:
        members = "implicit-mf,popularity" if changes.get("feedback") == "implicit" else "mf,popularity"
        model = Simulation(_config(fusion=members, **changes)).model
        assert isinstance(model, Fusion) and model.reg == reg


def test_implicit_personal_weights_reach_the_regularised_bpr_minimum() -> None:
    sim = Simulation(_config(fusion="implicit-mf,popularity", feedback="implicit", split="loo"))
    model = sim.model
    assert isinstance(model, Fusion)
    gen = torch.Generator().manual_seed(1)
    shift = torch.tensor([0.8, 0.2], dtype=torch.float64)
    d = torch.randn(6, 40, 2, generator=gen, dtype=torch.float64) + shift
    weight = (torch.rand(6, 40, generator=gen, dtype=torch.float64) > 0.3).to(torch.float64) / 20
    prior = torch.tensor([0.5, 0.5], dtype=torch.float64)
    w, at_prior = model.solve_bpr(d, weight, prior)

    def loss(v: torch.Tensor) -> torch.Tensor:
        return (weight * torch.nn.functional.softplus(-(d * v[:, None, :]).sum(-1))).sum()

    v = w.clone().requires_grad_(True)
    objective = loss(v) + model.reg / 2 * ((v - prior) ** 2).sum()
    (grad,) = torch.autograd.grad(objective, v)
    assert grad.abs().max() < 1e-8  # Newton converged
    assert (w - prior).abs().max() > 1e-2
    p = prior.expand(6, 2).clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(loss(p), p)
    torch.testing.assert_close(at_prior, expected)


def test_a_fused_implicit_run_fits_personal_weights_on_the_validation_items() -> None:
    sim = Simulation(_config(fusion="implicit-mf,popularity", feedback="implicit", split="loo", rounds=2,
                             synthetic_items=200))  # every user has items to draw as negatives
    sim.run(progress=False)
    with_validation = np.bincount(sim.dataset.validation.users, minlength=sim.dataset.num_users) > 0
    moved = sim.pool.local[OFFSET].abs().sum(1).numpy() > 0
    np.testing.assert_array_equal(moved, with_validation)


def test_personal_weights_stay_on_the_device() -> None:
    """The delta holds the members' parts and P prior coordinates; a client's own weights change
    nothing the server receives (only the prior's gradient, an aggregate of its held-out errors)."""
    sim = Simulation(_config(fusion="mf,popularity"))
    before, _ = _train_once(sim)
    sim.pool.local[OFFSET].normal_()  # other personal weights, same global vector
    after, _ = _train_once(sim)
    torch.testing.assert_close(before, after)


# ---- the run, the report, the configuration
def test_a_fused_run_reports_every_member_the_prior_weights_and_the_bytes() -> None:
    sim = Simulation(_config(fusion="mf,popularity", rounds=3))
    report = sim.run(progress=False)
    final = report["final"]
    assert set(final["models"]) == {"mf", "popularity", "fusion-prior"}
    for name in ("mf", "popularity"):
        assert final["models"][name]["rmse"] is not None
    bytes_up = sum(r["bytes_up"] for r in report["rounds"])
    assert sum(m["bytes_up"] for m in final["models"].values()) == pytest.approx(bytes_up, abs=3)
    assert final["fused_global"]["rmse"] is not None and final["rmse"] is not None
    weights = final["fusion_weights"]
    assert weights["names"] == ["intercept", "mf", "popularity"]
    assert isinstance(sim.model, Fusion)
    held = sim.model.split(sim.pool.data)[1]
    assert len(weights["personal"]) == int((held.counts > 0).sum())  # the clients with held-out ratings
    # the fused RMSE is no worse than a bad member's (the weights learned to lean on the better one)
    assert final["rmse"] < max(final["models"]["mf"]["rmse"], final["models"]["popularity"]["rmse"])


@pytest.mark.parametrize("fusion", ["implicit-mf,popularity", "ncf,implicit-mf"])
def test_a_secure_protocol_gives_the_plaintext_fusion(fusion: str) -> None:
    run = dict(feedback="implicit", split="loo", fusion=fusion, mlp_layers="8,4", server_optimizer="fedavg",
               server_lr=1.0)
    plain = Simulation(ExperimentConfig(**{**SMALL, **run}))
    plain.run(progress=False)
    secure = Simulation(ExperimentConfig(**{**SMALL, **run, "protocol": "secagg+"}))
    report = secure.run(progress=False)
    assert not any(r["aborted"] for r in secure.rounds)
    np.testing.assert_allclose(secure.global_vec, plain.global_vec, atol=1e-5)
    assert report["final"]["hr@10"] is not None and set(report["final"]["models"]) >= set(fusion.split(","))


def test_resume_replays_a_fused_run(tmp_path: Path) -> None:
    changes = dict(fusion="mf,popularity")
    whole = Simulation(_config(**changes, rounds=3))
    whole.run(progress=False)
    ckpt = tmp_path / "run.npz"
    Simulation(_config(**changes, rounds=1)).run(checkpoint=ckpt, progress=False)
    resumed = Simulation(_config(**changes, rounds=3))
    resumed.load_checkpoint(ckpt)
    resumed.run(progress=False)
    np.testing.assert_array_equal(resumed.global_vec, whole.global_vec)
    for name, value in whole.pool.local.items():
        torch.testing.assert_close(resumed.pool.local[name], value)


def test_fusion_configuration_errors_name_the_flag_and_the_member(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"fusion.*'nope'"):
        _config(fusion="mf,nope")
    with pytest.raises(ConfigError, match=r"fusion.*once"):
        _config(fusion="mf,mf")
    with pytest.raises(ConfigError, match=r"'implicit-mf'.*--feedback explicit"):
        Simulation(_config(fusion="mf,implicit-mf"))
    with pytest.raises(ConfigError, match="--server-decay"):
        Simulation(_config(fusion="mf,popularity", server_decay=0.1))
    with pytest.raises(ConfigError, match="fusion_reg"):
        _config(fusion="mf,popularity", fusion_reg=0.0)
    assert main(["run", "--model", "mf", "--fusion", "mf,popularity", "--rounds", "1", "--quiet"]) == 2
    assert "--fusion" in capsys.readouterr().err
    assert main(["run", "--fusion-reg", "3", "--rounds", "1", "--quiet"]) == 2  # without --fusion
    assert "--fusion-reg" in capsys.readouterr().err


def test_the_cli_writes_the_weights_plot(tmp_path: Path) -> None:
    report, plot = tmp_path / "r.json", tmp_path / "p.png"
    assert main(["run", "--fusion", "mf,popularity", "--rounds", "2", "--sample-rate", "1",
                 "--synthetic-users", "30", "--synthetic-items", "20", "--protocol", "plaintext",
                 "--device", "cpu", "--quiet", "--report", str(report), "--plot", str(plot)]) == 0
    weights = plot.with_name("p-weights.png")
    assert plot.stat().st_size > 0 and weights.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
