"""securefedrec: privacy-preserving federated recommendation.

Federated matrix factorization where user factors never leave the device,
updates are hidden behind secure aggregation (``protocols``), and the server
fuses only their sum. Start with :class:`ExperimentConfig` and
:func:`run_experiment`, or compose :class:`Simulation` yourself.
"""

from securefedrec.client import Client, ClientPool
from securefedrec.config import ExperimentConfig, load_toml
from securefedrec.data import Dataset, Ratings, load_dataset, synthetic
from securefedrec.errors import ConfigError, DataError, PrivacyBudgetExhausted, SecureFedRecError
from securefedrec.fusion import OPTIMIZERS, get_optimizer
from securefedrec.metrics import Evaluation, evaluate
from securefedrec.model import Hyper, Layout
from securefedrec.privacy import (
    DistributedGaussian,
    PrivacyAccountant,
    UserLevelPrivacy,
    calibrate_noise_multiplier,
    clip_l2,
)
from securefedrec.simulation import Simulation, run_experiment

__version__ = "0.1.0"

__all__ = [
    "OPTIMIZERS",
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
