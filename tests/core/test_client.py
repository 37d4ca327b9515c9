from __future__ import annotations

import numpy as np
import pytest
import torch

from securefedrec.data import synthetic
from securefedrec.models.mf import MF, Hyper, Layout
from securefedrec.models.pool import ClientPool


@pytest.fixture(scope="module")
def setup() -> tuple[ClientPool, torch.Tensor]:
    ds = synthetic(120, 60, 15, seed=2)
    layout = Layout(ds.num_items, 8)
    pool = ClientPool(ds.train, ds.num_users, MF(layout, Hyper(factors=8)), dtype=torch.float64)
    g = layout.init(3.0, 0.1, torch.Generator().manual_seed(0))
    return pool, g


@pytest.mark.parametrize("epochs", [1, 3])
def test_pool_equals_one_by_one_clients(setup: tuple[ClientPool, torch.Tensor], epochs: int) -> None:
    """Batched training gives each client the delta it would compute alone.

    Tolerance 1e-10 in float64: the only difference is summation order inside batches.
    """
    pool, g = setup
    sampled = [3, 17, 40, 41, 99]
    batched = pool.train(sampled, g, epochs, 0.05)
    for row, cid in enumerate(sampled):
        alone = pool.client(cid).train(g, epochs, 0.05)
        torch.testing.assert_close(batched[row], alone, rtol=0, atol=1e-10)


def test_silo_clients_equal_their_users_trained_together(setup: tuple[ClientPool, torch.Tensor]) -> None:
    pool, g = setup
    silo_pool = ClientPool.__new__(ClientPool)
    silo_pool.__dict__.update(pool.__dict__)
    silo_pool.groups = [np.arange(0, 60), np.arange(60, 120)]
    d = silo_pool.train([0, 1], g, 1, 0.05)
    per_user = pool.train(list(range(60)), g, 1, 0.05).sum(0)
    torch.testing.assert_close(d[0], per_user, rtol=0, atol=1e-9)


def test_delta_touches_only_rated_items_and_user_state_stays_local(
    setup: tuple[ClientPool, torch.Tensor],
) -> None:
    pool, g = setup
    client = pool.client(5)
    delta = client.train(g, 1, 0.05)
    layout = Layout(60, 8)
    Q, b, _ = layout.split(delta)
    rated = set(pool.data.user_items(5).tolist())
    touched = set(torch.nonzero(b).flatten().tolist()) | set(torch.nonzero(Q.abs().sum(1)).flatten().tolist())
    assert touched <= rated and touched
    assert delta.shape == (layout.length,)
    assert client.local["user_factors"].abs().sum() > 0  # the user factor was solved, and kept locally
