"""rated-items, rating-reconstruction, attribute-inference: plaintext leaks, secure aggregation does not."""

from __future__ import annotations

import pytest

from attacks import AttributeInferenceAttack, RatedItemsAttack, RatingReconstructionAttack
from attacks.attribute import planted_attribute
from securefedrec.data import Dataset, synthetic
from tests.attacks.conftest import config


def test_rated_items_plaintext_recovers_every_item(small: Dataset) -> None:
    res = RatedItemsAttack().run(config("plaintext"), dataset=small)
    assert res.value >= 0.95 and res.details["auc"] >= 0.95
    assert res.success and res.baseline < 0.6


@pytest.mark.parametrize("protocol", ["secagg+", "paillier"])
def test_rated_items_secure_falls_to_the_baseline(small: Dataset, protocol: str) -> None:
    options = {"key_bits": 512} if protocol == "paillier" else {}
    res = RatedItemsAttack().run(config(protocol), dataset=small, aggregator_options=options)
    assert abs(res.value - res.baseline) <= 0.02
    assert abs(res.details["auc"] - res.details["auc_baseline"]) <= 0.02
    assert not res.success


def test_rated_items_with_user_dp_falls_towards_chance(small: Dataset) -> None:
    res = RatedItemsAttack().run(config("plaintext", dp="user", noise_multiplier=1.0, clip=1.0),
                                 dataset=small)
    assert res.value < 0.8


def test_reconstruction_plaintext_is_exact(small: Dataset) -> None:
    res = RatingReconstructionAttack().run(config("plaintext"), dataset=small)
    assert res.value >= 0.95 and res.details["rmse"] < 1e-3
    assert res.details["updates_per_user"] == 2.0
    assert res.success


def test_reconstruction_secure_is_no_better_than_the_model(small: Dataset) -> None:
    res = RatingReconstructionAttack(rounds=1).run(config("secagg+"), dataset=small)
    assert res.value <= res.baseline + 0.05 and not res.success
    assert res.details["rmse"] > 0.5


def test_attribute_inference_plaintext_beats_chance() -> None:
    data = synthetic(num_users=300, num_items=60, ratings_per_user=12, seed=1)
    labels = planted_attribute(data)
    assert 0.4 < labels.mean() < 0.6
    res = AttributeInferenceAttack().run(config("plaintext", rounds=1), dataset=data)
    assert res.value > 0.6 and res.success


def test_attribute_inference_secure_is_chance(small: Dataset) -> None:
    res = AttributeInferenceAttack().run(config("secagg+", rounds=1), dataset=small)
    assert abs(res.value - 0.5) <= 0.02 and not res.success


@pytest.mark.slow
def test_attribute_inference_ml100k_gender(ml100k_dir: object) -> None:
    cfg = config("plaintext", dataset="ml-100k", data_dir=str(ml100k_dir), split="u1", factors=8, rounds=1)
    res = AttributeInferenceAttack().run(cfg)
    assert res.details["labels"].startswith("ml-100k") and res.value > 0.65
