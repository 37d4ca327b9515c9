"""The sections of an experiment's configuration, and the table of their flat keys.

One frozen, keyword-only dataclass per concern (:class:`DataConfig`,
:class:`FederationConfig`, :class:`ModelConfig`, :class:`PrivacyConfig`,
:class:`CompressionConfig`, :class:`ServerConfig`, :class:`RunConfig`). Each field
has a real type, checked (and an ``int`` widened to ``float``) when the section is
built, and each section checks its own rules in ``_rules``; rules that join two
sections (compression vs protocol, ...) are
:class:`~securefedrec.config.ExperimentConfig`'s.

:data:`FLAT_KEYS` maps every flat key (the TOML key and the CLI flag's name, as
before the sections existed) to its ``(section, field)``; its order is the order
of ``ExperimentConfig.to_dict()`` and of the reports' ``config``. Errors name the
flat key (``FieldError.field``), which the CLI and the TOML reader turn into the
value as the user wrote it (``--sample-rate``).

To add a setting: one line in its section (``name: type = default``, plus a rule
in ``_rules`` if it has one) and one entry in :data:`FLAT_KEYS`
(``"flat_key": ("section", "name")``); the CLI flag is added in
:mod:`securefedrec.cli` as before.

This module imports no torch. Its annotations are evaluated (no ``from __future__
import annotations``): the type check reads the field types themselves.
"""

import dataclasses
import math
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Union, get_args, get_origin

from protocols.secagg import CORRUPTION_RATE
from securefedrec.data import (
    DATASETS,
    FEEDBACK_KINDS,
    ML100K_SPLITS,
    SPLITS,
    parse_columns,
    parse_rating_scale,
)
from securefedrec.errors import ConfigError, DataError
from securefedrec.models.compression_spec import parse_model_compression
from securefedrec.models.names import (
    CONTENT_WEIGHTINGS,
    LOCAL_OPTIMIZERS,
    LOSSES,
    MODEL_NAMES,
    parse_fusion,
    parse_layers,
    parse_member_settings,
)
from securefedrec.server.optimizers import OPTIMIZERS

if TYPE_CHECKING:  # pragma: no cover
    from protocols.base import Aggregator

