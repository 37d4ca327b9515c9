"""``securefedrec attack NAME [run flags] --report FILE``.

The command reaches the CLI through the entry point the attacks package registers
(``securefedrec.commands``: ``attack = "attacks.cli:COMMAND"``). These tests hand
it to :func:`securefedrec.cli.main` directly, so they do not depend on the installed
metadata being current; test_entry_point_* check the registration itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import pytest

import attacks.cli
import securefedrec.cli
from attacks.registry import ATTACKS
from securefedrec.cli import COMMAND_GROUP, Command

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def main(argv: Sequence[str]) -> int:
    return securefedrec.cli.main(argv, commands={"attack": attacks.cli.COMMAND})

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


def test_key_bits_needs_paillier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["attack", "rated-items", "--protocol", "plaintext", *SMALL, "--key-bits", "1024",
                 "--report", str(tmp_path / "r.json")])
    assert code == 2
    assert "--key-bits: applies only with --protocol paillier" in capsys.readouterr().err


def test_entry_point_is_declared_in_pyproject() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    value = data["project"]["entry-points"][COMMAND_GROUP]["attack"]
    ep = metadata.EntryPoint(name="attack", value=value, group=COMMAND_GROUP)
    assert ep.load() is attacks.cli.COMMAND and isinstance(ep.load(), Command)


def test_entry_point_is_discovered(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = metadata.EntryPoint(name="attack", value="attacks.cli:COMMAND", group=COMMAND_GROUP)
    broken = metadata.EntryPoint(name="gone", value="no_such_package.cli:COMMAND", group=COMMAND_GROUP)

    def entry_points(*, group: str) -> list[metadata.EntryPoint]:
        return [ep, broken] if group == COMMAND_GROUP else []

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    found = securefedrec.cli.installed_commands()
    assert found["attack"] is attacks.cli.COMMAND
    assert isinstance(found["gone"], Exception) and "no_such_package" in str(found["gone"])
    help_text = securefedrec.cli.build_parser().format_help()
    assert "attack" in help_text and "gone" in help_text  # a broken plug-in is listed, not fatal


def test_a_broken_command_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    broken = metadata.EntryPoint(name="attack", value="no_such_package.cli:COMMAND", group=COMMAND_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda *, group: [broken])
    assert securefedrec.cli.main(["attack", "rated-items"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be loaded" in err and "pip install -e ." in err


def test_missing_attack_command_says_how_to_get_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(metadata, "entry_points", lambda *, group: [])
    assert securefedrec.cli.main(["attack", "rated-items"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not installed" in err and COMMAND_GROUP in err


def test_attack_parser_imports_no_torch() -> None:
    code = textwrap.dedent("""
        import sys
        import attacks.cli, securefedrec.cli
        securefedrec.cli.build_parser({"attack": attacks.cli.COMMAND}).parse_args(["attack", "poisoning"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "opacus", "scipy"))
        print(heavy or "none")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "none"


def test_attack_registry_names_every_attack() -> None:
    from attacks.base import get_attack

    assert all(get_attack(name).name == name for name in ATTACKS)


def test_malicious_server_runs_lies_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "m.json"
    code = main(["attack", "malicious-server", "--protocol", "secagg", "--scenarios", "share-threshold",
                 "graph-seed", "--report", str(report)])
    assert code == 0
    details = json.loads(report.read_text())["details"]
    assert details["inputs_revealed"] == {"share-threshold": 0, "graph-seed": 0}
    assert details["semi_honest"]["share-threshold"]["revealed"] == 1  # the client that trusts the Setup
    code = main(["attack", "rated-items", "--protocol", "plaintext", *SMALL, "--scenarios", "graph-seed",
                 "--report", str(report)])
    assert code == 2 and "--scenarios applies to the malicious-server attack only" in capsys.readouterr().err


def test_rated_items_on_implicit_feedback_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["attack", "rated-items", "--feedback", "implicit", "--split", "loo", "--model", "implicit-mf",
            "--protocol", "plaintext", "--synthetic-users", "80", "--synthetic-items", "120",
            "--factors", "8", "--sample-rate", "1", "--device", "cpu", "--rounds", "1", "--report", str(out),
            "--local-lr", "1", "--local-epochs", "1"]  # the training the threshold was measured under
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["details"]["model"] == "implicit-mf" and report["details"]["feedback"] == "implicit"
    assert report["value"] >= 0.95 and report["success"] is True


def test_reconstruction_on_an_implicit_model_is_refused_naming_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["attack", "rating-reconstruction", "--feedback", "implicit", "--split", "loo",
                 "--model", "ncf", *SMALL, "--report", str(tmp_path / "r.json")])
    assert code == 2 and "needs --model mf, not --model ncf" in capsys.readouterr().err
