from __future__ import annotations

import json
from pathlib import Path

import pytest

from securefedrec.cli import main

FAST = ["--synthetic-users", "80", "--synthetic-items", "50", "--factors", "4", "--rounds", "3",
        "--quiet", "--protocol", "plaintext"]


def test_run_writes_report_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r.json"
    plot = tmp_path / "p.png"
    assert main(["run", *FAST, "--report", str(report), "--plot", str(plot)]) == 0
    data = json.loads(report.read_text())
    assert len(data["rounds"]) == 3 and data["config"]["factors"] == 4
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"report written to {report}" in capsys.readouterr().out


def test_toml_config_and_flag_override(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\nrounds = 2\nfactors = 6\nserver-optimizer = "fedyogi"\n')
    report = tmp_path / "r.json"
    assert main(["run", "--config", str(cfg), *FAST[:4], "--factors", "5", "--quiet",
                 "--protocol", "plaintext", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["config"]["factors"] == 5 and data["config"]["rounds"] == 2
    assert data["config"]["server_optimizer"] == "fedyogi"


def test_errors_are_one_line_with_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("rounds = 'many'\n")
    assert main(["run", "--config", str(cfg), "--quiet"]) == 2
    assert "rounds: expected int" in capsys.readouterr().err
    assert main(["run", "--dataset", "ml-100k", "--quiet"]) == 2
    assert "needs --data-dir" in capsys.readouterr().err


def test_resume_from_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ck.npz"
    report = tmp_path / "r.json"
    assert main(["run", *FAST, "--checkpoint", str(ckpt), "--report", str(report)]) == 0
    args = [a if a != "3" else "5" for a in FAST]
    assert main(["run", *args, "--checkpoint", str(ckpt), "--resume", "--report", str(report)]) == 0
    assert [r["round"] for r in json.loads(report.read_text())["rounds"]] == [1, 2, 3, 4, 5]
