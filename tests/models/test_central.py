"""securefedrec.server.central: it learns, it is seeded, it is evaluated as the simulator does."""

from __future__ import annotations

import pytest
import torch

from securefedrec import ExperimentConfig, Simulation
from securefedrec.data import Dataset, synthetic
from securefedrec.errors import ConfigError
from securefedrec.server.central import central_evaluation, train_centrally

USERS, ITEMS, PER_USER = 200, 100, 20


def _setup(model: str, seed: int = 0) -> tuple[ExperimentConfig, Dataset]:
    config = ExperimentConfig(feedback="implicit", split="loo", dataset="synthetic", synthetic_users=USERS,
                              synthetic_items=ITEMS, synthetic_ratings_per_user=PER_USER, model=model,
                              protocol="plaintext", device="cpu", seed=seed, factors=8, mlp_layers="8,4")
    return config, synthetic(USERS, ITEMS, PER_USER, seed=0, split="loo", feedback="implicit")


@pytest.mark.parametrize("model", ["implicit-mf", "ncf", "fism"])
def test_it_learns_well_above_the_untrained_model(model: str) -> None:
    config, ds = _setup(model)
    untrained = Simulation(config, dataset=ds).evaluate(ranking=True)
    losses: list[float] = []
    vec, local = train_centrally(config, ds, 5, lr=0.03, batch_size=256,
                                 on_epoch=lambda epoch, loss: losses.append(loss))
    trained = central_evaluation(config, ds, vec, local)
    assert untrained.hr is not None and trained.hr is not None and trained.ndcg is not None
    assert untrained.hr < 0.25 and trained.hr > 0.3 and trained.hr > untrained.hr + 0.15, (untrained, trained)
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert trained.ranked_users == USERS


def test_it_is_reproducible_for_a_seed() -> None:
    config, ds = _setup("ncf")
    a = train_centrally(config, ds, 1, batch_size=256)
    b = train_centrally(config, ds, 1, batch_size=256)
    other = train_centrally(config.replace(seed=1), ds, 1, batch_size=256)
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert not torch.equal(a[0], other[0])


def test_the_evaluation_is_the_simulations_final_evaluation() -> None:
    config, ds = _setup("implicit-mf")
    sim = Simulation(config, dataset=ds)
    sim.run_round()
    vec = torch.from_numpy(sim.global_vec.copy())
    assert central_evaluation(config, ds, vec, sim.pool.local) == sim.evaluate(ranking=True)


def test_it_refuses_what_it_cannot_train() -> None:
    config, ds = _setup("implicit-mf")
    with pytest.raises(ConfigError, match="epochs"):
        train_centrally(config, ds, 0)
    explicit = ExperimentConfig(dataset="synthetic", synthetic_users=50, synthetic_items=30, device="cpu",
                                protocol="plaintext")
    with pytest.raises(ConfigError, match="implicit model"):
        train_centrally(explicit, None, 1)
    with pytest.raises(ConfigError, match="global vector"):
        central_evaluation(config, ds, torch.zeros(3, dtype=torch.float64), {})
