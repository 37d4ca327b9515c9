"""``securefedrec attack NAME [run flags]``: the attack harness's command for the securefedrec CLI.

Registered in ``pyproject.toml`` under the entry-point group ``securefedrec.commands``
(``attack = "attacks.cli:COMMAND"``), so the core finds it without importing the
attacks package. Building its parser imports no torch; :func:`run` imports the harness.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from attacks.registry import ATTACKS
from securefedrec.cli import Command, add_run_flags, config_from_args
from securefedrec.errors import SecureFedRecError

__all__ = ["COMMAND", "configure", "run"]

_POISONING_ONLY = ("defence", "row_clip", "fractions")
_OWN = ("name", "key_bits", "scenarios", *_POISONING_ONLY)


def configure(parser: argparse.ArgumentParser) -> None:
    """The attack's arguments: its name, every ``run`` flag, and the attack's own options."""
    parser.add_argument("name", choices=list(ATTACKS), help="the attack")
    add_run_flags(parser)
    g = parser.add_argument_group("attack")
    g.add_argument("--key-bits", type=int, help="Paillier key size of the attacked run (--protocol paillier; "
                   "default 2048)")
    g.add_argument("--defence", help="poisoning: the defence whose ER@10 is reported "
                   "(none, clip, row-clip, norm-bound, median, trimmed-mean; default row-clip)")
    g.add_argument("--row-clip", type=float, help="poisoning: per-item L2 bound of row-clip (default 0.75)")
    g.add_argument("--fractions", type=float, nargs="+",
                   help="poisoning: fake clients as fractions of the users (default 0.01 0.03 0.05)")
    g.add_argument("--scenarios", nargs="+", metavar="NAME",
                   help="malicious-server: the scenarios to run, by name (default: the protocol's "
                   "deviations); also the SecAgg lies (e.g. share-threshold, graph-seed) and the "
                   "Paillier lies (e.g. threshold-lie), listed in attacks.malicious.outcomes")
    parser.set_defaults(report=Path("results/attack.json"))


def run(args: argparse.Namespace) -> int:
    """Run the attack named in ``args`` and write its JSON report; 0 when done."""
    from attacks.base import get_attack
    from protocols import aggregator_class
    from securefedrec.report import write_json

    run_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in _OWN})
    for dest, flag in (("checkpoint", "--checkpoint"), ("resume", "--resume"), ("plot", "--plot")):
        if getattr(run_args, dest) not in (None, False):
            raise SecureFedRecError(f"{flag}: applies to securefedrec run only, not to an attack")
    config = config_from_args(run_args)
    given = {k: getattr(args, k) for k in _POISONING_ONLY if getattr(args, k) is not None}
    if given and args.name != "poisoning":
        flag = "--" + next(iter(given)).replace("_", "-")
        raise SecureFedRecError(f"{flag} applies to the poisoning attack only")
    if args.key_bits is not None and not aggregator_class(config.federation.protocol).homomorphic:
        raise SecureFedRecError(f"--key-bits: applies only with --protocol paillier; --protocol is "
                                f"{config.federation.protocol!r}")
    options: dict[str, Any] = dict(given)
    if args.scenarios is not None:
        if args.name != "malicious-server":
            raise SecureFedRecError("--scenarios applies to the malicious-server attack only")
        options["scenarios"] = tuple(args.scenarios)
    attack = get_attack(args.name, **options)
    keys = {"key_bits": args.key_bits} if args.key_bits is not None else {}
    result = attack.run(config, aggregator_options=keys)
    path = write_json(args.report, result.to_dict())
    print(f"{result.attack} vs {result.protocol}: {result.metric} {result.value:.4g} "
          f"(baseline {result.baseline:.4g}) -> {'SUCCEEDED' if result.success else 'failed'}")
    print(f"report written to {path}")
    return 0


COMMAND = Command(help="run an attack against a configuration and write a JSON report",
                  configure=configure, run=run)
"""What the ``securefedrec.commands`` entry point ``attack`` loads."""
