"""Run securefedrec on Flower's deployment engine (SuperLink + SuperNodes).

The same sans-IO protocol objects the simulator drives in process travel
inside Flower messages: :mod:`~securefedrec.flower.messages` frames them,
:mod:`~securefedrec.flower.driver` drives the server stage by stage over a
``Grid``, :mod:`~securefedrec.flower.node` runs the clients a SuperNode hosts.
:mod:`~securefedrec.flower.update` adds the clients' DP noise shares and applies
random-k with error feedback on the nodes. The Flower components are
``securefedrec.flower.server_app:app`` and ``securefedrec.flower.client_app:app``
(imported on demand: they need ``flwr``).
"""

from securefedrec.flower.driver import (
    FederatedRun,
    GridLink,
    NodeLink,
    RoundOutcome,
    discover,
    paillier_round,
    secagg_round,
)
from securefedrec.flower.messages import FORMAT_VERSION, FlowerStage, StageMessage, pack, unpack
from securefedrec.flower.node import (
    Identity,
    KeyStream,
    NodeRuntime,
    hosted_clients,
    load_identity,
    paillier_rounding_rng,
    partition_of,
    rounding_rng,
)
from securefedrec.flower.settings import (
    DeploymentSettings,
    NodeSettings,
    Transport,
    experiment_config,
    node_settings,
)
from securefedrec.flower.update import FeedbackStore, noise_rng

__all__ = [
    "FORMAT_VERSION",
    "DeploymentSettings",
    "FeedbackStore",
    "FederatedRun",
    "FlowerStage",
    "GridLink",
    "Identity",
    "KeyStream",
    "NodeLink",
    "NodeRuntime",
    "NodeSettings",
    "RoundOutcome",
    "StageMessage",
    "Transport",
    "discover",
    "experiment_config",
    "hosted_clients",
    "load_identity",
    "node_settings",
    "noise_rng",
    "pack",
    "paillier_round",
    "paillier_rounding_rng",
    "partition_of",
    "rounding_rng",
    "secagg_round",
    "unpack",
]
