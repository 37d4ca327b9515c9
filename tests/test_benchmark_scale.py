"""benchmarks.scale: the JSON shape of the issue, run tiny on synthetic updates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.scale import Point, expected_set, features, fit, predict
from benchmarks.scale import main as scale_main


def test_quick_run_writes_the_issue_json(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    scale_main(["--quick", "--json", str(out)])
    data = json.loads(out.read_text())
    sub = data["submodel"]
    assert set(sub) >= {"upload_ratio", "item_epsilon", "hidden_upload_ratio", "exact"}
    assert sub["exact"] is True and 0 < sub["upload_ratio"] < 1
    assert set(data["round_1m"]) >= {"clients", "users", "items", "seconds", "peak_gib"}
    assert data["round_1m"]["clients"] > 0 and data["round_1m"]["peak_gib"] > 0
    assert set(data["model_fit"]) == {"bytes_error", "seconds_error"}
    assert data["model_fit"]["bytes_error"] < 0.05  # message sizes are linear in the features


def test_the_bytes_model_recovers_a_known_linear_law() -> None:
    pts = [Point("submodel", n, r, 8, 10, e) for n, r, e in ((5, 100, 1.0), (9, 300, 2.0), (20, 50, 0.5),
                                                          (7, 1000, 3.0), (30, 400, 1.5))]
    rows = []
    for pt in pts:
        f = features(pt)
        rows.append({"features": f, "bytes_up": 100 + 4 * f["values"] + 120 * f["peers"] + 4 * f["rows_sent"],
                     "bytes_down": 50 + 137 * f["peers"] + 4 * f["table"] + 8 * f["n"],
                     "client_seconds": 1e-8 * f["mask_words"] + 1e-4 * f["peers"] + 1e-3,
                     "server_seconds": 1e-7 * f["n"] * f["values"] + 1e-2})
    coef = fit(rows)
    for r in rows:
        pred = predict(coef, r["features"])
        assert abs(pred["bytes_up"] - r["bytes_up"]) / r["bytes_up"] < 1e-6
        assert abs(pred["client_seconds"] - r["client_seconds"]) / r["client_seconds"] < 1e-3


def test_expected_set_size_is_randomized_responses() -> None:
    p = 1 / (1 + math.exp(-4.0))
    assert expected_set(100_000, 100, 4.0) == pytest.approx(100 * p + 99_900 * (1 - p))
    assert 1890 < expected_set(100_000, 100, 4.0) < 1900
