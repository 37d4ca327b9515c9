"""Command line: ``securefedrec run`` (the main job).

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


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    d = ExperimentConfig()
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, help=f"data set (default {d.dataset})")
    g.add_argument("--data-dir", help="folder with the data set's files (e.g. ../shared/data/ml-100k)")
    g.add_argument("--split", choices=ML100K_SPLITS, help=f"ml-100k official split or per-user hold-out "
                   f"(default {d.split})")
    g.add_argument("--synthetic-users", type=int, help=f"synthetic users (default {d.synthetic_users})")
    g.add_argument("--synthetic-items", type=int, help=f"synthetic items (default {d.synthetic_items})")
    g = p.add_argument_group("federation")
    g.add_argument("--protocol", choices=_protocols(), help=f"aggregation protocol (default {d.protocol})")
    g.add_argument("--rounds", type=int, help=f"federated rounds (default {d.rounds})")
    g.add_argument("--sample-rate", type=float, help=f"Poisson sampling rate q (default {d.sample_rate})")
    g.add_argument("--dropout", type=float,
                   help="simulated dropout probability at every protocol stage (default 0)")
    g.add_argument("--ring-bits", type=int, help=f"ring width for masking (default {d.ring_bits})")
    g.add_argument("--neighbors", type=int, help="SecAgg+ neighbours per client (default: from n)")
    g = p.add_argument_group("model")
    g.add_argument("--factors", type=int, help=f"latent factors k (default {d.factors})")
    g.add_argument("--local-epochs", type=int, help=f"local epochs per round (default {d.local_epochs})")
    g.add_argument("--local-lr", type=float, help=f"local step size (default {d.local_lr})")
    g.add_argument("--update-clip", type=float,
                   help=f"per-coordinate bound of a client update (default {d.update_clip})")
    g.add_argument("--server-optimizer", choices=list(OPTIMIZERS),
                   help=f"server optimizer (default {d.server_optimizer})")
    g.add_argument("--server-lr", type=float, help="server learning rate (default: the optimizer's)")
    g.add_argument("--eval-every", type=int, help=f"evaluate every N rounds (default {d.eval_every})")
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
    return parser


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
    print(f"report written to {path}")
    if args.plot:
        print(f"plot written to {plot_rounds(report, args.plot)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``securefedrec`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
    except SecureFedRecError as exc:
        print(f"securefedrec: error: {exc}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
