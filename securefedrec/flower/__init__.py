"""Run securefedrec on Flower's deployment engine (SuperLink + SuperNodes).

The same sans-IO protocol objects the simulator drives in process travel
inside Flower messages:

- :mod:`~securefedrec.flower.messages` frames them (the wire format);
- :mod:`~securefedrec.flower.transport` carries them to the SuperNodes over a ``Grid``
  and discovers which node hosts which clients;
- :mod:`~securefedrec.flower.rounds` is the server: one round driver per protocol
  (SecAgg / SecAgg+, submodel SecAgg, packed Paillier) and the federated loop (:class:`FederatedRun`);
- :mod:`~securefedrec.flower.node` is a SuperNode: the clients it hosts, one session
  per protocol, the bounds it enforces, its DP-SGD silos;
- :mod:`~securefedrec.flower.update` is a client's update on its node (DP noise
  share, random-k with error feedback) and the server's half of those fields;
- :mod:`~securefedrec.flower.settings` reads the run config and the node config;
- :mod:`~securefedrec.flower.flower_secagg` runs Flower's own ``SecAggPlusWorkflow``
  instead, for comparison. The Flower components are
``securefedrec.flower.server_app:app`` and ``securefedrec.flower.client_app:app``
(imported on demand: they need ``flwr``).
"""

from securefedrec.flower.messages import FORMAT_VERSION, FlowerStage, StageMessage, pack, unpack
from securefedrec.flower.node import (
    Identity,
    KeyStream,
    NodeRuntime,
    load_identity,
    paillier_rounding_rng,
    rounding_rng,
)
from securefedrec.flower.rounds import (
    FederatedRun,
    RoundOutcome,
    paillier_round,
    secagg_round,
    submodel_round,
)
from securefedrec.flower.settings import (
    DeploymentSettings,
    NodeSettings,
    Transport,
    experiment_config,
    hosted_clients,
    node_settings,
    partition_of,
)
from securefedrec.flower.transport import GridLink, NodeLink, discover
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
    "submodel_round",
    "unpack",
]
