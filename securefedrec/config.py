"""Experiment configuration: one frozen, validated dataclass; loadable from TOML.

Every field can be set in a TOML file (``securefedrec run --config FILE``, keys
are the field names, ``-`` or ``_``) and overridden by a CLI flag. Values are
checked in ``__post_init__``, so a bad configuration fails before any work;
:meth:`ExperimentConfig.from_mapping` names the value at fault as the user wrote
it (``--sample-rate``, or ``run.toml: sample-rate``) and refuses settings given
without the mode that uses them (``--epsilon`` without ``--dp user|record``).

This module imports no torch: the CLI builds its parser from the names here.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securefedrec.data import DATASETS, ML100K_SPLITS, parse_columns, parse_rating_scale
from securefedrec.errors import ConfigError, DataError
from securefedrec.models.names import IMPLICIT_MODELS, LOCAL_OPTIMIZERS, LOSSES, MODEL_NAMES, parse_layers
from securefedrec.server.optimizers import OPTIMIZERS

if TYPE_CHECKING:  # pragma: no cover
    from protocols.base import Aggregator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ACCOUNTANT_NAMES",
    "DEVICES",
    "DP_MECHANISMS",
    "DP_MODES",
    "THREAT_MODELS",
    "ExperimentConfig",
    "FieldError",
    "load_toml",
]

DEVICES = ("auto", "cpu", "cuda")

# The names of the privacy modes, here so that config and the CLI need no torch; the
# implementations (securefedrec.privacy.registry) register the same names
# (tests/core/test_cli.py keeps them equal).
DP_MODES = ("none", "user", "record")
"""``--dp``: none; user-level DP-FedAvg; record-level DP-SGD in silos."""
ACCOUNTANT_NAMES = ("rdp", "prv")
"""``--accountant``: the Opacus accountants of :data:`securefedrec.privacy.accountants.ACCOUNTANTS`."""
DP_MECHANISMS = ("gaussian", "skellam")
"""``--dp-mechanism``: the noise of ``--dp user``."""


class FieldError(ConfigError):
    """A bad value of one field; :meth:`ExperimentConfig.from_mapping` names it as the user wrote it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _protocol_names() -> tuple[str, ...]:
    from protocols.registry import PROTOCOLS

    return tuple(PROTOCOLS)


def _aggregator_class(name: str) -> type[Aggregator]:
    """The protocol's aggregator class, for its capabilities (protocols is torch-free)."""
    from protocols.registry import aggregator_class

    return aggregator_class(name)


def _and(names: tuple[str, ...]) -> str:
    """``a, b and c``."""
    return f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else "".join(names)


