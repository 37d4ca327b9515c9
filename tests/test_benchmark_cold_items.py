"""benchmarks.cold_items, tiny, on a fake ml-100k folder written here (two folds, a few cold items)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from benchmarks import cold_items
from securefedrec.data.features import ML100K_GENRES

USERS, ITEMS = 30, 24
COLD = {21, 22, 23}  # item ids (1-based) that only the test files hold


def _fake_ml100k(folder: Path) -> dict[str, int]:
    rng = np.random.default_rng(0)
    genre = rng.integers(1, len(ML100K_GENRES), ITEMS + 1)
    with (folder / "u.item").open("w", encoding="latin-1") as f:
        for item in range(1, ITEMS + 1):
            flags = "|".join("1" if g == genre[item] else "0" for g in range(len(ML100K_GENRES)))
            f.write(f"{item}|Movie {item % 5} (199{item % 10})|01-Jan-199{item % 10}||url|{flags}\n")
    cold_test = {}
    for fold in ("u1", "u2"):
        base, test = [], []
        for user in range(1, USERS + 1):
            for item in rng.choice(np.arange(1, ITEMS + 1), 10, replace=False):
                row = f"{user}\t{item}\t{1 + (genre[item] + user) % 5}\t{user * 100 + item}\n"
                (test if item in COLD or rng.random() < 0.2 else base).append(row)
        (folder / f"{fold}.base").write_text("".join(base))
        (folder / f"{fold}.test").write_text("".join(test))
        cold_test[fold] = sum(int(r.split("\t")[1]) in COLD for r in test)
    return cold_test


def test_cold_items_benchmark_runs_tiny_and_writes_its_json(tmp_path: Path) -> None:
    cold_test = _fake_ml100k(tmp_path)
    out = tmp_path / "cold.json"
    assert cold_items.main(["--data-dir", str(tmp_path), "--folds", "u1", "u2", "--rounds", "2",
                            "--content-rounds", "2", "--content-factors", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["folds"]) == {"u1", "u2"}
    for fold, methods in report["folds"].items():
        assert set(methods) == set(cold_items.METHODS)
        for result in methods.values():
            assert result["cold_ratings"] == cold_test[fold] > 0
            assert 0 < result["cold_rmse"] < 5 and 0 < result["rmse"] < 5
    for method in cold_items.METHODS:
        expected = np.mean([report["folds"][f][method]["cold_rmse"] for f in ("u1", "u2")])
        assert math.isclose(report["mean"][method]["cold_rmse"], expected)
    mean = report["mean"]
    assert math.isclose(report["content_gain_over_mean_user_bias"],
                        mean["mean_user_bias"]["cold_rmse"] - mean["content"]["cold_rmse"])
    assert math.isclose(report["fused_gain_over_mean_user_bias"],
                        mean["mean_user_bias"]["cold_rmse"] - mean["fused"]["cold_rmse"])
    assert report["options"]["content"]["content_weighting"] == "item"
    assert report["options"]["fused"]["fusion"] == "mf,popularity"
