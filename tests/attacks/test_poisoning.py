"""poisoning: fake clients raise the target's exposure; defences and what secure aggregation allows."""

from __future__ import annotations

import numpy as np
import pytest

from attacks import PoisoningAttack
from attacks.poisoning import PoisonedAggregator, _robust_total
from protocols import get_aggregator
from securefedrec.data import Dataset
from securefedrec.errors import ConfigError
from tests.attacks.conftest import config


def test_robust_totals() -> None:
    msgs = {0: np.array([1.0, 0.0]), 1: np.array([2.0, 0.0]), 2: np.array([100.0, 0.0])}
    assert _robust_total(msgs, "median", 0.0)[0] == 6.0
    assert _robust_total(msgs, "trimmed-mean", 0.34)[0] == 6.0
    assert _robust_total(msgs, "norm-bound", 0.0)[0] == 5.0


def test_individual_defences_are_refused_under_secure_aggregation() -> None:
    with pytest.raises(ConfigError, match="individual updates"):
        PoisonedAggregator(get_aggregator("secagg+"), fake_ids=[], craft=lambda r: np.zeros(1),
                           sample_rate=1.0, defence="median", clip=1.0, trim=0.1, seed=0)
    with pytest.raises(ConfigError, match="individual updates"):
        PoisoningAttack(defence="median").run(config("secagg+"))


def test_fake_clients_promote_the_target(small: Dataset) -> None:
    cfg = config("plaintext", rounds=12, server_optimizer="fedavg", sample_rate=0.5)
    attack = PoisoningAttack(fractions=(0.05,), defences=("none", "median"), defence="none")
    res = attack.run(cfg, dataset=small)
    table = res.details["table"]
    assert res.success and table["none"]["0.05"]["er@10"] > res.baseline + 0.3
    assert table["median"]["0.05"]["er@10"] < table["none"]["0.05"]["er@10"]