__all__ = [
    "ACCOUNTANT_NAMES",
    "DEVICES",
    "DP_MECHANISMS",
    "DP_MODES",
    "FLAT_KEYS",
    "SECTIONS",
    "THREAT_MODELS",
    "CompressionConfig",
    "DataConfig",
    "FederationConfig",
    "FieldError",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "Section",
    "ServerConfig",
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
THREAT_MODELS = ("default", "semi-honest", "malicious")
"""Server threat model of the secure protocols: ``default`` = the protocol's own default
(SecAgg/SecAgg+ malicious, Paillier semi-honest); ``malicious`` adds signed keys and a
consistency round (SecAgg, Bell et al.) or signed ciphertexts and verified decryption
(Paillier), at some cost; ``semi-honest`` leaves them out."""


class FieldError(ConfigError):
    """A bad value of one flat key; :meth:`ExperimentConfig.from_mapping` names it as the user wrote it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def protocol_names() -> tuple[str, ...]:
    """The registered protocol names (``protocols`` is torch-free)."""
    from protocols.registry import PROTOCOLS

    return tuple(PROTOCOLS)


def aggregator_class(name: str) -> "type[Aggregator]":
    """The protocol's aggregator class, for its capabilities (``protocols`` is torch-free)."""
    from protocols.registry import aggregator_class as lookup

    return lookup(name)


def _and(names: tuple[str, ...]) -> str:
    """``a, b and c``."""
    return f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else "".join(names)


def _type_name(annotation: Any) -> str:
    """``int``, ``float | None``: the annotation as the user reads it."""
    parts = get_args(annotation) or (annotation,)
    return " | ".join("None" if a is type(None) else a.__name__ for a in parts)


@dataclass(frozen=True, kw_only=True)
class Section:
    """Base of the sections: checks every field against its annotated type, then the section's rules.

    An ``int`` given for a ``float`` field becomes a ``float`` (reports show ``4.0``); a ``bool``
    is never a number (only a ``bool`` field takes one). Errors are :class:`FieldError` naming the flat key.
    """

    SECTION: ClassVar[str]
    """The section's name: the attribute of ``ExperimentConfig`` and the TOML table."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = get_args(f.type) if get_origin(f.type) in (types.UnionType, Union) else (f.type,)
            if value is None and type(None) in allowed:
                continue
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if float in allowed and number:
                object.__setattr__(self, f.name, float(value))
            elif (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
                raise FieldError(self.key(f.name),
                                 f"expected {_type_name(f.type)}, got {value!r} ({type(value).__name__})")
        self._rules()

    def _rules(self) -> None:
        """The section's own rules (each section overrides this)."""

    @classmethod
    def key(cls, field: str) -> str:
        """The flat key (TOML key, CLI flag name) of one of this section's fields."""
        return _FLAT_OF[(cls.SECTION, field)]

    def _need(self, ok: bool, field: str, rule: str) -> None:
        if not ok:
            raise FieldError(self.key(field), f"{rule}, got {getattr(self, field)!r}")

    def _one_of(self, field: str, names: tuple[str, ...]) -> None:
        self._need(getattr(self, field) in names, field, f"must be one of {', '.join(names)}")


@dataclass(frozen=True, kw_only=True)
class DataConfig(Section):
    """Where the ratings come from (:mod:`securefedrec.data`)."""

    SECTION: ClassVar[str] = "data"
    dataset: str = "synthetic"
    data_dir: str | None = None
    split: str = "holdout"
    synthetic_users: int = 500
    synthetic_items: int = 300
    synthetic_ratings_per_user: int = 30
    data_file: str | None = None  # dataset "file": the ratings file (securefedrec.data.read_ratings)
    columns: str | None = None  # dataset "file": user=NAME|N,item=..,rating=..[,timestamp=..]; N 1-based
    rating_scale: str | None = None  # dataset "file": MIN:MAX; default inferred from the file
    feedback: str = "explicit"  # explicit ratings, or implicit: every rating becomes an interaction (1.0)
    eval_negatives: int = 99  # sampled negatives per test user for HR@10 / NDCG@10 (securefedrec.metrics)
    item_features: str | None = None  # CSV item_id,feature[,value] for --model content (data.features)

    def _rules(self) -> None:
        self._one_of("dataset", DATASETS)
        self._one_of("split", ML100K_SPLITS)
        # every data set has holdout, loo and loo-full; only ml-100k has official folds
        if self.dataset == "synthetic":
            self._need(self.split in SPLITS, "split", f"applies only with a --dataset read from files, "
                       f"except {' and '.join(SPLITS)} (synthetic data has no official split)")
        elif self.dataset not in ("ml-100k", "file"):
            self._need(self.split in SPLITS, "split", f"{self.dataset} has no official split; use one of "
                       f"{', '.join(SPLITS)}")
        self._one_of("feedback", FEEDBACK_KINDS)
        self._need(self.eval_negatives >= 1, "eval_negatives", "must be >= 1")
        for name in ("synthetic_users", "synthetic_items", "synthetic_ratings_per_user"):
            self._need(getattr(self, name) >= 1, name, "must be >= 1")
        self._check_data_file()
        if self.dataset not in ("synthetic", "file") and self.data_dir is None:
            raise FieldError("dataset", f"{self.dataset} needs --data-dir (the folder with its files)")

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
        if self.split not in SPLITS:
            raise FieldError("split", f"dataset 'file' is split per user (holdout) or by leave-one-out "
                                      f"(loo, loo-full), got {self.split!r}")
        parsers: dict[str, Callable[[str], object]] = {"columns": parse_columns,
                                                       "rating_scale": parse_rating_scale}
        for name, parse in parsers.items():
            try:
                if getattr(self, name) is not None:
                    parse(getattr(self, name))
            except DataError as exc:
                raise FieldError(name, str(exc)) from None


@dataclass(frozen=True, kw_only=True)
class FederationConfig(Section):
    """The rounds and the secure-aggregation protocol that carries them (:mod:`protocols`)."""

    SECTION: ClassVar[str] = "federation"
    protocol: str = "secagg+"
    threat_model: str = "default"
    rounds: int = 30  # not given: the model's (names.MODEL_DEFAULTS; 30 is mf's), set by ExperimentConfig
    sample_rate: float = 0.2
    dropout: float = 0.0
    threshold_fraction: float = 0.5
    ring_bits: int = 32
    neighbors: int | None = None
    # the fraction of clients a malicious server may control (SecAgg/SecAgg+): every client's
    # Shamir threshold t' counts that many corrupted share holders (protocols.secagg.graph)
    corruption_rate: float = CORRUPTION_RATE
    submodel: bool = False  # submodel rounds: clients send only their rows (protocols.submodel)
    item_epsilon: float = 4.0  # with submodel: randomized response's epsilon over each client's row set

    def _rules(self) -> None:
        self._one_of("protocol", protocol_names())
        self._one_of("threat_model", THREAT_MODELS)
        chosen = self.threat_model
        if chosen != "default" and chosen not in aggregator_class(self.protocol).threat_models:
            from protocols.registry import protocols_where

            names = protocols_where(lambda cls: chosen in cls.threat_models)
            self._need(False, "threat_model", f"applies to {_and(names)}, not {self.protocol!r}")
        self._need(self.rounds >= 1, "rounds", "must be >= 1")
        self._need(0 < self.sample_rate <= 1, "sample_rate", "must be in (0, 1]")
        self._need(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        self._need(0 < self.threshold_fraction <= 1, "threshold_fraction", "must be in (0, 1]")
        self._need(8 <= self.ring_bits <= 64, "ring_bits", "must be in [8, 64]")
        self._need(self.neighbors is None or self.neighbors >= 1, "neighbors", "must be >= 1")
        self._need(math.isfinite(self.corruption_rate) and 0 <= self.corruption_rate < 0.5, "corruption_rate",
                   "must be in [0, 0.5)")
        self._need(math.isfinite(self.item_epsilon) and self.item_epsilon > 0, "item_epsilon",
                   "must be a positive finite number")
        self._need(not self.submodel or aggregator_class(self.protocol).pairwise_masks, "submodel",
                   f"needs a pairwise-masking protocol (secagg or secagg+), not {self.protocol!r}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Section):
    """The model (:mod:`securefedrec.models.registry`) and its local training."""

    SECTION: ClassVar[str] = "model"
    name: str = "mf"
    factors: int = 32
    lam_user: float = 0.1
    lam_item: float = 0.15
    lam_bias: float = 0.05
    init_std: float = 0.01
    # local_epochs, local_lr and weight_decay not given: the model's (names.MODEL_DEFAULTS), which
    # ExperimentConfig sets; the defaults written here are mf's
    local_epochs: int = 1
    local_lr: float = 1.0
    update_clip: float = 16.0
    # implicit-feedback models (securefedrec.models.implicit); each applies only to the models named
    # ("implicit-mf, ncf" below stands for every implicit model: implicit-mf, ncf, fism, content)
    loss: str = "bce"  # implicit-mf, ncf: bce | bpr
    negatives: int = 4  # implicit-mf, ncf: sampled non-interacted items per positive, every local epoch
    weight_decay: float = 0.01  # implicit-mf, ncf: L2 on the item rows and user embeddings each sample reads
    local_optimizer: str = "sgd"  # implicit-mf, ncf: sgd | adam, the client's steps (of size local_lr)
    mlp_layers: str = "64,32,16"  # ncf: MLP widths, the first = user + item MLP embedding sizes
    personalize: bool = False  # ncf: a personal score function kept on the device (models.personal)
    personal_decay: float = 0.0  # ncf with personalize: L2 pulling the personal offset toward zero
    compression: str = "none"  # any model: a smaller global model (models.compression_spec)
    fusion: str | None = None  # MODEL[,MODEL...]: train these together, fused per client (models.fusion)
    fusion_lr: float = 0.1  # fusion: step of the prior's coordinates (-lr * held-out gradient)
    fusion_reg: float | None = None  # fusion: pull toward the prior (None: names.FUSION_REG)
    # fusion: each member's own local_lr / local_epochs / weight_decay, over the shared ones
    # ("ncf:local_lr=10.0,local_epochs=2;fism:local_lr=5.0", names.parse_member_settings); not given:
    # each member's names.MODEL_DEFAULTS for the settings not given, which ExperimentConfig sets
    fusion_settings: str | None = None
    content_weighting: str = "rating"  # content, explicit: rating | item (each item once: secure counts)

    def _rules(self) -> None:
        self._one_of("name", MODEL_NAMES)
        for name in ("factors", "local_epochs", "negatives"):
            self._need(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("lam_user", "lam_item", "lam_bias", "init_std", "weight_decay", "personal_decay"):
            self._need(math.isfinite(getattr(self, name)) and getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("local_lr", "update_clip", "fusion_lr", "fusion_reg"):
            value = getattr(self, name)
            self._need(value is None or (math.isfinite(value) and value > 0), name, "must be > 0")
        self._one_of("loss", LOSSES)
        self._one_of("local_optimizer", LOCAL_OPTIMIZERS)
        self._one_of("content_weighting", CONTENT_WEIGHTINGS)
        try:
            parse_layers(self.mlp_layers)
        except ValueError as exc:
            raise FieldError(self.key("mlp_layers"), str(exc)) from None
        try:
            parse_model_compression(self.compression)
        except ValueError as exc:
            raise FieldError(self.key("compression"), str(exc)) from None
        if self.fusion is not None:
            try:
                parse_fusion(self.fusion)
            except ValueError as exc:
                raise FieldError(self.key("fusion"), str(exc)) from None
        if self.fusion_settings is not None:
            self._need(self.fusion is not None, "fusion_settings", "applies only with --fusion")
            try:
                own = parse_member_settings(self.fusion_settings)
            except ValueError as exc:
                raise FieldError(self.key("fusion_settings"), str(exc)) from None
            outside = [name for name in own if name not in parse_fusion(str(self.fusion))]
            self._need(not outside, "fusion_settings", f"names {', '.join(outside)}, not a member of "
                       f"--fusion {self.fusion}")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig(Section):
    """Differential privacy (:mod:`securefedrec.privacy`): the mode, its budget and its noise."""

    SECTION: ClassVar[str] = "privacy"
    mode: str = "none"
    epsilon: float | None = None
    delta: float = 1e-5
    clip: float = 1.0
    noise_multiplier: float | None = None
    accountant: str = "rdp"
    mechanism: str = "gaussian"
    silos: int | None = None
    batch_size: int = 256

    def _rules(self) -> None:
        need = self._need
        self._one_of("mode", DP_MODES)
        self._one_of("mechanism", DP_MECHANISMS)
        self._one_of("accountant", ACCOUNTANT_NAMES)
        need(self.epsilon is None or (math.isfinite(self.epsilon) and self.epsilon > 0), "epsilon",
             "must be > 0 and finite")
        need(0 < self.delta < 1, "delta", "must be in (0, 1)")
        need(math.isfinite(self.clip) and self.clip > 0, "clip", "must be > 0")
        need(self.noise_multiplier is None
             or (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0),
             "noise_multiplier", "must be >= 0")
        need(self.silos is None or self.silos >= 1, "silos", "must be >= 1")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        if self.mode != "none":
            need(self.epsilon is not None or self.noise_multiplier is not None, "epsilon",
                 f"dp {self.mode!r} needs a budget (--epsilon) or a --noise-multiplier")
        # a budget with dp 'none' is refused by from_mapping (where the user set it), not here:
        # config.replace(dp="none") must still give the same run without DP
        need(self.mode != "record" or self.silos is not None, "silos",
             "dp 'record' is cross-silo DP-SGD and needs --silos S")
        need(self.mode != "user" or self.silos is None, "silos",
             "dp 'user' protects one user per client; it does not apply to silos (use dp 'record')")
        if self.mechanism == "skellam":  # integer noise in the ring (privacy.mechanisms.skellam)
            need(self.mode == "user", "mechanism",
                 f"skellam is the integer-noise form of user-level DP and needs --dp user "
                 f"(dp is {self.mode!r})")
            need(self.accountant == "rdp", "mechanism",
                 f"skellam has its own RDP accounting; accountant {self.accountant!r} does not apply "
                 "(use --accountant rdp)")


@dataclass(frozen=True, kw_only=True)
class CompressionConfig(Section):
    """How updates travel (:mod:`securefedrec.compression`): ``none``, ``q8``, ``randk:0.1``, ..."""

    SECTION: ClassVar[str] = "compression"
    codec: str = "none"

    def _rules(self) -> None:
        from securefedrec.compression import parse_compression

        try:
            parse_compression(self.codec)  # ConfigError names the valid choices
        except FieldError:
            raise
        except ConfigError as exc:
            raise FieldError(self.key("codec"), str(exc).removeprefix("compression: ")) from None


@dataclass(frozen=True, kw_only=True)
class ServerConfig(Section):
    """The server optimizer that turns the decoded sum into the new global vector."""

    SECTION: ClassVar[str] = "server"
    optimizer: str = "fedadam"
    lr: float | None = None  # None: the optimizer's own; not given: the model's (names.MODEL_DEFAULTS)
    decay: float = 0.0

    def _rules(self) -> None:
        self._one_of("optimizer", tuple(OPTIMIZERS))
        self._need(self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "lr",
                   "must be > 0 and finite")
        self._need(math.isfinite(self.decay) and 0 <= self.decay < 1, "decay", "must be in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class RunConfig(Section):
    """How the run is carried out: seed, device, evaluation cadence."""

    SECTION: ClassVar[str] = "run"
    seed: int = 0
    device: str = "auto"
    eval_every: int = 1

    def _rules(self) -> None:
        self._need(self.seed >= 0, "seed", "must be >= 0")
        self._one_of("device", DEVICES)
        self._need(self.eval_every >= 1, "eval_every", "must be >= 1")


SECTIONS: Mapping[str, type[Section]] = MappingProxyType({cls.SECTION: cls for cls in (
    DataConfig, FederationConfig, ModelConfig, PrivacyConfig, CompressionConfig, ServerConfig, RunConfig)})
"""Section name -> class, in the order of ``ExperimentConfig``'s attributes."""

FLAT_KEYS: Mapping[str, tuple[str, str]] = MappingProxyType({
    "dataset": ("data", "dataset"),
    "data_dir": ("data", "data_dir"),
    "split": ("data", "split"),
    "synthetic_users": ("data", "synthetic_users"),
    "synthetic_items": ("data", "synthetic_items"),
    "synthetic_ratings_per_user": ("data", "synthetic_ratings_per_user"),
    "data_file": ("data", "data_file"),
    "columns": ("data", "columns"),
    "rating_scale": ("data", "rating_scale"),
    "feedback": ("data", "feedback"),
    "eval_negatives": ("data", "eval_negatives"),
    "item_features": ("data", "item_features"),
    "protocol": ("federation", "protocol"),
    "threat_model": ("federation", "threat_model"),
    "rounds": ("federation", "rounds"),
    "sample_rate": ("federation", "sample_rate"),
    "dropout": ("federation", "dropout"),
    "threshold_fraction": ("federation", "threshold_fraction"),
    "ring_bits": ("federation", "ring_bits"),
    "neighbors": ("federation", "neighbors"),
    "corruption_rate": ("federation", "corruption_rate"),
    "submodel": ("federation", "submodel"),
    "item_epsilon": ("federation", "item_epsilon"),
    "compression": ("compression", "codec"),
    "model": ("model", "name"),
    "factors": ("model", "factors"),
    "lam_user": ("model", "lam_user"),
    "lam_item": ("model", "lam_item"),
    "lam_bias": ("model", "lam_bias"),
    "init_std": ("model", "init_std"),
    "local_epochs": ("model", "local_epochs"),
    "local_lr": ("model", "local_lr"),
    "update_clip": ("model", "update_clip"),
    "loss": ("model", "loss"),
    "negatives": ("model", "negatives"),
    "weight_decay": ("model", "weight_decay"),
    "local_optimizer": ("model", "local_optimizer"),
    "mlp_layers": ("model", "mlp_layers"),
    "personalize": ("model", "personalize"),
    "personal_decay": ("model", "personal_decay"),
    "model_compression": ("model", "compression"),
    "fusion": ("model", "fusion"),
    "fusion_lr": ("model", "fusion_lr"),
    "fusion_reg": ("model", "fusion_reg"),
    "fusion_settings": ("model", "fusion_settings"),
    "content_weighting": ("model", "content_weighting"),
    "dp": ("privacy", "mode"),
    "epsilon": ("privacy", "epsilon"),
    "delta": ("privacy", "delta"),
    "clip": ("privacy", "clip"),
    "noise_multiplier": ("privacy", "noise_multiplier"),
    "accountant": ("privacy", "accountant"),
    "dp_mechanism": ("privacy", "mechanism"),
    "silos": ("privacy", "silos"),
    "dp_batch_size": ("privacy", "batch_size"),
    "server_optimizer": ("server", "optimizer"),
    "server_lr": ("server", "lr"),
    "server_decay": ("server", "decay"),
    "eval_every": ("run", "eval_every"),
    "seed": ("run", "seed"),
    "device": ("run", "device"),
})
"""Flat key (TOML key, CLI flag ``--flat-key``) -> (section, field). The order is the flat order of
``ExperimentConfig.to_dict()`` (the reports' ``config``), unchanged since the config was one flat class."""

_FLAT_OF: Mapping[tuple[str, str], str] = MappingProxyType({where: key for key, where in FLAT_KEYS.items()})
