"""rated-items, rating-reconstruction, attribute-inference: plaintext leaks, secure aggregation does not.

A secure-protocol case must be able to fail: "the attack does not beat its
baseline on the sum" also holds for an attack that never works. So each secure
case runs the real protocol once, records what every client handed it (the
individual updates the protocol hides), and scores the *same* attack twice on
that one run: on a view where those updates had leaked it succeeds; on the view
the protocol really gives the server (the sum only) it is at the baseline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from attacks import AttributeInferenceAttack, RatedItemsAttack, RatingReconstructionAttack
from attacks.attribute import planted_attribute
from attacks.base import AttackResult, Observed, ObservingAggregator, ObservingAttack, observe
from protocols import AggregationResult, DropoutPlan, RoundConfig, get_aggregator
from securefedrec.config import ExperimentConfig
from securefedrec.data import Dataset, synthetic
from tests.attacks.conftest import config


class _InputRecorder(ObservingAggregator):
    """The real protocol, plus a record of each client's input: what the protocol hides from the server."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.inputs: dict[int, dict[int, np.ndarray]] = {}

    def aggregate(self, inputs: Mapping[int, np.ndarray], config: RoundConfig,
                  dropout: DropoutPlan | None = None) -> AggregationResult:
        self.inputs[config.round_id] = {c: np.array(v, dtype=np.float64) for c, v in inputs.items()}
        return super().aggregate(inputs, config, dropout)


def _real_and_leaked(cfg: ExperimentConfig, dataset: Dataset, rounds: int,
                     options: Mapping[str, Any] | None = None) -> tuple[Observed, Observed]:
    """One run of the secure protocol: the server's real views, and the same views with the inputs leaked."""
    inner = get_aggregator(cfg.federation.protocol, **dict(options or {}))
    spy: _InputRecorder = _InputRecorder.around(inner)
    real = observe(cfg, dataset=dataset, rounds=rounds, wrapper=spy)
    assert real.views and all(v.secure and v.individual is None for v in real.views)
    leaked_views = []
    for v in real.views:
        inputs = spy.inputs[v.round_id]
        # the leak is consistent with the real view: the survivors' inputs sum to what the server decoded
        leaked = {c: inputs[c] for c in v.survivors}
        np.testing.assert_allclose(sum(leaked.values()), v.total, atol=1e-4 * len(leaked))
        leaked_views.append(dataclasses.replace(v, secure=False, individual=leaked))
    return real, Observed(real.simulation, leaked_views)


def _score(attack: ObservingAttack, observed: Observed, cfg: ExperimentConfig) -> AttackResult:
    """``attack``'s inference and scoring on ``observed`` instead of a fresh run."""
    return attack.infer(cfg, observed)


def test_rated_items_plaintext_recovers_every_item(small: Dataset) -> None:
    res = RatedItemsAttack().run(config("plaintext"), dataset=small)
    assert res.value >= 0.95 and res.details["auc"] >= 0.95
    assert res.success and res.baseline < 0.6


@pytest.mark.parametrize("protocol", ["secagg+", "paillier"])
def test_rated_items_succeeds_on_leaked_inputs_and_not_on_the_secure_view(small: Dataset,
                                                                           protocol: str) -> None:
    cfg = config(protocol)
    options = {"key_bits": 512} if protocol == "paillier" else {}
    real, leaked = _real_and_leaked(cfg, small, rounds=1, options=options)
    hit = _score(RatedItemsAttack(), leaked, cfg)
    assert hit.success and hit.value >= 0.95 and hit.details["auc"] >= 0.95
    res = _score(RatedItemsAttack(), real, cfg)
    assert res.details["view"] == "sum of the round's survivors"
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


def test_reconstruction_succeeds_on_leaked_inputs_and_not_on_the_secure_view(small: Dataset) -> None:
    cfg = config("secagg+")
    real, leaked = _real_and_leaked(cfg, small, rounds=1)
    hit = _score(RatingReconstructionAttack(rounds=1), leaked, cfg)
    assert hit.success and hit.value >= 0.95 and hit.details["rmse"] < 1e-3
    res = _score(RatingReconstructionAttack(rounds=1), real, cfg)
    assert res.value <= res.baseline + 0.05 and not res.success
    assert res.details["rmse"] > 0.5


def test_attribute_inference_plaintext_beats_chance() -> None:
    data = synthetic(num_users=300, num_items=60, ratings_per_user=12, seed=1)
    labels = planted_attribute(data)
    assert 0.4 < labels.mean() < 0.6
    res = AttributeInferenceAttack().run(config("plaintext", rounds=1), dataset=data)
    assert res.value > 0.6 and res.success


def test_attribute_inference_succeeds_on_leaked_inputs_and_is_chance_on_the_secure_view() -> None:
    data = synthetic(num_users=300, num_items=60, ratings_per_user=12, seed=1)
    cfg = config("secagg+", rounds=1)
    real, leaked = _real_and_leaked(cfg, data, rounds=1)
    hit = _score(AttributeInferenceAttack(), leaked, cfg)
    assert hit.value > 0.6 and hit.success
    res = _score(AttributeInferenceAttack(), real, cfg)
    assert abs(res.value - 0.5) <= 0.02 and not res.success


@pytest.mark.slow
def test_attribute_inference_ml100k_gender(ml100k_dir: object) -> None:
    cfg = config("plaintext", dataset="ml-100k", data_dir=str(ml100k_dir), split="u1", factors=8, rounds=1)
    res = AttributeInferenceAttack().run(cfg)
    assert res.details["labels"].startswith("ml-100k") and res.value > 0.65
