"""Noise mechanisms of user-level DP: each client clips its delta and adds its share of the noise.

- :mod:`.gaussian`: the distributed Gaussian (``--dp-mechanism gaussian``), float noise;
- :mod:`.skellam`: the distributed Skellam (``--dp-mechanism skellam``), integer noise in the ring;
- :mod:`.base`: the :class:`NoiseMechanism` protocol both implement.
"""

from securefedrec.privacy.mechanisms.base import NoiseMechanism
from securefedrec.privacy.mechanisms.gaussian import (
    ENCODING_SIGMAS,
    DistributedGaussian,
    clip_l2,
    secure_generator,
)
from securefedrec.privacy.mechanisms.skellam import (
    DEFAULT_BETA,
    MAX_SCALE_BITS,
    SKELLAM_TAIL,
    DistributedSkellam,
    conditional_round,
    plan_skellam,
    rounded_l1_bound,
    rounded_l2_bound,
    skellam_noise,
    skellam_tail,
)

__all__ = [
    "DEFAULT_BETA",
    "ENCODING_SIGMAS",
    "MAX_SCALE_BITS",
    "SKELLAM_TAIL",
    "DistributedGaussian",
    "DistributedSkellam",
    "NoiseMechanism",
    "clip_l2",
    "conditional_round",
    "plan_skellam",
    "rounded_l1_bound",
    "rounded_l2_bound",
    "secure_generator",
    "skellam_noise",
    "skellam_tail",
]
