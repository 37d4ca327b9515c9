"""benchmarks.fusion: a tiny synthetic run gives the issue's JSON shape, and the checks read it right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.fusion import checks, main


def test_a_tiny_synthetic_run_writes_the_issue_json(tmp_path: Path) -> None:
    out = tmp_path / "fusion.json"
    assert main(["--synthetic", "--quick", "--protocol", "plaintext", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    explicit, implicit = data["explicit"], data["implicit"]
    assert set(explicit["members"]) == {"mf", "popularity"}
    assert all(isinstance(v, float) for v in (*explicit["members"].values(), explicit["fused_global"],
                                             explicit["fused_personal"]))
    assert set(implicit["members"]) == {"implicit-mf", "popularity"}
    for value in (*implicit["members"].values(), implicit["fused_global"], implicit["fused_personal"]):
        assert set(value) == {"hr@10", "ndcg@10"} and 0 <= value["hr@10"] <= 1
    assert len(data["checks"]) == 4
    run = data["runs"]["explicit"][0]
    assert set(run["cold_rmse"]) == {"members", "fused_global", "fused_personal"}
    assert run["weights"]["names"] == ["intercept", "mf", "popularity"] and len(run["weights"]["prior"]) == 3
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_the_checks_compare_the_fused_means_with_the_best_member() -> None:
    summary = {"explicit": {"members": {"mf": 0.914, "popularity": 1.02}, "fused_global": 0.912,
                            "fused_personal": 0.908},
               "implicit": {"members": {"implicit-mf": {"hr@10": 0.62, "ndcg@10": 0.36},
                                        "popularity": {"hr@10": 0.40, "ndcg@10": 0.2}},
                            "fused_global": {"hr@10": 0.63, "ndcg@10": 0.37},
                            "fused_personal": {"hr@10": 0.625, "ndcg@10": 0.37}}}
    met = {c["check"].split(":")[0] + str(n): (c["value"], c["met"]) for n, c in enumerate(checks(summary))}
    assert met["explicit0"] == (pytest.approx(0.006), True)
    assert met["explicit1"] == (pytest.approx(0.004), True)
    assert met["implicit2"] == (pytest.approx(0.005), False)
    assert met["implicit3"] == (pytest.approx(-0.005), False)
