"""ExperimentConfig: the sections of one run, built from flat keys or from section objects.

See :mod:`securefedrec.config` for the sections and the flat-key table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from securefedrec.config.sections import (
    FLAT_KEYS,
    SECTIONS,
    CompressionConfig,
    DataConfig,
    FederationConfig,
    FieldError,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    Section,
    ServerConfig,
    aggregator_class,
)
from securefedrec.config.toml import read_toml
from securefedrec.errors import ConfigError
from securefedrec.models.compression_spec import parse_model_compression
from securefedrec.models.names import (
    DEFAULT_MODEL,
    IMPLICIT_MODELS,
    MEMBER_SETTINGS,
    MODEL_DEFAULTS,
    MODEL_SETTINGS,
    format_member_settings,
    parse_fusion,
    parse_member_settings,
)

__all__ = ["ExperimentConfig", "model_defaults"]


def model_defaults(name: str, fusion: str | None = None) -> Mapping[str, Any]:
    """The value of each of :data:`~securefedrec.models.names.MODEL_SETTINGS` (flat keys) that a run of
    model ``name`` takes when the user does not give it: its row of
    :data:`~securefedrec.models.names.MODEL_DEFAULTS` (an unknown name, which its section refuses: mf's).

    A ``fusion`` runs the largest ``rounds`` of its members and their ``server_lr`` where they all have
    the same (else the optimizer's own: None); its ``local_*`` and ``weight_decay`` are mf's, and each
    member has its own in ``fusion_settings`` (:meth:`ExperimentConfig.member`).
    """
    if fusion is None:
        return MODEL_DEFAULTS[name if name in MODEL_DEFAULTS else "mf"]
    try:
        rows = [MODEL_DEFAULTS[member] for member in parse_fusion(fusion)]
    except ValueError:  # the section names the error
        return MODEL_DEFAULTS["mf"]
    server_lrs = {row["server_lr"] for row in rows}
    return {**MODEL_DEFAULTS["mf"], "rounds": max(row["rounds"] for row in rows),
            "server_lr": server_lrs.pop() if len(server_lrs) == 1 else None}


def _member_settings(fusion: str, given: Any, open_keys: frozenset[str], shared: Mapping[str, Any]) -> Any:
    """``fusion_settings`` of ``--fusion fusion``: the ``given`` entries, and each member's own default
    (:data:`~securefedrec.models.names.MODEL_DEFAULTS`) of every setting in ``open_keys`` it lacks where
    that differs from the ``shared`` value (so that a fusion of members with mf's settings records none).

    Returns ``given`` as it is when it or ``fusion`` is malformed (the section names the error).
    """
    try:
        members = parse_fusion(fusion)
        own = parse_member_settings(given) if isinstance(given, str) else {}
    except ValueError:
        return given
    if given is not None and (not isinstance(given, str) or any(m not in members for m in own)):
        return given
    return format_member_settings({
        member: {key: own.get(member, {}).get(key, MODEL_DEFAULTS[member][key]) for key in MEMBER_SETTINGS
                 if key in own.get(member, {})
                 or (key in open_keys and MODEL_DEFAULTS[member][key] != shared[key])}
        for member in members})


_RESOLVED = (*MODEL_SETTINGS, "fusion_settings")
"""The flat keys whose value, when not given, depends on the model (``ExperimentConfig`` resolves them)."""


def _group(
    values: Mapping[str, Any]
) -> tuple[dict[str, Section], dict[str, dict[str, Any]]]:
    """Split keyword arguments into whole sections and flat keys per section (their section's fields).

    A section name that is also a flat key (``model``, ``compression``) is the section when its
    value is a :class:`Section`, else the flat key. A flat key whose section is given whole is
    refused: it would be silently lost (or silently win).
    """
    sections: dict[str, Section] = {}
    flat: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        if name in SECTIONS and (name not in FLAT_KEYS or isinstance(value, Section)):
            if not isinstance(value, SECTIONS[name]):
                raise ConfigError(f"{name}: expected {SECTIONS[name].__name__}, got {value!r}")
            sections[name] = value
            continue
        if name not in FLAT_KEYS:
            raise ConfigError(f"unknown key {name!r}; known keys: {', '.join(FLAT_KEYS)} "
                              f"and the sections {', '.join(SECTIONS)}")
        section, field = FLAT_KEYS[name]
        flat.setdefault(section, {})[field] = value
    for section, fields in flat.items():
        if section in sections:
            key = SECTIONS[section].key(next(iter(fields)))
            raise FieldError(key, f"given both on its own and inside {section}=; set it in one place "
                                  f"(config.replace({key}=...) changes one value of a config)")
    return sections, flat


@dataclass(frozen=True, init=False)
class ExperimentConfig:
    """Everything that defines a run. Same config + same seed = same result.

    Build it from flat keys (the TOML keys and CLI flag names), from sections, or both::

        ExperimentConfig(protocol="secagg+", rounds=3, dp="user", epsilon=4.0)
        ExperimentConfig(privacy=PrivacyConfig(mode="user", epsilon=4.0), rounds=3)

    Without a model (``model=``), the run trains the default model of its feedback
    (:data:`~securefedrec.models.names.DEFAULT_MODEL`: ``mf`` for explicit ratings,
    ``implicit-mf`` for implicit feedback). The training settings of
    :data:`~securefedrec.models.names.MODEL_SETTINGS` (``local_lr``, ``local_epochs``,
    ``weight_decay``, ``server_lr``, ``rounds``) that are not given take the model's own
    (:func:`model_defaults`, resolved here: the sections, :meth:`to_dict` and the reports hold the
    values the run uses); a given one always wins, and a section given whole is taken as it is
    (``ModelConfig(name="fism")`` keeps its own ``local_lr`` of 1.0). :meth:`replace` with another
    model re-resolves the settings that were not given. A flat key and the whole section that holds it
    cannot both be given. ``model`` and
    ``compression`` are both a flat key (a string: the model's name, the codec) and a section
    (a :class:`ModelConfig`, a :class:`CompressionConfig`). Read values through the sections
    (``config.federation.rounds``, ``config.privacy.epsilon``); change them with
    :meth:`replace`; :meth:`to_dict` is the flat form of reports and checkpoints.

    Raises:
        ConfigError: a bad value (:class:`~securefedrec.config.FieldError` names its flat key), an
            unknown key, or a flat key given together with its section.
    """

    data: DataConfig
    federation: FederationConfig
    model: ModelConfig
    privacy: PrivacyConfig
    compression: CompressionConfig
    server: ServerConfig
    run: RunConfig
    _given: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    """(Set on each instance; not a field, so not compared.) The values the user gave of the keys that
    are resolved by model (``MODEL_SETTINGS``, ``fusion_settings``), which :meth:`replace` keeps; the
    others it resolves again for its model."""

    def __init__(
        self,
        *,
        data: DataConfig | None = None,
        federation: FederationConfig | None = None,
        model: ModelConfig | str | None = None,
        privacy: PrivacyConfig | None = None,
        compression: CompressionConfig | str | None = None,
        server: ServerConfig | None = None,
        run: RunConfig | None = None,
        **flat: Any,
    ) -> None:
        named = {"data": data, "federation": federation, "model": model, "privacy": privacy,
                 "compression": compression, "server": server, "run": run}
        sections, fields = _group({**{k: v for k, v in named.items() if v is not None}, **flat})
        if "model" not in sections and "name" not in fields.get("model", {}):  # by --feedback
            given = sections.get("data")
            feedback = (given.feedback if isinstance(given, DataConfig)
                        else fields.get("data", {}).get("feedback", "explicit"))
            if feedback in DEFAULT_MODEL:
                fields.setdefault("model", {})["name"] = DEFAULT_MODEL[feedback]
        # the model's own training settings, for those the user did not give (flat or in a whole section)
        user = {key: getattr(sections[section], field) if section in sections else fields[section][field]
                for key, (section, field) in FLAT_KEYS.items()
                if key in _RESOLVED and (section in sections or field in fields.get(section, {}))}
        open_keys = frozenset(MODEL_SETTINGS) - user.keys()
        whole_model = sections.get("model")
        chosen = fields.setdefault("model", {}) if whole_model is None else vars(whole_model)
        defaults = model_defaults(chosen.get("name", ModelConfig.name), chosen.get("fusion"))
        for key in open_keys:
            section, field = FLAT_KEYS[key]
            fields.setdefault(section, {})[field] = defaults[key]
        if whole_model is None and chosen.get("fusion") is not None:  # each member its own
            chosen["fusion_settings"] = _member_settings(chosen["fusion"], chosen.get("fusion_settings"),
                                                         open_keys, defaults)
        for name, cls in SECTIONS.items():
            part = sections[name] if name in sections else cls(**fields.get(name, {}))
            object.__setattr__(self, name, part)
        object.__setattr__(self, "_given", MappingProxyType(user))
        self._check_across()

    def _check_across(self) -> None:
        """The rules that join two sections."""
        compression, protocol = self.compression.codec, self.federation.protocol
        from securefedrec.compression import parse_compression

        # the codec's own rule (the Uplink asks it too)
        refusal = parse_compression(compression).refused_by(aggregator_class(protocol))
        if refusal is not None:
            raise FieldError("compression", f"{compression!r} cannot be used with protocol "
                                            f"{protocol!r}: {refusal}")
        if self.federation.submodel and (compression != "none" or self.privacy.mode != "none"
                                         or self.privacy.silos is not None
                                         or parse_model_compression(self.model.compression).structure
                                         not in (None, "prune")
                                         or self.model.fusion is not None):
            raise FieldError("submodel", "submodel rounds send only each client's rows: they take neither "
                                         "compression, nor DP noise (it would be dense), nor silos, nor "
                                         "model compression other than int8, int4 and prune:F (shared or "
                                         "narrower rows are no item's own), nor fusion")
        if self.model.fusion is not None and self.model.compression != "none":
            raise FieldError("model_compression", "model compression wraps one model, not a --fusion "
                                                  f"of several, got {self.model.compression!r}")
        if self.privacy.mechanism == "skellam" and compression != "none":
            raise FieldError("dp_mechanism", f"skellam hands the protocol integer units with their own "
                                             f"encoding; compression {compression!r} would re-quantize or "
                                             f"drop them (use --compression none), got 'skellam'")

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A copy with some values changed: flat keys (``rounds=5``) and/or whole sections.

        A setting of :data:`~securefedrec.models.names.MODEL_SETTINGS` that took the model's default
        and is not changed takes the (new) model's default again.

        Raises:
            ConfigError: as the constructor.
        """
        whole, _ = _group(changes)
        kept = {key: value for key, value in self.to_dict().items()
                if key not in _RESOLVED and FLAT_KEYS[key][0] not in whole}
        kept.update({key: value for key, value in self._given.items() if FLAT_KEYS[key][0] not in whole})
        kept.update({key: value for key, value in changes.items() if key not in whole})
        merged: dict[str, Any] = {**whole, **kept}
        return ExperimentConfig(**merged)

    def member(self, name: str) -> ExperimentConfig:
        """The configuration of ``--fusion`` member ``name`` trained alone: the run's, with the member's
        own ``fusion_settings`` (:meth:`replace` gives it its own defaults of the settings not given).

        Raises:
            ConfigError: ``name`` is not a member of this run's fusion.
        """
        fusion = self.model.fusion
        if fusion is None or name not in parse_fusion(fusion):
            raise ConfigError(f"{name!r} is not a member of --fusion {fusion}")
        settings = self.model.fusion_settings
        own = parse_member_settings(settings).get(name, {}) if settings is not None else {}
        return self.replace(model=name, fusion=None, fusion_settings=None, **own)

    def to_dict(self) -> dict[str, Any]:
        """The flat form (for reports and checkpoints): flat key -> value, in :data:`FLAT_KEYS` order."""
        return {key: getattr(getattr(self, section), field) for key, (section, field) in FLAT_KEYS.items()}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """All flat keys (TOML keys, CLI flag names)."""
        return tuple(FLAT_KEYS)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default of every flat key, without building (and validating) a config."""
        found: dict[str, Any] = {}
        for key, (section, name) in FLAT_KEYS.items():
            field = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
            found[key] = field.default
        return found

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        """Build from a TOML file (:func:`~securefedrec.config.read_toml`); errors name the key as written.

        Raises:
            ConfigError: as :func:`~securefedrec.config.read_toml` and :meth:`from_mapping`.
        """
        values, labels = read_toml(path)
        return cls.from_mapping(values, str(path), labels=labels)

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], source: str = "config", *, labels: Mapping[str, str] | None = None
    ) -> ExperimentConfig:
        """Build from a mapping of flat keys (``-`` or ``_``) to values.

        Errors name the value at fault as ``labels[key]`` when given (the CLI passes
        ``--sample-rate``, or ``run.toml: sample-rate`` for a key of its file), else as
        ``"{source}: {key}"`` for a key of ``values``, else by its flat key. A key given
        without the mode that uses it (``epsilon`` while ``dp`` is ``none``, ``synthetic_users``
        with a MovieLens data set, ...) is an error: it would be silently ignored; with ``fusion``,
        a model's key (``mlp_layers``, ``weight_decay``, ...) needs one member it applies to. A key
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
        flat = config.to_dict()
        for name, rule in _MODE_BOUND.items():
            if clean.get(name) is None:
                continue
            if rule.mode == "model" and flat["fusion"] is not None:  # the members are the models that train
                if not any(rule.applies(member) for member in parse_fusion(flat["fusion"])):
                    raise ConfigError(f"{named.get(name, name)}: applies only with {rule.needs} (or as a "
                                      f"member of --fusion); {named.get('fusion', 'fusion')} is "
                                      f"{flat['fusion']!r}")
            elif not rule.applies(flat[rule.mode]):
                raise ConfigError(f"{named.get(name, name)}: applies only with {rule.needs}; "
                                  f"{named.get(rule.mode, rule.mode)} is {flat[rule.mode]!r}")
        return config


@dataclass(frozen=True)
class _Bound:
    """A flat key that only means something in some modes: ``applies(<value of the flat key mode>)``."""

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
       for name in ("data_dir",)},
    **{name: _Bound("model", lambda model: model in IMPLICIT_MODELS,
                    f"--model {' or '.join(IMPLICIT_MODELS)}")
       for name in ("loss", "negatives", "weight_decay", "local_optimizer")},
    "personalize": _Bound("model", lambda model: model == "ncf", "--model ncf"),
    "content_weighting": _Bound("model", lambda model: model == "content", "--model content"),
    "personal_decay": _Bound("personalize", bool, "--personalize"),
    "item_epsilon": _Bound("submodel", bool, "--submodel"),
    **{name: _Bound("fusion", lambda fusion: fusion is not None, "--fusion")
       for name in ("fusion_lr", "fusion_reg", "fusion_settings")},
    "mlp_layers": _Bound("model", lambda model: model == "ncf", "--model ncf"),
    **{name: _Bound("model", lambda model: model in ("mf", "content"), "--model mf or content")
       for name in ("lam_user", "lam_item", "lam_bias")},
    "neighbors": _Bound("protocol", lambda protocol: aggregator_class(protocol).pairwise_masks,
                        "--protocol secagg or secagg+ (the masking graph)"),
    "corruption_rate": _Bound("protocol", lambda protocol: aggregator_class(protocol).pairwise_masks,
                              "--protocol secagg or secagg+ (the Shamir threshold)"),
}
"""Flat keys that are an error when given (flag or config key) outside their mode (``from_mapping``)."""
