"""Command line: ``securefedrec run`` (the main job) and ``securefedrec attack NAME``.

Every flag maps to a field of :class:`~securefedrec.config.ExperimentConfig`;
a ``--config FILE.toml`` sets fields first and explicit flags override it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from securefedrec.config import DEVICES, ExperimentConfig, load_toml
from securefedrec.data import DATASETS, ML100K_SPLITS
from securefedrec.errors import SecureFedRecError
from securefedrec.fusion import OPTIMIZERS

__all__ = ["build_parser", "main"]

DEFAULT_REPORT = "results/report.json"


def _protocols() -> list[str]:
    from protocols.registry import PROTOCOLS

    return list(PROTOCOLS)


def _dp_modes() -> list[str]:
    from securefedrec.privacy import DP_MODES

    return list(DP_MODES)


def _accountants() -> list[str]:
    from securefedrec.privacy import ACCOUNTANTS

    return list(ACCOUNTANTS)


def _dp_mechanisms() -> list[str]:
    from securefedrec.skellam import DP_MECHANISMS

    return list(DP_MECHANISMS)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    d = ExperimentConfig()
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, help=f"data set (default {d.dataset})")
    g.add_argument("--data-dir", help="folder with the data set's files (e.g. ../shared/data/ml-100k)")
    g.add_argument("--split", choices=ML100K_SPLITS, help=f"ml-100k official split or per-user hold-out "
                   f"(default {d.split})")
    # --dataset file: any ratings file (securefedrec.data.read_ratings)
    g.add_argument("--data-file", help="ratings file of --dataset file: CSV, TSV, '::' or whitespace-"
                   "separated, header optional; MovieLens header names (userId, movieId, rating, "
                   "timestamp) are recognised")
    g.add_argument("--columns", help="--dataset file: columns by header name or 1-based number, e.g. "
                   "user=userId,item=movieId,rating=rating[,timestamp=timestamp] or user=1,item=2,rating=3")
    g.add_argument("--rating-scale", metavar="MIN:MAX",
                   help="--dataset file: rating scale, e.g. 0.5:5 (default: inferred from the file)")
    g.add_argument("--synthetic-users", type=int, help=f"synthetic users (default {d.synthetic_users})")
    g.add_argument("--synthetic-items", type=int, help=f"synthetic items (default {d.synthetic_items})")
    g = p.add_argument_group("federation")
    g.add_argument("--protocol", choices=_protocols(), help=f"aggregation protocol (default {d.protocol})")
    g.add_argument("--threat-model", choices=["default", "semi-honest", "malicious"],
                   help="server threat model of secagg/secagg+/paillier (default: the protocol's own)")
    g.add_argument("--rounds", type=int, help=f"federated rounds (default {d.rounds})")
    g.add_argument("--sample-rate", type=float, help=f"Poisson sampling rate q (default {d.sample_rate})")
    g.add_argument("--dropout", type=float,
                   help="simulated dropout probability at every protocol stage (default 0)")
    g.add_argument("--ring-bits", type=int, help=f"ring width for masking (default {d.ring_bits})")
    g.add_argument("--neighbors", type=int, help="SecAgg+ neighbours per client (default: from n)")
    g.add_argument("--compression", metavar="{none,q8,q16,randk:F,topk:F,mod:B}",
                   help=f"uplink/downlink compression (default {d.compression}); topk: plaintext only; "
                   "mod:B: B-bit ring sized for the sum, lossy (not with paillier)")
    g = p.add_argument_group("model")
    g.add_argument("--factors", type=int, help=f"latent factors k (default {d.factors})")
    g.add_argument("--local-epochs", type=int, help=f"local epochs per round (default {d.local_epochs})")
    g.add_argument("--local-lr", type=float, help=f"local step size (default {d.local_lr})")
    g.add_argument("--update-clip", type=float,
                   help=f"per-coordinate bound of a client update (default {d.update_clip})")
    g.add_argument("--server-optimizer", choices=list(OPTIMIZERS),
                   help=f"server optimizer (default {d.server_optimizer})")
    g.add_argument("--server-lr", type=float, help="server learning rate (default: the optimizer's)")
    g.add_argument("--server-decay", type=float,
                   help="shrink the item part of the global vector by 1 - this after every round "
                        f"(a server-side prior that bounds poisoning; default {d.server_decay})")
    g.add_argument("--eval-every", type=int, help=f"evaluate every N rounds (default {d.eval_every})")
    g = p.add_argument_group("differential privacy")
    g.add_argument("--dp", choices=_dp_modes(),
                   help="none; user: DP-FedAvg with distributed Gaussian noise (one user per client); "
                        "record: DP-SGD in each silo, one rating = one record (needs --silos)")
    g.add_argument("--epsilon", type=float, help="privacy budget; calibrates the noise unless "
                   "--noise-multiplier is given, and training stops before exceeding it")
    g.add_argument("--delta", type=float, help=f"delta of the (epsilon, delta) guarantee (default {d.delta})")
    g.add_argument("--clip", type=float, help=f"L2 bound C: of a user's delta (user) or of a rating's "
                   f"gradient (record) (default {d.clip})")
    g.add_argument("--noise-multiplier", type=float, help="sigma (noise std / C); default: from --epsilon")
    g.add_argument("--accountant", choices=_accountants(), help=f"Opacus accountant (default {d.accountant})")
    g.add_argument("--dp-mechanism", choices=_dp_mechanisms(),
                   help=f"noise of --dp user: gaussian (floats), or skellam (integer noise added in the "
                        f"secure-aggregation ring, its own RDP accounting) (default {d.dp_mechanism})")
    g.add_argument("--silos", type=int, help="cross-silo: group the users into S clients")
    g.add_argument("--dp-batch-size", type=int,
                   help=f"expected DP-SGD batch per silo (record; default {d.dp_batch_size})")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    g.add_argument("--device", choices=DEVICES, help=f"torch device (default {d.device})")
    g.add_argument("--config", type=Path, help="TOML file with any of these settings (flags override)")
    g.add_argument("--report", type=Path, default=Path(DEFAULT_REPORT),
                   help=f"where the JSON report goes (default {DEFAULT_REPORT})")
    g.add_argument("--plot", type=Path, help="also write a PNG of RMSE per round here")
    g.add_argument("--checkpoint", type=Path, help="checkpoint file, written atomically after each round")
    g.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The ``securefedrec`` argument parser."""
    parser = argparse.ArgumentParser(prog="securefedrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a federated training job and write a JSON report")
    _add_run_flags(run)
    _add_attack_parser(sub)
    return parser


