"""Command line: securefedrec run, and the commands other packages register (securefedrec attack).

Every flag of ``run`` is a flat key of :class:`~securefedrec.config.ExperimentConfig`
(:data:`securefedrec.config.FLAT_KEYS`); a ``--config FILE.toml`` sets values first and
explicit flags override it.

Building the parser imports no torch (only :mod:`securefedrec.config` and the name
registries), so ``securefedrec --help`` answers at once; a command imports the
simulation when it runs. Other packages add commands through the entry-point group
:data:`COMMAND_GROUP` (the attack harness registers ``attack``), so the core never
imports them.

Exit status: 0 done, 2 a usage or configuration error (one line on stderr), 130
interrupted (Ctrl-C; ``run`` writes a partial report and says how to resume).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

from securefedrec import __version__
from securefedrec.config import (
    ACCOUNTANT_NAMES,
    DEVICES,
    DP_MECHANISMS,
    DP_MODES,
    THREAT_MODELS,
    ExperimentConfig,
    read_toml,
)
from securefedrec.data import DATASETS, FEEDBACK_KINDS, ML100K_SPLITS
from securefedrec.errors import SecureFedRecError
from securefedrec.models.names import (
    CONTENT_WEIGHTINGS,
    FUSION_REG,
    LOCAL_OPTIMIZERS,
    LOSSES,
    MODEL_DEFAULTS,
    MODEL_NAMES,
)
from securefedrec.server.optimizers import OPTIMIZERS

__all__ = [
    "COMMAND_GROUP",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "Command",
    "add_run_flags",
    "build_parser",
    "config_from_args",
    "installed_commands",
    "main",
]

DEFAULT_REPORT = "results/report.json"
COMMAND_GROUP = "securefedrec.commands"
"""Entry-point group of the sub-commands other packages add (``name = "module:COMMAND"``)."""
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd program

_OPTIONAL_COMMANDS = {"attack": "the attack harness (package 'attacks', shipped with securefedrec)",
                      "keys": "the Flower deployment's identity keys (module securefedrec.keys)"}
"""Commands the project's own packages register, for a helpful error when one is missing."""


@dataclass(frozen=True)
class Command:
    """A sub-command of ``securefedrec`` that a package registers under :data:`COMMAND_GROUP`.

    Attributes:
        help: one line for ``securefedrec --help``.
        configure: adds the command's arguments to its (sub)parser; imports nothing heavy.
        run: runs the parsed command; returns the exit status. A
            :class:`~securefedrec.errors.SecureFedRecError` becomes one line on stderr and
            status 2, a KeyboardInterrupt status 130.
    """

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``securefedrec run: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _protocols() -> list[str]:
    from protocols.registry import PROTOCOLS  # names -> "module:Class" strings; imports no protocol

    return list(PROTOCOLS)


