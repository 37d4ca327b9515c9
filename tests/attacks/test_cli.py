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