def _add_attack_parser(sub: Any) -> None:
    """``securefedrec attack NAME [run flags]`` (the harness lives in the ``attacks`` package)."""
    from attacks.base import ATTACKS  # imported lazily: attacks depends on securefedrec, not the reverse

    attack = sub.add_parser("attack", help="run an attack against a configuration and write a JSON report")
    attack.add_argument("name", choices=list(ATTACKS), help="the attack")
    _add_run_flags(attack)
    g = attack.add_argument_group("attack")
    g.add_argument("--key-bits", type=int, help="Paillier key size for the attacked run (default 2048)")
    g.add_argument("--defence", help="poisoning: the defence whose ER@10 is reported "
                   "(none, clip, row-clip, norm-bound, median, trimmed-mean; default row-clip)")
    g.add_argument("--row-clip", type=float, help="poisoning: per-item L2 bound of row-clip (default 0.75)")
    g.add_argument("--fractions", type=float, nargs="+",
                   help="poisoning: fake clients as fractions of the users (default 0.01 0.03 0.05)")
    attack.set_defaults(report=Path("results/attack.json"))


_NOT_CONFIG = {"command", "config", "report", "plot", "checkpoint", "resume", "quiet"}


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """TOML values, then the flags given explicitly."""
    values: dict[str, Any] = load_toml(args.config) if args.config else {}
    source = str(args.config) if args.config else "command line"
    for key, value in vars(args).items():
        if key not in _NOT_CONFIG and value is not None:
            values[key] = value
    return ExperimentConfig.from_mapping(values, source)


def _run(args: argparse.Namespace) -> int:
    from securefedrec.report import plot_rounds, write_json
    from securefedrec.simulation import run_experiment

    config = config_from_args(args)
    if args.resume and args.checkpoint is None:
        raise SecureFedRecError("--resume needs --checkpoint FILE")
    report = run_experiment(config, checkpoint=args.checkpoint, resume=args.resume,
                            progress=not args.quiet)
    path = write_json(args.report, report)
    final = report["final"]
    print(f"final: RMSE {final['rmse']:.4f}  MAE {final['mae']:.4f}  "
          f"HR@10 {final['hr@10']:.4f}  NDCG@10 {final['ndcg@10']:.4f}")
    if report.get("final", {}).get("epsilon") is not None:
        print(f"privacy: epsilon {final['epsilon']:.4g} at delta {final['delta']:.3g} "
              f"({report['privacy']['unit']})")
    if report.get("stopped"):
        print(f"stopped early: {report['stopped']}")
    print(f"report written to {path}")
    if args.plot:
        print(f"plot written to {plot_rounds(report, args.plot)}")
    return 0


def _attack(args: argparse.Namespace) -> int:
    from attacks.base import get_attack
    from securefedrec.report import write_json

    own = {"name": args.name, "key_bits": args.key_bits, "defence": args.defence, "row_clip": args.row_clip,
           "fractions": args.fractions}
    run_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in own})
    config = config_from_args(run_args)
    given = {k: v for k, v in own.items() if k in ("defence", "row_clip", "fractions") and v is not None}
    if given and args.name != "poisoning":
        flag = "--" + next(iter(given)).replace("_", "-")
        raise SecureFedRecError(f"{flag} applies to the poisoning attack only")
    options: dict[str, Any] = dict(given)
    attack = get_attack(args.name, **options)
    keys = {"key_bits": args.key_bits} if args.key_bits is not None and config.protocol == "paillier" else {}
    result = attack.run(config, aggregator_options=keys)
    path = write_json(args.report, result.to_dict())
    print(f"{result.attack} vs {result.protocol}: {result.metric} {result.value:.4g} "
          f"(baseline {result.baseline:.4g}) -> {'SUCCEEDED' if result.success else 'failed'}")
    print(f"report written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``securefedrec`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "attack":
            return _attack(args)
    except SecureFedRecError as exc:
        print(f"securefedrec: error: {exc}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
