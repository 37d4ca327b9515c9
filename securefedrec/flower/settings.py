"""Flower run config -> :class:`~securefedrec.config.ExperimentConfig` plus the deployment settings.

The app's ``[tool.flwr.app.config]`` table (overridable with ``flwr run
--run-config``) holds two kinds of keys:

- every flat key of :class:`~securefedrec.config.ExperimentConfig`
  (:data:`~securefedrec.config.FLAT_KEYS`), spelt with ``-`` (``sample-rate``,
  ``update-clip``, ...); a value ``"none"`` stands for ``None`` (TOML has no null)
  and ``"default"`` for the field's default;
- the deployment keys of :class:`DeploymentSettings` (``transport``,
  ``stage-timeout``, ...).

Any other key is an error that names it.

A SuperNode's ``--node-config`` holds its own :class:`NodeSettings` and its partition
(:func:`partition_of`; the clients it hosts: :func:`hosted_clients`). Where the runtime
gives a node no config of its own (Flower's simulation runtime sets only ``partition-id``
and ``num-partitions``), the machine that runs the nodes names a TOML file with the rest
in ``$SFR_NODE_CONFIG`` (:func:`node_config`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from securefedrec.config import ExperimentConfig
from securefedrec.errors import ConfigError

__all__ = [
    "DeploymentSettings",
    "NodeSettings",
    "Transport",
    "deployment_settings",
    "experiment_config",
    "hosted_clients",
    "node_config",
    "node_settings",
    "partition_of",
    "split_run_config",
]

MIN_PAILLIER_KEY_BITS = 256
"""``protocols.paillier.keys.MIN_KEY_BITS`` (not imported here: ``protocols.paillier`` needs gmpy2)."""


class Transport(enum.Enum):
    """Which secure aggregation carries the updates over Flower."""

    SECUREFEDREC = "securefedrec"
    """Our SecAgg / SecAgg+ state machines, one Flower message per stage (dropout-robust)."""
    FLOWER_SECAGGPLUS = "flower-secaggplus"
    """Flower's own ``SecAggPlusWorkflow`` + ``secaggplus_mod`` (for comparison)."""


@dataclass(frozen=True, kw_only=True)
class DeploymentSettings:
    """Settings of a Flower deployment run that the in-process simulator does not have.

    Attributes:
        transport: see :class:`Transport`.
        min_nodes: wait until this many SuperNodes are connected before round 1.
        node_wait: seconds to wait for them (then fail, naming how many came).
        stage_timeout: seconds the server waits for the replies of one protocol stage;
            nodes that have not answered by then are dropped for the rest of the round.
        train_timeout: the same for the first stage of a round (local training + advertise).
        malicious: run SecAgg (signed keys + consistency round) or Paillier (signed ciphertexts,
            consistency round, verified decryption) in the malicious-server model (the default);
            needs every node's ``identity-key`` and ``pki`` node config (see the README).
            ``false`` runs the honest-but-curious model, which every node must accept in its own
            node config (``honest-server = true``, :class:`NodeSettings`): a server that may be
            malicious then substitutes key adverts and reads every input.
        reproducible_rounding: draw each client's stochastic-rounding stream from the public
            seed, exactly as the in-process simulator does, so a deployment reproduces a
            simulation bit for bit. Rounding noise is not a secret the protocol relies on,
            but leave this off in production (fresh ``os.urandom`` streams).
        output: where the server writes its result (``.npz``: final global vector, each
            round's decoded sum, and a JSON record); ``""`` writes nothing.
    """

    transport: Transport = Transport.SECUREFEDREC
    min_nodes: int = 2
    node_wait: float = 120.0
    stage_timeout: float = 60.0
    train_timeout: float = 300.0
    malicious: bool = True
    reproducible_rounding: bool = False
    output: str = ""

    def __post_init__(self) -> None:
        if self.min_nodes < 1:
            raise ConfigError(f"min-nodes: must be >= 1, got {self.min_nodes}")
        for name in ("node_wait", "stage_timeout", "train_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name.replace('_', '-')}: must be > 0 seconds, got {value!r}")


_DEPLOYMENT_KEYS = {f.name for f in dataclasses.fields(DeploymentSettings)}