THREAT_MODELS = ("default", "semi-honest", "malicious")
"""Server threat model of the secure protocols: ``default`` = the protocol's own default
(SecAgg/SecAgg+ malicious, Paillier semi-honest); ``malicious`` adds signed keys and a
consistency round (SecAgg, Bell et al.) or signed ciphertexts and verified decryption
(Paillier), at some cost; ``semi-honest`` leaves them out."""


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """Everything that defines a run. Same config + same seed = same result."""

    # data
    dataset: str = "synthetic"
    data_dir: str | None = None
    split: str = "holdout"
    synthetic_users: int = 500
    synthetic_items: int = 300
    synthetic_ratings_per_user: int = 30
    data_file: str | None = None  # dataset "file": the ratings file (securefedrec.data.read_ratings)
    columns: str | None = None  # dataset "file": user=NAME|N,item=..,rating=..[,timestamp=..]; N 1-based
    rating_scale: str | None = None  # dataset "file": MIN:MAX; default inferred from the file
    # federation
    protocol: str = "secagg+"
    threat_model: str = "default"
    rounds: int = 30
    sample_rate: float = 0.2
    dropout: float = 0.0
    threshold_fraction: float = 0.5
    ring_bits: int = 32
    neighbors: int | None = None
    compression: str = "none"
    # model and local training
    model: str = "mf"  # securefedrec.models.registry
    factors: int = 32
    lam_user: float = 0.1
    lam_item: float = 0.15
    lam_bias: float = 0.05
    init_std: float = 0.01
    local_epochs: int = 1
    local_lr: float = 1.0
    update_clip: float = 16.0
    # ---- implicit-feedback models (securefedrec.models.implicit); lead: port this block into the
    # model section. Each field applies only to the models named after it (_MODE_BOUND).
    loss: str = "bce"  # implicit-mf, ncf: bce | bpr
    negatives: int = 4  # implicit-mf, ncf: sampled non-interacted items per positive, every local epoch
    weight_decay: float = 0.01  # implicit-mf, ncf: L2 on the item rows and user embeddings each sample reads
    local_optimizer: str = "sgd"  # implicit-mf, ncf: sgd | adam, the client's steps (of size local_lr)
    mlp_layers: str = "64,32,16"  # ncf: MLP widths, the first = user + item MLP embedding sizes
    # differential privacy (securefedrec.privacy)
    dp: str = "none"
    epsilon: float | None = None
    delta: float = 1e-5
    clip: float = 1.0
    noise_multiplier: float | None = None
    accountant: str = "rdp"
    dp_mechanism: str = "gaussian"
    silos: int | None = None
    dp_batch_size: int = 256
    # server
    server_optimizer: str = "fedadam"
    server_lr: float | None = None
    server_decay: float = 0.0
    eval_every: int = 1
    # run
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self._check_types()

        def need(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise FieldError(field, f"{rule}, got {getattr(self, field)!r}")

        need(self.dataset in DATASETS, "dataset", f"must be one of {', '.join(DATASETS)}")
        need(self.split in ML100K_SPLITS, "split", f"must be one of {', '.join(ML100K_SPLITS)}")
        protocols = _protocol_names()
        need(self.protocol in protocols, "protocol", f"must be one of {', '.join(protocols)}")
        need(self.threat_model in THREAT_MODELS, "threat_model", f"must be one of {', '.join(THREAT_MODELS)}")
        chosen = self.threat_model
        if chosen != "default" and chosen not in _aggregator_class(self.protocol).threat_models:
            from protocols.registry import protocols_where

            names = protocols_where(lambda cls: chosen in cls.threat_models)
            need(False, "threat_model", f"applies to {_and(names)}, not {self.protocol!r}")
        need(self.model in MODEL_NAMES, "model", f"must be one of {', '.join(MODEL_NAMES)}")
        need(self.server_optimizer in OPTIMIZERS, "server_optimizer",
             f"must be one of {', '.join(OPTIMIZERS)}")
        need(self.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}")
        for name in ("synthetic_users", "synthetic_items", "synthetic_ratings_per_user", "rounds",
                     "factors", "local_epochs", "eval_every"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        need(0 < self.sample_rate <= 1, "sample_rate", "must be in (0, 1]")
        need(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        need(0 < self.threshold_fraction <= 1, "threshold_fraction", "must be in (0, 1]")
        need(8 <= self.ring_bits <= 64, "ring_bits", "must be in [8, 64]")
        need(self.neighbors is None or self.neighbors >= 1, "neighbors", "must be >= 1")
        self._check_compression()
        self._check_implicit(need)
        for name in ("lam_user", "lam_item", "lam_bias", "init_std"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("local_lr", "update_clip"):
            need(math.isfinite(getattr(self, name)) and getattr(self, name) > 0, name, "must be > 0")
        need(self.server_lr is None or (math.isfinite(self.server_lr) and self.server_lr > 0), "server_lr",
             "must be > 0 and finite")
        need(math.isfinite(self.server_decay) and 0 <= self.server_decay < 1, "server_decay",
             "must be in [0, 1)")
        need(self.seed >= 0, "seed", "must be >= 0")
        self._check_privacy(need)
        self._check_data_file()
        if self.dataset not in ("synthetic", "file") and self.data_dir is None:
            raise FieldError("dataset", f"{self.dataset} needs --data-dir (the folder with its files)")

    def _check_implicit(self, need: Callable[[bool, str, str], None]) -> None:
        """The fields of the implicit-feedback models (implicit-mf, ncf)."""
        need(self.loss in LOSSES, "loss", f"must be one of {', '.join(LOSSES)}")
        need(self.local_optimizer in LOCAL_OPTIMIZERS, "local_optimizer",
             f"must be one of {', '.join(LOCAL_OPTIMIZERS)}")
        need(self.negatives >= 1, "negatives", "must be >= 1")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        try:
            parse_layers(self.mlp_layers)
        except ValueError as exc:
            raise FieldError("mlp_layers", str(exc)) from None

    def _check_data_file(self) -> None:
        """The fields of dataset ``file`` (data_file, columns, rating_scale): only with it, well formed."""
        if self.dataset != "file":
            for name in ("data_file", "columns", "rating_scale"):
                if getattr(self, name) is not None:
                    raise FieldError(name, f"applies to dataset 'file' only (--dataset file), "
                                           f"not to {self.dataset!r}")
            return
        if self.data_file is None:
            raise FieldError("data_file", "dataset 'file' needs --data-file PATH (the ratings file)")
        if self.data_dir is not None:
            raise FieldError("data_dir", "dataset 'file' reads --data-file; --data-dir does not apply")
        if self.split != "holdout":
            raise FieldError("split", f"dataset 'file' is split per user (holdout), got {self.split!r}")
        parsers: dict[str, Callable[[str], object]] = {"columns": parse_columns,
                                                       "rating_scale": parse_rating_scale}
        for name, parse in parsers.items():
            try:
                if getattr(self, name) is not None:
                    parse(getattr(self, name))
            except DataError as exc:
                raise FieldError(name, str(exc)) from None

    def _check_privacy(self, need: Callable[[bool, str, str], None]) -> None:
        need(self.dp in DP_MODES, "dp", f"must be one of {', '.join(DP_MODES)}")
        need(self.dp_mechanism in DP_MECHANISMS, "dp_mechanism", f"must be one of {', '.join(DP_MECHANISMS)}")
        need(self.accountant in ACCOUNTANT_NAMES, "accountant",
             f"must be one of {', '.join(ACCOUNTANT_NAMES)}")
        need(self.epsilon is None or (math.isfinite(self.epsilon) and self.epsilon > 0), "epsilon",
             "must be > 0 and finite")
        need(0 < self.delta < 1, "delta", "must be in (0, 1)")
        need(math.isfinite(self.clip) and self.clip > 0, "clip", "must be > 0")
        need(self.noise_multiplier is None
             or (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0),
             "noise_multiplier", "must be >= 0")
        need(self.silos is None or self.silos >= 1, "silos", "must be >= 1")
        need(self.dp_batch_size >= 1, "dp_batch_size", "must be >= 1")
        if self.dp != "none":
            need(self.epsilon is not None or self.noise_multiplier is not None, "epsilon",
                 f"dp {self.dp!r} needs a budget (--epsilon) or a --noise-multiplier")
        # a budget with dp 'none' is refused by from_mapping (where the user set it), not here:
        # dataclasses.replace(config, dp="none") must still give the same run without DP
        need(self.dp != "record" or self.silos is not None, "silos",
             "dp 'record' is cross-silo DP-SGD and needs --silos S")
        need(self.dp != "user" or self.silos is None, "silos",
             "dp 'user' protects one user per client; it does not apply to silos (use dp 'record')")
        if self.dp_mechanism == "skellam":  # integer noise in the ring (privacy.mechanisms.skellam)
            need(self.dp == "user", "dp_mechanism",
                 f"skellam is the integer-noise form of user-level DP and needs --dp user "
                 f"(dp is {self.dp!r})")
            need(self.compression == "none", "dp_mechanism",
                 f"skellam hands the protocol integer units with their own encoding; compression "
                 f"{self.compression!r} would re-quantize or drop them (use --compression none)")
            need(self.accountant == "rdp", "dp_mechanism",
                 f"skellam has its own RDP accounting; accountant {self.accountant!r} does not apply "
                 "(use --accountant rdp)")

    def _check_compression(self) -> None:
        from securefedrec.compression import parse_compression

        try:
            comp = parse_compression(self.compression)  # ConfigError names the valid choices
        except FieldError:
            raise
        except ConfigError as exc:
            raise FieldError("compression", str(exc).removeprefix("compression: ")) from None
        refusal = comp.refused_by(_aggregator_class(self.protocol))  # the codec's own rule (Uplink's too)
        if refusal is not None:
            raise FieldError("compression", f"{self.compression!r} cannot be used with protocol "
                                            f"{self.protocol!r}: {refusal}")

    def _check_types(self) -> None:
        kinds: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,)}
        for f in dataclasses.fields(self):
            base, _, optional = str(f.type).partition(" | ")
            value = getattr(self, f.name)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, kinds[base]):
                raise FieldError(f.name, f"expected {f.type}, got {value!r} ({type(value).__name__})")
            if base == "float":
                object.__setattr__(self, f.name, float(value))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for reports and checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """All configurable fields."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], source: str = "config", *, labels: Mapping[str, str] | None = None
    ) -> ExperimentConfig:
        """Build from a mapping of field names (``-`` or ``_``) to values.

        Errors name the value at fault as ``labels[field]`` when given (the CLI passes
        ``--sample-rate``, or ``run.toml: sample-rate`` for a key of its file), else as
        ``"{source}: {key}"`` for a key of ``values``, else by its field name. A key given
        without the mode that uses it (``epsilon`` while ``dp`` is ``none``, ``synthetic_users``
        with a MovieLens data set, ...) is an error: it would be silently ignored. A key
        whose value is ``None`` counts as not given. ``data_file`` without ``dataset`` means
        ``dataset = "file"``.

        Raises:
            ConfigError: an unknown key, a bad value, or a key without its mode.
        """
        known = set(cls.field_names())
        clean: dict[str, Any] = {}
        named: dict[str, str] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"{source}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
            if name in clean:
                raise ConfigError(f"{source}: {key!r} sets {name!r} a second time")
            clean[name] = value
            named[name] = f"{source}: {key}"
        named.update(labels or {})
        if clean.get("data_file") is not None and clean.get("dataset") is None:
            clean["dataset"] = "file"  # a ratings file is all a user needs to name
        try:
            config = cls(**clean)
        except FieldError as exc:
            raise ConfigError(f"{named.get(exc.field, exc.field)}: {exc.problem}") from None
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        for name, rule in _MODE_BOUND.items():
            mode = getattr(config, rule.mode)
            if clean.get(name) is not None and not rule.applies(mode):
                raise ConfigError(f"{named.get(name, name)}: applies only with {rule.needs}; "
                                  f"{named.get(rule.mode, rule.mode)} is {mode!r}")
        return config


@dataclass(frozen=True)
class _Bound:
    """A field that only means something in some modes: ``applies(getattr(config, mode))``."""

    mode: str
    applies: Callable[[Any], bool]
    needs: str


def _dp_on(dp: Any) -> bool:
    return bool(dp != "none")


def _synthetic(dataset: Any) -> bool:
    return bool(dataset == "synthetic")


def _from_files(dataset: Any) -> bool:
    return bool(dataset != "synthetic")


_MODE_BOUND: dict[str, _Bound] = {
    **{name: _Bound("dp", _dp_on, "--dp user or --dp record")
       for name in ("epsilon", "delta", "clip", "noise_multiplier", "accountant", "dp_mechanism")},
    "dp_batch_size": _Bound("dp", lambda dp: dp == "record", "--dp record"),
    **{name: _Bound("dataset", _synthetic, "--dataset synthetic")
       for name in ("synthetic_users", "synthetic_items", "synthetic_ratings_per_user")},
    **{name: _Bound("dataset", _from_files, "a --dataset read from files")
       for name in ("data_dir", "split")},
    **{name: _Bound("model", lambda model: model in IMPLICIT_MODELS,
                    f"--model {' or '.join(IMPLICIT_MODELS)}")
       for name in ("loss", "negatives", "weight_decay", "local_optimizer")},
    "mlp_layers": _Bound("model", lambda model: model == "ncf", "--model ncf"),
    **{name: _Bound("model", lambda model: model == "mf", "--model mf")
       for name in ("lam_user", "lam_item", "lam_bias")},
    "neighbors": _Bound("protocol", lambda protocol: _aggregator_class(protocol).pairwise_masks,
                        "--protocol secagg or secagg+ (the masking graph)"),
}
"""Fields that are an error when given (flag or config key) outside their mode (``from_mapping``)."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file (a flat table, or a ``[run]`` table)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    table = data.get("run", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{p}: [run] must be a table")
    return table
