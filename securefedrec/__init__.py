"""securefedrec: privacy-preserving federated recommendation.

Federated matrix factorization where user factors never leave the device,
updates are hidden behind secure aggregation (``protocols``), and the server
fuses only their sum. Start with :class:`ExperimentConfig` and
:func:`run_experiment`, or compose :class:`Simulation` yourself.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from securefedrec.config import ExperimentConfig, load_toml
    from securefedrec.data import Dataset, Ratings, load_dataset, synthetic
    from securefedrec.metrics import Evaluation, evaluate
    from securefedrec.models.mf import Hyper, Layout
    from securefedrec.models.pool import Client, ClientPool
    from securefedrec.privacy import (
        DistributedGaussian,
        PrivacyAccountant,
        UserLevelPrivacy,
        calibrate_noise_multiplier,
        clip_l2,
    )
    from securefedrec.server.optimizers import OPTIMIZERS, get_optimizer
    from securefedrec.server.simulation import Simulation, run_experiment

from securefedrec.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PrivacyBudgetExhausted,
    RunInterrupted,
    SecureFedRecError,
)

# Imported on first use (PEP 562): ``import securefedrec.flower.client_app`` in a
# Flower ClientApp process must not pay for torch and opacus in every protocol stage.
_LAZY = {
    "Client": "models.pool", "ClientPool": "models.pool",
    "ExperimentConfig": "config", "load_toml": "config",
    "Dataset": "data", "Ratings": "data", "load_dataset": "data", "synthetic": "data",
    "OPTIMIZERS": "server.optimizers", "get_optimizer": "server.optimizers",
    "Evaluation": "metrics", "evaluate": "metrics",
    "Hyper": "models.mf", "Layout": "models.mf",
    "DistributedGaussian": "privacy", "PrivacyAccountant": "privacy", "UserLevelPrivacy": "privacy",
    "calibrate_noise_multiplier": "privacy", "clip_l2": "privacy",
    "Simulation": "server.simulation", "run_experiment": "server.simulation",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'securefedrec' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"securefedrec.{module}"), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS",
    "CheckpointError",
    "Client",
    "ClientPool",
    "ConfigError",
    "DataError",
    "Dataset",
    "DistributedGaussian",
    "Evaluation",
    "ExperimentConfig",
    "Hyper",
    "Layout",
    "PrivacyAccountant",
    "PrivacyBudgetExhausted",
    "Ratings",
    "RunInterrupted",
    "SecureFedRecError",
    "Simulation",
    "UserLevelPrivacy",
    "calibrate_noise_multiplier",
    "clip_l2",
    "evaluate",
    "get_optimizer",
    "load_dataset",
    "load_toml",
    "run_experiment",
    "synthetic",
    "__version__",
]