def _by_model(key: str, none: str = "") -> str:
    """``default: the model's (mf 1, implicit-mf 30, ...)``: the help of a flat key of ``MODEL_SETTINGS``.

    Models that share a value are named together; ``none`` words a value of None.
    """
    values: dict[Any, list[str]] = {}
    for name, defaults in MODEL_DEFAULTS.items():
        values.setdefault(defaults[key], []).append(name)
    shown = [f"{'/'.join(names)} {none if value is None else f'{value:g}'}"
             for value, names in values.items()]
    return f"default: the model's, {', '.join(shown)} (securefedrec.models.names.MODEL_DEFAULTS)"


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags of ``securefedrec run`` (each a flat key of :class:`ExperimentConfig`, plus run options)."""
    # the defaults, without building (and validating) a config: that would import the codecs
    d = SimpleNamespace(**ExperimentConfig.defaults())
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, help=f"data set (default {d.dataset})")
    g.add_argument("--data-dir", help="folder with the data set's files (e.g. ../shared/data/ml-100k)")
    g.add_argument("--split", choices=ML100K_SPLITS, help=f"ml-100k official split, per-user hold-out, or "
                   f"loo (leave-one-out: each user's latest interaction is the test item, the second latest "
                   f"validation; any data set), or loo-full (leave-one-out as in the papers' tables: only "
                   f"the latest is held out, every other interaction trains; no validation item, so --fusion "
                   f"fits its weights on a holdout of the training data) (default {d.split})")
    # issue #16 (h-data): feedback kind and the sampled-negative evaluation
    g.add_argument("--feedback", choices=FEEDBACK_KINDS, help=f"explicit ratings, or implicit: every rating "
                   f"becomes an interaction of value 1, judged by HR@10 / NDCG@10 (default {d.feedback})")
    g.add_argument("--eval-negatives", type=int, help=f"sampled negatives each test user ranks its held-out "
                   f"item among, for HR@10 / NDCG@10 (default {d.eval_negatives})")
    # issue #17 (h-content): side information of the items, for --model content
    g.add_argument("--item-features", metavar="FILE", help="item features for --model content: CSV lines "
                   "item_id,feature[,value] (value default 1; item ids as in the ratings file); default: "
                   "the data set's own (ml-100k u.item, ml-latest-small movies.csv, synthetic factors)")
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
    g.add_argument("--synthetic-ratings-per-user", type=int,
                   help=f"ratings of each synthetic user (default {d.synthetic_ratings_per_user})")
    g = p.add_argument_group("federation")
    g.add_argument("--protocol", choices=_protocols(), help=f"aggregation protocol (default {d.protocol})")
    g.add_argument("--threat-model", choices=THREAT_MODELS,
                   help="server threat model of secagg/secagg+/paillier (default: the protocol's own)")
    g.add_argument("--rounds", type=int, help=f"federated rounds ({_by_model('rounds')})")
    g.add_argument("--sample-rate", type=float, help=f"Poisson sampling rate q (default {d.sample_rate})")
    g.add_argument("--dropout", type=float,
                   help="simulated dropout probability at every protocol stage (default 0)")
    g.add_argument("--ring-bits", type=int, help=f"ring width for masking (default {d.ring_bits})")
    g.add_argument("--neighbors", type=int, help="SecAgg+ neighbours per client (default: from n)")
    g.add_argument("--corruption-rate", type=float,
                   help="secagg/secagg+: the fraction of clients a malicious server may control; each "
                        "client's Shamir threshold counts that many corrupted share holders, and SecAgg+'s "
                        f"degree is chosen for it (default {d.corruption_rate:g})")
    g.add_argument("--submodel", action="store_true", default=None,
                   help="submodel rounds: each client sends only the rows of its randomized-response item "
                        "set, summed exactly by SecAgg(+) with its secrets shared on the masking graph "
                        "(protocols.submodel)")
    g.add_argument("--item-epsilon", type=float,
                   help="with --submodel: epsilon of the randomized response over each client's item set "
                        "(item-level local DP; default 4)")
    g.add_argument("--compression", metavar="{none,q8,q16,randk:F,topk:F,mod:B}",
                   help=f"uplink/downlink compression (default {d.compression}); topk: plaintext only; "
                   "mod:B: B-bit ring sized for the sum, lossy (not with paillier)")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=MODEL_NAMES, help=f"model to train (default {d.model})")
    g.add_argument("--factors", type=int, help=f"latent factors k (default {d.factors})")
    g.add_argument("--local-epochs", type=int, help=f"local epochs per round ({_by_model('local_epochs')})")
    g.add_argument("--local-lr", type=float, help=f"local step size ({_by_model('local_lr')})")
    # the implicit-feedback models (implicit-mf, ncf)
    g.add_argument("--loss", choices=LOSSES, help=f"implicit-mf, ncf: training loss (default {d.loss})")
    g.add_argument("--negatives", type=int, help=f"implicit-mf, ncf: sampled negatives per positive, "
                   f"every local epoch (default {d.negatives})")
    g.add_argument("--weight-decay", type=float, help=f"implicit-mf, ncf: L2 on the item rows and user "
                   f"embeddings each sample reads ({_by_model('weight_decay')})")
    g.add_argument("--local-optimizer", choices=LOCAL_OPTIMIZERS,
                   help=f"implicit-mf, ncf: the client's optimizer (default {d.local_optimizer})")
    g.add_argument("--mlp-layers", metavar="W0,W1,...", help=f"ncf: MLP widths, the first = user + item "
                   f"MLP embedding sizes (default {d.mlp_layers})")
    g.add_argument("--personalize", action="store_true", default=None,
                   help="ncf: each user also keeps a personal offset of the MLP and output layer (its own "
                        "score function), trained and used on its device only, never sent")
    g.add_argument("--personal-decay", type=float, help=f"ncf with --personalize: L2 pulling the personal "
                   f"offset toward zero (default {d.personal_decay})")
    g.add_argument("--model-compression", metavar="SPEC",
                   help="any model: a smaller global model, e.g. hash:8, qr:8, mixed:8, prune:0.9, int8, "
                        "int4, mixed:2+int8 (securefedrec.models.compressed; default none)")
    g.add_argument("--fusion", metavar="MODEL,MODEL,...",
                   help=f"train these models ({', '.join(MODEL_NAMES)}) in the same rounds and fuse their "
                        "predictions with weights each client learns on its held-out data "
                        "(instead of --model)")
    g.add_argument("--fusion-lr", type=float, help=f"--fusion: step of the global prior weights "
                   f"(default {d.fusion_lr})")
    g.add_argument("--fusion-reg", type=float, help="--fusion: pull of a client's weights toward the prior, "
                   f"in held-out ratings (default {FUSION_REG['explicit']:g} on explicit data, "
                   f"{FUSION_REG['implicit']:g} on implicit)")
    g.add_argument("--fusion-settings", metavar="MEMBER:SETTING=VALUE,...;MEMBER:...",
                   help="--fusion: a member's own --local-lr, --local-epochs or --weight-decay, e.g. "
                        "ncf:local_lr=10,local_epochs=2;fism:local_lr=5 (default: each member its model's "
                        "default of every one of them not given as a flag; the report records the values)")
    g.add_argument("--content-weighting", choices=list(CONTENT_WEIGHTINGS),
                   help=f"content, explicit data: each rating once, or each item once (its loss weighted "
                        f"by the secure item counts; better on items nobody rated) "
                        f"(default {d.content_weighting})")
    g.add_argument("--update-clip", type=float,
                   help=f"per-coordinate bound of a client update (default {d.update_clip})")
    g.add_argument("--server-optimizer", choices=list(OPTIMIZERS),
                   help=f"server optimizer (default {d.server_optimizer})")
    g.add_argument("--server-lr", type=float,
                   help="server learning rate (" + _by_model("server_lr", none="the optimizer's own") + ")")
    g.add_argument("--server-decay", type=float,
                   help="shrink the item part of the global vector by 1 - this after every round "
                        f"(a server-side prior that bounds poisoning; default {d.server_decay})")
    g.add_argument("--eval-every", type=int, help=f"evaluate every N rounds (default {d.eval_every})")
    g = p.add_argument_group("differential privacy (the other flags of this group need --dp user|record)")
    g.add_argument("--dp", choices=DP_MODES,
                   help="none; user: DP-FedAvg with distributed Gaussian noise (one user per client); "
                        "record: DP-SGD in each silo, one rating = one record (needs --silos)")
    g.add_argument("--epsilon", type=float, help="privacy budget; calibrates the noise unless "
                   "--noise-multiplier is given, and training stops before exceeding it")
    g.add_argument("--delta", type=float, help=f"delta of the (epsilon, delta) guarantee (default {d.delta})")
    g.add_argument("--clip", type=float, help=f"L2 bound C: of a user's delta (user) or of a rating's "
                   f"gradient (record) (default {d.clip})")
    g.add_argument("--noise-multiplier", type=float, help="sigma (noise std / C); default: from --epsilon")
    g.add_argument("--accountant", choices=ACCOUNTANT_NAMES,
                   help=f"Opacus accountant (default {d.accountant})")
    g.add_argument("--dp-mechanism", choices=DP_MECHANISMS,
                   help=f"noise of --dp user: gaussian (floats), or skellam (integer noise added in the "
                        f"secure-aggregation ring, its own RDP accounting) (default {d.dp_mechanism})")
    g.add_argument("--silos", type=int, help="cross-silo: group the users into S clients")
    g.add_argument("--dp-batch-size", type=int,
                   help=f"expected DP-SGD batch per silo (--dp record only; default {d.dp_batch_size})")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    g.add_argument("--device", choices=DEVICES, help=f"torch device (default {d.device})")
    g.add_argument("--config", type=Path, help="TOML file with any of these settings (flags override)")
    g.add_argument("--report", type=Path, default=Path(DEFAULT_REPORT),
                   help=f"where the JSON report goes (default {DEFAULT_REPORT})")
    g.add_argument("--plot", type=Path, help="also write a PNG of RMSE per round here")
    g.add_argument("--checkpoint", type=Path, help="checkpoint file, written atomically after each round")
    g.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists "
                   "(needs --checkpoint)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(_flags={a.dest: a.option_strings[0] for a in p._actions if a.option_strings})


def installed_commands() -> dict[str, Command | Exception]:
    """The commands registered under :data:`COMMAND_GROUP`, by name.

    A command whose entry point cannot be loaded (its package is gone, or the
    installed metadata is stale) maps to the exception, so ``run`` still works and
    using that command gives one clear line.
    """
    found: dict[str, Command | Exception] = {}
    for ep in metadata.entry_points(group=COMMAND_GROUP):
        if ep.name == "run" or ep.name in found:
            continue
        try:
            command = ep.load()
        except Exception as exc:  # any import failure of a plug-in; reported when it is used
            found[ep.name] = SecureFedRecError(
                f"command {ep.name!r} cannot be loaded from {ep.value!r} "
                f"({type(exc).__name__}: {exc}); reinstall securefedrec (pip install -e .)")
            continue
        found[ep.name] = command if isinstance(command, Command) else SecureFedRecError(
            f"entry point {ep.name} = {ep.value!r} of group {COMMAND_GROUP} is not a "
            "securefedrec.cli.Command")
    return found


def build_parser(commands: Mapping[str, Command | Exception] | None = None) -> argparse.ArgumentParser:
    """The ``securefedrec`` parser: ``run`` and ``commands`` (default: :func:`installed_commands`)."""
    commands = installed_commands() if commands is None else commands
    parser = _Parser(prog="securefedrec", description="Privacy-preserving federated recommendation: "
                     "federated matrix factorization with secure aggregation, differential privacy "
                     "and an attack harness.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="run a federated training job and write a JSON report")
    add_run_flags(run)
    for name, command in commands.items():
        if isinstance(command, Command):
            command.configure(sub.add_parser(name, help=command.help))
        else:
            broken = sub.add_parser(name, help=f"unavailable: {command}", add_help=False)
            broken.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


_NOT_CONFIG = {"command", "config", "report", "plot", "checkpoint", "resume", "quiet", "_flags"}


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """TOML values, then the flags given explicitly; errors name the flag, or the file and key."""
    flags: dict[str, str] = getattr(args, "_flags", {})
    labels = dict(flags)  # a value left at its default is named by its flag
    values: dict[str, Any] = {}
    if args.config:  # flat keys, a [run] table or section tables (securefedrec.config.toml)
        from_file, named = read_toml(args.config)
        values.update(from_file)
        labels.update(named)
    for key, value in vars(args).items():
        if key not in _NOT_CONFIG and value is not None:
            values[key] = value
            labels[key] = flags.get(key, "--" + key.replace("_", "-"))
    return ExperimentConfig.from_mapping(values, str(args.config or "command line"), labels=labels)


def _check_run_options(args: argparse.Namespace) -> None:
    """Options that need no simulation to check: fail before minutes of training, not after."""
    if args.resume and args.checkpoint is None:
        raise SecureFedRecError("--resume: needs --checkpoint FILE (the file to continue from)")
    if args.fusion is not None and args.model is not None:
        raise SecureFedRecError(f"--model {args.model}: --fusion {args.fusion} names the models to train; "
                                "give one or the other")
    for flag, path in (("--report", args.report), ("--plot", args.plot), ("--checkpoint", args.checkpoint)):
        if path is None:
            continue
        if path.is_dir():
            raise SecureFedRecError(f"{flag}: {path} is a folder; give a file name")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = exc.strerror or exc
            raise SecureFedRecError(f"{flag}: cannot create the folder of {path} ({problem})") from None


def _run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _check_run_options(args)
    config = config_from_args(args)
    from securefedrec.errors import RunInterrupted
    from securefedrec.report import plot_fusion_weights, plot_rounds, write_json
    from securefedrec.server.simulation import run_experiment

    if args.resume and not args.checkpoint.exists():  # documented: --resume continues if it exists
        print(f"securefedrec: {args.checkpoint} does not exist yet; --resume starts from round 1",
              file=sys.stderr)
    try:
        report = run_experiment(config, checkpoint=args.checkpoint, resume=args.resume,
                                progress=not args.quiet)
    except RunInterrupted as stop:  # inside the rounds: a partial report
        path = write_json(args.report, stop.report)
        done = len(stop.report["rounds"])
        print(f"securefedrec: interrupted after round {done} of {config.federation.rounds} "
              f"(partial report in {path}); {_how_to_resume(args, argv)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # while loading the data or the checkpoint: nothing to report
        print(f"securefedrec: interrupted before the first round (no report written); "
              f"{_how_to_resume(args, argv)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    path = write_json(args.report, report)
    print(final_summary(report))
    final = report["final"]
    if final.get("epsilon") is not None:
        print(f"privacy: epsilon {final['epsilon']:.4g} at delta {final['delta']:.3g} "
              f"({report['privacy']['unit']})")
    if report.get("stopped"):
        print(f"stopped early: {report['stopped']}")
    print(f"report written to {path}")
    if args.plot:
        print(f"plot written to {plot_rounds(report, args.plot)}")
        if report["final"].get("fusion_weights") is not None:  # --fusion: the weights across clients
            weights = args.plot.with_name(f"{args.plot.stem}-weights{args.plot.suffix or '.png'}")
            print(f"fusion weights plot written to {plot_fusion_weights(report, weights)}")
    return 0


def final_summary(report: Mapping[str, Any]) -> str:
    """One line of the report's final metrics: RMSE / MAE on explicit data, then the ranking metrics."""
    final = report["final"]

    def show(key: str, label: str) -> str:
        value = final.get(key)
        return f"{label} {value:.4f}" if value is not None else f"{label} -"

    parts = [] if final.get("rmse") is None else [show("rmse", "RMSE"), show("mae", "MAE")]
    if final.get("cold_rmse") is not None:  # test ratings of items without a training rating (#17)
        parts.append(f"{show('cold_rmse', 'cold-item RMSE')} ({final.get('cold_ratings')} ratings)")
    parts += [show("hr@10", "HR@10"), show("ndcg@10", "NDCG@10"), show("recall@20", "Recall@20"),
              show("ndcg@20", "NDCG@20")]
    negatives = report.get("config", {}).get("eval_negatives")
    kind = report.get("dataset", {}).get("feedback", "explicit")
    return f"final: {'  '.join(parts)}  ({kind} feedback; @10 among {negatives} sampled negatives)"


