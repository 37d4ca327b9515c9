"""The implicit-feedback models (implicit-mf, ncf): negatives, zero rows, replay, learning, config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from securefedrec import ExperimentConfig, Simulation
from securefedrec.cli import build_parser, config_from_args, main
from securefedrec.data import Dataset, Ratings
from securefedrec.errors import ConfigError
from securefedrec.models.base import RatingsByUser
from securefedrec.models.fism import FISM
from securefedrec.models.implicit import ImplicitHyper, ImplicitModel, sample_negatives
from securefedrec.models.implicit_mf import ImplicitMF
from securefedrec.models.names import IMPLICIT_MODELS, MODEL_FEEDBACK, MODEL_NAMES
from securefedrec.models.ncf import NCF
from securefedrec.models.registry import MODELS
from securefedrec.server.central import train_centrally

CPU = torch.device("cpu")
IMPLICIT = ("implicit-mf", "ncf", "fism")


def _model(name: str, num_items: int, hyper: ImplicitHyper | None = None) -> ImplicitModel:
    hyper = hyper or ImplicitHyper()
    if name == "fism":
        return FISM(num_items, 4, hyper)
    return ImplicitMF(num_items, 4, hyper) if name == "implicit-mf" else NCF(num_items, 4, (8, 4), hyper)


def _interactions(num_users: int, num_items: int, per_user: np.ndarray, seed: int) -> Ratings:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(num_users), per_user)
    items = np.concatenate([rng.choice(num_items, n, replace=False) for n in per_user])
    ones = np.ones(len(users), np.float32)
    return Ratings(users, items, ones, np.zeros(len(users), np.int64))


# ---- the registry, the names and the feedback kinds
def test_names_and_feedback_are_the_registered_classes() -> None:
    assert tuple(MODELS) == MODEL_NAMES
    assert {name: cls.feedback for name, cls in MODELS.items()} == MODEL_FEEDBACK
    # the models that take --loss / --negatives learn from implicit data; popularity samples no negatives
    learns_implicit = [name for name, cls in MODELS.items() if "implicit" in cls.feedback]
    assert list(IMPLICIT_MODELS) == [name for name in learns_implicit if name != "popularity"]
    assert set(IMPLICIT) <= set(IMPLICIT_MODELS)  # the ImplicitModel subclasses tested here
    assert not any(MODELS[name].sparse_updates for name in IMPLICIT)


# ---- negative sampling
def test_negatives_are_never_training_items_and_cover_the_rest() -> None:
    m = 50
    train = _interactions(4, m, np.array([3, 20, 49, 50]), seed=1)  # the last user has every item
    data = RatingsByUser(train, 4)
    batch = data.padded(np.arange(4), CPU, torch.float32)
    drawn = sample_negatives(batch, m, 4, torch.Generator().manual_seed(0), epochs=30)
    for items, mask in drawn:
        assert items.shape == mask.shape == (4, 50 * 4)
        for u in range(4):
            real = items[u][mask[u] > 0].numpy()
            assert len(real) == (4 * data.counts[u] if u < 3 else 0)  # 4 per positive; none left for user 3
            assert not np.isin(real, data.user_items(u)).any()
            assert real.min(initial=0) >= 0 and (real < m).all()
    for u in range(3):  # 30 epochs of draws reach every item the user has not interacted with
        seen = np.unique(np.concatenate([items[u][mask[u] > 0].numpy() for items, mask in drawn]))
        np.testing.assert_array_equal(seen, np.setdiff1d(np.arange(m), data.user_items(u)))


# ---- zero rows on untouched items, and replay
@pytest.mark.parametrize("name", IMPLICIT)
@pytest.mark.parametrize(("loss", "optimizer"), [("bce", "sgd"), ("bpr", "adam")])
def test_a_client_delta_is_zero_exactly_on_the_items_it_never_touched(
        name: str, loss: str, optimizer: str) -> None:
    m, epochs = 120, 2
    model = _model(name, m, ImplicitHyper(loss=loss, negatives=2, weight_decay=1e-3, optimizer=optimizer))
    train = _interactions(6, m, np.array([6, 2, 9, 4, 3, 0]), seed=2)  # user 5: no training data
    data = RatingsByUser(train, 6)
    # one silo of two users, and a client with nothing to train on
    clients = [np.array([0]), np.array([1, 2]), np.array([3]), np.array([4]), np.array([5])]
    g = model.init_global((0.0, 1.0), torch.Generator().manual_seed(0))
    local = model.init_local(6, torch.float32, torch.Generator().manual_seed(1))
    trained = model.train(g, data, clients, epochs, 0.05, CPU, torch.float32, local=local,
                          generator=torch.Generator().manual_seed(7))
    # replay the draws: one chunk, users in the trained order, every epoch's negatives first
    batch = data.padded(trained.users, CPU, torch.float32)
    drawn = sample_negatives(batch, m, 2, torch.Generator().manual_seed(7), epochs)
    owner = {int(u): c for c, users in enumerate(clients) for u in users}
    touched: list[set[int]] = [set() for _ in clients]
    for row, u in enumerate(trained.users.tolist()):
        touched[owner[u]] |= set(data.user_items(u).tolist())
        for items, mask in drawn:
            touched[owner[u]] |= set(items[row][mask[row] > 0].tolist())
    for c in range(len(clients)):
        rows = model.item_rows(trained.deltas[c].numpy())
        nonzero = set(np.flatnonzero(np.abs(rows).sum(1) > 0).tolist())
        assert nonzero == touched[c] and len(nonzero) < m
    assert trained.deltas.dtype == torch.float64 and trained.deltas.shape == (5, model.length)
    assert not bool(trained.deltas[4].any())  # the client without data sends zeros
    if name == "ncf":  # the shared layers move for every client with data
        assert bool((trained.deltas[:4, model.layout.table_size :] != 0).any(1).all())
    again = model.train(g, data, clients, epochs, 0.05, CPU, torch.float32, local=local,
                        generator=torch.Generator().manual_seed(7))
    assert torch.equal(again.deltas, trained.deltas) and np.array_equal(again.users, trained.users)
    assert all(torch.equal(again.local[k], trained.local[k]) for k in trained.local)
    other = model.train(g, data, clients, epochs, 0.05, CPU, torch.float32, local=local,
                        generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other.deltas, trained.deltas)  # the generator does draw the negatives


def _clustered(num_users: int = 60, num_items: int = 40, per_user: int = 8, seed: int = 0) -> Dataset:
    """Two halves of users, each interacting only with its own half of the items; one held-out item each."""
    rng = np.random.default_rng(seed)
    users, items, test_items = [], [], []
    half = num_items // 2
    for u in range(num_users):
        own = rng.choice(half, per_user + 1, replace=False) + (half if u >= num_users // 2 else 0)
        users += [u] * per_user
        items += own[:per_user].tolist()
        test_items.append(own[per_user])
    n = len(users)
    train = Ratings(np.array(users), np.array(items), np.ones(n, np.float32), np.zeros(n, np.int64))
    test = Ratings(np.arange(num_users), np.array(test_items), np.ones(num_users, np.float32),
                   np.ones(num_users, np.int64))
    return Dataset("clustered", train, test, tuple(map(str, range(num_users))),
                   tuple(map(str, range(num_items))), (0.0, 1.0), feedback="implicit")


CLUSTER_RUN = dict(feedback="implicit", protocol="plaintext", device="cpu", sample_rate=1.0, rounds=8,
                   local_epochs=2,
                   local_lr=1.0, factors=4, init_std=0.1, server_optimizer="fedadam", server_lr=0.2,
                   eval_every=100)


def _auc(sim: Simulation, ds: Dataset) -> float:
    """How often a user's held-out item outscores an item of the other half (0.5 = random)."""
    half = ds.num_items // 2
    other = np.array([np.arange(half) + (0 if u >= ds.num_users // 2 else half) for u in range(ds.num_users)])
    cand = torch.as_tensor(np.concatenate([ds.test.items[:, None], other], axis=1))
    g = torch.from_numpy(sim.global_vec).float()
    scores = sim.model.scores(g, sim.pool.local, cand)
    return float((scores[:, 1:] < scores[:, :1]).float().mean())


@pytest.mark.parametrize(("name", "extra"), [("implicit-mf", {}), ("ncf", {"mlp_layers": "8,4"}),
                                             ("fism", {}),
                                             ("implicit-mf", {"loss": "bpr", "local_optimizer": "adam",
                                                              "local_lr": 0.05})])
def test_federated_training_learns_who_likes_what(name: str, extra: dict[str, object]) -> None:
    ds = _clustered()
    sim = Simulation(ExperimentConfig(**{**CLUSTER_RUN, "model": name, **extra}), dataset=ds)  # type: ignore[arg-type]
    before = _auc(sim, ds)
    for _ in range(CLUSTER_RUN["rounds"]):  # type: ignore[call-overload]
        sim.run_round()
    after = _auc(sim, ds)
    assert abs(before - 0.5) < 0.15 and after > 0.9, (before, after)
    probs = sim.model.predict(torch.from_numpy(sim.global_vec).float(), sim.pool.local,
                              torch.as_tensor(ds.test.items[:, None]), ds.scale)
    assert bool(((probs > 0) & (probs < 1)).all())


@pytest.mark.parametrize("name", IMPLICIT)
def test_a_resumed_run_replays_the_uninterrupted_one(name: str, tmp_path: Path) -> None:
    ds = _clustered(num_users=20, num_items=16, per_user=4)
    run = dict(CLUSTER_RUN, model=name, rounds=2, **({"mlp_layers": "8,4"} if name == "ncf" else {}))
    straight = Simulation(ExperimentConfig(**run), dataset=ds)  # type: ignore[arg-type]
    straight.run(progress=False)
    first = Simulation(ExperimentConfig(**{**run, "rounds": 1}), dataset=ds)  # type: ignore[arg-type]
    first.run(checkpoint=tmp_path / "c.npz", progress=False)
    resumed = Simulation(ExperimentConfig(**run), dataset=ds)  # type: ignore[arg-type]
    resumed.load_checkpoint(tmp_path / "c.npz")
    resumed.run(progress=False)
    np.testing.assert_array_equal(resumed.global_vec, straight.global_vec)
    for key, value in straight.pool.local.items():
        assert torch.equal(resumed.pool.local[key], value)


def test_the_layouts_and_item_rows() -> None:
    mf = ImplicitMF(10, 4, ImplicitHyper())
    ncf = NCF(10, 4, (8, 4), ImplicitHyper())
    assert mf.length == mf.decay_span == 10 * 5 and mf.local_shapes() == {"user_factors": (4,)}
    dense = 8 * 4 + 4 + (4 + 4) + 1  # one hidden layer 8 -> 4, then the output on [gmf (4), mlp (4)]
    assert ncf.length == 10 * 8 + dense and ncf.decay_span == 80
    assert ncf.local_shapes() == {"user_gmf": (4,), "user_mlp": (4,)}
    vec = np.arange(ncf.length, dtype=np.float64)
    rows = ncf.item_rows(vec)
    assert rows.shape == (10, 8) and rows[3, 0] == 24 and np.shares_memory(rows, vec)
    g = ncf.init_global((1.0, 5.0), torch.Generator().manual_seed(0)).float()
    local = ncf.init_local(3, torch.float32, torch.Generator().manual_seed(0))
    every = ncf.scores(g, local)
    items = torch.tensor([[1, 4], [0, 9], [2, 2]])
    torch.testing.assert_close(ncf.scores(g, local, items), every.gather(1, items))
    with pytest.raises(ConfigError, match="at least two positive MLP widths"):
        NCF(10, 4, (7, 4), ImplicitHyper())


# ---- configuration
@pytest.mark.parametrize(("values", "says"), [
    ({"negatives": 3}, "negatives: applies only with --model implicit-mf or ncf or fism or content; "
                       "model is 'mf'"),
    ({"loss": "bpr"}, "loss: applies only with --model implicit-mf or ncf or fism or content"),
    ({"model": "implicit-mf", "mlp_layers": "8,4"}, "mlp_layers: applies only with --model ncf"),
    ({"model": "ncf", "lam_user": 0.2}, "lam_user: applies only with --model mf or content"),
    ({"model": "ncf", "loss": "hinge"}, "loss: must be one of bce, bpr, got 'hinge'"),
    ({"model": "ncf", "negatives": 0}, "negatives: must be >= 1"),
    ({"model": "ncf", "weight_decay": -1.0}, "weight_decay: must be >= 0"),
    ({"model": "ncf", "local_optimizer": "lbfgs"}, "local_optimizer: must be one of sgd, adam"),
    ({"model": "ncf", "mlp_layers": "64"}, "mlp_layers: expected at least two positive widths"),
    ({"model": "ncf", "mlp_layers": "9,4"}, "mlp_layers: the first width"),
    ({"model": "ncf", "mlp_layers": "a,b"}, "mlp_layers: expected comma-separated integers"),
])
def test_the_implicit_fields_are_checked_and_bound_to_their_models(
        values: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        ExperimentConfig.from_mapping(values, source="config")
    ExperimentConfig.from_mapping({"model": "ncf", "mlp_layers": "16,8,4", "negatives": 2, "loss": "bpr"})


def test_the_cli_flags_reach_the_model_and_are_refused_without_it(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["run", "--feedback", "implicit", "--model", "ncf", "--loss", "bpr",
                                      "--negatives", "2",
                                      "--weight-decay", "0.01", "--local-optimizer", "adam",
                                      "--mlp-layers", "16,8"])
    config = config_from_args(args)
    model = MODELS[config.model.name].from_config(config, 7)
    assert isinstance(model, NCF) and model.layers == (16, 8)
    assert model.hyper == ImplicitHyper(negatives=2, loss="bpr", weight_decay=0.01, optimizer="adam",
                                        init_std=config.model.init_std)
    assert main(["run", "--negatives", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert ("--negatives: applies only with --model implicit-mf or ncf or fism or content; --model is 'mf'"
            in err)


def test_the_default_model_follows_the_feedback() -> None:
    assert ExperimentConfig().model.name == "mf"
    assert ExperimentConfig(feedback="implicit").model.name == "implicit-mf"
    assert ExperimentConfig(feedback="implicit", model="ncf").model.name == "ncf"
    assert ExperimentConfig.from_mapping({"feedback": "implicit"}).model.name == "implicit-mf"
    from_cli = config_from_args(build_parser().parse_args(["run", "--feedback", "implicit"]))
    assert from_cli.model.name == "implicit-mf"


def _successors(num_users: int = 60, num_items: int = 30, length: int = 6, seed: int = 0) -> Dataset:
    """Every user walks the items in a ring, ``s, s + 1, ...`` (in time); its test item is the next step.

    No user prefers any item: only the order of a user's interactions tells the next item ``s + length``
    from the one before the start, ``s - 1`` (both neighbours of the user's arc of the ring).
    """
    rng = np.random.default_rng(seed)
    starts = rng.integers(num_items, size=num_users)
    steps = (starts[:, None] + np.arange(length + 1)[None, :]) % num_items
    users = np.repeat(np.arange(num_users), length)
    times = np.tile(np.arange(length), num_users)[::-1].copy()  # rows in reverse time order
    items = steps[:, :length][:, ::-1].reshape(-1)
    n = len(users)
    train = Ratings(users, items, np.ones(n, np.float32), times)
    test = Ratings(np.arange(num_users), steps[:, length], np.ones(num_users, np.float32),
                   np.full(num_users, length, np.int64))
    return Dataset("successors", train, test, tuple(map(str, range(num_users))),
                   tuple(map(str, range(num_items))), (0.0, 1.0), feedback="implicit")


def _hit_rate(sim: Simulation, ds: Dataset, k: int = 1) -> float:
    """Share of users whose test item is among the ``k`` best of the items they have not seen."""
    users = np.arange(ds.num_users)
    g = torch.from_numpy(sim.global_vec).float()
    batch = sim.pool.data.padded(users, CPU, torch.float32)
    fitted = sim.model.fit_local(g, batch, {n: v.float() for n, v in sim.pool.local.items()})
    scores = sim.model.scores(g, fitted).clone()
    seen = torch.zeros_like(scores, dtype=torch.bool)
    seen[torch.arange(len(users))[:, None].expand_as(batch.items), batch.items] = True
    scores[seen] = -torch.inf
    top = scores.topk(k, dim=1).indices.numpy()
    return float((top == ds.test.items[:, None]).any(1).mean())


def test_fism_learns_what_comes_next_from_the_order_of_a_users_history() -> None:
    """On data where only the order predicts the next item, fism finds it and implicit-mf cannot."""
    ds = _successors()
    rates = {}
    for name in ("fism", "implicit-mf"):
        sim = Simulation(ExperimentConfig(**{**CLUSTER_RUN, "model": name, "rounds": 30,
                                             "weight_decay": 0.0}), dataset=ds)  # type: ignore[arg-type]
        for _ in range(30):
            sim.run_round()
        rates[name] = _hit_rate(sim, ds)
    assert rates["fism"] > 0.7 and rates["implicit-mf"] < 0.5, rates


def test_the_centralised_fism_reads_the_history_too() -> None:
    ds = _successors()
    config = ExperimentConfig(**{**CLUSTER_RUN, "model": "fism", "weight_decay": 0.0})  # type: ignore[arg-type]
    vec, local = train_centrally(config, ds, 40, lr=0.03, batch_size=64)
    sim = Simulation(config, dataset=ds)
    sim.global_vec, sim.pool.local = vec.numpy(), local
    assert _hit_rate(sim, ds) > 0.7
