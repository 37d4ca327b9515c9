"""Personalization (``--personalize``): the personal score function stays on the device, persists, scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from securefedrec import ExperimentConfig, Simulation
from securefedrec.cli import build_parser, config_from_args
from securefedrec.errors import ConfigError
from securefedrec.models.base import RatingsByUser
from securefedrec.models.implicit import ImplicitHyper
from securefedrec.models.implicit_mf import ImplicitMF
from securefedrec.models.ncf import NCF
from securefedrec.models.personal import (
    PERSONAL_DENSE,
    PERSONAL_MAX_BYTES,
    check_personal_size,
    is_personal,
    personal_shapes,
)
from securefedrec.models.registry import MODELS
from tests.models.test_implicit_models import CLUSTER_RUN, _clustered, _interactions

CPU = torch.device("cpu")


def _model(num_items: int, personalize: bool, optimizer: str = "sgd") -> NCF:
    hyper = ImplicitHyper(negatives=2, weight_decay=1e-3, optimizer=optimizer, personalize=personalize,
                          personal_decay=0.01 if personalize else 0.0)
    return NCF(num_items, 4, (8, 4), hyper)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_delta_is_the_same_whatever_the_personal_part(optimizer: str) -> None:
    m = 30
    plain, personal = _model(m, False, optimizer), _model(m, True, optimizer)
    shapes = personal.local_shapes()
    assert {k: v for k, v in shapes.items() if is_personal(k)} == {PERSONAL_DENSE: (personal.layout.dense,)}
    assert personal.length == plain.length  # nothing personal in the global vector
    data = RatingsByUser(_interactions(5, m, np.array([6, 2, 9, 4, 3]), seed=2), 5)
    clients = [np.array([0]), np.array([1, 2]), np.array([3]), np.array([4])]
    g = plain.init_global((0.0, 1.0), torch.Generator().manual_seed(0))
    local = personal.init_local(5, torch.float32, torch.Generator().manual_seed(1))
    assert all(not bool(local[k].any()) for k in local if is_personal(k))  # the offsets start at zero
    user_only = {k: v for k, v in local.items() if not is_personal(k)}
    assert set(user_only) == set(plain.local_shapes())
    # a very different personal part: the deltas (and the user embeddings) do not change by one bit
    draw = torch.Generator().manual_seed(3)
    noisy = {k: (torch.randn(v.shape, generator=draw) * 5 if is_personal(k) else v) for k, v in local.items()}
    runs = [model.train(g, data, clients, 2, 0.1, CPU, torch.float32, local=part,
                        generator=torch.Generator().manual_seed(7))
            for model, part in ((plain, user_only), (personal, local), (personal, noisy))]
    for other in runs[1:]:
        assert torch.equal(other.deltas, runs[0].deltas) and np.array_equal(other.users, runs[0].users)
        for k in user_only:
            assert torch.equal(other.local[k], runs[0].local[k])
    # the personal part did train, every user's, and from where it was
    assert bool(runs[1].local[PERSONAL_DENSE].abs().sum(1).gt(0).all())
    assert not torch.equal(runs[2].local[PERSONAL_DENSE], runs[1].local[PERSONAL_DENSE])


def test_prediction_uses_the_global_part_plus_the_offset() -> None:
    m = 12
    model = _model(m, True)
    g = model.init_global((0.0, 1.0), torch.Generator().manual_seed(0)).float()
    local = model.init_local(3, torch.float32, torch.Generator().manual_seed(1))
    zero = model.scores(g, local)
    local = {k: (torch.randn(v.shape, generator=torch.Generator().manual_seed(2)) if is_personal(k) else v)
             for k, v in local.items()}
    every = model.scores(g, local)
    assert not torch.allclose(every, zero)
    items = torch.tensor([[1, 4, 4], [0, 11, 3], [2, 2, 7]])
    torch.testing.assert_close(model.scores(g, local, items), every.gather(1, items))
    for u in range(3):  # user u scores with its own model: the global vector plus its offset
        own = g.clone()
        own[model.layout.table_size :] += local[PERSONAL_DENSE][u]
        user = {k: v[u : u + 1] for k, v in local.items() if not is_personal(k)}
        torch.testing.assert_close(model.scores(own, user)[0], every[u])


def _config(**extra: object) -> ExperimentConfig:
    run = dict(CLUSTER_RUN, model="ncf", rounds=2, personal_decay=0.01, mlp_layers="8,4")
    return ExperimentConfig(**{**run, "personalize": True, **extra})  # type: ignore[arg-type]


def test_the_personal_part_persists_through_rounds_and_a_checkpoint(tmp_path: Path) -> None:
    ds = _clustered(num_users=20, num_items=16, per_user=4)
    straight = Simulation(_config(), dataset=ds)
    straight.run_round()
    after_one = {k: v.clone() for k, v in straight.pool.local.items() if is_personal(k)}
    assert all(bool(v.any()) for v in after_one.values())
    straight.run_round()  # the pool handed round 1's offsets back: round 2 moved on from them
    assert all(not torch.equal(straight.pool.local[k], v) for k, v in after_one.items())
    first = Simulation(_config(rounds=1), dataset=ds)
    first.run(checkpoint=tmp_path / "c.npz", progress=False)
    resumed = Simulation(_config(), dataset=ds)
    resumed.load_checkpoint(tmp_path / "c.npz")
    for k, v in after_one.items():  # the checkpoint carries the personal part
        assert torch.equal(resumed.pool.local[k], v)
    resumed.run_round()
    np.testing.assert_array_equal(resumed.global_vec, straight.global_vec)
    for k, v in straight.pool.local.items():
        assert torch.equal(resumed.pool.local[k], v)
    # the global model is the run's without --personalize, bit for bit; its evaluation is not
    plain = Simulation(_config(personalize=False, personal_decay=0.0), dataset=ds)
    plain.run_round()
    plain.run_round()
    np.testing.assert_array_equal(plain.global_vec, straight.global_vec)
    g = torch.from_numpy(straight.global_vec).float()
    mine, theirs = straight.model.scores(g, straight.pool.local), plain.model.scores(g, plain.pool.local)
    assert not torch.equal(mine, theirs)


@pytest.mark.parametrize(("values", "says"), [
    ({"personalize": True}, "personalize: applies only with --model ncf; model is 'mf'"),
    ({"feedback": "implicit", "personalize": True}, "personalize: applies only with --model ncf; "
                                                    "model is 'implicit-mf'"),
    ({"model": "ncf", "personal_decay": 0.1}, "personal_decay: applies only with --personalize"),
    ({"model": "ncf", "personalize": True, "personal_decay": -1.0}, "personal_decay: must be >= 0"),
    ({"model": "ncf", "personalize": 1}, "personalize: expected bool, got 1"),
])
def test_personalize_is_refused_where_it_does_not_apply(values: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        ExperimentConfig.from_mapping(values, source="config")


def test_the_flags_reach_the_model_and_too_large_a_personal_part_is_refused() -> None:
    args = build_parser().parse_args(["run", "--feedback", "implicit", "--model", "ncf",
                                      "--personalize", "--personal-decay", "0.5"])
    config = config_from_args(args)
    model = MODELS[config.model.name].from_config(config, 7)
    assert isinstance(model, NCF) and model.hyper.personalize and model.hyper.personal_decay == 0.5
    default = config_from_args(build_parser().parse_args(["run", "--feedback", "implicit", "--model", "ncf"]))
    assert not default.model.personalize
    with pytest.raises(ConfigError, match="personalize: applies to a model with a shared score function"):
        ImplicitMF(7, 4, ImplicitHyper(personalize=True))
    big = NCF(3, 4, (4096, 4096), ImplicitHyper(personalize=True))  # 2**24 + ... floats, over 64 MiB a user
    per_user = big.layout.dense * 4
    at_limit = PERSONAL_MAX_BYTES // per_user
    check_personal_size(at_limit, personal_shapes(big.layout.dense), torch.float32)
    says = rf"personalize: the personal offsets of {at_limit + 1} users .* MiB"
    with pytest.raises(ConfigError, match=says):
        big.init_local(at_limit + 1, torch.float32, torch.Generator())
