"""Differential privacy: user-level distributed DP (DP-FedAvg) and record-level DP-SGD in silos.

Where each part lives:

- :mod:`.base`: :class:`RoundPrivacy`, what the simulator asks of a DP mode each round;
- :mod:`.registry`: the modes and mechanisms by name (``--dp``, ``--dp-mechanism``),
  :func:`build_privacy`;
- :mod:`.user`: user-level DP (``--dp user``) -- the threat model, the two
  epsilons and their caveats; :class:`UserLevelPrivacy` (Gaussian) and
  :class:`SkellamUserPrivacy` (integer noise in the ring);
- :mod:`.mechanisms`: the noise each client adds (:class:`DistributedGaussian`,
  :class:`DistributedSkellam`), with the Notes on randomness, the
  floating-point attack and the encoding range;
- :mod:`.accountants`: epsilon and the budget stop (:class:`PrivacyAccountant`
  on Opacus, :class:`SkellamAccountant`, :data:`ACCOUNTANTS` by name);
- :mod:`.dpsgd`: record-level DP (``--dp record``), each silo trains with the
  Opacus ``PrivacyEngine`` (:class:`SiloDPSGD`).
"""

from securefedrec.privacy.accountants import (
    ACCOUNTANTS,
    BudgetAccountant,
    PrivacyAccountant,
    SkellamAccountant,
    calibrate_noise_multiplier,
    make_accountant,
)
from securefedrec.privacy.base import RoundPrivacy
from securefedrec.privacy.dpsgd import SiloDPSGD, SiloState, silo_groups
from securefedrec.privacy.mechanisms import (
    ENCODING_SIGMAS,
    DistributedGaussian,
    DistributedSkellam,
    NoiseMechanism,
    clip_l2,
    secure_generator,
)
from securefedrec.privacy.registry import (
    DP_MECHANISMS,
    DP_MODES,
    MECHANISMS,
    MODES,
    build_privacy,
    privacy_class,
)
from securefedrec.privacy.user import AccountedUserPrivacy, SkellamUserPrivacy, UserLevelPrivacy

__all__ = [
    "ACCOUNTANTS",
    "DP_MECHANISMS",
    "DP_MODES",
    "ENCODING_SIGMAS",
    "MECHANISMS",
    "MODES",
    "AccountedUserPrivacy",
    "BudgetAccountant",
    "DistributedGaussian",
    "DistributedSkellam",
    "NoiseMechanism",
    "PrivacyAccountant",
    "RoundPrivacy",
    "SiloDPSGD",
    "SiloState",
    "SkellamAccountant",
    "SkellamUserPrivacy",
    "UserLevelPrivacy",
    "build_privacy",
    "calibrate_noise_multiplier",
    "clip_l2",
    "make_accountant",
    "privacy_class",
    "secure_generator",
    "silo_groups",
]
