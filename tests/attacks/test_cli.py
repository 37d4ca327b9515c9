"""``securefedrec attack NAME [run flags] --report FILE``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from securefedrec.cli import main

SMALL = ["--synthetic-users", "60", "--synthetic-items", "30", "--factors", "4", "--sample-rate", "1",
         "--device", "cpu"]


def test_attack_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    args = ["attack", "rating-reconstruction", "--protocol", "plaintext", *SMALL, "--report", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert {"attack", "protocol", "metric", "value", "baseline", "success"} <= set(report)
    assert report["attack"] == "rating-reconstruction" and report["success"] is True
    assert "SUCCEEDED" in capsys.readouterr().out


def test_attack_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["attack", "poisoning", "--protocol", "secagg+", "--defence", "median", *SMALL,
                 "--report", str(tmp_path / "r.json")])
    assert code == 2 and "individual updates" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["attack", "no-such-attack"])
    assert "rated-items" in capsys.readouterr().err


def test_poisoning_flags_reach_the_attack(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    args = ["attack", "poisoning", "--protocol", "plaintext", *SMALL, "--rounds", "2", "--row-clip", "0.3",
            "--fractions", "0.05", "--defence", "row-clip", "--report", str(out)]
    assert main(args) == 0
    details = json.loads(out.read_text())["details"]
    assert details["defence"] == "row-clip" and details["fraction"] == 0.05
    assert set(details["table"]["row-clip"]) == {"0", "0.05"}


def test_poisoning_flags_are_refused_for_other_attacks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["attack", "rated-items", "--protocol", "plaintext", *SMALL, "--row-clip", "0.3",
                 "--report", str(tmp_path / "r.json")])
    assert code == 2 and "--row-clip applies to the poisoning attack only" in capsys.readouterr().err
