"""benchmarks.privacy_utility's implicit parts: their configurations and the no-DP ratios."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.privacy_utility import PARTS, _config, _ratio


@pytest.mark.parametrize("model", ["implicit-mf", "ncf"])
def test_the_implicit_parts_run_user_level_dp_on_ml100k_loo(model: str) -> None:
    part = PARTS[f"user-ml100k-{model}"]
    assert part.epsilons == (1.0, 4.0, 8.0, math.inf)
    private = _config(part, 4.0, Path("data"), False, 3)
    assert (private.data.dataset, private.data.split, private.data.feedback) == ("ml-100k", "loo", "implicit")
    assert private.model.name == model and private.privacy.mode == "user" and private.privacy.epsilon == 4.0
    assert private.run.seed == 3 and private.run.eval_every == private.federation.rounds == 20
    assert _config(part, math.inf, Path("data"), False, 0).privacy.mode == "none"
    assert _config(part, 1.0, Path("data"), True, 0).federation.rounds == 3


def test_the_explicit_parts_keep_the_benchmark_s_epsilons() -> None:
    assert all(PARTS[name].epsilons is None for name in ("user-synthetic", "user-ml100k", "record-ml100k"))


def test_ratio_is_none_where_a_metric_is_missing() -> None:
    assert _ratio(0.3, 0.6) == pytest.approx(0.5)
    assert _ratio(None, 0.6) is None and _ratio(0.3, None) is None and _ratio(0.3, 0.0) is None