def _how_to_resume(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """The second half of the interrupt message: the command that continues, or why none can."""
    if args.checkpoint is None:
        return "nothing was saved to resume from (run with --checkpoint FILE to be able to resume)"
    if not Path(args.checkpoint).exists():
        return f"no round completed, so {args.checkpoint} was not written; start again to resume later"
    words = ["securefedrec", *argv]
    if "--resume" not in words:
        words.append("--resume")
    return f"resume with: {shlex.join(words)}"


def _unknown_command(argv: Sequence[str], commands: Mapping[str, Command | Exception]) -> str | None:
    """One line for ``securefedrec attack`` when the package that registers ``attack`` is not installed."""
    name = next((a for a in argv if not a.startswith("-")), None)
    if name in _OPTIONAL_COMMANDS and name not in commands:
        return (f"securefedrec: error: command {name!r} is not installed: it comes from "
                f"{_OPTIONAL_COMMANDS[name]} through the entry-point group {COMMAND_GROUP!r}; "
                "reinstall securefedrec (pip install -e .) to register it")
    return None


def main(
    argv: Sequence[str] | None = None, *, commands: Mapping[str, Command | Exception] | None = None
) -> int:
    """Entry point of the ``securefedrec`` console script; returns the exit status.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        commands: the sub-commands besides ``run`` (default: :func:`installed_commands`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        commands = installed_commands() if commands is None else commands
        missing = _unknown_command(argv, commands)
        if missing is not None:
            print(missing, file=sys.stderr)
            return EXIT_ERROR
        args = build_parser(commands).parse_args(argv)
        if args.command == "run":
            return _run(args, argv)
        command = commands[args.command]
        if not isinstance(command, Command):
            raise command
        return command.run(args)
    except SecureFedRecError as exc:
        print(f"securefedrec: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a path given on the command line: unreadable, unwritable, a folder
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"securefedrec: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("securefedrec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    # `python -m securefedrec.cli`: run the imported module's main, so that the commands other
    # packages register (built from securefedrec.cli.Command) are recognised as ours
    from securefedrec.cli import main as _installed_main

    sys.exit(_installed_main())
