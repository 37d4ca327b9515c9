"""Experiment configuration: frozen, validated sections; loadable from flat keys, TOML and flags.

:class:`ExperimentConfig` is the composition of seven sections, one frozen,
keyword-only dataclass per concern (:mod:`securefedrec.config.sections`):

- ``config.data`` (:class:`DataConfig`): data set, split, synthetic sizes, ratings file;
- ``config.federation`` (:class:`FederationConfig`): protocol, threat model, rounds,
  sampling, dropout, ring, neighbours;
- ``config.model`` (:class:`ModelConfig`): the model's ``name``, factors, local training;
- ``config.privacy`` (:class:`PrivacyConfig`): DP ``mode``, budget, clip, noise,
  ``mechanism``, silos;
- ``config.compression`` (:class:`CompressionConfig`): the ``codec`` (``none``,
  ``q8``, ``randk:0.1``, ...);
- ``config.server`` (:class:`ServerConfig`): the server ``optimizer``, its ``lr``,
  ``decay``;
- ``config.run`` (:class:`RunConfig`): seed, device, eval_every.

The outside keeps the flat names: every TOML key and CLI flag is a *flat key*,
and :data:`FLAT_KEYS` maps each to its ``(section, field)`` (``"sample_rate" ->
("federation", "sample_rate")``, ``"dp" -> ("privacy", "mode")``,
``"server_lr" -> ("server", "lr")``). ``ExperimentConfig(rounds=3, dp="user",
epsilon=4.0)`` and ``config.replace(rounds=5)`` take flat keys (or whole
sections); :meth:`ExperimentConfig.to_dict` is the flat dict of reports and
checkpoints; :meth:`ExperimentConfig.field_names` the flat keys the CLI and the
Flower run config accept.

Values are checked when a section is built (its field types and its own rules),
then across sections (compression vs protocol, Skellam vs compression), so a bad
configuration fails before any work; :meth:`ExperimentConfig.from_mapping` names
the value at fault as the user wrote it (``--sample-rate``, ``run.toml:
sample-rate``, ``run.toml: [federation] sample-rate``) and refuses settings given
without the mode that uses them (``--epsilon`` without ``--dp user|record``). TOML
files are flat, a ``[run]`` table of flat keys, or section tables
(:mod:`securefedrec.config.toml` states the rule).

To add a setting: one line in its section class (``name: type = default``, and its
rule in the section's ``_rules``) and one entry in :data:`FLAT_KEYS`; then its flag
in :mod:`securefedrec.cli`.

This package imports no torch: the CLI builds its parser from the names here.
"""

from securefedrec.config.experiment import ExperimentConfig
from securefedrec.config.sections import (
    ACCOUNTANT_NAMES,
    DEVICES,
    DP_MECHANISMS,
    DP_MODES,
    FLAT_KEYS,
    SECTIONS,
    THREAT_MODELS,
    CompressionConfig,
    DataConfig,
    FederationConfig,
    FieldError,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    Section,
    ServerConfig,
)
from securefedrec.config.toml import load_toml, read_toml

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
    "ExperimentConfig",
    "FederationConfig",
    "FieldError",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "Section",
    "ServerConfig",
    "load_toml",
    "read_toml",
]
