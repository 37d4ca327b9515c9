"""The pure helpers of benchmarks.ranking: seeds into mean / std, the JSON rows, the issue's checks."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from benchmarks.ranking import REFERENCE, TUNED, _config, checks, mean_std, summarize, timings
from securefedrec import ExperimentConfig


def _run(model: str, protocol: str | None, seed: int, hr: float, ndcg: float, seconds: float,
         **extra: float) -> dict[str, Any]:
    mode = "centralized" if protocol is None else "federated"
    return {"model": model, "protocol": protocol, "mode": mode, "seed": seed, "hr@10": hr, "ndcg@10": ndcg,
            "seconds": seconds, **extra}


def test_mean_std_is_the_sample_mean_and_std() -> None:
    assert mean_std([0.5, 0.7, 0.9]) == pytest.approx({"mean": 0.7, "std": 0.2})
    assert mean_std([0.25]) == {"mean": 0.25, "std": 0.0}
    with pytest.raises(ValueError, match="no values"):
        mean_std([])


def test_summarize_groups_the_seeds_of_each_method_into_one_row() -> None:
    runs = [
        _run("ncf", None, 0, 0.60, 0.35, 10.0),
        _run("ncf", "plaintext", 0, 0.58, 0.33, 30.0),
        _run("ncf", None, 1, 0.64, 0.37, 14.0),
        _run("ncf", "plaintext", 1, 0.62, 0.31, 50.0),
        _run("implicit-mf", "secagg+", 0, 0.5, 0.3, 7.0),
    ]
    rows = summarize(runs)
    assert [(r["model"], r["protocol"], r["mode"]) for r in rows] == [
        ("ncf", None, "centralized"), ("ncf", "plaintext", "federated"),
        ("implicit-mf", "secagg+", "federated")]
    central, plain, mf = rows
    assert central["hr@10"]["mean"] == pytest.approx(0.62)
    assert central["hr@10"]["std"] == pytest.approx(statistics.stdev([0.60, 0.64]))
    assert plain["ndcg@10"] == pytest.approx({"mean": 0.32, "std": statistics.stdev([0.33, 0.31])})
    assert plain["seconds"] == pytest.approx(40.0) and central["seconds"] == pytest.approx(12.0)
    assert mf["hr@10"] == {"mean": 0.5, "std": 0.0}
    # the JSON shape of issue 16, exactly, and it survives a round trip
    for row in json.loads(json.dumps({"rows": rows}))["rows"]:
        assert set(row) == {"model", "protocol", "mode", "hr@10", "ndcg@10", "seconds"}
        assert row["mode"] in ("federated", "centralized")
        assert set(row["hr@10"]) == set(row["ndcg@10"]) == {"mean", "std"}


def test_timings_average_each_model_s_round_and_epoch_seconds() -> None:
    runs = [
        _run("ncf", None, 0, 0.6, 0.3, 1.0, seconds_per_epoch=2.0),
        _run("ncf", None, 1, 0.6, 0.3, 1.0, seconds_per_epoch=4.0),
        _run("ncf", "secagg+", 0, 0.6, 0.3, 1.0, seconds_per_round=30.0),
        _run("ncf", "plaintext", 0, 0.6, 0.3, 1.0, seconds_per_round=5.0),
    ]
    assert timings(runs) == {"ncf": {"epoch": 3.0, "round:secagg+": 30.0, "round:plaintext": 5.0}}


def _verdicts(rows: list[dict[str, Any]], timing: dict[str, dict[str, float]]) -> dict[str, bool]:
    return {c["check"]: c["met"] for c in checks(rows, timing)}


def test_the_checks_of_issue_16() -> None:
    rows = summarize([
        _run("ncf", None, 0, 0.745, 0.45, 1.0),
        _run("ncf", "plaintext", 0, 0.740, 0.45, 1.0),
        _run("ncf", "secagg+", 0, 0.738, 0.44, 1.0),
        _run("implicit-mf", None, 0, 0.70, 0.40, 1.0),
        _run("implicit-mf", "plaintext", 0, 0.68, 0.38, 1.0),
        _run("implicit-mf", "secagg+", 0, 0.675, 0.37, 1.0),
    ])
    timing = {"ncf": {"epoch": 4.0, "round:plaintext": 20.0, "round:secagg+": 60.0}}
    got = _verdicts(rows, timing)
    assert got == {
        "best federated HR@10 >= 0.73 (ncf, plaintext)": True,
        "best federated NDCG@10 >= 0.44 (ncf, plaintext)": True,
        "ncf: secagg+ HR@10 within 0.003 of plaintext": True,
        "ncf (plaintext): federated HR@10 within 0.01 of centralised": True,
        "ncf (secagg+): federated HR@10 within 0.01 of centralised": True,
        "implicit-mf: secagg+ HR@10 within 0.003 of plaintext": False,  # 0.005 apart
        "implicit-mf (plaintext): federated HR@10 within 0.01 of centralised": False,  # 0.02 below
        "implicit-mf (secagg+): federated HR@10 within 0.01 of centralised": False,
        "ncf: one plaintext round / one centralised epoch <= 10": True,  # 5x
        "ncf: one secagg+ round / one centralised epoch <= 10": False,  # 15x
    }
    values = {c["check"]: c["value"] for c in checks(rows, timing)}
    assert values["ncf: one secagg+ round / one centralised epoch <= 10"] == pytest.approx(15.0)
    gap = values["implicit-mf (plaintext): federated HR@10 within 0.01 of centralised"]
    assert gap == pytest.approx(0.02)


def test_the_targets_fail_below_them() -> None:
    rows = summarize([_run("ncf", "plaintext", 0, 0.72, 0.43, 1.0)])
    assert _verdicts(rows, {}) == {"best federated HR@10 >= 0.73 (ncf, plaintext)": False,
                                   "best federated NDCG@10 >= 0.44 (ncf, plaintext)": False}


def test_reference_rows_are_cited_and_not_runs() -> None:
    for ref in REFERENCE:
        assert ref["citation"] and "not run here" in ref["note"]
        assert ref["hr@10"] is None or 0 < ref["hr@10"] < 1
    assert {r["model"]: r["hr@10"] for r in REFERENCE} == {"GPFedRec": 0.7265, "FedMF": 0.6617}
    assert not any(math.isnan(r["hr@10"]) for r in REFERENCE if r["hr@10"] is not None)


def test_a_model_s_tuned_round_count_is_its_default_and_rounds_overrides_it(tmp_path: Path) -> None:
    default = ExperimentConfig().federation.rounds
    fism = _config("fism", "plaintext", 0, tmp_path, None)
    assert fism.federation.rounds == TUNED["fism"]["rounds"] != default
    assert fism.run.eval_every == fism.federation.rounds  # evaluated once, after the last round
    assert fism.model.local_lr == TUNED["fism"]["local_lr"]
    assert _config("fism", "secagg+", 1, tmp_path, 3).federation.rounds == 3
    assert _config("ncf", "plaintext", 0, tmp_path, None).federation.rounds == default
