from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from securefedrec import __version__, config
from securefedrec.cli import main
from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

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


def test_resume_from_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "ck.npz"
    report = tmp_path / "r.json"
    # --resume with no checkpoint yet starts from round 1, and says so
    assert main(["run", *FAST, "--checkpoint", str(ckpt), "--resume", "--report", str(report)]) == 0
    assert f"{ckpt} does not exist yet; --resume starts from round 1" in capsys.readouterr().err
    ckpt.unlink()
    assert main(["run", *FAST, "--checkpoint", str(ckpt), "--report", str(report)]) == 0
    assert "does not exist" not in capsys.readouterr().err
    args = [a if a != "3" else "5" for a in FAST]
    assert main(["run", *args, "--checkpoint", str(ckpt), "--resume", "--report", str(report)]) == 0
    assert [r["round"] for r in json.loads(report.read_text())["rounds"]] == [1, 2, 3, 4, 5]


# ---- the parser: fast, plain, versioned -------------------------------------------------------------
def test_building_the_parser_imports_no_torch() -> None:
    """``securefedrec --help`` must not pay for torch/opacus (measured in the report, not here)."""
    code = textwrap.dedent("""
        import sys
        from securefedrec.cli import main
        for argv in (["--help"], ["run", "--help"]):
            try:
                main(argv)
            except SystemExit:
                pass
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("torch", "opacus", "scipy", "matplotlib"))
        print(heavy or "none")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "none"


def test_version_and_plain_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"securefedrec {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "run" in text and "``" not in text


def test_config_names_match_their_registries() -> None:
    """config holds the mode names without torch; the implementations register the same ones."""
    from securefedrec.privacy import ACCOUNTANTS, DP_MECHANISMS, DP_MODES

    assert config.DP_MODES == DP_MODES
    assert tuple(ACCOUNTANTS) == config.ACCOUNTANT_NAMES
    assert config.DP_MECHANISMS == DP_MECHANISMS


# ---- errors: one line, naming the flag (or the file and key) --------------------------------------
def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err


@pytest.mark.parametrize(("argv", "says"), [
    (["--epsilon", "1"], "--epsilon: applies only with --dp user or --dp record"),
    (["--noise-multiplier", "1"], "--noise-multiplier: applies only with --dp user or --dp record"),
    (["--delta", "1e-6"], "--delta: applies only with --dp user or --dp record; --dp is 'none'"),
    (["--clip", "2"], "--clip: applies only with --dp user"),
    (["--accountant", "prv"], "--accountant: applies only with --dp user"),
    (["--dp", "user", "--epsilon", "5", "--dp-batch-size", "8"],
     "--dp-batch-size: applies only with --dp record"),
    (["--data-dir", "x"], "--data-dir: applies only with a --dataset read from files"),
    (["--split", "u1"], "--split: applies only with a --dataset read from files"),
    (["--neighbors", "3"], "--neighbors: applies only with --protocol secagg or secagg+"),
    (["--resume"], "--resume: needs --checkpoint"),
])
def test_flags_without_their_mode_are_errors(
        argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert says in _one_line_error(["run", *FAST, *argv, "--report", str(tmp_path / "r.json")], capsys)


@pytest.mark.parametrize(("argv", "says"), [
    (["--rounds", "abc"], "argument --rounds: invalid int value: 'abc'"),
    (["--rounds", "0"], "--rounds: must be >= 1, got 0"),
    (["--sample-rate", "2"], "--sample-rate: must be in (0, 1], got 2.0"),
    (["--sample-rate", "nan"], "--sample-rate: must be in (0, 1]"),
    (["--server-lr", "inf"], "--server-lr: must be > 0 and finite"),
    (["--dropout", "1"], "--dropout: must be in [0, 1)"),
    (["--protocol", "nope"], "argument --protocol: invalid choice: 'nope'"),
    (["--compression", "zz"], "--compression: unknown 'zz'"),
    (["--dp", "user"], "--epsilon: dp 'user' needs a budget"),
    (["--dp", "user", "--epsilon", "-1"], "--epsilon: must be > 0"),
    (["--dp", "record", "--epsilon", "1"], "--silos: dp 'record' is cross-silo DP-SGD"),
    (["--dataset", "ml-100k"], "--dataset: ml-100k needs --data-dir"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--config", "missing.toml"], "missing.toml: config file not found"),
])
def test_bad_values_give_one_line_naming_the_flag(
        argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert says in _one_line_error(["run", *FAST, *argv, "--report", str(tmp_path / "r.json")], capsys)


def test_bad_paths_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = _one_line_error(["run", *FAST, "--report", str(blocker / "r.json")], capsys)
    assert "--report: cannot create the folder" in err
    err = _one_line_error(["run", *FAST, "--report", str(tmp_path)], capsys)
    assert "--report: " in err and "is a folder" in err
    err = _one_line_error(["run", "--dataset", "ml-100k", "--data-dir", str(tmp_path / "nope"), "--quiet",
                           "--device", "cpu", "--report", str(tmp_path / "r.json")], capsys)
    assert str(tmp_path / "nope") in err


def test_toml_errors_name_the_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("sample-rate = 2.0\n")
    assert f"{cfg}: sample-rate: must be in (0, 1]" in _one_line_error(["run", "--config", str(cfg)], capsys)
    cfg.write_text("epsilon = 1.0\n")  # a TOML value without its mode is refused like the flag
    assert f"{cfg}: epsilon: applies only with --dp user" in _one_line_error(["run", "--config", str(cfg)],
                                                                            capsys)
    cfg.write_text("[run]\nround = 3\n")
    assert f"{cfg}: unknown key 'round'" in _one_line_error(["run", "--config", str(cfg)], capsys)
    cfg.write_text("dp = 'user'\nepsilon = 2.0\n")  # the flag overrides the file, and is named as a flag
    err = _one_line_error(["run", "--config", str(cfg), "--epsilon", "0"], capsys)
    assert "--epsilon: must be > 0" in err


def test_python_api_refuses_a_budget_without_a_mode() -> None:
    with pytest.raises(ConfigError, match="epsilon: applies only with --dp user or --dp record"):
        ExperimentConfig.from_mapping({"epsilon": 1.0})
    with pytest.raises(ConfigError, match=r"x\.toml: synthetic_users: applies only with --dataset synthetic"):
        ExperimentConfig.from_mapping({"dataset": "ml-100k", "data_dir": "d", "synthetic_users": 5}, "x.toml")


def _plot_axes(rounds: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The axes :func:`~securefedrec.report.plot_rounds` draws for a report with ``rounds``."""
    import matplotlib.pyplot as plt

    from securefedrec.report import plot_rounds

    report = {"rounds": rounds, "config": {"protocol": "plaintext", "server_optimizer": "fedavg"},
              "dataset": {"name": "synthetic"}}
    created: list[Any] = []
    real = plt.subplots

    def spy(*a: Any, **k: Any) -> Any:
        fig, ax = real(*a, **k)
        created.append(ax)
        return fig, ax

    monkeypatch.setattr(plt, "subplots", spy)
    plot_rounds(report, tmp_path / "p.png")
    return created[0]


def test_plot_has_integer_round_ticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rounds = [{"round": r, "rmse": 1.0 / r, "mae": 0.8 / r} for r in (1, 2, 3)]
    ticks = [t for t in _plot_axes(rounds, tmp_path, monkeypatch).get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_plot_of_an_implicit_run_draws_hr_and_ndcg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rounds = [{"round": r, "rmse": None, "mae": None, "hr@10": r / 10, "ndcg@10": r / 20} for r in (1, 2, 3)]
    axes = _plot_axes(rounds, tmp_path, monkeypatch)
    lines = {line.get_label(): list(line.get_ydata()) for line in axes.get_lines()}
    assert lines == {"HR@10": [0.1, 0.2, 0.3], "NDCG@10": [0.05, 0.1, 0.15]}
