"""The attacks on implicit-feedback models (implicit-mf, ncf): rated-items, poisoning as ER@10, refusals.

An implicit client's update touches its positives *and* the negatives it sampled, so the
explicit attack's "non-zero rows" is about five times too large; the implicit inference must
tell the two apart. A secure case scores the same inference on the inputs the protocol hid
(it succeeds there) and on the sum the server really gets (it is the baseline there).
"""

from __future__ import annotations

import numpy as np
import pytest

from attacks import PoisoningAttack, RatedItemsAttack, RatingReconstructionAttack
from attacks.poisoning import clip_rows, item_coordinates
from attacks.rated_items import expected_negatives, interaction_scores, orient
from securefedrec.config import ExperimentConfig
from securefedrec.data import Dataset, synthetic
from securefedrec.errors import ConfigError
from securefedrec.models.registry import build_model
from tests.attacks.conftest import config
from tests.attacks.test_inference import _real_and_leaked, _score


@pytest.fixture(scope="module")
def interactions() -> Dataset:
    """150 users x 200 items of implicit feedback, leave-one-out."""
    return synthetic(num_users=150, num_items=200, ratings_per_user=15, seed=3, split="loo",
                     feedback="implicit")


OLD_TRAINING = dict(local_lr=1.0, local_epochs=1, weight_decay=0.01, server_lr=None)
"""The training these thresholds were measured under (mf's, before each model had its own defaults:
under implicit-mf's own, lr 30 and 2 epochs, the plaintext rated-items F1 here is 0.92)."""


def implicit(protocol: str, model: str, **overrides: object) -> ExperimentConfig:
    values: dict[str, object] = dict(feedback="implicit", split="loo", model=model, factors=8, rounds=1,
                                     **OLD_TRAINING)
    values.update(overrides)
    return config(protocol, **values)


@pytest.mark.parametrize("model", ["implicit-mf", "ncf"])
def test_rated_items_plaintext_tells_positives_from_sampled_negatives(interactions: Dataset,
                                                                      model: str) -> None:
    res = RatedItemsAttack().run(implicit("plaintext", model), dataset=interactions)
    d = res.details
    assert d["view"] == "individual updates" and d["users_attacked"] == 150
    assert res.value >= 0.95 and d["auc"] >= 0.95 and res.success
    # the negatives are there: the explicit attack's non-zero rows would be far off
    assert d["nonzero_rows_f1"] < 0.5
    assert res.baseline < 0.4 and d["popularity_f1"] < 0.5


def test_rated_items_survives_several_epochs_and_bpr(interactions: Dataset) -> None:
    cfg = implicit("plaintext", "implicit-mf", local_epochs=2, loss="bpr")
    res = RatedItemsAttack().run(cfg, dataset=interactions)
    assert res.value >= 0.95 and res.details["nonzero_rows_f1"] < 0.5


@pytest.mark.parametrize("model", ["implicit-mf", "ncf"])
def test_rated_items_on_implicit_secure_view_is_the_popularity_baseline(interactions: Dataset,
                                                                        model: str) -> None:
    cfg = implicit("secagg+", model)
    real, leaked = _real_and_leaked(cfg, interactions, rounds=1)
    hit = _score(RatedItemsAttack(), leaked, cfg)
    assert hit.success and hit.value >= 0.95
    res = _score(RatedItemsAttack(), real, cfg)
    assert res.details["view"] == "sum of the round's survivors"
    assert abs(res.value - res.baseline) <= 0.02 and not res.success
    assert abs(res.value - res.details["popularity_f1"]) <= 0.02
    assert res.value < hit.value - 0.4


def test_orientation_by_the_expected_number_of_negatives() -> None:
    assert expected_negatives(10, 200, 4) == pytest.approx(190 * (1 - (1 - 1 / 190) ** 40))
    assert expected_negatives(0, 200, 4) == 0.0 and expected_negatives(200, 200, 4) == 0.0
    # a heavy user: 120 positives of 200 items draw 480 times from 80 items, so ~80 negatives;
    # the smaller group is the negatives here, and orient must say so either way round
    side = np.zeros(200, dtype=bool)
    side[:120] = True
    np.testing.assert_array_equal(orient(side, 200, 4), side)
    np.testing.assert_array_equal(orient(~side, 200, 4), side)
    # a light user: 10 positives and ~38 negatives among 48 touched items
    small = np.zeros(48, dtype=bool)
    small[:10] = True
    np.testing.assert_array_equal(orient(~small, 200, 4), small)


def test_interaction_scores_split_rows_of_opposite_signs() -> None:
    rng = np.random.default_rng(0)
    direction = rng.normal(size=5)
    c = np.concatenate([rng.uniform(0.2, 1.0, 4), -rng.uniform(0.2, 1.0, 16), np.zeros(30)])
    rows = c[:, None] * direction[None, :]
    scores, touched = interaction_scores(rows, 4)
    assert touched.sum() == 20
    np.testing.assert_array_equal(scores > 0, c > 0)
    np.testing.assert_array_equal(scores < 0, c < 0)


@pytest.mark.parametrize("model", ["implicit-mf", "ncf"])
def test_reconstruction_refuses_implicit_models_by_name(model: str) -> None:
    with pytest.raises(ConfigError, match=f"--model mf, not --model {model}.*rated-items"):
        RatingReconstructionAttack().run(implicit("plaintext", model))


def test_clip_rows_clips_an_implicit_models_item_rows_only() -> None:
    model = build_model(implicit("plaintext", "ncf", mlp_layers="4,2"), 3)
    coords = item_coordinates(model)
    assert coords.shape == (3, 8 + 2) and coords.max() < model.length
    x = np.ones(model.length)
    y = clip_rows(x, model, 1.0)
    np.testing.assert_allclose(np.linalg.norm(model.item_rows(y), axis=1), 1.0)
    np.testing.assert_array_equal(y[3 * 10 :], 1.0)  # the shared MLP is not an item's row


@pytest.mark.parametrize("model", ["implicit-mf", "ncf"])
def test_poisoning_on_implicit_data_raises_er_at_10(model: str) -> None:
    data = synthetic(num_users=100, num_items=60, ratings_per_user=10, seed=3, split="loo",
                     feedback="implicit")
    cfg = implicit("plaintext", model, rounds=5, sample_rate=0.5, factors=4)
    res = PoisoningAttack(fractions=(0.05,), defences=("none",), defence="none").run(cfg, dataset=data)
    table = res.details["table"]["none"]
    assert res.baseline < 0.05 and res.value > 0.5 and res.success  # measured 1.0 for both models
    assert np.isnan(table["0.05"]["rmse"]) and 0 < table["0"]["hr@10"] <= 1
