"""The README's commands and code stay valid: every `securefedrec` command line parses into a valid
configuration, and the protocol example runs as printed."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from attacks.cli import _OWN as attack_options
from protocols.encoding import FixedPoint
from securefedrec.cli import build_parser, config_from_args

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _command_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.split("#")[0].strip() for line in joined.splitlines()
                  if line.strip().startswith("securefedrec ")]
    return lines


COMMANDS = _command_lines()


def test_the_readme_has_commands() -> None:
    assert any(c.startswith("securefedrec run") for c in COMMANDS)
    assert any(c.startswith("securefedrec attack") for c in COMMANDS)


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.split()[1] in ("run", "attack") and "[" not in c])
def test_every_run_and_attack_command_is_a_valid_configuration(line: str) -> None:
    argv = shlex.split(line.replace("PATH/", "/data/"))[1:]
    args = build_parser().parse_args(argv)
    if args.command == "attack":  # the attack's own options are not run flags (attacks.cli)
        args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in attack_options})
    config = config_from_args(args)  # validates every value and every flag's mode
    assert config.federation.rounds >= 1


def test_the_protocol_example_runs_as_printed() -> None:
    (example,) = [b for b in _blocks("python") if "get_aggregator" in b]
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    result, inputs = namespace["result"], namespace["inputs"]
    # client 3 vanishes at the unmask stage, after its masked input counted: all 50 are in the sum
    assert sorted(result.survivors) == list(range(50))  # type: ignore[attr-defined]
    exact = sum(inputs.values())  # type: ignore[attr-defined]
    step = FixedPoint.for_sum(50, 1.0, 32, None).step  # the round's quantization step
    assert abs(result.total - exact).max() <= 50 * step  # type: ignore[attr-defined]  # one step per client
