"""The harness: registry, what each protocol reveals, metrics, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attacks import ATTACKS, AttackResult, ObservingAggregator, auc, f1_score, get_attack, observe
from protocols import PlaintextAggregator, RoundConfig, get_aggregator
from securefedrec.data import Dataset
from securefedrec.errors import ConfigError
from tests.attacks.conftest import config


def test_registry_names_every_attack_and_lists_them_in_errors() -> None:
    assert set(ATTACKS) == {"rated-items", "rating-reconstruction", "attribute-inference", "poisoning",
                            "malicious-server"}
    for name in ATTACKS:
        assert get_attack(name).name == name
    with pytest.raises(ConfigError) as info:
        get_attack("nope")
    for name in ATTACKS:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="rated-items"):
        get_attack("rated-items", bogus=1)


def test_plaintext_view_holds_individual_updates(small: Dataset) -> None:
    obs = observe(config("plaintext"), dataset=small, rounds=1)
    (view,) = obs.views
    assert view.individual is not None and not view.secure
    assert set(view.individual) == set(view.survivors) == set(range(small.num_users))
    total = np.sum([view.individual[c] for c in sorted(view.individual)], axis=0)
    np.testing.assert_allclose(view.total, total)
    assert view.update_of(0) is not None


@pytest.mark.parametrize("protocol", ["secagg+", "paillier"])
def test_secure_view_holds_only_the_sum(small: Dataset, protocol: str) -> None:
    options = {"key_bits": 512} if protocol == "paillier" else {}
    plain = observe(config("plaintext"), dataset=small, rounds=1).views[0]
    obs = observe(config(protocol), dataset=small, rounds=1, aggregator_options=options)
    (view,) = obs.views
    assert view.secure and view.individual is None and view.update_of(0) is None
    assert not hasattr(view, "inputs")
    np.testing.assert_allclose(view.total, plain.total, atol=1e-3)
    assert set(view.bytes_up) == set(view.survivors)


def test_wrapper_refuses_individual_messages_for_a_secure_protocol() -> None:
    spy = ObservingAggregator.around(get_aggregator("secagg"))
    assert spy.secure and spy.name == "secagg"
    with pytest.raises(ConfigError, match="secure"):
        spy.last_messages = {0: np.zeros(3)}


def test_wrapper_forwards_the_rounding_generator() -> None:
    inner = PlaintextAggregator()
    spy = ObservingAggregator.around(inner)
    rng = np.random.default_rng(5)
    spy.rng = rng
    assert inner.rng is rng
    res = spy.aggregate({1: np.ones(4), 2: np.ones(4)}, RoundConfig(round_id=3))
    assert spy.observations[3].individual is not None and res.total[0] == 2


def test_randk_views_are_scattered_to_full_length(small: Dataset) -> None:
    obs = observe(config("plaintext", compression="randk:0.5"), dataset=small, rounds=1)
    view = obs.views[0]
    L = obs.model.length
    assert view.total.shape == (L,)
    assert view.individual is not None and all(v.shape == (L,) for v in view.individual.values())


def test_auc_and_f1() -> None:
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5
    assert np.isnan(auc(np.ones(3), np.zeros(3)))
    assert f1_score(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])) == 0.5
    assert f1_score(np.zeros(3), np.zeros(3)) == 1.0


def test_report_is_json_with_the_design_keys() -> None:
    res = AttackResult(attack="x", protocol="plaintext", metric="f1", value=1.0, baseline=0.2,
                       success=True, details={"a": np.float64(1.5), "b": np.arange(2), "c": float("nan")})
    d = json.loads(json.dumps(res.to_dict()))
    assert list(d)[:6] == ["attack", "protocol", "metric", "value", "baseline", "success"]
    assert d["details"] == {"a": 1.5, "b": [0, 1], "c": None}


def test_topk_messages_reach_the_plaintext_view(small: Dataset) -> None:
    obs = observe(config("plaintext", compression="topk:0.1"), dataset=small, rounds=1)
    view = obs.views[0]
    assert view.individual is not None and len(view.individual) == small.num_users
    kept = [int((v != 0).sum()) for v in view.individual.values()]
    assert max(kept) <= int(np.ceil(0.1 * obs.model.length))