def split_run_config(run_config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a Flower run config into (experiment fields, deployment fields), ``-`` -> ``_``."""
    experiment_keys = set(ExperimentConfig.field_names())
    experiment: dict[str, Any] = {}
    deployment: dict[str, Any] = {}
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if name in _DEPLOYMENT_KEYS:
            deployment[name] = value
        elif name in experiment_keys:
            if isinstance(value, str) and value == "default":
                continue
            experiment[name] = None if isinstance(value, str) and value.lower() == "none" else value
        else:
            known = sorted(k.replace("_", "-") for k in experiment_keys | _DEPLOYMENT_KEYS)
            raise ConfigError(f"run config: unknown key {key!r}; known keys: {', '.join(known)}")
    return experiment, deployment


def _settings(deployment: dict[str, Any]) -> DeploymentSettings:
    if "transport" in deployment:
        try:
            deployment["transport"] = Transport(deployment["transport"])
        except ValueError:
            raise ConfigError(
                f"transport: must be one of {', '.join(t.value for t in Transport)}, "
                f"got {deployment['transport']!r}"
            ) from None
    for name in ("node_wait", "stage_timeout", "train_timeout"):
        value = deployment.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            deployment[name] = float(value)
    try:
        return DeploymentSettings(**deployment)
    except TypeError as exc:
        raise ConfigError(f"run config: {exc}") from None


def deployment_settings(run_config: Mapping[str, Any]) -> tuple[DeploymentSettings, int]:
    """The deployment settings and the run's seed, without building (and validating) the experiment.

    Cheap: a ClientApp process uses it for the protocol stages after training.
    """
    experiment, deployment = split_run_config(run_config)
    seed = experiment.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: must be an int >= 0, got {seed!r}")
    return _settings(deployment), seed


def experiment_config(
    run_config: Mapping[str, Any], node_config: Mapping[str, Any] | None = None
) -> tuple[ExperimentConfig, DeploymentSettings]:
    """Build both configurations from Flower's run config.

    ``node_config`` may set ``data-dir`` (where this node keeps the dataset) and
    ``device``; every other experiment field must be the same on all parties.

    Raises:
        ConfigError: an unknown key or an invalid value (the message names it).
    """
    experiment, deployment = split_run_config(run_config)
    for key in ("data-dir", "device"):
        if node_config is not None and key in node_config:
            experiment[key.replace("-", "_")] = node_config[key]
    settings = _settings(deployment)
    config = ExperimentConfig.from_mapping(experiment, source="run config")
    from securefedrec.models.compression_spec import parse_model_compression

    if parse_model_compression(config.model.compression).needs_popularity:
        raise ConfigError(f"model-compression: {config.model.compression!r} needs the items' popularity "
                          "from a count round, which runs in the simulator only (securefedrec run); over "
                          "Flower use hash:R, qr:R, int8 or int4")
    return config, settings


@dataclass(frozen=True, kw_only=True)
class NodeSettings:
    """Settings of one SuperNode, from its ``--node-config``: its own choices, which no server can change.

    Attributes:
        reproducible_noise: draw this node's DP noise shares from the public seed, exactly as
            the in-process simulator does, so that a deployment reproduces a simulation bit for
            bit. Anyone who knows the seed can then remove the noise from the released sum:
            reproduction tests only, never with real data (:mod:`securefedrec.flower.update` Notes).
            With ``dp = "record"`` it seeds each new silo's DP-SGD generator (Poisson batches and
            gradient noise) from the public seed as well; otherwise from ``secrets``.
        paillier_key_bits: size of the Paillier key this node generates when one of its clients
            is the key holder, and the smallest key it accepts from another holder (2048 bits:
            ~112-bit security, :mod:`protocols.paillier.keys` Notes).
        honest_server: this node accepts rounds in the honest-but-curious model (run config
            ``malicious = false``: unsigned key adverts, no consistency round). Off by default,
            so that neither a run config nor a server can downgrade a node that was not told
            to trust the server; a node without ``identity-key`` and ``pki`` can take part in
            nothing else.
    """

    reproducible_noise: bool = False
    paillier_key_bits: int = 2048
    honest_server: bool = False

    def __post_init__(self) -> None:
        bits = self.paillier_key_bits
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < MIN_PAILLIER_KEY_BITS or bits % 2:
            raise ConfigError(f"node config: paillier-key-bits must be an even int >= "
                              f"{MIN_PAILLIER_KEY_BITS}, got {bits!r}")
        for name in ("reproducible_noise", "honest_server"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"node config: {name.replace('_', '-')} must be true or false, "
                                  f"got {value!r}")


def node_settings(node_config: Mapping[str, Any]) -> NodeSettings:
    """The :class:`NodeSettings` in a node config (``reproducible-noise``, ``paillier-key-bits``,
    ``honest-server``)."""
    values: dict[str, Any] = {}
    for key in ("reproducible-noise", "paillier-key-bits", "honest-server"):
        if key in node_config:
            values[key.replace("-", "_")] = node_config[key]
    return NodeSettings(**values)


NODE_CONFIG_ENV = "SFR_NODE_CONFIG"
"""The environment variable that names a node-config TOML file (:func:`node_config`)."""

NODE_KEYS = ("identity-key", "pki", "honest-server", "reproducible-noise", "paillier-key-bits",
             "data-dir", "device")
"""The keys a node-config file may set (a node's partition comes from the runtime)."""


def node_config(flower_node_config: Mapping[str, Any],
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A node's config: Flower's node config, completed from the TOML file ``$SFR_NODE_CONFIG`` names.

    Flower's simulation runtime gives each simulated SuperNode only ``partition-id`` and
    ``num-partitions``; the file supplies what a real SuperNode's ``--node-config`` would
    (:data:`NODE_KEYS`), for every node the machine runs. ``{partition-id}`` in a string value
    is replaced by the node's partition, so one file names each node's own identity keys
    (``identity-key = "keys/identity-{partition-id}.json"``, as ``securefedrec keys`` writes
    them). A key Flower's node config already has keeps Flower's value. The file is read by
    the node, on the node's machine: a server cannot set it.

    Raises:
        ConfigError: the file is unreadable or not TOML (file, line, column), or has a key
            outside :data:`NODE_KEYS` (file and key).
    """
    merged = dict(flower_node_config)
    path = (os.environ if environ is None else environ).get(NODE_CONFIG_ENV)
    if not path:
        return merged
    try:
        table = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"${NODE_CONFIG_ENV}: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"${NODE_CONFIG_ENV}: {path}: {exc}") from None
    unknown = sorted(set(table) - set(NODE_KEYS))
    if unknown:
        raise ConfigError(f"${NODE_CONFIG_ENV}: {path}: unknown key {unknown[0]!r}; a node-config file "
                          f"may set {', '.join(NODE_KEYS)}")
    partition = merged.get("partition-id")
    for key, value in table.items():
        if key in merged:
            continue
        if isinstance(value, str) and "{partition-id}" in value:
            if partition is None:
                raise ConfigError(f"${NODE_CONFIG_ENV}: {path}: {key} uses {{partition-id}}, but this "
                                  "node has no partition-id")
            value = value.replace("{partition-id}", str(partition))
        merged[key] = value
    return merged


def partition_of(node_config: Mapping[str, Any]) -> tuple[int, int]:
    """``(partition-id, num-partitions)`` from a node config, validated."""
    try:
        pid, count = node_config["partition-id"], node_config["num-partitions"]
    except KeyError as exc:
        raise ConfigError(
            f"node config: {exc.args[0]!r} is missing; start the SuperNode with "
            "--node-config 'partition-id=I num-partitions=N'"
        ) from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (pid, count)):
        raise ConfigError(
            f"node config: partition-id and num-partitions must be ints, got {pid!r}, {count!r}")
    if not 0 <= pid < count:
        raise ConfigError(f"node config: need 0 <= partition-id < num-partitions, got {pid}, {count}")
    return pid, count


def hosted_clients(partition_id: int, num_partitions: int, num_clients: int) -> list[int]:
    """The clients a node hosts: every ``c`` with ``c % num_partitions == partition_id``."""
    return list(range(partition_id, num_clients, num_partitions))
